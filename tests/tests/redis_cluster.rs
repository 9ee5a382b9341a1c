//! The gateway on a real Redis Cluster (3 masters, started by the harness
//! with `redis-cli --cluster create`), through the real binary: classic and
//! sharded pub/sub, a slot migrated mid-stream, a master failed over to
//! its replica and a master killed. In each, sockets stay connected, get a
//! `gap` notice when messages may have been missed, and deliveries resume.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_e2e::{
    cluster::{eventually, RedisCluster},
    http,
    redis::{Reply, Resp},
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{sleep, Instant};

/// Channels with `sharded = true` (exact rules: a pattern rule cannot be
/// sharded), and a classic room pattern.
const SHARDED: [&str; 6] = [
    "/app/s/a", "/app/s/b", "/app/s/c", "/app/s/d", "/app/s/e", "/app/s/f",
];

/// The sharded channel that keeps a history.
const HISTORY: &str = SHARDED[5];

/// The rules, plus with `users` a sharded channel per user that sockets
/// join on connect (`/app/user/{user}/notifications`), as in the
/// benchmarks.
fn rules_with(users: bool) -> String {
    let mut rules = String::from(
        "[[routing.rules]]\nchannel = \"/app/feed/*\"\njoin = true\nanonymous = true\n[[routing.rules]]\nchannel = \"/app/room/*\"\nsubscribe = true\nanonymous = true\n[[routing.rules]]\nchannel = \"/app/room/x\"\nsubscribe = true\npublish = true\nanonymous = true\n",
    );
    for c in SHARDED {
        rules.push_str(&format!(
            "\n[[routing.rules]]\nchannel = \"{c}\"\nsubscribe = true\npublish = true\nanonymous = true\nsharded = true\n"
        ));
        if c == HISTORY {
            rules.push_str("history = { size = 10, ttl_secs = 60 }\n");
        }
    }
    if users {
        rules.push_str("\n[[routing.rules]]\nchannel = \"/app/user/{user}/notifications\"\njoin = true\nsubscribe = true\npublish = true\nsharded = true\n");
    }
    rules
}

/// A gateway on `cluster` (cluster mode, the slot map read every 0.25 s),
/// ready.
async fn gateway(cluster: &RedisCluster) -> Gateway {
    gateway_with(cluster, false).await
}

/// [`gateway`] with [`rules_with`]`(users)`.
async fn gateway_with(cluster: &RedisCluster, users: bool) -> Gateway {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", cluster.url())
            .env("TIDINGS_REDIS__MODE", "cluster")
            .env("TIDINGS_REDIS__TOPOLOGY_CHECK_INTERVAL_SECS", "0.25")
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5")
            .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "1")
            .env("RUST_LOG", "info,tidings_bridge=debug")
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["token"]"#)
            .toml(&rules_with(users)),
    )
    .await;
    wait_readyz(&gw, 200).await;
    gw
}

async fn readyz(gw: &Gateway) -> u16 {
    http::get(gw.addr, "/readyz").await.status
}

async fn wait_readyz(gw: &Gateway, status: u16) {
    let deadline = Instant::now() + PATIENCE * 2;
    while readyz(gw).await != status {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status}; logs:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(25)).await;
    }
}

/// A socket subscribed to `channels`.
async fn socket(gw: &Gateway, channels: &[&str]) -> Client {
    let mut c = Client::connect(&gw.ws_url()).await;
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong, json!({"type":"pong","id":"settle"}));
    for ch in channels {
        c.subscribe(ch).await;
    }
    c
}

fn message(channel: &str, data: Value) -> Value {
    json!({"type":"message","channel":channel,"data":data})
}

/// Reads `c` until `pred`, keeping what came before in `seen`.
async fn read_until(
    c: &mut Client,
    seen: &mut Vec<Value>,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_json_within(left).await {
            Some(f) if pred(&f) => return f,
            Some(f) => seen.push(f),
            None => panic!("{what}: not within {limit:?}; read meanwhile: {seen:?}"),
        }
    }
}

