//! Socket.IO compatibility with the real binary: the stock
//! `socket.io-client` 4.x in Node, over long-polling (then the upgrade to
//! WebSocket) and over WebSocket alone, receiving what `redis-cli PUBLISH`
//! sends, its acks for subscribe/publish/rpc, the routing isolation; a page
//! written for the seed design (`io()`, `socket.on("notification")`) in
//! Chromium, unchanged; and Engine.IO's answers to bad requests.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    browser::Browser,
    http,
    redis::RedisServer,
    socketio::{self, NodeClient},
    Gateway, GatewayOptions,
};

const CONFIG: &str = r#"
[socketio]
enabled = true
ping_interval_secs = 1.0
ping_timeout_secs = 2.0
max_payload = 4096

[[socketio.events]]
channel = "/app/room/*"
event = "chat"

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
channel = "/app/user/{user}/notifications"
join = true
subscribe = true
"#;

const NOTES: &str = "/app/user/42/notifications";

async fn gateway(redis: Option<&RedisServer>) -> (Gateway, Backend) {
    let be = Backend::start(Mode::users([
        ("u42", json!({"user": "42"})),
        ("u7", json!({"user": "7"})),
    ]))
    .await;
    let mut opts = GatewayOptions::default()
        .toml(CONFIG)
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", be.url())
        .env("TIDINGS_IDENTITY__ANONYMOUS", "allow");
    if let Some(r) = redis {
        opts = opts.env("TIDINGS_REDIS_URL", r.url());
    }
    let gw = Gateway::start_with(opts).await;
    gw.wait_ready().await;
    (gw, be)
}

#[tokio::test]
async fn the_stock_client_over_polling_and_websocket() {
    let redis = RedisServer::start().await;
    let (gw, _be) = gateway(Some(&redis)).await;
    let mut r = redis.client().await;
    let url = format!("http://{}", gw.addr);
    for mode in ["polling", "websocket"] {
        let mut c = NodeClient::start(&url, mode, Some("sessionid=u42")).await;
        // The connect, the welcome and (long-polling first) the upgrade to
        // WebSocket, in whatever order the client reports them.
        let (mut welcome, mut connected, mut upgraded) = (Value::Null, false, false);
        while welcome.is_null() || !connected || (mode == "polling" && !upgraded) {
            let v = c.next().await;
            match v["ev"].as_str() {
                Some("connect") => {
                    connected = true;
                    if mode == "websocket" {
                        assert_eq!(v["transport"], "websocket", "{v}");
                    }
                }
                Some("tidings") => welcome = v["frame"].clone(),
                Some("upgrade") => {
                    assert_eq!(mode, "polling");
                    assert_eq!(v["transport"], "websocket");
                    upgraded = true;
                }
                _ => panic!("unexpected: {v}"),
            }
        }
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["user"], "42");
        assert_eq!(welcome["channels"], json!(["/app/broadcast", NOTES]));
        // What redis-cli PUBLISH sends arrives as `notification`, data
        // first (as the seeds' Node bridge emitted it), then where from.
        assert_eq!(r.publish(NOTES, b"Hey").await, 1);
        let n = c.next_ev("notification").await;
        assert_eq!(
            (n["data"].clone(), n["meta"]["channel"].clone()),
            (json!("Hey"), json!(NOTES))
        );
        assert_eq!(r.publish("/app/broadcast", br#"{"all":true}"#).await, 1);
        let n = c.next_ev("notification").await;
        assert_eq!(n["data"], json!({"all": true}), "{n}");
        assert_eq!(n["meta"]["channel"], "/app/broadcast");

        // Acks carry the protocol's replies.
        let reply = c
            .call(json!(["subscribe", "/app/user/7/notifications"]))
            .await;
        assert_eq!(reply["code"], "forbidden", "{reply}");
        let reply = c.call(json!(["subscribe", "/app/room/2"])).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        // A room's messages arrive as `chat` ([[socketio.events]]).
        c.emit(json!(["publish", "/app/room/2", {"hi": mode}]))
            .await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let v = c.next().await;
            if v["ev"] == "ack" || v["ev"] == "chat" {
                seen.push(v);
            }
        }
        seen.sort_by_key(|v| v["ev"].as_str().unwrap_or("").to_owned());
        assert_eq!(seen[0]["reply"]["type"], "published", "{seen:?}");
        assert_eq!(seen[1]["data"], json!({"hi": mode}));
        assert_eq!(seen[1]["meta"]["from"], "42");
        assert_eq!(seen[1]["meta"]["channel"], "/app/room/2");
        let reply = c.call(json!(["publish", "/app/broadcast", 1])).await;
        assert_eq!(reply["code"], "forbidden");
        let reply = c
            .call(json!(["rpc", {"method": "GET", "path": "/api/x"}]))
            .await;
        assert_eq!(reply["code"], "rpc_disabled", "{reply}");
        let reply = c.call(json!(["dance"])).await;
        assert_eq!(reply["code"], "unknown_type");

        // Isolation: another user's notifications never arrive; the next
        // notification is the one published after them.
        assert_eq!(r.publish("/app/user/7/notifications", b"secret").await, 0);
        assert_eq!(r.publish(NOTES, b"after").await, 1);
        assert_eq!(c.next_ev("notification").await["data"], "after");
        // Heartbeats (every second here) keep it connected.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(r.publish(NOTES, b"still").await, 1);
        let v = c.next().await;
        assert_eq!(
            (v["ev"].clone(), v["data"].clone()),
            (json!("notification"), json!("still")),
            "{v}"
        );
        c.kill().await;
    }
}

