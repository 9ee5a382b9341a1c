//! The gateway behind Redis Sentinel (a master, a replica and a Sentinel
//! started by the harness), through the real binary: it finds the master
//! through the Sentinel, follows a `SENTINEL FAILOVER` and a killed master,
//! keeps every socket, and `/readyz` and publishes tell the truth meanwhile.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_e2e::{
    cluster::RedisSentinel, http, redis::Resp, ws::Client, Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{sleep, Instant};

const RULES: &str = r#"
[[routing.rules]]
channel = "/app/room/x"
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/s/a"
subscribe = true
anonymous = true
sharded = true
"#;

async fn gateway(sentinel: &RedisSentinel) -> Gateway {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", sentinel.url())
            .env("TIDINGS_REDIS__MODE", "sentinel")
            .env("TIDINGS_REDIS__SENTINEL_SERVICE", "mymaster")
            .env("TIDINGS_REDIS__TOPOLOGY_CHECK_INTERVAL_SECS", "0.25")
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5")
            .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "1")
            .toml(RULES),
    )
    .await;
    wait_readyz(&gw, 200).await;
    gw
}

async fn readyz(gw: &Gateway) -> u16 {
    http::get(gw.addr, "/readyz").await.status
}

async fn wait_readyz(gw: &Gateway, status: u16) {
    let deadline = Instant::now() + PATIENCE * 3;
    while readyz(gw).await != status {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status}; logs:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(25)).await;
    }
}

fn message(channel: &str, data: Value) -> Value {
    json!({"type":"message","channel":channel,"data":data})
}

/// Publishes `tag` on the current master (PUBLISH or SPUBLISH) until the
/// socket receives it: the subscription is back. Every other frame read
/// meanwhile goes to `seen`.
async fn until_delivered(
    sentinel: &RedisSentinel,
    c: &mut Client,
    seen: &mut Vec<Value>,
    channel: &str,
    sharded: bool,
    tag: &str,
) -> Duration {
    let started = Instant::now();
    let deadline = started + PATIENCE * 3;
    let want = message(channel, json!(tag));
    loop {
        let payload = json!(tag).to_string();
        if let Ok(mut m) = Resp::connect(sentinel.master_port().await).await {
            let command: &[u8] = if sharded { b"SPUBLISH" } else { b"PUBLISH" };
            m.cmd_bytes(&[command, channel.as_bytes(), payload.as_bytes()])
                .await;
        }
        while let Some(f) = c.next_json_within(Duration::from_millis(100)).await {
            if f == want {
                return started.elapsed();
            }
            seen.push(f);
        }
        assert!(
            Instant::now() < deadline,
            "{tag} on {channel} never delivered; read meanwhile: {seen:?}"
        );
    }
}

/// A `gap` notice was read, or comes soon: the bridge sends it once the
/// subscriptions are confirmed again, which may be just after the first
/// messages flow (Redis took the `SUBSCRIBE` before the gateway saw it
/// confirmed).
async fn expect_gap(c: &mut Client, seen: &mut Vec<Value>, after: &str, gw: &Gateway) {
    if seen.iter().any(|f| f["type"] == "gap") {
        return;
    }
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(f) = c.next_json_within(Duration::from_millis(200)).await {
            if f["type"] == "gap" {
                return;
            }
            seen.push(f);
        }
    }
    panic!("no gap notice after {after}: {seen:?}\n{}", gw.logs());
}

#[tokio::test]
async fn sentinel_failover_and_a_killed_master_keep_sockets_and_subscriptions() {
    let mut sentinel = RedisSentinel::start().await;
    let gw = gateway(&sentinel).await;
    let mut a = Client::connect(&gw.ws_url()).await;
    let pong = a.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong["type"], "pong");
    a.subscribe("/app/room/x").await;
    a.subscribe("/app/s/a").await;
    let mut seen = Vec::new();

    // Through the master the Sentinel names: classic and sharded.
    until_delivered(&sentinel, &mut a, &mut seen, "/app/room/x", false, "first").await;
    until_delivered(
        &sentinel,
        &mut a,
        &mut seen,
        "/app/s/a",
        true,
        "first sharded",
    )
    .await;
    let res = gw
        .publish("/app/room/x", json!("through the gateway"))
        .await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert_eq!(
        a.next_json().await,
        message("/app/room/x", json!("through the gateway"))
    );

    // 1. SENTINEL FAILOVER: the replica is promoted; the gateway moves to
    // it, subscriptions come back, sockets get a gap notice.
    let old = sentinel.master_port().await;
    let new = sentinel.failover().await;
    assert_ne!(old, new);
    let took = until_delivered(
        &sentinel,
        &mut a,
        &mut seen,
        "/app/room/x",
        false,
        "after failover",
    )
    .await;
    until_delivered(
        &sentinel,
        &mut a,
        &mut seen,
        "/app/s/a",
        true,
        "sharded after failover",
    )
    .await;
    expect_gap(&mut a, &mut seen, "the failover", &gw).await;
    wait_readyz(&gw, 200).await;
    let res = gw.publish("/app/room/x", json!("on the new master")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let mut got = Vec::new();
    loop {
        let f = a.next_json().await;
        if f == message("/app/room/x", json!("on the new master")) {
            break;
        }
        got.push(f);
    }
    eprintln!("SENTINEL FAILOVER: deliveries back {took:?} after the switch");

    // 2. Kill the new master: not ready, publishes fail fast; the Sentinel
    // promotes the old master (now its replica) and all comes back.
    sentinel.wait_replica_known().await;
    seen.clear();
    sentinel.kill(new).await;
    wait_readyz(&gw, 503).await;
    let started = Instant::now();
    let res = gw.publish("/app/room/x", json!("while down")).await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        started.elapsed()
    );
    a.send_json(json!({"type":"ping","id":"alive"})).await;
    loop {
        let f = a.next_json().await;
        if f["type"] == "pong" {
            break;
        }
    }
    let took = until_delivered(
        &sentinel,
        &mut a,
        &mut seen,
        "/app/room/x",
        false,
        "after kill",
    )
    .await;
    until_delivered(
        &sentinel,
        &mut a,
        &mut seen,
        "/app/s/a",
        true,
        "sharded after kill",
    )
    .await;
    expect_gap(&mut a, &mut seen, "the kill", &gw).await;
    wait_readyz(&gw, 200).await;
    eprintln!("master killed: deliveries back {took:?} after the first try");
}
