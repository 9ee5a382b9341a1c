//! The Redis bridge through the real binary and a real, private
//! `redis-server`: what is PUBLISHed on a Redis channel reaches exactly the
//! sockets of that channel, one Redis subscription serves any number of
//! sockets, several gateways share one Redis, and an outage of Redis costs
//! messages (announced with `gap` notices) but never sockets.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tidings_e2e::{
    http,
    raw::{op, RawWs},
    redis::{free_port, RedisServer, Resp},
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{sleep, Instant};

/// How long "nothing arrives" is watched for.
const SHORT: Duration = Duration::from_millis(300);

/// Everyone joins `/app/broadcast`; anonymous sockets may subscribe to any
/// room and publish on `/app/room/a`.
const ROOMS: &str = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/room/*"
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/room/a"
publish = true
anonymous = true
"#;

/// Options for a gateway on the Redis at `url`, with the room rules.
fn on_redis(url: &str) -> GatewayOptions {
    GatewayOptions::default()
        .env("TIDINGS_REDIS_URL", url)
        .toml(ROOMS)
}

/// Starts a gateway and waits until it is ready (connected to Redis), as a
/// load balancer would before sending it sockets.
async fn start_ready(opts: GatewayOptions) -> Gateway {
    let gw = Gateway::start_with(opts).await;
    wait_readyz(&gw, 200, PATIENCE).await;
    gw
}

/// Connects and waits until the channels joined on connect are subscribed:
/// the session reads its first request only once its joins are done, so the
/// answer to a ping proves them.
async fn connect(gw: &Gateway) -> Client {
    let mut c = Client::connect(&gw.ws_url()).await;
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong, json!({"type":"pong","id":"settle"}));
    c
}

/// Like [`connect`], and subscribes to `channel` too.
async fn connect_to(gw: &Gateway, channel: &str) -> Client {
    let mut c = connect(gw).await;
    c.subscribe(channel).await;
    c
}

/// A raw socket (one that can stop reading) whose joins are done.
async fn connect_raw(gw: &Gateway) -> RawWs {
    let mut r = RawWs::connect(gw.addr, "/ws").await;
    let w = r.next_json(PATIENCE).await.expect("welcome");
    assert_eq!(w["type"], "welcome");
    r.send_frame(true, op::TEXT, br#"{"type":"ping"}"#).await;
    let pong = r.next_json(PATIENCE).await.expect("pong");
    assert_eq!(pong["type"], "pong");
    r
}

/// Asserts that `c` receives nothing for a while.
async fn assert_quiet(c: &mut Client, who: &str) {
    if let Some(f) = c.next_json_within(SHORT).await {
        panic!("{who} must receive nothing, got {f}");
    }
}

/// A frame, shortened for a failure message.
fn brief(f: &Value) -> String {
    let s = f.to_string();
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn message(channel: &str, data: Value) -> Value {
    json!({"type":"message","channel":channel,"data":data})
}

/// A message a client published may name its sender (`"from"`, `null` for
/// an anonymous one): checks it is anonymous and removes it.
fn anonymous_sender(mut f: Value) -> Value {
    if let Some(o) = f.as_object_mut() {
        if let Some(from) = o.remove("from") {
            assert_eq!(from, Value::Null, "an anonymous sender: {f}");
        }
    }
    f
}

/// `POST /api/publish` on the gateway at `addr` (for spawned tasks, which
/// cannot borrow the [`Gateway`]).
async fn publish_at(addr: SocketAddr, channel: &str, data: Value) -> http::Response {
    let body = json!({ "channel": channel, "data": data }).to_string();
    let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
    http::request(addr, "POST", "/api/publish", &headers, body.as_bytes()).await
}

async fn readyz(gw: &Gateway) -> u16 {
    http::get(gw.addr, "/readyz").await.status
}

/// Polls `/readyz` until it answers `status`.
async fn wait_readyz(gw: &Gateway, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if readyz(gw).await == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {limit:?}; gateway output:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `PUBSUB NUMSUB channel` until it is `n`.
async fn wait_numsub(r: &mut Resp, channel: &str, n: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = r.numsub(channel).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NUMSUB {channel} is {now}, not {n}, after {limit:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `PUBSUB NUMPAT` until it is `n`.
async fn wait_numpat(r: &mut Resp, n: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = r.numpat().await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NUMPAT is {now}, not {n}, after {limit:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `PUBSUB CHANNELS` until it no longer lists `channel`.
async fn wait_channel_gone(r: &mut Resp, channel: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = r.channels().await;
        if !now.iter().any(|c| c == channel) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} still in PUBSUB CHANNELS after {limit:?}: {now:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Reads frames until one satisfies `pred` and returns it; every frame read
/// before it is appended to `seen`.
async fn read_until(
    c: &mut Client,
    seen: &mut Vec<Value>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_json_within(left).await {
            Some(f) if pred(&f) => return f,
            Some(f) => seen.push(f),
            None => panic!("{what}: not within {PATIENCE:?}; read meanwhile: {seen:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// 1. PUBLISH straight to Redis reaches exactly the right sockets.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_publish_reaches_exactly_the_sockets_of_its_channel() {
    let redis = RedisServer::start().await;
    let gw = start_ready(on_redis(&redis.url())).await;
    let mut a1 = connect_to(&gw, "/app/room/a").await;
    let mut a2 = connect_to(&gw, "/app/room/a").await;
    let mut b = connect_to(&gw, "/app/room/b").await;
    let mut idle = connect(&gw).await; // on /app/broadcast only
    let mut r = redis.client().await;

    // What `redis-cli PUBLISH` sends, and what the sockets must see.
    let big = json!({"blob": "x".repeat(60 * 1024), "n": [1, 2, 3]});
    let cases: Vec<(&str, Vec<u8>, Value)> = vec![
        (
            "JSON",
            br#"{"n":1,"s":"caf\u00e9 \u2603","nested":{"ok":true}}"#.to_vec(),
            message(
                "/app/room/a",
                json!({"n":1,"s":"café ☃","nested":{"ok":true}}),
            ),
        ),
        (
            "a JSON number",
            b"42".to_vec(),
            message("/app/room/a", json!(42)),
        ),
        (
            "an empty payload",
            Vec::new(),
            message("/app/room/a", json!("")),
        ),
        (
            "plain text",
            "hello, world ☃".as_bytes().to_vec(),
            message("/app/room/a", json!("hello, world ☃")),
        ),
        (
            "text that only looks like JSON",
            b"{oops".to_vec(),
            message("/app/room/a", json!("{oops")),
        ),
        (
            "non-UTF-8 bytes",
            vec![0xff, 0xfe, 0x00, 0x61, 0x80],
            json!({"type":"message","channel":"/app/room/a","data":"//4AYYA=","encoding":"base64"}),
        ),
        (
            "a 60 KB JSON payload",
            big.to_string().into_bytes(),
            message("/app/room/a", big.clone()),
        ),
    ];
    for (what, payload, expected) in &cases {
        let receivers = r.publish("/app/room/a", payload).await;
        assert_eq!(
            receivers, 1,
            "{what}: the gateway holds one Redis subscription for its two sockets"
        );
        for (name, c) in [("a1", &mut a1), ("a2", &mut a2)] {
            let got = c.next_json().await;
            assert!(
                &got == expected,
                "{what} as seen by {name}: expected {}, got {}",
                brief(expected),
                brief(&got)
            );
        }
    }
    // Zero wrong-channel deliveries.
    assert_quiet(&mut b, "a socket on /app/room/b").await;
    assert_quiet(&mut idle, "a socket on /app/broadcast only").await;

    // The other direction, and a channel nobody listens to.
    assert_eq!(r.publish("/app/room/b", b"for b").await, 1);
    assert_eq!(
        r.publish("/app/room/nobody", b"lost").await,
        0,
        "the gateway does not subscribe to channels no socket wants"
    );
    assert_eq!(b.next_json().await, message("/app/room/b", json!("for b")));
    assert_eq!(r.publish("/app/broadcast", b"[true]").await, 1);
    for c in [&mut a1, &mut a2, &mut b, &mut idle] {
        assert_eq!(
            c.next_json().await,
            message("/app/broadcast", json!([true]))
        );
    }
    assert_quiet(&mut a1, "a1").await;
    assert_quiet(&mut a2, "a2").await;
    assert_quiet(&mut b, "b").await;
    assert_quiet(&mut idle, "idle").await;
}

// ---------------------------------------------------------------------------
// 2. One Redis subscription per channel or pattern, whatever the sockets.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_hundred_sockets_make_one_redis_subscription() {
    let redis = RedisServer::start().await;
    let gw = start_ready(on_redis(&redis.url())).await;
    let mut r = redis.client().await;
    let mut crowd = Vec::new();
    for _ in 0..100 {
        crowd.push(connect_to(&gw, "/app/room/crowd").await);
    }
    assert_eq!(r.numsub("/app/room/crowd").await, 1);
    assert_eq!(r.numsub("/app/broadcast").await, 1);
    let mut channels = r.channels().await;
    channels.sort();
    assert_eq!(channels, ["/app/broadcast", "/app/room/crowd"]);

    assert_eq!(r.publish("/app/room/crowd", br#"{"all":1}"#).await, 1);
    for c in &mut crowd {
        assert_eq!(
            c.next_json().await,
            message("/app/room/crowd", json!({"all":1}))
        );
    }
    // Exactly once each.
    for c in crowd.iter_mut().take(5) {
        assert_quiet(c, "a crowd socket after its one delivery").await;
    }

    // 99 leave: the one that stays still needs the subscription.
    let mut last = crowd.pop().expect("one");
    for c in crowd {
        c.close().await;
    }
    sleep(SHORT).await;
    assert_eq!(r.numsub("/app/room/crowd").await, 1);
    assert_eq!(r.publish("/app/room/crowd", b"still").await, 1);
    assert_eq!(
        last.next_json().await,
        message("/app/room/crowd", json!("still"))
    );

    // An unsubscribe request by the only socket on a channel ends the
    // Redis subscription too.
    last.subscribe("/app/room/solo").await;
    assert_eq!(r.numsub("/app/room/solo").await, 1);
    let ack = last
        .request(json!({"type":"unsubscribe","channel":"/app/room/solo"}))
        .await;
    assert_eq!(ack["type"], "unsubscribed");
    wait_channel_gone(&mut r, "/app/room/solo", PATIENCE).await;
    assert_eq!(r.publish("/app/room/solo", b"gone").await, 0);

    // The last one leaves: the gateway unsubscribes (asynchronously).
    drop(last);
    wait_channel_gone(&mut r, "/app/room/crowd", PATIENCE).await;
    wait_channel_gone(&mut r, "/app/broadcast", PATIENCE).await;
    assert_eq!(r.numsub("/app/room/crowd").await, 0);
    assert!(r.channels().await.is_empty());
}

#[tokio::test]
async fn many_sockets_on_a_pattern_make_one_redis_pattern_subscription() {
    let redis = RedisServer::start().await;
    let gw = start_ready(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .toml(
                r#"
                [[routing.rules]]
                channel = "/app/room/*"
                join = true
                anonymous = true

                [[routing.rules]]
                channel = "/app/*/hot"
                join = true
                anonymous = true
                "#,
            ),
    )
    .await;
    let mut r = redis.client().await;
    let mut crowd = Vec::new();
    for _ in 0..50 {
        let c = connect(&gw).await;
        assert_eq!(c.welcome["patterns"], json!(["/app/room/*", "/app/*/hot"]));
        crowd.push(c);
    }
    assert_eq!(r.numpat().await, 2, "one PSUBSCRIBE per pattern");
    assert!(r.channels().await.is_empty(), "no exact subscriptions");

    // A channel one pattern matches: one delivery, naming the pattern.
    assert_eq!(r.publish("/app/room/7", b"{\"p\":1}").await, 1);
    for c in &mut crowd {
        assert_eq!(
            c.next_json().await,
            json!({"type":"message","channel":"/app/room/7","pattern":"/app/room/*","data":{"p":1}})
        );
    }
    // A channel both patterns match: one delivery per pattern, whatever
    // order Redis sends its two pmessages in, and twice in a row.
    for n in 0..2 {
        assert_eq!(
            r.publish("/app/room/hot", n.to_string().as_bytes()).await,
            2
        );
    }
    for c in &mut crowd {
        let mut got = Vec::new();
        for _ in 0..4 {
            let f = c.next_json().await;
            assert_eq!(f["channel"], "/app/room/hot", "{f}");
            got.push((f["data"].as_i64().expect("n"), f["pattern"].to_string()));
        }
        got.sort();
        assert_eq!(
            got,
            [
                (0, "\"/app/*/hot\"".to_owned()),
                (0, "\"/app/room/*\"".to_owned()),
                (1, "\"/app/*/hot\"".to_owned()),
                (1, "\"/app/room/*\"".to_owned()),
            ]
        );
    }
    for c in crowd.iter_mut().take(5) {
        assert_quiet(c, "a pattern socket after its deliveries").await;
    }

    for c in crowd {
        c.close().await;
    }
    wait_numpat(&mut r, 0, PATIENCE).await;
}

