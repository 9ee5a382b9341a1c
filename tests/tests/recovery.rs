//! Recovery: nothing lost on reconnect. The real binary, real Redis (killed
//! and restarted, with and without persistence), real sockets, publishers
//! using the documented one-command publish (`FCALL tidings_publish`).

use std::{collections::HashMap, time::Duration};

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    percent_encode,
    redis::{RedisServer, Reply},
    ws::Client,
    Gateway, GatewayOptions,
};

/// User 42's notification channel: joined on connect, history 100 / 600 s.
const NOTES: &str = "/app/user/42/notifications";

/// The rules of these tests: the defaults, plus rooms anyone may subscribe
/// to (history 50) and a feed with a short history (5).
const RULES: &str = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true
history = { size = 100, ttl_secs = 600 }

[[routing.rules]]
channel = "/room/*"
subscribe = true
anonymous = true
history = { size = 50, ttl_secs = 600 }

[[routing.rules]]
channel = "/feed"
subscribe = true
anonymous = true
history = { size = 5, ttl_secs = 600 }

[[routing.rules]]
channel = "/secret"
join = true
anonymous = false
history = { size = 5, ttl_secs = 600 }
"#;

fn options(backend: &Backend, redis: Option<&RedisServer>) -> GatewayOptions {
    let mut opts = GatewayOptions::default()
        .toml(RULES)
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", backend.url())
        .env("TIDINGS_IDENTITY__ANONYMOUS", "allow");
    if let Some(redis) = redis {
        opts = opts.env("TIDINGS_REDIS_URL", redis.url());
    }
    opts
}

async fn gateway(backend: &Backend, redis: Option<&RedisServer>) -> Gateway {
    let gw = Gateway::start_with(options(backend, redis)).await;
    gw.wait_ready().await;
    gw
}

async fn backend() -> Backend {
    Backend::start(Mode::users([("u42", json!({"user": "42"}))])).await
}

/// Connects as user 42 (or anonymously), sending `since` positions.
async fn connect(gw: &Gateway, user: bool, since: Option<&Value>) -> Client {
    let mut url = gw.ws_url();
    if let Some(since) = since {
        url = format!("{url}?since={}", percent_encode(&since.to_string()));
    }
    let headers: &[(&str, &str)] = if user {
        &[("Cookie", "sessionid=u42")]
    } else {
        &[]
    };
    match Client::connect_with(&url, headers).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade refused: {} {:?}", r.status, r.body),
    }
}

/// The one-command publish with history, as a backend sends it (retrying
/// while a restarted Redis does not have the function yet: the gateway
/// loads it again when it reconnects).
async fn fcall(redis: &RedisServer, channel: &str, size: u64, data: &Value) -> (u64, String) {
    let mut c = redis.client().await;
    let payload = data.to_string();
    let deadline = tokio::time::Instant::now() + tidings_e2e::PATIENCE;
    loop {
        match c.fcall_publish(channel, &payload, size, 600).await {
            Ok(position) => return position,
            Err(Reply::Error(e)) if e.contains("Function not found") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the gateway never loaded the function again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected FCALL answer {other:?}"),
        }
    }
}

/// Publishes through the HTTP API: (offset, epoch).
async fn api(gw: &Gateway, channel: &str, data: Value) -> (u64, String) {
    let r = gw.publish(channel, data).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    (
        v["offset"].as_u64().expect("offset"),
        v["epoch"].as_str().expect("epoch").to_owned(),
    )
}

/// Reads frames until `n` messages on `channel` came; returns their data
/// `n` fields and checks offsets are consecutive from `first`.
async fn messages(c: &mut Client, channel: &str, first: u64, n: u64) -> Vec<Value> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let f = c.next_json().await;
        if f["type"] == "message" && f["channel"] == channel {
            assert_eq!(
                f["offset"].as_u64(),
                Some(first + got.len() as u64),
                "offsets in order, none twice: {f}"
            );
            got.push(f["data"].clone());
        } else if f["type"] == "gap" {
            // Gaps of other channels (a Redis restart tells the broadcast,
            // which keeps no history) are not this channel's business.
            let named = f["channels"].as_array().unwrap();
            assert!(!named.contains(&json!(channel)), "a gap on {channel}: {f}");
        } else if f["type"] != "message" {
            panic!("unexpected frame {f}");
        }
    }
    got
}

