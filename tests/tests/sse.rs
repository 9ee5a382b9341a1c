//! Server-Sent Events with the real binary: the stream (headers, the
//! hello, welcome, query channels checked by the routing rules, heartbeats),
//! actions over POST (and their refusals), bad input, isolation between
//! users; and a plain `EventSource` in headless Chromium that loses its
//! gateway (SIGKILL) and recovers what it missed from Redis through
//! `Last-Event-ID`.

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    browser::Browser,
    http,
    redis::RedisServer,
    sse::SseClient,
    Gateway, GatewayOptions,
};

const RULES: &str = r#"
[sse]
heartbeat_secs = 0.3
retry_ms = 200

[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/room/2"
subscribe = true
publish = true
anonymous = true

[[routing.rules]]
channel = "/app/room/*"
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true
history = { size = 100, ttl_secs = 600 }
"#;

const NOTES: &str = "/app/user/42/notifications";

async fn backend() -> Backend {
    Backend::start(Mode::users([
        ("u42", json!({"user": "42"})),
        ("u7", json!({"user": "7"})),
    ]))
    .await
}

fn options(be: &Backend) -> GatewayOptions {
    GatewayOptions::default()
        .toml(RULES)
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", be.url())
        .env("TIDINGS_IDENTITY__ANONYMOUS", "allow")
}

/// Opens a stream and reads its hello (`{"type":"sse",...}`) and welcome;
/// returns the stream, its `connection.token` and the welcome.
async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (SseClient, String, Value) {
    let mut s = match SseClient::open(addr, path, headers).await {
        Ok(s) => s,
        Err(r) => panic!("stream refused: {} {}", r.status, r.body),
    };
    let hello = s.next_json().await;
    assert_eq!(hello["type"], "sse", "{hello}");
    let session = format!(
        "{}.{}",
        hello["connection"].as_str().unwrap(),
        hello["token"].as_str().unwrap()
    );
    let welcome = s.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["connection"], hello["connection"]);
    (s, session, welcome)
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Value) -> http::Response {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    http::request(addr, "POST", "/sse", &headers, body.to_string().as_bytes()).await
}