// ---------------------------------------------------------------------------
// 3. Two gateway processes on one Redis.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_gateways_share_one_redis() {
    let redis = RedisServer::start().await;
    let gw1 = start_ready(on_redis(&redis.url())).await;
    let gw2 = start_ready(on_redis(&redis.url())).await;
    let mut r = redis.client().await;
    let mut one_a = connect_to(&gw1, "/app/room/a").await;
    let mut one_b = connect_to(&gw1, "/app/room/b").await;
    let mut two_a = connect_to(&gw2, "/app/room/a").await;
    let mut two_a2 = connect_to(&gw2, "/app/room/a").await;
    let mut two_b = connect_to(&gw2, "/app/room/b").await;
    assert_eq!(r.numsub("/app/room/a").await, 2, "one per gateway");
    assert_eq!(r.numsub("/app/broadcast").await, 2, "one per gateway");

    // Each gateway delivers to its own sockets, exactly once.
    assert_eq!(r.publish("/app/room/a", b"\"direct\"").await, 2);
    for c in [&mut one_a, &mut two_a, &mut two_a2] {
        assert_eq!(c.next_json().await, message("/app/room/a", json!("direct")));
    }

    // The HTTP API of either gateway reaches the sockets of both.
    for (gw, n) in [(&gw1, 1), (&gw2, 2)] {
        let res = gw.publish("/app/room/a", json!({"via": n})).await;
        assert_eq!(res.status, 202, "{}", res.body);
        for c in [&mut one_a, &mut two_a, &mut two_a2] {
            assert_eq!(
                c.next_json().await,
                message("/app/room/a", json!({"via": n}))
            );
        }
    }
    let res = gw2.publish("/app/broadcast", json!("everyone")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    for c in [&mut one_a, &mut one_b, &mut two_a, &mut two_a2, &mut two_b] {
        assert_eq!(
            c.next_json().await,
            message("/app/broadcast", json!("everyone"))
        );
    }

    // A client publish on one gateway reaches the other's sockets (and its
    // own, including the publisher, which is subscribed: its copy may come
    // before or after the ack).
    one_a
        .send_json(json!({"type":"publish","channel":"/app/room/a","data":{"from":"one"},"id":1}))
        .await;
    let mut frames = vec![
        anonymous_sender(one_a.next_json().await),
        anonymous_sender(one_a.next_json().await),
    ];
    frames.sort_by_key(|f| f["type"].to_string());
    assert_eq!(
        frames,
        [
            message("/app/room/a", json!({"from":"one"})),
            json!({"type":"published","channel":"/app/room/a","id":1}),
        ]
    );
    for c in [&mut two_a, &mut two_a2] {
        assert_eq!(
            anonymous_sender(c.next_json().await),
            message("/app/room/a", json!({"from":"one"}))
        );
    }

    // Nothing reached the wrong channel, and nothing came twice.
    for (who, c) in [
        ("one_a", &mut one_a),
        ("one_b", &mut one_b),
        ("two_a", &mut two_a),
        ("two_a2", &mut two_a2),
        ("two_b", &mut two_b),
    ] {
        assert_quiet(c, who).await;
    }
}