/// Nothing more arrives for a moment.
async fn quiet(c: &mut Client) {
    if let Some(f) = c.next_json_within(Duration::from_millis(300)).await {
        panic!("unexpected frame {f}");
    }
}

/// Subscribing with a position replays what was missed, then the live
/// stream, in memory and on Redis; `last` replays the last value; the
/// position in `subscribed` is where the client is.
async fn subscribe_with_a_position(gw: &Gateway) {
    let mut c = connect(gw, false, None).await;
    assert_eq!(c.welcome["recovery"], true, "{}", c.welcome);
    c.send_json(json!({"type":"subscribe","channel":"/room/a","id":1}))
        .await;
    let ack = c.next_json().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["offset"], 0, "a new channel starts at 0: {ack}");
    assert!(ack.get("recovered").is_none(), "no position asked: {ack}");
    let epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=3 {
        let (o, e) = api(gw, "/room/a", json!({ "n": n })).await;
        assert_eq!((o, e.as_str()), (n, epoch.as_str()));
    }
    assert_eq!(
        messages(&mut c, "/room/a", 1, 3).await,
        [json!({"n":1}), json!({"n":2}), json!({"n":3})]
    );
    c.close().await;
    for n in 4..=6 {
        api(gw, "/room/a", json!({ "n": n })).await;
    }
    let mut c = connect(gw, false, None).await;
    c.send_json(json!({"type":"subscribe","channel":"/room/a","offset":3,"epoch":epoch,"id":2}))
        .await;
    let ack = c.next_json().await;
    assert_eq!(
        ack,
        json!({"type":"subscribed","channel":"/room/a","offset":6,"epoch":epoch,"recovered":true,"id":2})
    );
    assert_eq!(
        messages(&mut c, "/room/a", 4, 3).await,
        [json!({"n":4}), json!({"n":5}), json!({"n":6})]
    );
    api(gw, "/room/a", json!({ "n": 7 })).await;
    assert_eq!(messages(&mut c, "/room/a", 7, 1).await, [json!({"n":7})]);
    quiet(&mut c).await;

    // The last value.
    let mut d = connect(gw, false, None).await;
    d.send_json(json!({"type":"subscribe","channel":"/room/a","last":true}))
        .await;
    let ack = d.next_json().await;
    assert_eq!(ack["offset"], 7, "{ack}");
    assert_eq!(messages(&mut d, "/room/a", 7, 1).await, [json!({"n":7})]);
    quiet(&mut d).await;
}

#[tokio::test]
async fn subscribe_with_a_position_replays_then_goes_live_in_process() {
    let b = backend().await;
    let gw = gateway(&b, None).await;
    subscribe_with_a_position(&gw).await;
}

#[tokio::test]
async fn subscribe_with_a_position_replays_then_goes_live_on_redis() {
    let b = backend().await;
    let redis = RedisServer::start().await;
    let gw = gateway(&b, Some(&redis)).await;
    subscribe_with_a_position(&gw).await;
}

