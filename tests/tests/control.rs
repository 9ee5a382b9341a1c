//! The backend in control, through the real binary: three gateways on one
//! real Redis, users identified by a real cookie-proxy backend. A command
//! over HTTP (to any gateway) or PUBLISHed on the control channel acts on
//! the user's sockets on every gateway; a user's connections are listed
//! across gateways (a SIGKILLed gateway's are gone at once, the gateway
//! named missing until it expires); a refresh
//! forgets the cached identity; webhooks arrive signed.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Call, Mode},
    http,
    redis::RedisServer,
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{sleep, Instant};

/// How long "nothing arrives" is watched for.
const SHORT: Duration = Duration::from_millis(300);

const KEY: &str = "control-test-api-key-0123456789";
const WEBHOOK_SECRET: &str = "control-webhook-secret-0123";

const RULES: &str = r#"
[[routing.rules]]
channel = "/app/room/*"
subscribe = true
presence = true

[[routing.rules]]
channel = "/app/lobby/*"
subscribe = true
presence = "counts"

[[routing.rules]]
channel = "/app/lobby/2"
publish = true
"#;

fn users() -> Mode {
    Mode::users([
        ("anna-cookie", json!({"user": "anna", "groups": ["g7"]})),
        ("bob-cookie", json!({"user": "bob"})),
        (
            "carol-cookie",
            json!({"user": "carol", "attributes": {"name": "Carol"}}),
        ),
    ])
}

fn options(redis: &RedisServer, backend: &Backend) -> GatewayOptions {
    GatewayOptions::default()
        .toml(RULES)
        .env("TIDINGS_REDIS_URL", redis.url())
        .env("TIDINGS_API_KEY", KEY)
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", backend.url())
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__CACHE_TTL_SECS", "60")
        .env("TIDINGS_CONTROL__PRESENCE_TTL_SECS", "2")
        .env("TIDINGS_CONTROL__PRESENCE_REFRESH_SECS", "1")
        .env("TIDINGS_CONTROL__SURVEY_TIMEOUT_MS", "400")
}

async fn start(opts: GatewayOptions) -> Gateway {
    let gw = Gateway::start_with(opts).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if http::get(gw.addr, "/readyz").await.status == 200 {
            return gw;
        }
        assert!(Instant::now() < deadline, "not ready: {}", gw.logs());
        sleep(Duration::from_millis(20)).await;
    }
}

/// Connects as the user of `cookie` and waits until the session is
/// settled (its first request is answered).
async fn connect(gw: &Gateway, cookie: &str) -> Client {
    let mut c = Client::connect_with(&gw.ws_url(), &[("Cookie", &format!("session={cookie}"))])
        .await
        .expect("connect");
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong["type"], "pong");
    c
}

async fn api(gw: &Gateway, method: &str, path: &str, body: Value) -> http::Response {
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Authorization".to_owned(), format!("Bearer {KEY}")),
    ];
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http::request(gw.addr, method, path, &headers, body.as_bytes()).await
}

async fn connections(gw: &Gateway, user: &str) -> Vec<Value> {
    let v = survey(gw, user).await;
    v["connections"].as_array().unwrap().clone()
}