// ---------------------------------------------------------------------------
// 4. Redis dies mid-stream and comes back.
// ---------------------------------------------------------------------------

/// One publish of the background stream.
#[derive(Debug)]
struct Sent {
    seq: u64,
    status: u16,
    retry_after: Option<String>,
    started: Instant,
    took: Duration,
}

#[tokio::test]
async fn redis_outage_keeps_every_socket_and_recovers() {
    let mut redis = RedisServer::start().await;
    // The room rules, and every socket also joins the pattern /app/feed/*.
    let rules = format!(
        "{ROOMS}\n[[routing.rules]]\nchannel = \"/app/feed/*\"\njoin = true\nanonymous = true\n"
    );
    let gw = start_ready(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5")
            .toml(&rules),
    )
    .await;
    let mut a = connect_to(&gw, "/app/room/a").await;
    let mut b = connect_to(&gw, "/app/room/b").await;
    let mut idle = connect(&gw).await;
    let (mut seen_a, mut seen_b, mut seen_idle) = (Vec::new(), Vec::new(), Vec::new());

    // A steady stream of HTTP publishes on /app/room/a.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn({
        let stop = stop.clone();
        let addr = gw.addr;
        async move {
            let mut log = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let res = publish_at(addr, "/app/room/a", json!({ "seq": seq })).await;
                log.push(Sent {
                    seq,
                    status: res.status,
                    retry_after: res.header("retry-after").map(str::to_owned),
                    started,
                    took: started.elapsed(),
                });
                seq += 1;
                sleep(Duration::from_millis(15)).await;
            }
            log
        }
    });
    let is_seq = |n: u64| move |f: &Value| f["data"]["seq"].as_u64() >= Some(n);
    read_until(&mut a, &mut seen_a, "the stream flowing", is_seq(5)).await;

    // Outage.
    redis.kill().await;
    let killed_at = Instant::now();
    wait_readyz(&gw, 503, PATIENCE).await;
    let started = Instant::now();
    let res = gw.publish("/app/room/b", json!("during the outage")).await;
    let took = started.elapsed();
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(res.body.contains("broker_unavailable"), "{}", res.body);
    assert!(res.header("retry-after").is_some(), "{res:?}");
    assert!(took < Duration::from_secs(2), "503 took {took:?}");
    // A client publish is refused with an error frame.
    a.send_json(json!({"type":"publish","channel":"/app/room/a","data":"x","id":"p"}))
        .await;
    let err = read_until(&mut a, &mut seen_a, "the publish reply", |f| {
        f["type"] != "message"
    })
    .await;
    assert_eq!(
        (
            err["type"].as_str(),
            err["code"].as_str(),
            err["id"].as_str()
        ),
        (Some("error"), Some("broker_unavailable"), Some("p")),
        "{err}"
    );
    // Every socket is still open and served.
    for (c, seen) in [
        (&mut a, &mut seen_a),
        (&mut b, &mut seen_b),
        (&mut idle, &mut seen_idle),
    ] {
        c.send_json(json!({"type":"ping","id":"outage"})).await;
        let pong = read_until(c, seen, "a pong during the outage", |f| {
            f["type"] != "message"
        })
        .await;
        assert_eq!(pong, json!({"type":"pong","id":"outage"}));
    }
    sleep(Duration::from_millis(200)).await; // let the stream hit the outage
    assert_eq!(readyz(&gw).await, 503, "still down");

    // Recovery, on the same port.
    redis.restart().await;
    wait_readyz(&gw, 200, PATIENCE).await;
    let mut r = redis.client().await;
    for ch in ["/app/room/a", "/app/room/b", "/app/broadcast"] {
        wait_numsub(&mut r, ch, 1, Duration::from_secs(5)).await;
    }
    wait_numpat(&mut r, 1, Duration::from_secs(5)).await;
    // Every socket hears about the gap, naming exactly its channels.
    let gap = |f: &Value| f["type"] == "gap";
    let gap_a = read_until(&mut a, &mut seen_a, "a's gap notice", gap).await;
    let gap_seen_at = Instant::now();
    let gap_b = read_until(&mut b, &mut seen_b, "b's gap notice", gap).await;
    let gap_idle = read_until(&mut idle, &mut seen_idle, "idle's gap notice", gap).await;
    let expected_gap = |channels: &[&str]| json!({"type":"gap","channels":channels,"patterns":["/app/feed/*"],"reason":"broker_reconnected"});
    assert_eq!(gap_a, expected_gap(&["/app/broadcast", "/app/room/a"]));
    assert_eq!(gap_b, expected_gap(&["/app/broadcast", "/app/room/b"]));
    assert_eq!(gap_idle, expected_gap(&["/app/broadcast"]));

    // Let the stream run on a little, then stop it.
    let resumed = read_until(&mut a, &mut seen_a, "the stream after the restart", |f| {
        f["type"] == "message"
    })
    .await;
    seen_a.push(resumed);
    sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let log = stream.await.expect("stream task");

    // Publishes never hung, and failed fast with 503 during the outage.
    let slowest = log.iter().map(|s| s.took).max().expect("published");
    assert!(
        slowest < Duration::from_secs(3),
        "a publish took {slowest:?}"
    );
    let failed: Vec<&Sent> = log.iter().filter(|s| s.status != 202).collect();
    assert!(!failed.is_empty(), "the stream saw the outage");
    for s in &failed {
        assert_eq!(s.status, 503, "{s:?}");
        assert_eq!(s.retry_after.as_deref(), Some("1"), "{s:?}");
    }
    // Every message accepted after the gap notice arrives, in order, once.
    let must_arrive: Vec<u64> = log
        .iter()
        .filter(|s| s.status == 202 && s.started > gap_seen_at)
        .map(|s| s.seq)
        .collect();
    assert!(!must_arrive.is_empty(), "the stream resumed: {log:?}");
    let last = *must_arrive.last().expect("some");
    let f = read_until(
        &mut a,
        &mut seen_a,
        "the last accepted message",
        is_seq(last),
    )
    .await;
    seen_a.push(f);
    let got: Vec<u64> = seen_a
        .iter()
        .filter(|f| f["type"] == "message" && f["channel"] == "/app/room/a")
        .map(|f| f["data"]["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {got:?}"
    );
    for seq in &must_arrive {
        assert!(
            got.contains(seq),
            "accepted seq {seq} never arrived: {got:?}"
        );
    }
    // A message whose publish was refused never arrives, unless Redis was
    // killed between handling the PUBLISH and answering it.
    for seq in &got {
        let sent = log.iter().find(|s| s.seq == *seq).expect("published");
        assert!(
            sent.status == 202 || sent.started < killed_at,
            "{sent:?} arrived although its publish was refused"
        );
    }
    // Nothing leaked to the other sockets, and one gap notice each.
    for (who, seen) in [("b", &seen_b), ("idle", &seen_idle)] {
        assert!(seen.is_empty(), "{who} got {seen:?}");
    }
    assert!(
        !seen_a.iter().any(|f| f["type"] != "message"),
        "a got only messages besides its replies and gap: {seen_a:?}"
    );

    // And afterwards everything flows again.
    for (ch, c) in [("/app/room/a", &mut a), ("/app/room/b", &mut b)] {
        assert_eq!(r.publish(ch, b"\"after\"").await, 1);
        assert_eq!(c.next_json().await, message(ch, json!("after")));
    }
    let res = gw.publish("/app/broadcast", json!("all back")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert_eq!(r.publish("/app/feed/news", b"\"fed\"").await, 1);
    for c in [&mut a, &mut b, &mut idle] {
        assert_eq!(
            c.next_json().await,
            message("/app/broadcast", json!("all back"))
        );
        assert_eq!(
            c.next_json().await,
            json!({"type":"message","channel":"/app/feed/news","pattern":"/app/feed/*","data":"fed"})
        );
        assert_quiet(c, "a socket after recovery").await;
    }
}

// ---------------------------------------------------------------------------
// 5. A slow consumer costs only itself.
// ---------------------------------------------------------------------------

const FLOOD: u64 = 2000;

fn flood_payload(seq: u64) -> Vec<u8> {
    json!({"seq": seq, "pad": "p".repeat(4096)})
        .to_string()
        .into_bytes()
}

/// Starts a gateway with an 8-message outbound queue and `policy`, a fast
/// reader and a raw socket that has stopped reading, and publishes
/// [`FLOOD`] 4 KB messages on `/app/broadcast` straight to Redis. The fast
/// reader must get every one, in order; it is never more than 4 behind,
/// so its own queue cannot overflow. Returns the gateway (keep it alive),
/// the Redis connection, the fast and the slow socket.
async fn flood(redis: &RedisServer, policy: &str) -> (Gateway, Resp, Client, RawWs) {
    let gw = start_ready(
        on_redis(&redis.url())
            .env("TIDINGS_WEBSOCKET__OUTBOUND_QUEUE", "8")
            .env("TIDINGS_WEBSOCKET__SLOW_CONSUMER", policy)
            // The slow socket is stalled for as long as the flood lasts;
            // the write timeout must not end it first on a slow machine.
            .env("TIDINGS_WEBSOCKET__WRITE_TIMEOUT_SECS", "60"),
    )
    .await;
    let mut fast = connect(&gw).await;
    let slow = connect_raw(&gw).await;
    let mut r = redis.client().await;
    let (mut sent, mut got) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < FLOOD {
        while sent < FLOOD && sent - got < 4 {
            assert_eq!(r.publish("/app/broadcast", &flood_payload(sent)).await, 1);
            sent += 1;
        }
        let f = fast.next_json().await;
        assert_eq!(f["type"], "message", "{}", brief(&f));
        assert_eq!(
            f["data"]["seq"], got,
            "the fast reader gets every message in order"
        );
        got += 1;
        assert!(Instant::now() < deadline, "flood too slow");
    }
    (gw, r, fast, slow)
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4001_and_the_fast_one_gets_everything() {
    let redis = RedisServer::start().await;
    let (_gw, mut r, mut fast, mut slow) = flood(&redis, "close").await;

    // The slow socket reads again: what was already on the wire, then 4001.
    let mut next = 0u64;
    let code = loop {
        let f = slow
            .read_frame(PATIENCE)
            .await
            .expect("a frame or the close");
        match f.opcode {
            op::TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
                assert_eq!(v["data"]["seq"], next, "a prefix, in order");
                next += 1;
            }
            op::CLOSE => break f.close_code(),
            op::PING => {}
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(code, Some(4001));
    assert!(
        next < FLOOD,
        "the slow socket must have fallen behind (it read all {next})"
    );

    // The fast one carries on.
    assert_eq!(r.publish("/app/broadcast", b"\"later\"").await, 1);
    assert_eq!(
        fast.next_json().await,
        message("/app/broadcast", json!("later"))
    );
    assert_quiet(&mut fast, "the fast reader").await;
}

#[tokio::test]
async fn slow_consumer_under_drop_policy_is_told_what_it_missed_and_served_on() {
    let redis = RedisServer::start().await;
    let (_gw, mut r, mut fast, mut slow) = flood(&redis, "drop").await;

    // The slow socket reads again: a prefix of the flood, in order, and
    // `dropped` notices accounting for every other message.
    let (mut received, mut dropped, mut notices) = (0u64, 0u64, 0u32);
    let mut last_seq: Option<u64> = None;
    while received + dropped < FLOOD {
        let f = slow.next_json(PATIENCE).await.unwrap_or_else(|| {
            panic!("socket ended or stalled after {received} messages and {dropped} dropped")
        });
        match f["type"].as_str() {
            Some("message") => {
                let seq = f["data"]["seq"].as_u64().expect("seq");
                assert!(
                    last_seq.is_none_or(|l| seq > l),
                    "in order: {seq} after {last_seq:?}"
                );
                last_seq = Some(seq);
                received += 1;
            }
            Some("dropped") => {
                let n = f["count"].as_u64().expect("count");
                assert!(n > 0, "{f}");
                dropped += n;
                notices += 1;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert_eq!(received + dropped, FLOOD);
    assert!(notices >= 1 && dropped > 0, "the slow socket fell behind");

    // Still served: deliveries and replies.
    assert_eq!(r.publish("/app/broadcast", b"\"later\"").await, 1);
    assert_eq!(
        slow.next_json(PATIENCE).await.expect("a delivery"),
        message("/app/broadcast", json!("later"))
    );
    slow.send_frame(true, op::TEXT, br#"{"type":"ping","id":5}"#)
        .await;
    assert_eq!(
        slow.next_json(PATIENCE).await.expect("a pong"),
        json!({"type":"pong","id":5})
    );
    assert_eq!(
        fast.next_json().await,
        message("/app/broadcast", json!("later"))
    );
    assert_quiet(&mut fast, "the fast reader").await;
}

// ---------------------------------------------------------------------------
// 6. A gateway started while Redis is down.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn gateway_started_before_redis_becomes_ready_when_redis_comes_up() {
    let port = free_port();
    let gw = Gateway::start_with(
        on_redis(&format!("redis://127.0.0.1:{port}"))
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5"),
    )
    .await;
    assert_eq!(readyz(&gw).await, 503);
    // A socket connects meanwhile: it is welcomed and served.
    let mut early = connect(&gw).await;
    assert_eq!(early.welcome["channels"], json!(["/app/broadcast"]));
    let started = Instant::now();
    let res = gw.publish("/app/broadcast", json!("too early")).await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(started.elapsed() < Duration::from_secs(2));
    let r = early
        .request(json!({"type":"subscribe","channel":"/app/room/x","id":1}))
        .await;
    assert_eq!(r["code"], "broker_unavailable", "{r}");
    sleep(SHORT).await;
    assert_eq!(readyz(&gw).await, 503, "still no Redis");

    let redis = RedisServer::start_on(port).await;
    wait_readyz(&gw, 200, PATIENCE).await;
    let mut resp = redis.client().await;
    wait_numsub(&mut resp, "/app/broadcast", 1, Duration::from_secs(5)).await;
    assert_eq!(
        resp.numsub("/app/room/x").await,
        0,
        "a refused subscribe is not kept"
    );

    // The early socket learns it may have missed messages, then receives.
    assert_eq!(
        early.next_json().await,
        json!({"type":"gap","channels":["/app/broadcast"],"patterns":[],"reason":"broker_reconnected"})
    );
    let res = gw.publish("/app/broadcast", json!("on time")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert_eq!(
        early.next_json().await,
        message("/app/broadcast", json!("on time"))
    );
    let mut late = connect(&gw).await;
    assert_eq!(resp.publish("/app/broadcast", b"\"both\"").await, 1);
    for c in [&mut early, &mut late] {
        assert_eq!(
            c.next_json().await,
            message("/app/broadcast", json!("both"))
        );
        assert_quiet(c, "a socket after its delivery").await;
    }
}

#[tokio::test]
async fn a_socket_that_joined_before_the_first_redis_connection_misses_nothing_silently() {
    // Redis is frozen while the gateway starts: the gateway's first
    // connection is accepted by the kernel but not answered yet.
    let redis = RedisServer::start().await;
    redis.pause();
    let gw = Gateway::start_with(on_redis(&redis.url())).await;
    assert_eq!(readyz(&gw).await, 503);
    // A socket connects meanwhile: its welcome names /app/broadcast, but its
    // join cannot be done yet.
    let mut early = connect(&gw).await;
    assert_eq!(early.welcome["channels"], json!(["/app/broadcast"]));
    assert_eq!(readyz(&gw).await, 503);

    // Someone publishes on /app/broadcast while Redis is frozen; Redis
    // handles it as soon as it thaws.
    let port = redis.port;
    let publisher = tokio::spawn(async move {
        let mut r = Resp::connect(port).await.expect("connect");
        r.publish("/app/broadcast", b"\"while frozen\"").await
    });
    sleep(Duration::from_millis(200)).await;
    redis.resume();
    wait_readyz(&gw, 200, PATIENCE).await;
    let mut r = redis.client().await;
    wait_numsub(&mut r, "/app/broadcast", 1, Duration::from_secs(5)).await;
    let receivers = publisher.await.expect("publisher");

    // The socket either got that message or is told it may have missed
    // messages (as `Subscriber::join` promises for a join that fails).
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut frames = Vec::new();
    let told = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(f) = early.next_json_within(left).await else {
            break false;
        };
        let done = f == message("/app/broadcast", json!("while frozen"))
            || f == json!({"type":"gap","channels":["/app/broadcast"],"patterns":[],"reason":"broker_reconnected"});
        frames.push(f);
        if done {
            break true;
        }
    };
    assert!(
        told,
        "the message published after the socket's welcome (reaching {receivers} Redis \
         subscribers) was lost without a gap notice; the socket got {frames:?}; gateway output:\n{}",
        gw.logs()
    );

    // Afterwards it receives.
    let res = gw.publish("/app/broadcast", json!("later")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    read_until(&mut early, &mut frames, "the later message", |f| {
        f == &message("/app/broadcast", json!("later"))
    })
    .await;
}

// ---------------------------------------------------------------------------
// 7. No accepted subscription goes silent, whatever the order of events.
// ---------------------------------------------------------------------------

/// The value of the unlabelled metric `name` on the gateway's `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let res = http::get(gw.addr, "/metrics").await;
    res.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", res.body))
}

/// Reads frames until a `message` on `channel` with `data`, allowing `gap`
/// notices (returned) before it; anything else fails.
async fn expect_message_maybe_after_gap(
    c: &mut Client,
    channel: &str,
    data: Value,
    who: &str,
) -> Vec<Value> {
    let mut gaps = Vec::new();
    loop {
        let f = c.next_json().await;
        if f == message(channel, data.clone()) {
            return gaps;
        }
        assert_eq!(
            f["type"], "gap",
            "{who}: expected {data} on {channel}, got {f}"
        );
        gaps.push(f);
    }
}

#[tokio::test]
async fn a_socket_joining_while_only_the_publish_pool_is_down_gets_its_channel() {
    let redis = RedisServer::start().await;
    let gw =
        start_ready(on_redis(&redis.url()).env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5"))
            .await;
    let mut r = redis.client().await;
    // The subscription connection holds a channel (so it is of TYPE pubsub),
    // but not /app/broadcast.
    let mut holder = connect_to(&gw, "/app/room/keep").await;
    let ack = holder
        .request(json!({"type":"unsubscribe","channel":"/app/broadcast"}))
        .await;
    assert_eq!(ack["type"], "unsubscribed", "{ack}");
    wait_channel_gone(&mut r, "/app/broadcast", PATIENCE).await;
    // Redis takes no new connection, and the publish pool is killed: the
    // subscription connection (and this test's) stay up.
    assert_eq!(
        r.cmd(&["CONFIG", "SET", "maxclients", "1"]).await.as_str(),
        Some("OK")
    );
    let killed = r.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    assert!(killed.as_int() >= Some(1), "{killed:?}");
    wait_readyz(&gw, 503, PATIENCE).await;
    assert_eq!(
        r.numsub("/app/room/keep").await,
        1,
        "the subscription connection is up"
    );

    // A user connects now: its join on connect needs only the subscription
    // connection, which is up.
    let mut c = connect(&gw).await;
    assert_eq!(c.welcome["channels"], json!(["/app/broadcast"]));

    // Redis takes connections again; the pool comes back.
    assert_eq!(
        r.cmd(&["CONFIG", "SET", "maxclients", "10000"])
            .await
            .as_str(),
        Some("OK")
    );
    wait_readyz(&gw, 200, PATIENCE).await;
    // The channel is subscribed (before the fix: never, although ready).
    wait_numsub(&mut r, "/app/broadcast", 1, PATIENCE).await;
    assert_eq!(r.publish("/app/broadcast", b"\"hello\"").await, 1);
    expect_message_maybe_after_gap(&mut c, "/app/broadcast", json!("hello"), "the socket").await;
    assert_quiet(&mut c, "the socket").await;
}

#[tokio::test]
async fn a_join_refused_while_redis_is_frozen_is_made_later_and_the_socket_told() {
    // The subscription connection is up but Redis does not answer: the join
    // on connect times out. It is retried until done, then the socket gets
    // a gap notice; no reconnect is needed for that.
    let redis = RedisServer::start().await;
    let gw = start_ready(
        on_redis(&redis.url())
            // A join waits at most 0.5 s for Redis (and fred calls the
            // connection dead only after twice that).
            .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "0.5")
            // Only the retry may make it, not the self-check.
            .env("TIDINGS_REDIS__SELF_CHECK_INTERVAL_SECS", "0"),
    )
    .await;
    let mut r = redis.client().await;
    redis.pause();
    let pending = tokio::spawn({
        let url = gw.ws_url();
        async move {
            let mut c = Client::connect(&url).await;
            let pong = c.request(json!({"type":"ping","id":"settle"})).await;
            assert_eq!(pong, json!({"type":"pong","id":"settle"}));
            c
        }
    });
    // The join waits for Redis, then times out (0.5 s); the socket is
    // welcomed regardless.
    let mut c = pending.await.expect("connect");
    redis.resume();
    let gap = c.next_json().await;
    assert_eq!(
        gap,
        json!({"type":"gap","channels":["/app/broadcast"],"patterns":[],"reason":"broker_reconnected"}),
        "gateway output:\n{}",
        gw.logs()
    );
    wait_numsub(&mut r, "/app/broadcast", 1, PATIENCE).await;
    assert_eq!(r.publish("/app/broadcast", b"\"later\"").await, 1);
    assert_eq!(
        c.next_json().await,
        message("/app/broadcast", json!("later"))
    );
    wait_readyz(&gw, 200, PATIENCE).await;
}

/// Lets the gateway's Redis user use only `channels` (ACL `&` rules), and
/// the gateways' control channel (Redis closes a connection subscribed to
/// a channel its user may no longer use).
async fn allow_only(r: &mut Resp, channels: &[&str]) {
    let mut args = vec![
        "ACL",
        "SETUSER",
        "default",
        "resetchannels",
        "&tidings:control",
    ];
    let rules: Vec<String> = channels.iter().map(|c| format!("&{c}")).collect();
    args.extend(rules.iter().map(String::as_str));
    assert_eq!(r.cmd(&args).await.as_str(), Some("OK"));
}

#[tokio::test]
async fn a_refused_channel_fails_only_its_own_subscribe_in_a_batch() {
    let redis = RedisServer::start().await;
    let gw = start_ready(on_redis(&redis.url())).await;
    let mut r = redis.client().await;
    allow_only(&mut r, &["/app/broadcast", "/app/room/ok*"]).await;
    let mut blocker = connect(&gw).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&gw).await);
    }
    // Redis freezes while a first subscribe is under way, so that the next
    // three reach Redis together, as one SUBSCRIBE.
    redis.pause();
    blocker
        .send_json(json!({"type":"subscribe","channel":"/app/room/ok0","id":0}))
        .await;
    sleep(Duration::from_millis(100)).await;
    let channels = ["/app/room/ok1", "/app/room/no", "/app/room/ok2"];
    for (i, (c, ch)) in clients.iter_mut().zip(channels).enumerate() {
        c.send_json(json!({"type":"subscribe","channel":ch,"id":i + 1}))
            .await;
    }
    sleep(Duration::from_millis(200)).await;
    redis.resume();
    assert_eq!(
        blocker.next_json().await,
        json!({"type":"subscribed","channel":"/app/room/ok0","id":0})
    );
    let replies: Vec<Value> = {
        let mut v = Vec::new();
        for c in &mut clients {
            v.push(c.next_json().await);
        }
        v
    };
    assert_eq!(
        replies[0],
        json!({"type":"subscribed","channel":"/app/room/ok1","id":1}),
        "{replies:?}"
    );
    assert_eq!(
        (replies[1]["type"].as_str(), replies[1]["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{replies:?}; gateway output:\n{}",
        gw.logs()
    );
    assert_eq!(
        replies[2],
        json!({"type":"subscribed","channel":"/app/room/ok2","id":3}),
        "{replies:?}"
    );
    for (i, ch) in [(0, "/app/room/ok1"), (2, "/app/room/ok2")] {
        assert_eq!(r.publish(ch, b"\"in\"").await, 1);
        assert_eq!(clients[i].next_json().await, message(ch, json!("in")));
    }
    assert_eq!(r.numsub("/app/room/no").await, 0);
    wait_readyz(&gw, 200, PATIENCE).await;
}

#[tokio::test]
async fn a_refused_pattern_is_not_used_to_route_messages() {
    let redis = RedisServer::start().await;
    let mut r = redis.client().await;
    // PSUBSCRIBE checks the pattern literally: `/app/*/x` is allowed,
    // `/app/*` is refused.
    allow_only(&mut r, &["/app/broadcast", "/app/*/x"]).await;
    let gw = start_ready(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .toml(
                r#"
                [[routing.rules]]
                channel = "/app/*"
                join = true
                anonymous = true

                [[routing.rules]]
                channel = "/app/*/x"
                join = true
                anonymous = true
                "#,
            ),
    )
    .await;
    let mut c = connect(&gw).await;
    assert_eq!(c.welcome["patterns"], json!(["/app/*", "/app/*/x"]));
    wait_numpat(&mut r, 1, PATIENCE).await;
    // One pmessage, for the one pattern Redis holds: it must name it.
    assert_eq!(r.publish("/app/r/x", b"\"one\"").await, 1);
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":"/app/r/x","pattern":"/app/*/x","data":"one"})
    );
    assert_quiet(&mut c, "the socket").await;
}

#[tokio::test]
async fn a_channel_refused_after_a_reconnect_costs_only_itself_and_is_retried() {
    let redis = RedisServer::start().await;
    let gw = start_ready(
        on_redis(&redis.url())
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5")
            .env("TIDINGS_REDIS__SELF_CHECK_INTERVAL_SECS", "0.5"),
    )
    .await;
    let mut r = redis.client().await;
    let mut a = connect_to(&gw, "/app/room/a").await;
    let mut idle = connect(&gw).await;
    // /app/room/a is no longer allowed: Redis drops the subscription
    // connection that holds it, and refuses it when the gateway comes back.
    allow_only(&mut r, &["/app/broadcast"]).await;
    let _ = r.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    // Every socket hears of the reconnect; the gateway is ready again.
    for c in [&mut a, &mut idle] {
        let gap = c.next_json().await;
        assert_eq!(gap["type"], "gap", "{gap}");
    }
    wait_readyz(&gw, 200, PATIENCE).await;
    wait_numsub(&mut r, "/app/broadcast", 1, PATIENCE).await;
    assert_eq!(r.publish("/app/broadcast", b"\"still\"").await, 1);
    // (Redis may drop the connection itself on the ACL change, before the
    // kill: then there were two reconnects, and two gap notices.)
    for c in [&mut a, &mut idle] {
        expect_message_maybe_after_gap(c, "/app/broadcast", json!("still"), "a socket").await;
    }
    assert_eq!(r.numsub("/app/room/a").await, 0);
    // Allowed again: the self-check subscribes it, and a is told.
    assert_eq!(
        r.cmd(&["ACL", "SETUSER", "default", "allchannels"])
            .await
            .as_str(),
        Some("OK")
    );
    let gap = a.next_json().await;
    assert_eq!(
        gap,
        json!({"type":"gap","channels":["/app/room/a"],"patterns":[],"reason":"broker_reconnected"})
    );
    wait_numsub(&mut r, "/app/room/a", 1, PATIENCE).await;
    assert_eq!(r.publish("/app/room/a", b"\"back\"").await, 1);
    assert_eq!(a.next_json().await, message("/app/room/a", json!("back")));
    assert_eq!(readyz(&gw).await, 200);
}

#[tokio::test]
async fn the_self_check_repairs_a_subscription_redis_lost_behind_the_gateways_back() {
    let redis = RedisServer::start().await;
    let tap = tidings_e2e::redis::Tap::start(redis.port).await;
    let gw =
        start_ready(on_redis(&tap.url()).env("TIDINGS_REDIS__SELF_CHECK_INTERVAL_SECS", "0.5"))
            .await;
    let mut r = redis.client().await;
    let mut c = connect(&gw).await;
    wait_numsub(&mut r, "/app/broadcast", 1, PATIENCE).await;
    assert_eq!(
        metric(&gw, "tidings_bridge_selfcheck_repairs_total").await,
        0.0
    );
    // Redis drops the subscription; the gateway is not told.
    assert_eq!(
        tap.inject_into_subscriber(&["UNSUBSCRIBE", "/app/broadcast"])
            .await,
        1
    );
    // The self-check finds it, subscribes again, tells the socket, counts it.
    let gap = c.next_json().await;
    assert_eq!(
        gap,
        json!({"type":"gap","channels":["/app/broadcast"],"patterns":[],"reason":"broker_reconnected"}),
        "gateway output:\n{}",
        gw.logs()
    );
    wait_numsub(&mut r, "/app/broadcast", 1, PATIENCE).await;
    assert_eq!(
        metric(&gw, "tidings_bridge_selfcheck_repairs_total").await,
        1.0
    );
    assert_eq!(r.publish("/app/broadcast", b"\"again\"").await, 1);
    assert_eq!(
        c.next_json().await,
        message("/app/broadcast", json!("again"))
    );
    assert_quiet(&mut c, "the socket").await;
    assert_eq!(
        metric(&gw, "tidings_bridge_selfcheck_repairs_total").await,
        1.0
    );
}
