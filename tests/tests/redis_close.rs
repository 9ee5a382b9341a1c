//! Closing the Redis broker cleanly: `Bridge::close` sends `QUIT` on every
//! connection and waits until its connections are closed, and the binary
//! does so at the end of its SIGTERM shutdown.

use std::time::Duration;

use tidings_bridge::{mailbox, Bridge, RedisConfig, SlowConsumerPolicy, Topic};
use tidings_core::{ChannelName, Message};
use tidings_e2e::{
    redis::{RedisServer, Resp},
    Gateway, GatewayOptions, PATIENCE,
};

/// The connections Redis has open (`CLIENT LIST`), the asking one included.
async fn clients(admin: &mut Resp) -> usize {
    let list = admin.cmd(&["CLIENT", "LIST"]).await;
    list.as_str()
        .expect("CLIENT LIST is a bulk string")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// How many `QUIT`s Redis has served (`INFO commandstats`).
async fn quits(admin: &mut Resp) -> u64 {
    let info = admin.cmd(&["INFO", "commandstats"]).await;
    let info = info.as_str().expect("INFO is a bulk string").to_string();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_quit:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Waits (up to [`PATIENCE`]) until Redis has `n` connections.
async fn wait_clients(admin: &mut Resp, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = clients(admin).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis has {now} connections, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bridge_close_quits_every_redis_connection() {
    let redis = RedisServer::start().await;
    let mut admin = redis.client().await;
    // Only ours (the start-up probe's connection may take a moment to go).
    wait_clients(&mut admin, 1).await;

    let mut config = RedisConfig::new(redis.url());
    config.pool_size = 3;
    let bridge = Bridge::redis(config).expect("valid config");
    // Ours, the subscription connection and the publish pool.
    wait_clients(&mut admin, 1 + 1 + 3).await;
    // Redis lists a connection before the client has finished its
    // handshake on it: wait until the bridge says it is ready, as a
    // gateway's readiness does, before using it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !bridge.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge is not ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // In use: a subscription and a publish through it.
    let (mailbox, _rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mailbox);
    let news = ChannelName::new("/news").unwrap();
    sub.subscribe(Topic::Channel(news.clone()))
        .await
        .expect("subscribed");
    bridge
        .publish(Message::new(news.clone(), "hello"))
        .await
        .expect("published");

    bridge.close().await;
    // The connections go (without close they stay: the bridge is alive),
    // and each said QUIT first. Waited for rather than asserted at once:
    // Redis may serve a CLIENT LIST in the same turn as the last QUIT.
    wait_clients(&mut admin, 1).await;
    assert_eq!(quits(&mut admin).await, 1 + 3);
    assert!(
        bridge.publish(Message::new(news, "late")).await.is_err(),
        "publishing after close fails"
    );
}

#[tokio::test]
async fn sigterm_closes_the_redis_connections_with_quit() {
    let redis = RedisServer::start().await;
    let mut admin = redis.client().await;
    let mut gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .env("TIDINGS_REDIS__POOL_SIZE", "2"),
    )
    .await;
    gw.wait_ready().await;
    // Ours, the subscription connection, the publish pool and the
    // history's pool.
    wait_clients(&mut admin, 1 + 1 + 2 + 2).await;
    assert_eq!(quits(&mut admin).await, 0);

    gw.sigterm();
    let status = gw.wait_exit(PATIENCE).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    // Each connection said QUIT before the process exited (an exit alone
    // would only cut them).
    wait_clients(&mut admin, 1).await;
    assert_eq!(quits(&mut admin).await, 1 + 2 + 2, "{}", gw.logs());
}

#[tokio::test]
async fn sigterm_with_redis_gone_still_exits() {
    let mut redis = RedisServer::start().await;
    let mut gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "0.5"),
    )
    .await;
    gw.wait_ready().await;
    redis.kill().await;

    gw.sigterm();
    // The QUITs cannot be answered: each step of the close gives up after
    // the command timeout and the process exits all the same.
    let status = gw
        .wait_exit(PATIENCE)
        .await
        .unwrap_or_else(|| panic!("still running after SIGTERM\n{}", gw.logs()));
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    assert!(
        gw.logs().contains("Redis connections closed"),
        "{}",
        gw.logs()
    );
}