/// The whole answer of `GET /api/connections?user=`.
async fn survey(gw: &Gateway, user: &str) -> Value {
    let r = api(
        gw,
        "GET",
        &format!("/api/connections?user={user}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Gateways `gw0`, `gw1` and `gw2`.
async fn three_gateways(redis: &RedisServer, backend: &Backend) -> [Gateway; 3] {
    let gw = |id: &str| options(redis, backend).env("TIDINGS_CONTROL__GATEWAY_ID", id);
    [
        start(gw("gw0")).await,
        start(gw("gw1")).await,
        start(gw("gw2")).await,
    ]
}

#[tokio::test]
async fn a_disconnect_over_http_or_the_control_channel_closes_the_users_sockets_on_every_gateway() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gws = three_gateways(&redis, &backend).await;
    let mut annas = Vec::new();
    for gw in &gws {
        annas.push(connect(gw, "anna-cookie").await);
    }
    let mut bob = connect(&gws[0], "bob-cookie").await;

    // Over HTTP, to one gateway: every gateway closes anna's sockets.
    let r = api(
        &gws[1],
        "POST",
        "/api/disconnect",
        json!({"user": "anna", "code": 4003, "reason": "password changed"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for a in &mut annas {
        assert_eq!(a.closed_with(PATIENCE).await, Some(4003));
    }
    // Bob is untouched.
    let pong = bob.request(json!({"type":"ping","id":1})).await;
    assert_eq!(pong["type"], "pong");

    // Over the control channel, straight from Redis.
    let mut annas = Vec::new();
    for gw in &gws {
        annas.push(connect(gw, "anna-cookie").await);
    }
    let mut r = redis.client().await;
    let receivers = r
        .publish(
            "tidings:control",
            br#"{"op":"disconnect","user":"anna","reason":"bye"}"#,
        )
        .await;
    assert_eq!(receivers, 3, "every gateway listens on the control channel");
    for a in &mut annas {
        assert_eq!(a.closed_with(PATIENCE).await, Some(4002));
    }
    let pong = bob.request(json!({"type":"ping","id":2})).await;
    assert_eq!(pong["type"], "pong");

    // A malformed command harms no one.
    r.publish("tidings:control", b"{not json").await;
    r.publish("tidings:control", br#"{"op":"disconnect"}"#)
        .await;
    let pong = bob.request(json!({"type":"ping","id":3})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn server_side_subscriptions_start_and_stop_deliveries_on_every_gateway() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gws = three_gateways(&redis, &backend).await;
    let mut a0 = connect(&gws[0], "anna-cookie").await;
    let mut a2 = connect(&gws[2], "anna-cookie").await;
    let mut bob = connect(&gws[1], "bob-cookie").await;

    let r = api(
        &gws[1],
        "POST",
        "/api/subscribe",
        json!({"user": "anna", "channel": "/app/group/7"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for a in [&mut a0, &mut a2] {
        let f = a.next_json().await;
        assert_eq!(f, json!({"type":"subscribed","channel":"/app/group/7"}));
    }
    // A channel no rule lets anna subscribe to, yet she gets it.
    let res = gws[1]
        .publish_with_key("/app/group/7", json!({"n": 1}), Some(KEY))
        .await;
    assert_eq!(res.status, 202);
    for a in [&mut a0, &mut a2] {
        let m = a.next_json().await;
        assert_eq!(m["data"], json!({"n": 1}));
    }
    assert!(bob.next_json_within(SHORT).await.is_none());

    // Removed from the group: deliveries stop at once.
    let r = api(
        &gws[0],
        "POST",
        "/api/unsubscribe",
        json!({"user": "anna", "channel": "/app/group/7"}),
    )
    .await;
    assert_eq!(r.status, 202);
    for a in [&mut a0, &mut a2] {
        let f = a.next_json().await;
        assert_eq!(f, json!({"type":"unsubscribed","channel":"/app/group/7"}));
    }
    gws[1]
        .publish_with_key("/app/group/7", json!({"n": 2}), Some(KEY))
        .await;
    for a in [&mut a0, &mut a2] {
        assert!(a.next_json_within(SHORT).await.is_none());
    }
}

/// No message of a channel reaches a socket ahead of its `subscribed`,
/// whoever asked for the subscription (the client or the backend), while a
/// publisher keeps the channel busy: the fan-out writes idle sockets
/// directly, but never past a subscription's reply on its way.
#[tokio::test]
async fn no_message_overtakes_the_subscribed_reply_on_a_busy_channel() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(options(&redis, &backend)).await;
    let room = "/app/room/busy";
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut r = redis.client().await;
        // About 3,000 a second: busy, yet well within what even a debug
        // build delivers (a gateway behind its Redis connection would
        // make every subscription wait behind the backlog).
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..3 {
                    r.publish(room, n.to_string().as_bytes()).await;
                    n += 1;
                }
            }
        })
    };
    for round in 0..40 {
        let mut anna = connect(&gw, "anna-cookie").await;
        if round % 2 == 0 {
            anna.send_json(json!({"type":"subscribe","channel":room,"id":round}))
                .await;
        } else {
            let conn = anna.welcome["connection"].clone();
            let r = api(
                &gw,
                "POST",
                "/api/subscribe",
                json!({"conn": conn, "channel": room}),
            )
            .await;
            assert_eq!(r.status, 202, "{}", r.body);
        }
        let first = anna
            .next_or_end(PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: closed {e:?}; {}", gw.logs()));
        assert_eq!(first["type"], "subscribed", "round {round}: {first}");
        // And the channel's messages do follow it (presence events aside).
        loop {
            let f = anna
                .next_or_end(PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("round {round}: closed {e:?} later; {}", gw.logs()));
            match f["type"].as_str() {
                Some("message") => break,
                Some("join" | "leave") => {}
                _ => panic!("round {round}: {f}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
}

#[tokio::test]
async fn a_users_connections_are_listed_across_gateways_and_a_killed_gateways_are_gone_at_once() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let [g0, g1, g2] = three_gateways(&redis, &backend).await;
    let _a0 = connect(&g0, "anna-cookie").await;
    let a1 = connect(&g1, "anna-cookie").await;
    let _a2 = connect(&g2, "anna-cookie").await;
    let _bob = connect(&g0, "bob-cookie").await;

    let deadline = Instant::now() + PATIENCE;
    let listed = loop {
        let listed = connections(&g1, "anna").await;
        if listed.len() == 3 || Instant::now() > deadline {
            break listed;
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.len(), 3, "{listed:?}");
    let mut gateways: Vec<&str> = listed
        .iter()
        .map(|c| c["gateway"].as_str().unwrap())
        .collect();
    gateways.sort();
    gateways.dedup();
    assert_eq!(gateways.len(), 3, "one on each gateway: {listed:?}");
    assert_eq!(connections(&g2, "bob").await.len(), 1);

    // A socket that closes leaves the list at once.
    a1.close().await;
    let deadline = Instant::now() + PATIENCE;
    while connections(&g0, "anna").await.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the closed socket is still listed"
        );
        sleep(Duration::from_millis(20)).await;
    }

    // Every gateway answered, none missing.
    let v = survey(&g0, "anna").await;
    assert_eq!(v["gateways"], 3, "{v}");
    assert!(v.get("missing").is_none(), "{v}");

    // SIGKILL: no goodbye. Its sockets are gone with it at once; it is
    // named missing (the list may lack its sockets) until its entry in the
    // live set expires, within the time to live (2 s) after its last
    // refresh (at most 1 s before the kill).
    drop(g2);
    let killed = Instant::now();
    let v = survey(&g0, "anna").await;
    assert_eq!(v["connections"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["gateways"], 2, "{v}");
    assert_eq!(v["missing"], json!(["gw2"]), "{v}");
    let left = loop {
        let v = survey(&g0, "anna").await;
        assert_eq!(v["connections"].as_array().unwrap().len(), 1, "{v}");
        if v.get("missing").is_none() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "still missing: {v}"
        );
        sleep(Duration::from_millis(50)).await;
    };
    assert!(left <= Duration::from_secs(4), "expired after {left:?}");
    // The incomplete answers are counted, apart from the complete ones.
    let m = api(&g0, "GET", "/metrics", Value::Null).await.body;
    let count = |outcome: &str| -> f64 {
        let prefix = format!("tidings_control_surveys_total{{outcome=\"{outcome}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    };
    assert!(count("incomplete") >= 1.0, "{m}");
    assert!(count("complete") >= 1.0, "{m}");
}

/// Redis down: the listing answers 503 with Retry-After (it cannot ask the
/// other gateways), the open sockets stay; Redis back (empty: the live set
/// is gone too): the gateway answers surveys again, its own included.
#[tokio::test]
async fn the_listing_answers_503_while_redis_is_down_and_works_again_after() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(
        options(&redis, &backend)
            .env("TIDINGS_CONTROL__GATEWAY_ID", "solo")
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.3")
            .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "1"),
    )
    .await;
    let mut anna = connect(&gw, "anna-cookie").await;
    assert_eq!(connections(&gw, "anna").await.len(), 1);

    redis.kill().await;
    let r = api(&gw, "GET", "/api/connections?user=anna", Value::Null).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.body);
    assert!(r.body.contains("broker_unavailable"), "{}", r.body);
    let pong = anna.request(json!({"type":"ping","id":"still"})).await;
    assert_eq!(pong["type"], "pong");

    redis.restart().await;
    let deadline = Instant::now() + PATIENCE;
    let v = loop {
        let r = api(&gw, "GET", "/api/connections?user=anna", Value::Null).await;
        if r.status == 200 {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            if v.get("missing").is_none() {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never answered again: {}",
            r.body
        );
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["connections"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["gateways"], 1, "{v}");
}

#[tokio::test]
async fn a_refresh_forgets_the_cached_identity_so_a_revoked_session_cannot_come_back() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(options(&redis, &backend).env("TIDINGS_IDENTITY__ANONYMOUS", "refuse")).await;
    let mut anna = connect(&gw, "anna-cookie").await;
    assert_eq!(anna.welcome["user"], "anna");
    // The backend revokes anna's session; the gateway's cache (60 s) still
    // has the old answer.
    backend.set_mode(Mode::users([("bob-cookie", json!({"user": "bob"}))]));
    let r = api(&gw, "POST", "/api/refresh", json!({"user": "anna"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(anna.closed_with(PATIENCE).await, Some(4004));
    // The reconnect is resolved afresh: refused.
    let refused = Client::connect_with(&gw.ws_url(), &[("Cookie", "session=anna-cookie")])
        .await
        .err()
        .expect("a revoked session is refused");
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn bad_commands_are_refused_with_a_reason_and_the_api_wants_the_key() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(options(&redis, &backend)).await;
    for (path, body, says) in [
        ("/api/disconnect", json!({"code": 4003}), "exactly one"),
        (
            "/api/subscribe",
            json!({"user": "a"}),
            "\"channel\" is missing",
        ),
        (
            "/api/disconnect",
            json!({"user": "a", "code": 1000}),
            "4002, 4003",
        ),
        (
            "/api/refresh",
            json!({"op": "disconnect", "user": "a"}),
            "the path says",
        ),
    ] {
        let r = api(&gw, "POST", path, body).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"], "bad_command", "{}", r.body);
        assert!(v["message"].as_str().unwrap().contains(says), "{}", r.body);
    }
    let r = http::request(
        gw.addr,
        "POST",
        "/api/disconnect",
        &[("Content-Type".to_owned(), "application/json".to_owned())],
        br#"{"user":"a"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http::get(gw.addr, "/api/connections?user=a").await;
    assert_eq!(r.status, 401);
    let r = api(&gw, "GET", "/api/connections", Value::Null).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn webhooks_report_connects_and_disconnects_signed() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(
        options(&redis, &backend)
            .env(
                "TIDINGS_WEBHOOKS__URL",
                format!("{}/hooks", backend.base_url()),
            )
            .env("TIDINGS_WEBHOOKS__SECRET", WEBHOOK_SECRET),
    )
    .await;
    let anna = connect(&gw, "anna-cookie").await;
    let conn = {
        let listed = connections(&gw, "anna").await;
        listed
            .first()
            .map(|c| c["conn"].as_str().unwrap().to_owned())
    };
    anna.close().await;
    let hooks = |calls: Vec<Call>| -> Vec<Value> {
        calls
            .into_iter()
            .filter(|c| c.path == "/hooks")
            .flat_map(|c| {
                // The backend's check: HMAC-SHA256 over "<timestamp>.<body>".
                let ts = c.header("x-tidings-timestamp").unwrap().to_owned();
                let mut signed = format!("{ts}.").into_bytes();
                signed.extend_from_slice(&c.body);
                let expected = format!(
                    "sha256={}",
                    tidings_control::hex(&tidings_control::hmac_sha256(
                        WEBHOOK_SECRET.as_bytes(),
                        &signed
                    ))
                );
                assert_eq!(c.header("x-tidings-signature"), Some(expected.as_str()));
                let v: Value = serde_json::from_slice(&c.body).unwrap();
                v["events"].as_array().unwrap().clone()
            })
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    let events = loop {
        let events = hooks(backend.calls());
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "connect");
    assert_eq!(events[0]["user"], "anna");
    assert_eq!(events[1]["event"], "disconnect");
    assert_eq!(events[1]["code"], 1000);
    assert_eq!(events[1]["reason"], "client");
    if let Some(conn) = conn {
        assert_eq!(events[0]["conn"], conn.as_str());
    }
}

#[tokio::test]
async fn a_dead_webhook_backend_slows_no_socket() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    // Nobody listens there.
    let dead = {
        let b = Backend::start(Mode::Status(200)).await;
        let url = b.base_url();
        b.stop().await;
        url
    };
    let gw = start(
        options(&redis, &backend)
            .env("TIDINGS_WEBHOOKS__URL", dead)
            .env("TIDINGS_WEBHOOKS__SECRET", WEBHOOK_SECRET)
            .env("TIDINGS_WEBHOOKS__QUEUE", "4"),
    )
    .await;
    let started = Instant::now();
    for _ in 0..50 {
        let c = connect(&gw, "bob-cookie").await;
        c.close().await;
    }
    let mut c = connect(&gw, "bob-cookie").await;
    c.subscribe("/app/lobby/3").await;
    gw.publish_with_key("/app/lobby/3", json!({"ok": true}), Some(KEY))
        .await;
    assert_eq!(c.next_json().await["data"], json!({"ok": true}));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "51 connects took {:?}",
        started.elapsed()
    );
}

async fn presence(gw: &Gateway, channel: &str) -> Value {
    let r = api(
        gw,
        "GET",
        &format!("/api/presence?channel={channel}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The next frame that is not a `subscribed` reply.
async fn next_event(c: &mut Client) -> Value {
    loop {
        let f = c.next_json().await;
        if f["type"] != "subscribed" {
            return f;
        }
    }
}

#[tokio::test]
async fn presence_across_gateways_with_join_and_leave_and_a_killed_gateways_users_leave() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let [g0, g1, g2] = three_gateways(&redis, &backend).await;
    let room = "/app/room/1";
    let mut anna = connect(&g0, "anna-cookie").await;
    anna.subscribe(room).await;
    let own = next_event(&mut anna).await;
    assert_eq!(own["type"], "join", "{own}");
    assert_eq!(own["user"], "anna");

    let mut bob = connect(&g1, "bob-cookie").await;
    bob.subscribe(room).await;
    let j = next_event(&mut anna).await;
    assert_eq!(
        (j["type"].as_str(), j["user"].as_str()),
        (Some("join"), Some("bob"))
    );
    assert_eq!(next_event(&mut bob).await["user"], "bob");

    let mut carol = connect(&g2, "carol-cookie").await;
    carol.subscribe(room).await;
    let j = next_event(&mut anna).await;
    assert_eq!(
        j,
        json!({"type":"join","channel":room,"user":"carol","info":{"name":"Carol"}})
    );
    assert_eq!(next_event(&mut bob).await["user"], "carol");
    assert_eq!(
        next_event(&mut carol).await["user"],
        "carol",
        "her own join"
    );

    // A second tab of anna's: no second join.
    let mut anna2 = connect(&g2, "anna-cookie").await;
    anna2.subscribe(room).await;
    assert!(anna.next_json_within(SHORT).await.is_none());

    let p = presence(&g1, room).await;
    assert_eq!(
        (p["connections"].as_u64(), p["users"].as_u64()),
        (Some(4), Some(3)),
        "{p}"
    );
    let members = p["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    assert!(members
        .iter()
        .any(|m| m["user"] == "carol" && m["info"]["name"] == "Carol"));

    // Bob leaves the room: a leave for everyone.
    let r = bob
        .request(json!({"type":"unsubscribe","channel":room,"id":"u"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    assert_eq!(
        next_event(&mut anna).await,
        json!({"type":"leave","channel":room,"user":"bob"})
    );
    assert_eq!(next_event(&mut carol).await["type"], "leave");

    // Closing anna's second tab: she is still there.
    anna2.close().await;
    assert!(anna.next_json_within(SHORT).await.is_none());

    // g2 dies without a goodbye: carol leaves once her entry expires.
    // (Killed first: closing carol's socket before would let g2 start a
    // goodbye of its own, which is not what this checks.)
    drop(g2);
    drop(carol);
    let killed = Instant::now();
    let leave = anna
        .next_json_within(Duration::from_secs(8))
        .await
        .expect("a leave");
    assert_eq!(leave, json!({"type":"leave","channel":room,"user":"carol"}));
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "after {:?}",
        killed.elapsed()
    );
    let p = presence(&g0, room).await;
    assert_eq!(
        (p["connections"].as_u64(), p["users"].as_u64()),
        (Some(1), Some(1)),
        "{p}"
    );
}

#[tokio::test]
async fn a_counts_only_channel_counts_without_events_or_lists() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let gw = start(options(&redis, &backend)).await;
    let lobby = "/app/lobby/1";
    let mut anna = connect(&gw, "anna-cookie").await;
    anna.subscribe(lobby).await;
    let mut bob = connect(&gw, "bob-cookie").await;
    bob.subscribe(lobby).await;
    let deadline = Instant::now() + PATIENCE;
    let p = loop {
        let p = presence(&gw, lobby).await;
        if p["connections"] == 2 || Instant::now() > deadline {
            break p;
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(p, json!({"channel": lobby, "connections": 2, "users": 2}));
    assert!(
        anna.next_json_within(SHORT).await.is_none(),
        "no join events"
    );
    let r = api(
        &gw,
        "GET",
        "/api/presence?channel=/app/elsewhere",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_publish_can_leave_out_the_senders_own_socket_on_any_gateway() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(users()).await;
    let [g0, g1, _g2] = three_gateways(&redis, &backend).await;
    let room = "/app/lobby/2";
    let mut sender = connect(&g0, "anna-cookie").await;
    sender.subscribe(room).await;
    let mut other = connect(&g1, "bob-cookie").await;
    other.subscribe(room).await;
    let me = sender.welcome["connection"].as_str().unwrap().to_owned();
    assert!(me.contains('-'), "a connection id names its gateway: {me}");
    assert_ne!(me, other.welcome["connection"].as_str().unwrap());

    // Over HTTP, to another gateway than the sender's.
    let body = json!({"channel": room, "data": {"n": 1}, "exclude": me});
    let r = api(&g1, "POST", "/api/publish", body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let m = other.next_json().await;
    assert_eq!(m["data"], json!({"n": 1}));
    assert!(sender.next_json_within(SHORT).await.is_none(), "no echo");

    // Straight to Redis, in the sender envelope.
    let payload = format!(r#"{{"__tidings":1,"from":null,"exclude":"{me}","data":{{"n":2}}}}"#);
    redis.client().await.publish(room, payload.as_bytes()).await;
    assert_eq!(other.next_json().await["data"], json!({"n": 2}));
    assert!(sender.next_json_within(SHORT).await.is_none(), "no echo");

    // Without exclude, both get it.
    gws_publish(&g0, room, json!({"n": 3})).await;
    assert_eq!(other.next_json().await["data"], json!({"n": 3}));
    assert_eq!(sender.next_json().await["data"], json!({"n": 3}));

    // A client's own publish with `"echo": false`: everyone but itself.
    sender
        .send_json(
            json!({"type": "publish", "channel": room, "data": {"n": 4}, "echo": false, "id": 1}),
        )
        .await;
    assert_eq!(
        sender.next_json().await,
        json!({"type": "published", "channel": room, "id": 1})
    );
    let m = other.next_json().await;
    assert_eq!((&m["data"], &m["from"]), (&json!({"n": 4}), &json!("anna")));
    assert!(sender.next_json_within(SHORT).await.is_none(), "no echo");
    // And with the default, its echo too.
    sender
        .send_json(json!({"type": "publish", "channel": room, "data": {"n": 5}}))
        .await;
    assert_eq!(sender.next_json().await["type"], "published");
    assert_eq!(other.next_json().await["data"], json!({"n": 5}));
    assert_eq!(sender.next_json().await["data"], json!({"n": 5}));
}

async fn gws_publish(gw: &Gateway, channel: &str, data: Value) {
    let r = gw.publish_with_key(channel, data, Some(KEY)).await;
    assert_eq!(r.status, 202, "{}", r.body);
}