/// The UMD bundle of the pinned client, as a page would load it with a
/// `<script>` tag.
fn bundle() -> String {
    socketio::ensure_installed();
    std::fs::read_to_string(
        socketio::dir().join("node_modules/socket.io-client/dist/socket.io.min.js"),
    )
    .expect("the socket.io client bundle")
}

#[tokio::test]
async fn a_page_written_for_the_seed_design_works_unchanged() {
    let redis = RedisServer::start().await;
    let (gw, _be) = gateway(Some(&redis)).await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/healthz", gw.addr)).await;
    page.wait_for("the page", "document.readyState === 'complete'")
        .await;
    page.eval("document.cookie = 'sessionid=u42; path=/'; true")
        .await
        .unwrap();
    // The <script src="/socket.io/socket.io.js"> of such a page.
    page.eval(&format!("{};\ntrue", bundle())).await.unwrap();
    // The page's own code, as the seed's Node bridge served it.
    let page_code = r#"
      window.got = [];
      const socket = window.socket = io();
      socket.on("notification", (message) => window.got.push(message));
      true
    "#;
    assert_eq!(page.eval(page_code).await, Ok(json!(true)));
    page.wait_for("the connection", "socket.connected === true")
        .await;
    page.wait_for(
        "the upgrade",
        "socket.io.engine.transport.name === 'websocket'",
    )
    .await;
    let mut r = redis.client().await;
    // The join is done once connected; publish until the first arrives.
    assert_eq!(r.publish(NOTES, b"Hey").await, 1);
    assert_eq!(
        r.publish("/app/user/7/notifications", b"not yours").await,
        0
    );
    assert_eq!(r.publish(NOTES, br#"{"n":2}"#).await, 1);
    page.wait_for("two notifications", "window.got.length === 2")
        .await;
    assert_eq!(
        page.eval("window.got").await.unwrap(),
        json!(["Hey", {"n": 2}])
    );
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| e.starts_with("exception:"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

fn code(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["code"].clone()
}

/// A long-polling session's sid (from the open packet).
async fn handshake(addr: std::net::SocketAddr) -> String {
    let r = http::get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let open: Value =
        serde_json::from_str(r.body.strip_prefix('0').expect("an open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["maxPayload"], 4096);
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(addr: std::net::SocketAddr, sid: &str, body: &[u8]) -> http::Response {
    http::request(
        addr,
        "POST",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[("Content-Type".into(), "text/plain;charset=UTF-8".into())],
        body,
    )
    .await
}

async fn poll(addr: std::net::SocketAddr, sid: &str) -> http::Response {
    http::get(
        addr,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await
}

/// Polls until a packet other than a ping comes, answering pings; returns
/// those packets.
async fn next_packets(addr: std::net::SocketAddr, sid: &str) -> Vec<String> {
    loop {
        let r = poll(addr, sid).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mut got = Vec::new();
        for p in r.body.split('\x1e') {
            if p == "2" {
                assert_eq!(post(addr, sid, b"3").await.body, "ok");
            } else {
                got.push(p.to_owned());
            }
        }
        if !got.is_empty() {
            return got;
        }
    }
}

#[tokio::test]
async fn engine_io_answers_bad_requests_as_its_spec_says() {
    let (gw, _be) = gateway(None).await;
    let addr = gw.addr;
    let r = http::get(addr, "/socket.io/?EIO=4&transport=polling&sid=nope").await;
    assert_eq!((r.status, code(&r.body)), (400, json!(1)), "unknown sid");
    let r = http::get(addr, "/socket.io/?EIO=3&transport=polling").await;
    assert_eq!((r.status, code(&r.body)), (400, json!(5)), "protocol 3");
    let r = http::get(addr, "/socket.io/?EIO=4&transport=carrier-pigeon").await;
    assert_eq!(
        (r.status, code(&r.body)),
        (400, json!(0)),
        "unknown transport"
    );
    let r = post(addr, "", b"40").await;
    assert_eq!(r.status, 400);
    let r = http::request(
        addr,
        "POST",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        b"40",
    )
    .await;
    assert_eq!(
        (r.status, code(&r.body)),
        (400, json!(2)),
        "a POST handshake"
    );
    let r = post(addr, "nope", b"40").await;
    assert_eq!((r.status, code(&r.body)), (400, json!(1)));

    // A session: connect, then another namespace is refused.
    let sid = handshake(addr).await;
    assert_eq!(post(addr, &sid, b"40\x1e40/admin,").await.body, "ok");
    let mut packets: Vec<String> = Vec::new();
    while packets.len() < 3 {
        packets.extend(next_packets(addr, &sid).await);
    }
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert!(
        packets
            .iter()
            .any(|p| p.starts_with("42[\"tidings\",{\"type\":\"welcome\"")),
        "{packets:?}"
    );
    assert!(
        packets
            .iter()
            .any(|p| p == "44/admin,{\"message\":\"Invalid namespace\"}"),
        "{packets:?}"
    );
    // An event over polling, with its ack.
    assert_eq!(post(addr, &sid, b"427[\"ping\"]").await.body, "ok");
    assert_eq!(
        next_packets(addr, &sid).await,
        [r#"437[{"type":"pong","id":7}]"#]
    );

    // Two polls at once: the second is refused and the session closed.
    let first = tokio::spawn({
        let sid = sid.clone();
        async move { poll(addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = poll(addr, &sid).await;
    assert_eq!((second.status, code(&second.body)), (400, json!(3)));
    let first = first.await.unwrap();
    assert_eq!(first.body, "1", "the pending poll ends with a close packet");
    let r = poll(addr, &sid).await;
    assert_eq!(
        (r.status, code(&r.body)),
        (400, json!(1)),
        "the session is gone"
    );

    // Binary packets and payloads beyond maxPayload end the session.
    let sid = handshake(addr).await;
    let r = post(addr, &sid, b"bAQID").await;
    assert_eq!(r.status, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(code(&poll(addr, &sid).await.body), json!(1));
    let sid = handshake(addr).await;
    let r = post(addr, &sid, &vec![b'4'; 5000]).await;
    assert_eq!(r.status, 413);
    // A malformed Socket.IO packet, too.
    let sid = handshake(addr).await;
    assert_eq!(post(addr, &sid, b"40").await.body, "ok");
    assert_eq!(post(addr, &sid, b"42nope").await.body, "ok");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut gone = false;
    for _ in 0..3 {
        let r = poll(addr, &sid).await;
        if r.status == 400 || r.body.ends_with('1') {
            gone = true;
            break;
        }
    }
    assert!(gone, "a malformed packet ends the session");
    // A session that never answers pings is closed (1 s + 2 s here) and
    // forgotten.
    let sid = handshake(addr).await;
    let r = poll(addr, &sid).await;
    assert_eq!(r.body, "2", "a ping");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut closed = false;
    for _ in 0..3 {
        let r = poll(addr, &sid).await;
        if r.status == 400 || r.body.split('\x1e').any(|p| p == "1") {
            closed = true;
            break;
        }
    }
    assert!(closed, "no pong: closed");
}

#[tokio::test]
async fn the_stock_client_through_the_shipped_nginx_site() {
    use tidings_e2e::nginx::{self, Nginx, SitePorts};
    nginx::binary();
    let redis = RedisServer::start().await;
    let (gw, be) = gateway(Some(&redis)).await;
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
    let mut r = redis.client().await;
    let mut c = NodeClient::start(
        &format!("http://{}", nginx.addr),
        "polling",
        Some("sessionid=u42"),
    )
    .await;
    let (mut connected, mut upgraded, mut welcome) = (false, false, false);
    while !(connected && upgraded && welcome) {
        let v = c.next().await;
        match v["ev"].as_str() {
            Some("connect") => connected = true,
            Some("upgrade") => upgraded = true,
            Some("tidings") => welcome = v["frame"]["user"] == "42",
            _ => panic!("unexpected: {v}"),
        }
    }
    assert_eq!(r.publish(NOTES, b"through nginx").await, 1);
    assert_eq!(c.next_ev("notification").await["data"], "through nginx");
    c.kill().await;
}