#[tokio::test]
async fn a_stream_gets_its_channels_and_acts_through_post() {
    let be = backend().await;
    let gw = Gateway::start_with(options(&be)).await;
    let (mut s, session, welcome) = open(
        gw.addr,
        "/sse?channel=%2Fapp%2Froom%2F1&channel=%2Fapp%2Fuser%2F7%2Fnotifications",
        &[("cookie", "sessionid=u42")],
    )
    .await;
    assert_eq!(
        s.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert_eq!(s.header("cache-control"), Some("no-store"));
    assert_eq!(s.retry, Some(200));
    assert_eq!(welcome["user"], "42");
    assert_eq!(welcome["channels"], json!(["/app/broadcast", NOTES]));
    // The query's channels, checked by the routing rules like subscribe:
    // another user's notifications are refused.
    assert_eq!(
        s.next_json().await,
        json!({"type":"subscribed","channel":"/app/room/1","id":"channel:/app/room/1"})
    );
    let refused = s.next_json().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["id"], "channel:/app/user/7/notifications");

    // Live messages, once each.
    assert_eq!(gw.publish("/app/room/1", json!({"n": 1})).await.status, 202);
    assert_eq!(
        s.next_json().await,
        json!({"type":"message","channel":"/app/room/1","data":{"n":1}})
    );
    // A message on a channel with history carries the stream's positions
    // in its id.
    assert_eq!(gw.publish(NOTES, json!("note")).await.status, 202);
    let note = s.next().await.unwrap();
    let id: Value = serde_json::from_str(note.id.as_deref().expect("an id")).unwrap();
    let offset = note.json()["offset"].clone();
    assert_eq!(id[NOTES]["offset"], offset, "{id}");
    assert_eq!(id[NOTES]["epoch"], note.json()["epoch"]);

    // Actions: subscribe and publish over POST, replies on the stream.
    let with = [
        ("tidings-session", session.as_str()),
        ("cookie", "sessionid=u42"),
    ];
    let r = post(
        gw.addr,
        &with,
        json!({"type":"subscribe","channel":"/app/room/2","id":1}),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (202, r#"{"accepted":true}"#));
    assert_eq!(
        s.next_json().await,
        json!({"type":"subscribed","channel":"/app/room/2","id":1})
    );
    let r = post(
        gw.addr,
        &with,
        json!({"type":"publish","channel":"/app/room/2","data":"hi","id":2}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut got = vec![s.next_json().await, s.next_json().await];
    got.sort_by_key(|v| v["type"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        got,
        [
            json!({"type":"message","channel":"/app/room/2","from":"42","data":"hi"}),
            json!({"type":"published","channel":"/app/room/2","id":2}),
        ]
    );
    // A request the routing rules refuse: the error on the stream.
    let r = post(
        gw.addr,
        &with,
        json!({"type":"subscribe","channel":"/app/user/7/notifications","id":3}),
    )
    .await;
    assert_eq!(r.status, 202);
    let e = s.next_json().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].clone()),
        (Some("forbidden"), json!(3))
    );

    // Refused actions: no header, a wrong token, an unknown stream, a
    // malformed header, another user's cookie, a foreign origin.
    let (id, token) = session.split_once('.').unwrap();
    let r = post(gw.addr, &[], json!({"type":"ping"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    for bad in [
        format!("{id}.{}", "0".repeat(64)),
        format!("999999.{token}"),
        format!("{id}{token}"),
        "x.y".to_owned(),
    ] {
        let r = post(
            gw.addr,
            &[("tidings-session", &bad)],
            json!({"type":"ping"}),
        )
        .await;
        assert_eq!(r.status, 403, "{bad}: {}", r.body);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap()["error"],
            "forbidden"
        );
    }
    let r = post(
        gw.addr,
        &[("tidings-session", &session), ("cookie", "sessionid=u7")],
        json!({"type":"ping"}),
    )
    .await;
    assert_eq!(r.status, 403, "another user's credentials: {}", r.body);
    let r = post(
        gw.addr,
        &[
            ("tidings-session", &session),
            ("origin", "http://evil.example"),
        ],
        json!({"type":"ping"}),
    )
    .await;
    assert_eq!(r.status, 403, "a foreign origin: {}", r.body);
    // Without credentials the stream's secret is enough; bad JSON gets
    // the protocol's error on the stream.
    let r = http::request(
        gw.addr,
        "POST",
        "/sse",
        &[("tidings-session".into(), session.clone())],
        b"{nope",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(s.next_json().await["code"], "bad_json");

    // Heartbeats are comments, never events.
    let before = s.comments;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = post(gw.addr, &with, json!({"type":"ping","id":"p"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(s.next_json().await, json!({"type":"pong","id":"p"}));
    assert!(s.comments > before, "no heartbeat in 800 ms");
}

#[tokio::test]
async fn bad_input_gets_documented_answers() {
    let be = backend().await;
    let gw = Gateway::start_with(options(&be)).await;
    // A malformed `since` is refused before any credential is looked at.
    let r = SseClient::open(gw.addr, "/sse?since=nope", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("since"), "{}", r.body);
    // Too many channel parameters.
    let many: String = (0..17)
        .map(|i| format!("channel=%2Fapp%2Froom%2F{i}&"))
        .collect();
    let r = SseClient::open(gw.addr, &format!("/sse?{many}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 400, "{}", r.body);
    // A foreign origin.
    let r = SseClient::open(gw.addr, "/sse", &[("origin", "http://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 403);
    // A malformed Last-Event-ID: the stream opens (a browser would stop
    // reconnecting on an error status) and says nothing was recovered.
    for bad in [
        "garbage",
        r#"{"/app/user/42/notifications":{"offset":-1,"epoch":"e"}}"#,
    ] {
        let (mut s, _, welcome) = open(
            gw.addr,
            "/sse",
            &[("cookie", "sessionid=u42"), ("last-event-id", bad)],
        )
        .await;
        assert_eq!(welcome["user"], "42");
        let e = s.next_json().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request"))
        );
        assert!(
            e["message"].as_str().unwrap().contains("Last-Event-ID"),
            "{e}"
        );
    }
    // Other methods.
    let r = http::request(gw.addr, "PUT", "/sse", &[], b"").await;
    assert_eq!(r.status, 405);
    // A same-origin page's preflight is answered; a foreign one's is not.
    let pre = |origin: &str| {
        let headers = vec![
            ("origin".to_owned(), origin.to_owned()),
            (
                "access-control-request-method".to_owned(),
                "POST".to_owned(),
            ),
        ];
        async move { http::request(gw.addr, "OPTIONS", "/sse", &headers, b"").await }
    };
    let ok = pre(&format!("http://{}", gw.addr)).await;
    assert_eq!(ok.status, 204);
    assert!(ok
        .header("access-control-allow-headers")
        .unwrap()
        .contains("tidings-session"));
    assert_eq!(pre("http://evil.example").await.status, 403);
    // Anonymous visitors get the broadcast, not a user's notifications.
    let (mut s, _, welcome) = open(
        gw.addr,
        "/sse?channel=%2Fapp%2Fuser%2F42%2Fnotifications",
        &[],
    )
    .await;
    assert_eq!(welcome["user"], Value::Null);
    assert_eq!(welcome["channels"], json!(["/app/broadcast"]));
    assert_eq!(s.next_json().await["code"], "forbidden");
}

/// Defines `openStream()` in the page: a plain `EventSource` on `/sse`,
/// recording every event's data and `lastEventId` in `window.T`.
const PAGE: &str = r#"
document.cookie = "sessionid=u42; path=/";
window.T = { events: [], errors: 0, opens: 0 };
const es = window.es = new EventSource("/sse");
es.onopen = () => T.opens++;
es.onerror = () => T.errors++;
es.onmessage = (e) => T.events.push({ data: JSON.parse(e.data), id: e.lastEventId });
true
"#;

/// The `n` of every notification the page got, in order.
const NOTES_SEEN: &str =
    "T.events.filter(e => e.data.type === 'message' && e.data.channel === '/app/user/42/notifications').map(e => e.data.data.n)";

async fn sigkill(gw: &mut Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(gw.wait_exit(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn an_event_source_recovers_after_a_gateway_restart_with_last_event_id() {
    let redis = RedisServer::start().await;
    let be = backend().await;
    let opts = options(&be).env("TIDINGS_REDIS_URL", redis.url());
    let mut gw = Gateway::start_with(opts.clone()).await;
    gw.wait_ready().await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{addr}/healthz")).await;
    page.wait_for("the page", "document.readyState === 'complete'")
        .await;
    assert_eq!(page.eval(PAGE).await, Ok(json!(true)));
    page.wait_for(
        "the welcome",
        "T.events.some(e => e.data.type === 'welcome' && e.data.user === '42')",
    )
    .await;
    for n in 1..=2 {
        assert_eq!(gw.publish(NOTES, json!({"n": n})).await.status, 202);
    }
    page.wait_for("two notifications", &format!("{NOTES_SEEN}.length === 2"))
        .await;

    // The gateway dies; two notifications are published while it is down
    // (by the backend, with the one Redis command).
    sigkill(&mut gw).await;
    let mut r = redis.client().await;
    for n in 3..=4 {
        let payload = json!({"n": n}).to_string();
        r.cmd(&[
            "FCALL",
            "tidings_publish",
            "1",
            NOTES,
            &payload,
            "100",
            "600",
        ])
        .await;
    }
    let gw = Gateway::start_with(opts.clone().env("TIDINGS_LISTEN", addr.to_string())).await;
    assert_eq!(gw.addr, addr);
    gw.wait_ready().await;
    // The EventSource reconnects by itself, sending Last-Event-ID: the
    // welcome reports the recovery, and the missed ones are replayed.
    page.wait_for(
        "the recovered welcome",
        "T.events.filter(e => e.data.type === 'welcome').length === 2",
    )
    .await;
    let welcome = page
        .eval("T.events.filter(e => e.data.type === 'welcome')[1].data")
        .await
        .unwrap();
    assert_eq!(welcome["positions"][NOTES]["recovered"], true, "{welcome}");
    assert_eq!(gw.publish(NOTES, json!({"n": 5})).await.status, 202);
    page.wait_for("five notifications", &format!("{NOTES_SEEN}.length >= 5"))
        .await;
    assert_eq!(page.eval(NOTES_SEEN).await.unwrap(), json!([1, 2, 3, 4, 5]));
    let last_id = page.eval("T.events[T.events.length - 1].id").await.unwrap();
    let last_id: Value = serde_json::from_str(last_id.as_str().unwrap()).unwrap();
    assert_eq!(last_id[NOTES]["offset"], 5, "{last_id}");

    // What cannot be recovered is said: the history is gone (a new epoch).
    let mut gw = gw;
    sigkill(&mut gw).await;
    r.cmd(&["FLUSHALL"]).await;
    let gw = Gateway::start_with(opts.env("TIDINGS_LISTEN", addr.to_string())).await;
    gw.wait_ready().await;
    page.wait_for(
        "the third welcome",
        "T.events.filter(e => e.data.type === 'welcome').length === 3",
    )
    .await;
    let welcome = page
        .eval("T.events.filter(e => e.data.type === 'welcome')[2].data")
        .await
        .unwrap();
    assert_eq!(welcome["positions"][NOTES]["recovered"], false, "{welcome}");
    assert_eq!(
        welcome["positions"][NOTES]["reason"], "epoch_changed",
        "{welcome}"
    );
    assert_eq!(page.eval("es.readyState").await.unwrap(), json!(1), "open");
    drop(gw);
}

#[tokio::test]
async fn a_stream_through_the_shipped_nginx_site() {
    use tidings_e2e::nginx::{self, Nginx, SitePorts};
    nginx::binary();
    let be = backend().await;
    let gw = Gateway::start_with(options(&be)).await;
    let port = tidings_e2e::redis::free_port();
    let site = nginx::adapt_site(
        &nginx::shipped_site(),
        &SitePorts {
            listen: port,
            django: be.addr.port(),
            gateway: gw.addr.port(),
            static_root: std::env::temp_dir().join("tidings-no-static/"),
        },
    );
    let nginx = Nginx::start(&site, port).await;
    let front = nginx.addr;
    let origin = format!("http://{front}");
    let (mut s, session, welcome) = open(
        front,
        "/sse?channel=%2Fapp%2Froom%2F2",
        &[("cookie", "sessionid=u42"), ("origin", &origin)],
    )
    .await;
    assert_eq!(welcome["user"], "42");
    assert_eq!(s.next_json().await["type"], "subscribed");
    // Events pass nginx as they come: each arrives before the next is
    // published.
    for n in 0..3 {
        assert_eq!(gw.publish("/app/room/2", json!({"n": n})).await.status, 202);
        let e = tokio::time::timeout(Duration::from_secs(2), s.next_json())
            .await
            .expect("the event through nginx at once");
        assert_eq!(e["data"], json!({"n": n}));
    }
    // Actions through nginx.
    let headers = vec![
        ("tidings-session".to_owned(), session.clone()),
        ("cookie".to_owned(), "sessionid=u42".to_owned()),
        ("origin".to_owned(), origin.clone()),
    ];
    let r = http::request(
        front,
        "POST",
        "/sse",
        &headers,
        br#"{"type":"ping","id":"via-nginx"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(s.next_json().await, json!({"type":"pong","id":"via-nginx"}));
    // Heartbeats go through too.
    let before = s.comments;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = http::request(front, "POST", "/sse", &headers, br#"{"type":"ping"}"#).await;
    assert_eq!(r.status, 202);
    assert_eq!(s.next_json().await["type"], "pong");
    assert!(s.comments > before);
}