/// Whether the socket is still open and served: a ping is answered.
async fn still_open(c: &mut Client, seen: &mut Vec<Value>) {
    c.send_json(json!({"type":"ping","id":"alive"})).await;
    let pong = read_until(c, seen, "a pong", PATIENCE, |f| f["type"] == "pong").await;
    assert_eq!(pong, json!({"type":"pong","id":"alive"}));
}

/// Publishes `seq = 0, 1, ...` on `channel` (sharded: SPUBLISH to the
/// slot's owner; else PUBLISH to any node) every 20 ms until `stop`,
/// ignoring failures while the cluster moves.
fn stream(
    cluster: &RedisCluster,
    channel: &'static str,
    sharded: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    let ports = cluster.ports();
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !*stop.borrow() {
            let payload = json!({ "seq": seq }).to_string();
            let _ = publish_raw(&ports, channel, payload.as_bytes(), sharded).await;
            seq += 1;
            sleep(Duration::from_millis(20)).await;
        }
        seq
    })
}

/// One (S)PUBLISH through whichever of `ports` answers, following `MOVED`.
async fn publish_raw(ports: &[u16], channel: &str, payload: &[u8], sharded: bool) -> Option<i64> {
    let command: &[u8] = if sharded { b"SPUBLISH" } else { b"PUBLISH" };
    let mut candidates: Vec<u16> = ports.to_vec();
    for _ in 0..8 {
        let port = candidates.first().copied()?;
        let Ok(mut c) = tokio::time::timeout(Duration::from_millis(300), Resp::connect(port))
            .await
            .unwrap_or(Err(std::io::ErrorKind::TimedOut.into()))
        else {
            candidates.remove(0);
            continue;
        };
        let reply = tokio::time::timeout(
            Duration::from_millis(500),
            c.cmd_bytes(&[command, channel.as_bytes(), payload]),
        )
        .await
        .ok()?;
        match reply {
            Reply::Int(n) => return Some(n),
            Reply::Error(e) if e.starts_with("MOVED") => {
                let to: u16 = e.rsplit(':').next()?.parse().ok()?;
                candidates.insert(0, to);
            }
            _ => {
                candidates.remove(0);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Delivery: classic and sharded.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cluster_delivers_classic_and_sharded_messages() {
    let cluster = RedisCluster::start(0).await;
    let gw = gateway(&cluster).await;
    let mut a = socket(&gw, &["/app/room/a", SHARDED[0], SHARDED[1], SHARDED[2]]).await;

    // The sharded channels are held on their slots' owners (SSUBSCRIBE).
    for ch in &SHARDED[..3] {
        eventually(&format!("{ch} sharded-subscribed"), || async {
            cluster.shardnumsub(ch).await == 1
        })
        .await;
    }

    // Classic PUBLISH on every node reaches the socket (the cluster bus
    // carries it to the node holding the gateway's SUBSCRIBE).
    for (i, port) in cluster.masters().await.into_iter().enumerate() {
        let mut c = tidings_e2e::redis::Resp::connect(port).await.unwrap();
        c.publish(
            "/app/room/a",
            json!({ "classic": i }).to_string().as_bytes(),
        )
        .await;
        assert_eq!(
            a.next_json().await,
            message("/app/room/a", json!({ "classic": i }))
        );
    }
    // A pattern joined on connect (PSUBSCRIBE, classic) hears PUBLISH from
    // every node too.
    for (i, port) in cluster.masters().await.into_iter().enumerate() {
        let mut c = tidings_e2e::redis::Resp::connect(port).await.unwrap();
        c.publish("/app/feed/7", json!({ "feed": i }).to_string().as_bytes())
            .await;
        let f = a.next_json().await;
        assert_eq!(
            (&f["channel"], &f["pattern"], &f["data"]),
            (
                &json!("/app/feed/7"),
                &json!("/app/feed/*"),
                &json!({ "feed": i })
            ),
            "{f}"
        );
    }
    // SPUBLISH on each sharded channel reaches it, from its own shard.
    for (i, ch) in SHARDED[..3].iter().enumerate() {
        let n = cluster
            .spublish(ch, json!({ "sharded": i }).to_string().as_bytes())
            .await;
        assert_eq!(n, 1, "one sharded subscriber (the gateway) on {ch}");
        assert_eq!(a.next_json().await, message(ch, json!({ "sharded": i })));
    }
    // A classic PUBLISH on a sharded channel is another namespace: not
    // delivered.
    cluster.publish(SHARDED[0], b"\"classic\"").await;
    assert!(a
        .next_json_within(Duration::from_millis(300))
        .await
        .is_none());

    // The gateway's own publishes use SPUBLISH on sharded channels: a
    // plain SSUBSCRIBE client hears them; and PUBLISH on classic ones.
    let mut plain = cluster.ssubscribe(SHARDED[1]).await;
    let res = gw.publish(SHARDED[1], json!("from the api")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let raw = tokio::time::timeout(PATIENCE, plain.recv())
        .await
        .expect("SPUBLISH heard")
        .expect("open");
    assert!(
        String::from_utf8_lossy(&raw).contains("from the api"),
        "{raw:?}"
    );
    assert_eq!(a.next_json().await["channel"], SHARDED[1]);
    let res = gw
        .publish("/app/room/a", json!("classic from the api"))
        .await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert_eq!(
        a.next_json().await,
        message("/app/room/a", json!("classic from the api"))
    );

    // A sharded channel with a history: the publish step (FCALL, routed to
    // the channel's slot, its keys hash-tagged into it) assigns offsets and
    // delivers live with SPUBLISH.
    a.subscribe(HISTORY).await;
    for n in 1..=2u64 {
        let res = gw.publish(HISTORY, json!({ "h": n })).await;
        assert_eq!(res.status, 202, "{}\n{}", res.body, gw.logs());
        let f = a.next_json().await;
        assert_eq!(
            (&f["channel"], &f["data"], f["offset"].as_u64()),
            (&json!(HISTORY), &json!({ "h": n }), Some(n)),
            "{f}"
        );
    }

    // One-time tokens live in the cluster too (their keys on many slots):
    // minted once, redeemed once.
    for user in ["u1", "u2", "u3", "u4"] {
        let url = token_url(&gw, user).await;
        let c = Client::connect(&url).await;
        assert_eq!(c.welcome["user"], user, "{}", c.welcome);
        let again = Client::connect_with(&url, &[]).await;
        assert_eq!(again.err().map(|r| r.status), Some(401), "redeemed once");
    }

    // Leaving a sharded channel drops its SSUBSCRIBE.
    a.send_json(json!({"type":"unsubscribe","channel":SHARDED[2],"id":"u"}))
        .await;
    eventually("the SSUBSCRIBE dropped", || async {
        cluster.shardnumsub(SHARDED[2]).await == 0
    })
    .await;
}

// ---------------------------------------------------------------------------
// A slot migrated mid-stream.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_slot_migrated_mid_stream_is_followed_with_a_gap_notice() {
    let cluster = RedisCluster::start(0).await;
    let gw = gateway(&cluster).await;
    let channel = SHARDED[0];
    let mut a = socket(&gw, &[channel]).await;
    let mut seen = Vec::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher = stream(&cluster, channel, true, stop);
    let is_seq =
        |n: u64| move |f: &Value| f["type"] == "message" && f["data"]["seq"].as_u64() >= Some(n);
    read_until(&mut a, &mut seen, "the stream flowing", PATIENCE, is_seq(5)).await;

    // Move the channel's slot to another master.
    let slot = cluster.keyslot(channel).await;
    let from = cluster.owner(slot).await;
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|p| **p != from)
        .expect("another master");
    cluster.migrate_slot(slot, from, to).await;
    let moved_at = Instant::now();
    cluster.wait_ok().await;

    // The socket is told it may have missed messages, and the stream
    // resumes (now from the new owner).
    let gap = read_until(&mut a, &mut seen, "a gap notice", PATIENCE, |f| {
        f["type"] == "gap"
    })
    .await;
    assert_eq!(gap["channels"], json!([channel]), "{gap}");
    let last = seen
        .iter()
        .filter_map(|f| f["data"]["seq"].as_u64())
        .max()
        .unwrap_or(0);
    read_until(
        &mut a,
        &mut seen,
        "deliveries after the migration",
        PATIENCE,
        is_seq(last + 3),
    )
    .await;
    let resumed = moved_at.elapsed();
    assert!(
        resumed < Duration::from_secs(5),
        "resumed only after {resumed:?}"
    );
    assert_eq!(cluster.owner_of(channel).await, to);
    assert_eq!(cluster.shardnumsub(channel).await, 1);
    still_open(&mut a, &mut seen).await;
    assert_eq!(readyz(&gw).await, 200);
    stop_tx.send(true).unwrap();
    publisher.await.unwrap();
    // Nothing was delivered twice or out of order.
    let seqs: Vec<u64> = seen
        .iter()
        .filter_map(|f| f["data"]["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    eprintln!("slot migration: deliveries resumed {resumed:?} after SETSLOT NODE");
}

// ---------------------------------------------------------------------------
// Failover: a replica promoted, a master killed.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_master_failed_over_or_killed_is_followed_and_no_socket_is_lost() {
    let mut cluster = RedisCluster::start(1).await;
    let gw = gateway(&cluster).await;
    let channel = SHARDED[3];
    let mut a = socket(&gw, &["/app/room/x", channel]).await;
    let mut seen = Vec::new();

    // 1. CLUSTER FAILOVER on the replica of the channel's master.
    let old = cluster.owner_of(channel).await;
    let new = cluster.failover(old).await;
    cluster.wait_ok().await;
    eventually("the channel followed to the promoted replica", || async {
        cluster.shardnumsub(channel).await == 1
    })
    .await;
    assert_eq!(cluster.owner_of(channel).await, new);
    cluster.spublish(channel, b"{\"after\":\"failover\"}").await;
    read_until(
        &mut a,
        &mut seen,
        "a message after the failover",
        PATIENCE,
        |f| *f == message(channel, json!({"after": "failover"})),
    )
    .await;
    cluster
        .publish("/app/room/x", b"\"classic after failover\"")
        .await;
    read_until(
        &mut a,
        &mut seen,
        "a classic message after the failover",
        PATIENCE,
        |f| *f == message("/app/room/x", json!("classic after failover")),
    )
    .await;
    assert!(
        seen.iter().any(|f| f["type"] == "gap"),
        "a gap notice after the failover: {seen:?}"
    );
    wait_readyz(&gw, 200).await;

    // 2. Kill that master: not ready, publishes on it fail fast, then its
    // replica takes over and everything is back.
    seen.clear();
    let victim = cluster.owner_of(channel).await;
    cluster.kill(victim).await;
    let killed = Instant::now();
    wait_readyz(&gw, 503).await;
    let started = Instant::now();
    let res = gw.publish(channel, json!("while down")).await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        started.elapsed()
    );
    still_open(&mut a, &mut seen).await;
    // The replica is promoted after the node timeout (1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        let owner = cluster.owner_of(channel).await;
        if owner != victim {
            break owner;
        }
        assert!(Instant::now() < deadline, "no replica was promoted");
        sleep(Duration::from_millis(100)).await;
    };
    cluster.wait_master(promoted).await;
    wait_readyz(&gw, 200).await;
    let back = killed.elapsed();
    eventually("the channel subscribed on the promoted replica", || async {
        cluster.shardnumsub(channel).await == 1
    })
    .await;
    let res = gw.publish(channel, json!("after the kill")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    read_until(
        &mut a,
        &mut seen,
        "a message after the kill",
        PATIENCE,
        |f| *f == message(channel, json!("after the kill")),
    )
    .await;
    let res = gw
        .publish("/app/room/x", json!("classic after the kill"))
        .await;
    assert_eq!(res.status, 202, "{}", res.body);
    read_until(
        &mut a,
        &mut seen,
        "a classic message after the kill",
        PATIENCE,
        |f| *f == message("/app/room/x", json!("classic after the kill")),
    )
    .await;
    assert!(
        seen.iter().any(|f| f["type"] == "gap"),
        "a gap notice after the kill: {seen:?}"
    );
    still_open(&mut a, &mut seen).await;
    eprintln!("master killed: ready again after {back:?}");
}

// ---------------------------------------------------------------------------
// The whole cluster unreachable, then restarted.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_whole_cluster_down_then_restarted_brings_every_subscription_back() {
    let mut cluster = RedisCluster::start(0).await;
    let gw = gateway(&cluster).await;
    // Two sharded channels on different masters, and a classic one.
    let mut sharded = Vec::new();
    let mut owners = Vec::new();
    for ch in SHARDED {
        let owner = cluster.owner_of(ch).await;
        if !owners.contains(&owner) {
            owners.push(owner);
            sharded.push(ch);
        }
        if sharded.len() == 2 {
            break;
        }
    }
    let mut topics = vec!["/app/room/x"];
    topics.extend(&sharded);
    let mut a = socket(&gw, &topics).await;
    let mut seen = Vec::new();

    cluster.kill_all().await;
    wait_readyz(&gw, 503).await;
    let started = Instant::now();
    let res = gw.publish("/app/room/x", json!("while down")).await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        started.elapsed()
    );
    still_open(&mut a, &mut seen).await;
    sleep(Duration::from_millis(500)).await;

    cluster.restart_all().await;
    let restarted = Instant::now();
    wait_readyz(&gw, 200).await;
    for (i, ch) in topics.iter().enumerate() {
        let sharded = i > 0;
        let tag = format!("back {i}");
        let want = message(ch, json!(tag));
        let deadline = Instant::now() + PATIENCE;
        'delivered: loop {
            let payload = json!(tag).to_string();
            let _ = publish_raw(&cluster.ports(), ch, payload.as_bytes(), sharded).await;
            while let Some(f) = a.next_json_within(Duration::from_millis(100)).await {
                if f == want {
                    break 'delivered;
                }
                seen.push(f);
            }
            assert!(
                Instant::now() < deadline,
                "{ch} never delivered again; read meanwhile: {seen:?}"
            );
        }
    }
    let gapped: Vec<&Value> = seen
        .iter()
        .filter(|f| f["type"] == "gap")
        .flat_map(|f| f["channels"].as_array().into_iter().flatten())
        .collect();
    for ch in &topics {
        assert!(
            gapped.iter().any(|g| g.as_str() == Some(ch)),
            "a gap notice for {ch}: {seen:?}"
        );
    }
    still_open(&mut a, &mut seen).await;
    eprintln!(
        "whole cluster restarted: every channel delivering {:?} after the restart",
        restarted.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Several gateways on one cluster.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_gateways_on_one_cluster_reach_each_others_sockets() {
    let cluster = RedisCluster::start(0).await;
    let (g1, g2) = tokio::join!(gateway(&cluster), gateway(&cluster));
    let channels = ["/app/room/x", SHARDED[0], SHARDED[1], SHARDED[2]];
    let mut a = socket(&g1, &channels).await;
    let mut b = socket(&g2, &channels).await;
    // Each gateway holds one SSUBSCRIBE per sharded channel.
    for ch in &channels[1..] {
        eventually(&format!("{ch} held by both gateways"), || async {
            cluster.shardnumsub(ch).await == 2
        })
        .await;
    }
    for (i, ch) in channels.iter().enumerate() {
        // Published through one gateway, delivered by both.
        let from = if i % 2 == 0 { &g1 } else { &g2 };
        let res = from.publish(ch, json!({ "n": i })).await;
        assert_eq!(res.status, 202, "{}", res.body);
        for c in [&mut a, &mut b] {
            assert_eq!(c.next_json().await, message(ch, json!({ "n": i })));
        }
    }
    // A user's connections, asked of both gateways through the cluster
    // (a survey on classic pub/sub, the live gateways in one slot).
    let _anna1 = user_socket(&g1, "anna").await;
    let _anna2 = user_socket(&g2, "anna").await;
    let res = http::get(g2.addr, "/api/connections?user=anna").await;
    assert_eq!(res.status, 200, "{}", res.body);
    let v: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(v["connections"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["gateways"], 2, "{v}");
}

// ---------------------------------------------------------------------------
// Connections: a constant number, whatever the number of sockets.
// ---------------------------------------------------------------------------

/// `total_connections_received` of each node, read over `conns` (opened
/// before, so reading adds no connection).
async fn connections_received(conns: &mut [Resp]) -> Vec<i64> {
    let mut counts = Vec::new();
    for c in conns.iter_mut() {
        let info = c.cmd(&["INFO", "stats"]).await;
        let n = info
            .as_str()
            .expect("INFO stats")
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_connections_received");
        counts.push(n);
    }
    counts
}

/// How many connections hold the sharded `channel`, over `conns` (each
/// node answers for itself).
async fn held_sharded(conns: &mut [Resp], channel: &str) -> i64 {
    let mut n = 0;
    for c in conns.iter_mut() {
        if let Reply::Array(parts) = c.cmd(&["PUBSUB", "SHARDNUMSUB", channel]).await {
            n += parts.get(1).and_then(Reply::as_int).unwrap_or(0);
        }
    }
    n
}

/// A socket of `user`, through a one-time token: it joins its sharded
/// user channel and the user's presence set on connect.
async fn user_socket(gw: &Gateway, user: &str) -> Client {
    let c = Client::connect(&token_url(gw, user).await).await;
    assert_eq!(c.welcome["user"], user, "{}", c.welcome);
    c
}

/// The WebSocket URL with a one-time token minted for `user`.
async fn token_url(gw: &Gateway, user: &str) -> String {
    let res = http::request(
        gw.addr,
        "POST",
        "/api/tokens",
        &[("Content-Type".to_owned(), "application/json".to_owned())],
        json!({"identity":{"user":user}}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    let body: Value = serde_json::from_str(&res.body).unwrap();
    format!("{}?token={}", gw.ws_url(), body["token"].as_str().unwrap())
}

/// Regression (benchmark of 2026-12-01): connecting users' sockets made
/// the first seed node receive a new connection per socket (fred's set-up
/// sequence `PING`, `CLIENT ID`, `INFO server`, `CLUSTER INFO`, then
/// `CLUSTER SLOTS`): the presence script was sent to whichever node the
/// script's SHA hashes to, answered `MOVED`, and fred reads the slot map
/// again over a new connection after every `MOVED`. Connecting many users
/// (each joining its own sharded channel and its presence set) and
/// publishing to each must leave the gateway's connections as they were.
#[tokio::test]
async fn many_users_on_sharded_channels_open_no_connection_per_socket() {
    const N: usize = 200;
    let cluster = RedisCluster::start(0).await;
    let gw = gateway_with(&cluster, true).await;
    let mut conns = Vec::new();
    for port in cluster.ports() {
        conns.push(Resp::connect(port).await.expect("node"));
    }
    // The gateway's connections first: a few users' sockets and a
    // publish to each (the subscription and command connections per
    // master, the pools), then counted.
    let channel = |u: usize| format!("/app/user/u{u}/notifications");
    let mut sockets = Vec::new();
    let mut base = Vec::new();
    let mut subscribed = Vec::new();
    for (from, to) in [(0, 8), (8, 8 + N)] {
        for u in from..to {
            sockets.push(user_socket(&gw, &format!("u{u}")).await);
        }
        for u in from..to {
            let deadline = Instant::now() + PATIENCE * 3;
            while held_sharded(&mut conns, &channel(u)).await != 1 {
                assert!(Instant::now() < deadline, "{} never subscribed", channel(u));
                sleep(Duration::from_millis(20)).await;
            }
        }
        subscribed = connections_received(&mut conns).await;
        for u in from..to {
            let res = gw.publish(&channel(u), json!({ "u": u })).await;
            assert_eq!(res.status, 202, "{}", res.body);
        }
        for (u, socket) in sockets.iter_mut().enumerate().skip(from) {
            assert_eq!(
                socket.next_json().await,
                message(&channel(u), json!({ "u": u }))
            );
        }
        if from == 0 {
            base = connections_received(&mut conns).await;
        }
    }
    let after = connections_received(&mut conns).await;
    let grew: i64 = after.iter().zip(&base).map(|(a, b)| a - b).sum();
    eprintln!(
        "{N} users: connections received per node {base:?} before, {subscribed:?} once connected and subscribed, {after:?} after a publish to each"
    );
    // A reconnect or a slot map change may open a few; one per socket
    // (or per publish) is the bug.
    assert!(
        grew <= 12,
        "{N} users' sockets and a publish to each opened {grew} connections (per node {base:?} -> {subscribed:?} -> {after:?})"
    );
}