/// Positions from another epoch, from the future, beyond what is kept, or
/// malformed get a clear answer and never a wrong replay; a position on a
/// channel the socket may not subscribe to is refused like a subscribe.
#[tokio::test]
async fn bad_positions_get_a_clear_answer_and_never_a_wrong_replay() {
    let b = backend().await;
    let redis = RedisServer::start().await;
    let gw = gateway(&b, Some(&redis)).await;
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = api(&gw, "/feed", json!(n)).await.1;
    }
    let mut c = connect(&gw, false, None).await;
    let ask = |offset: Value, e: Value, id: u32| json!({"type":"subscribe","channel":"/feed","offset":offset,"epoch":e,"id":id});
    // Another epoch.
    c.send_json(ask(json!(3), json!("otherepoch"), 1)).await;
    let r = c.next_json().await;
    assert_eq!(
        (
            &r["recovered"],
            &r["reason"],
            &r["offset"],
            r["epoch"].as_str()
        ),
        (
            &json!(false),
            &json!("epoch_changed"),
            &json!(10),
            Some(epoch.as_str())
        ),
        "{r}"
    );
    // From the future.
    c.send_json(ask(json!(99), json!(epoch), 2)).await;
    let r = c.next_json().await;
    assert_eq!(
        (&r["recovered"], &r["reason"], &r["offset"]),
        (&json!(false), &json!("position_ahead"), &json!(10)),
        "{r}"
    );
    // Trimmed: the feed keeps 5; 8 were missed.
    c.send_json(ask(json!(2), json!(epoch), 3)).await;
    let r = c.next_json().await;
    assert_eq!(
        (&r["recovered"], &r["reason"]),
        (&json!(false), &json!("too_many")),
        "{r}"
    );
    // Within what is kept: replayed.
    c.send_json(ask(json!(7), json!(epoch), 4)).await;
    let r = c.next_json().await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        messages(&mut c, "/feed", 8, 3).await,
        [json!(8), json!(9), json!(10)]
    );
    // Malformed.
    for (offset, e) in [
        (json!(1), json!("bad epoch!")),
        (json!(-1), json!(epoch)),
        (json!("1"), json!(epoch)),
    ] {
        c.send_json(ask(offset, e, 5)).await;
        let r = c.next_json().await;
        assert_eq!(
            (&r["type"], &r["code"]),
            (&json!("error"), &json!("bad_request")),
            "{r}"
        );
    }
    // A channel the socket may not subscribe to.
    c.send_json(json!({"type":"subscribe","channel":"/secret","offset":1,"epoch":epoch,"id":6}))
        .await;
    let r = c.next_json().await;
    assert_eq!(r["code"], "forbidden", "{r}");
    quiet(&mut c).await;
    // A malformed `since` on connect is refused before anything else.
    let url = format!(
        "{}?since={}",
        gw.ws_url(),
        percent_encode("{\"/feed\":[1]}")
    );
    let refused = Client::connect_with(&url, &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("since"), "{}", refused.body);
    // The socket above still works.
    let pong = c.request(json!({"type":"ping","id":9})).await;
    assert_eq!(pong["type"], "pong");
}

/// A reconnecting client sends its positions for the channels it joins on
/// connect (`since`); the welcome says which were recovered and the
/// replay follows it. Positions for channels it does not join are ignored.
#[tokio::test]
async fn joined_channels_recover_on_connect() {
    let b = backend().await;
    let redis = RedisServer::start().await;
    let gw = gateway(&b, Some(&redis)).await;
    let mut c = connect(&gw, true, None).await;
    let at = &c.welcome["positions"][NOTES];
    assert_eq!(at["offset"], 0, "{}", c.welcome);
    let epoch = at["epoch"].as_str().expect("epoch").to_owned();
    assert!(c.welcome["positions"].get("/app/broadcast").is_none());
    api(&gw, NOTES, json!("one")).await;
    messages(&mut c, NOTES, 1, 1).await;
    drop(c);
    for n in 2..=4 {
        fcall(&redis, NOTES, 100, &json!(n)).await;
    }
    let since =
        json!({ NOTES: {"offset": 1, "epoch": epoch}, "/room/x": {"offset": 1, "epoch": epoch} });
    let mut c = connect(&gw, true, Some(&since)).await;
    assert_eq!(
        c.welcome["positions"][NOTES],
        json!({"offset":4,"epoch":epoch,"recovered":true}),
        "{}",
        c.welcome
    );
    assert_eq!(
        messages(&mut c, NOTES, 2, 3).await,
        [json!(2), json!(3), json!(4)]
    );
    quiet(&mut c).await;
    // Another epoch on connect: told, not replayed.
    let since = json!({ NOTES: {"offset": 1, "epoch": "gone"} });
    let mut c = connect(&gw, true, Some(&since)).await;
    assert_eq!(
        c.welcome["positions"][NOTES],
        json!({"offset":4,"epoch":epoch,"recovered":false,"reason":"epoch_changed"})
    );
    quiet(&mut c).await;
}

/// What a client has seen, per channel: the last position and every data
/// value in order.
#[derive(Default)]
struct Seen {
    at: HashMap<String, (u64, String)>,
    data: HashMap<String, Vec<i64>>,
}

impl Seen {
    /// Takes one frame; panics on a duplicate, a hole or a gap notice.
    fn take(&mut self, f: &Value) {
        match f["type"].as_str() {
            Some("message") => {
                let ch = f["channel"].as_str().unwrap().to_owned();
                let offset = f["offset"].as_u64().expect("offset");
                let epoch = f["epoch"].as_str().unwrap().to_owned();
                if let Some((last, e)) = self.at.get(&ch) {
                    assert_eq!(e, &epoch, "one epoch: {f}");
                    assert_eq!(offset, last + 1, "no hole, no duplicate: {f}");
                }
                self.at.insert(ch.clone(), (offset, epoch));
                self.data
                    .entry(ch)
                    .or_default()
                    .push(f["data"].as_i64().unwrap());
            }
            Some("subscribed") => {
                assert_ne!(f["recovered"], false, "{f}");
            }
            _ => panic!("unexpected frame {f}"),
        }
    }

    fn since(&self, ch: &str) -> Option<Value> {
        self.at
            .get(ch)
            .map(|(o, e)| json!({"offset": o, "epoch": e}))
    }
}

/// A client with positions reconnects after its gateway is SIGKILLed and a
/// new one started while a backend keeps publishing with the one-command
/// publish: it gets every publication in order, none twice, on its joined
/// channel (positions on connect) and its subscribed one (on subscribe).
#[tokio::test]
async fn nothing_is_lost_across_a_gateway_kill_and_restart() {
    let b = backend().await;
    let redis = RedisServer::start().await;
    let gw = gateway(&b, Some(&redis)).await;
    let mut seen = Seen::default();
    let mut c = connect(&gw, true, None).await;
    let p = &c.welcome["positions"][NOTES];
    seen.at.insert(
        NOTES.into(),
        (
            p["offset"].as_u64().unwrap(),
            p["epoch"].as_str().unwrap().into(),
        ),
    );
    c.send_json(json!({"type":"subscribe","channel":"/room/k"}))
        .await;
    let ack = c.next_json().await;
    seen.at.insert(
        "/room/k".into(),
        (
            ack["offset"].as_u64().unwrap(),
            ack["epoch"].as_str().unwrap().into(),
        ),
    );
    const N: i64 = 120;
    let url = redis.url();
    let publisher = {
        let redis_port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        tokio::spawn(async move {
            let mut r = tidings_e2e::redis::Resp::connect(redis_port).await.unwrap();
            for n in 1..=N {
                for (ch, size) in [(NOTES, 100), ("/room/k", 50)] {
                    r.fcall_publish(ch, &n.to_string(), size, 600)
                        .await
                        .unwrap_or_else(|reply| panic!("FCALL: {reply:?}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Read a while, then kill the gateway under the client.
    while seen.data.get(NOTES).map_or(0, Vec::len) < 20 {
        let f = c.next_json().await;
        seen.take(&f);
    }
    drop(gw);
    while let Ok(f) = c.next_or_end(Duration::from_secs(10)).await {
        seen.take(&f);
    }
    let gw = gateway(&b, Some(&redis)).await;
    let since = json!({ NOTES: seen.since(NOTES).unwrap() });
    let mut c = connect(&gw, true, Some(&since)).await;
    assert_eq!(
        c.welcome["positions"][NOTES]["recovered"], true,
        "{}",
        c.welcome
    );
    let room = seen.since("/room/k").unwrap();
    c.send_json(json!({"type":"subscribe","channel":"/room/k","offset":room["offset"],"epoch":room["epoch"]}))
        .await;
    publisher.await.unwrap();
    while seen.data.get(NOTES).map_or(0, Vec::len) < N as usize
        || seen.data.get("/room/k").map_or(0, Vec::len) < N as usize
    {
        let f = c.next_json().await;
        seen.take(&f);
    }
    let all: Vec<i64> = (1..=N).collect();
    assert_eq!(seen.data[NOTES], all);
    assert_eq!(seen.data["/room/k"], all);
    quiet(&mut c).await;
}

/// Redis restarts under connected sockets. With persistence (AOF), what was
/// published while the gateway's subscription was down is replayed: no
/// gap notice, nothing twice. Without, the epoch changes and the client is
/// told plainly (`gap`, reason `not_recovered`), then follows the new epoch.
async fn redis_restart(persistent: bool) {
    let b = backend().await;
    let mut redis = if persistent {
        RedisServer::start_persistent().await
    } else {
        RedisServer::start().await
    };
    let gw = gateway(&b, Some(&redis)).await;
    let mut c = connect(&gw, true, None).await;
    let epoch = c.welcome["positions"][NOTES]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=3 {
        fcall(&redis, NOTES, 100, &json!(n)).await;
    }
    messages(&mut c, NOTES, 1, 3).await;
    redis.restart().await;
    // Published at once, before the gateway's subscriber is back: these
    // reach nobody live.
    let mut positions = Vec::new();
    for n in 4..=6 {
        positions.push(fcall(&redis, NOTES, 100, &json!(n)).await);
    }
    if persistent {
        assert_eq!(positions[0], (4, epoch.clone()), "AOF kept the stream");
        // Whatever came live or was replayed: 4, 5, 6 once each, in order.
        assert_eq!(
            messages(&mut c, NOTES, 4, 3).await,
            [json!(4), json!(5), json!(6)]
        );
        gw.wait_ready().await;
        fcall(&redis, NOTES, 100, &json!(7)).await;
        assert_eq!(messages(&mut c, NOTES, 7, 1).await, [json!(7)]);
        quiet(&mut c).await;
    } else {
        let new_epoch = positions[0].1.clone();
        assert_ne!(new_epoch, epoch, "a lost stream starts a new epoch");
        assert_eq!(positions[0].0, 1);
        // Told, once, for the history channel; the broadcast (no history)
        // gets the usual gap notice.
        let mut told = false;
        let mut broadcast_gap = false;
        while !(told && broadcast_gap) {
            let f = c.next_json().await;
            match (f["type"].as_str(), f["reason"].as_str()) {
                (Some("gap"), Some("not_recovered")) => {
                    // The notes (and /secret, joined with history, same
                    // fate; they may be restored in separate batches).
                    let named = f["channels"].as_array().unwrap();
                    assert!(named.iter().all(|c| c == NOTES || c == "/secret"), "{f}");
                    told |= named.contains(&json!(NOTES));
                }
                (Some("gap"), Some(_)) => {
                    assert_eq!(f["channels"], json!(["/app/broadcast"]), "{f}");
                    broadcast_gap = true;
                }
                (Some("message"), _) => {
                    // Live messages of the new epoch may arrive first.
                    assert_eq!(f["epoch"], new_epoch.as_str(), "{f}");
                }
                _ => panic!("unexpected frame {f}"),
            }
        }
        gw.wait_ready().await;
        let (o, e) = fcall(&redis, NOTES, 100, &json!(7)).await;
        assert_eq!((o, e.as_str()), (4, new_epoch.as_str()));
        loop {
            let f = c.next_json().await;
            if f["type"] == "gap" {
                // /secret's own, restored in a later batch.
                assert_eq!(f["channels"], json!(["/secret"]), "{f}");
                continue;
            }
            assert_eq!(f["type"], "message", "{f}");
            assert_eq!(f["epoch"], new_epoch.as_str(), "{f}");
            if f["offset"] == 4 {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_redis_restart_with_persistence_loses_nothing() {
    redis_restart(true).await;
}

#[tokio::test]
async fn a_redis_restart_without_persistence_says_not_recovered_and_starts_a_new_epoch() {
    redis_restart(false).await;
}

/// Publishers through two gateways' HTTP APIs and `redis-cli` with the
/// one-command publish, at once: every client, on either gateway, sees the
/// same single order.
#[tokio::test]
async fn concurrent_publishers_produce_one_order_every_client_sees() {
    let b = backend().await;
    let redis = RedisServer::start().await;
    let gw1 = gateway(&b, Some(&redis)).await;
    let gw2 = gateway(&b, Some(&redis)).await;
    let mut clients = Vec::new();
    for gw in [&gw1, &gw2, &gw1, &gw2] {
        let mut c = connect(gw, false, None).await;
        c.subscribe("/room/order").await;
        clients.push(c);
    }
    const EACH: i64 = 40;
    let mut tasks = Vec::new();
    for (k, addr) in [(0i64, gw1.addr), (1, gw2.addr)] {
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                let body = json!({"channel":"/room/order","data": k * 1000 + n}).to_string();
                let r = tidings_e2e::http::request(
                    addr,
                    "POST",
                    "/api/publish",
                    &[("Content-Type".into(), "application/json".into())],
                    body.as_bytes(),
                )
                .await;
                assert_eq!(r.status, 202, "{}", r.body);
            }
        }));
    }
    // The third publisher is `redis-cli` itself, with the documented
    // one-command publish.
    let port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    tasks.push(tokio::spawn(async move {
        for n in 0..EACH {
            let v = (2000 + n).to_string();
            let out = tokio::process::Command::new("redis-cli")
                .args([
                    "-p",
                    &port.to_string(),
                    "FCALL",
                    "tidings_publish",
                    "1",
                    "/room/order",
                    &v,
                    "50",
                    "600",
                ])
                .output()
                .await
                .expect("redis-cli must be installed");
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains("ERR"), "{text}");
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let got = messages(c, "/room/order", 1, 3 * EACH as u64).await;
        orders.push(got);
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0], "one order for everyone");
    }
    // Each publisher's own messages in its own order.
    for k in 0..3 {
        let mine: Vec<i64> = orders[0]
            .iter()
            .map(|v| v.as_i64().unwrap())
            .filter(|v| v / 1000 == k)
            .collect();
        assert_eq!(mine, (0..EACH).map(|n| k * 1000 + n).collect::<Vec<_>>());
    }
}

/// Two gateways on one Redis behind the real nginx site from deploy/ (its
/// upstream listing both). One is drained with SIGTERM mid-stream: its
/// clients are closed with 1012, reconnect through nginx to the other with
/// their positions, and every client ends with every publication once, in
/// order.
#[tokio::test]
async fn clients_of_a_drained_gateway_recover_on_the_other_behind_nginx() {
    use tidings_e2e::nginx::{self, Nginx, SitePorts};
    nginx::binary();
    let b = backend().await;
    let redis = RedisServer::start().await;
    let opts = options(&b, Some(&redis))
        .env("TIDINGS_SHUTDOWN__DRAIN_SPREAD_SECS", "0.5")
        .env("TIDINGS_SHUTDOWN__GRACE_SECS", "3");
    let gw1 = Gateway::start_with(opts.clone()).await;
    let gw2 = Gateway::start_with(opts).await;
    gw1.wait_ready().await;
    gw2.wait_ready().await;
    let port = tidings_e2e::redis::free_port();
    let static_root = std::env::temp_dir().join(format!("tidings-static-{port}/"));
    std::fs::create_dir_all(&static_root).unwrap();
    let site = nginx::adapt_site(
        &nginx::shipped_site(),
        &SitePorts {
            listen: port,
            django: b.addr.port(),
            gateway: gw1.addr.port(),
            static_root: static_root.clone(),
        },
    );
    // The upstream lists both instances, as the site file says it may.
    let one = format!("server 127.0.0.1:{};", gw1.addr.port());
    let site = site.replace(
        &one,
        &format!("{one}\n    server 127.0.0.1:{};", gw2.addr.port()),
    );
    let front = Nginx::start(&site, port).await;
    let url = format!("ws://{}/ws", front.addr);

    struct Peer {
        c: Client,
        seen: Seen,
    }
    let mut peers = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect_with(&url, &[])
            .await
            .expect("through nginx");
        c.send_json(json!({"type":"subscribe","channel":"/room/drain"}))
            .await;
        let ack = c.next_json().await;
        let mut seen = Seen::default();
        seen.at.insert(
            "/room/drain".into(),
            (
                ack["offset"].as_u64().unwrap(),
                ack["epoch"].as_str().unwrap().into(),
            ),
        );
        peers.push(Peer { c, seen });
    }
    const N: i64 = 100;
    let rport: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let publisher = tokio::spawn(async move {
        let mut r = tidings_e2e::redis::Resp::connect(rport).await.unwrap();
        for n in 1..=N {
            let v = n.to_string();
            r.fcall_publish("/room/drain", &v, 50, 600)
                .await
                .unwrap_or_else(|reply| panic!("FCALL: {reply:?}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Each client on its own task: read; when drained, reconnect through
    // nginx (which may first pick the draining one: 503, retried) and
    // recover from the last position; read to the end.
    let mut tasks = Vec::new();
    for mut p in peers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut moved = false;
            while p.seen.data.get("/room/drain").map_or(0, Vec::len) < N as usize {
                match p.c.next_or_end(Duration::from_secs(10)).await {
                    Ok(f) => p.seen.take(&f),
                    Err(code) => {
                        assert_eq!(code, Some(1012), "closed by the drain");
                        assert!(!moved, "closed twice");
                        moved = true;
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                        p.c = loop {
                            match Client::connect_with(&url, &[]).await {
                                Ok(c) => break c,
                                Err(r) => {
                                    assert!(tokio::time::Instant::now() < deadline, "no gateway: {r:?}");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        };
                        let at = p.seen.since("/room/drain").unwrap();
                        p.c.send_json(json!({"type":"subscribe","channel":"/room/drain","offset":at["offset"],"epoch":at["epoch"]}))
                            .await;
                    }
                }
            }
            (moved, p.seen.data.remove("/room/drain").unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // nginx keeps each client address on one instance (all of ours are
    // 127.0.0.1): drain the one the clients are on.
    let open = |addr| async move {
        let m = tidings_e2e::http::get(addr, "/metrics").await.body;
        m.lines()
            .find_map(|l| l.strip_prefix("tidings_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (drained, other) = if open(gw1.addr).await > 0 {
        (&gw1, &gw2)
    } else {
        (&gw2, &gw1)
    };
    assert!(open(drained.addr).await > 0, "the clients are on a gateway");
    drained.sigterm();
    publisher.await.unwrap();
    let all: Vec<i64> = (1..=N).collect();
    let mut moved = 0;
    for t in tasks {
        let (m, data) = t.await.unwrap();
        moved += usize::from(m);
        assert_eq!(data, all, "every publication once, in order");
    }
    assert!(moved > 0, "the drained gateway had clients");
    let _ = std::fs::remove_dir_all(&static_root);
    // The drained one is gone: whoever moved, moved to the other.
    assert!(http_ready(other.addr).await, "the other still serves");
}

async fn http_ready(addr: std::net::SocketAddr) -> bool {
    tidings_e2e::http::get(addr, "/readyz").await.status == 200
}
