//! The browser client (`clients/js/tidings.js`, served by the gateway at
//! `/tidings.js`) in a real headless Chromium against the real gateway:
//! connect, subscribe, publish, RPC; the gateway SIGKILLed and restarted on
//! the same port while the page stays open; a fresh one-time token for every
//! reconnect; a terminal close code; the heartbeat watchdog with a frozen
//! gateway. And the `/tidings.js` route itself (type, ETag, 304).
//!
//! The page is the gateway's own `/healthz` document (same origin, no CSP),
//! into which the test loads the client with `import("/tidings.js")`; the
//! harness below records everything the client reports in `window.T`.

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    browser::{Browser, Page},
    http, Gateway, GatewayOptions,
};

/// Rules for these tests: everyone joins `/app/broadcast`, may subscribe to
/// `/app/room/*` and publish on `/app/room/lobby`.
const RULES: &str = r#"
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
channel = "/app/room/lobby"
subscribe = true
publish = true
anonymous = true
"#;

/// Defines `startClient(opts)` in the page: loads `/tidings.js`, connects
/// with a WebSocket subclass that records every URL and socket, and records
/// the client's events in `window.T`.
const HARNESS: &str = r#"
window.startClient = async (opts) => {
  const { connect } = await import("/tidings.js");
  const T = window.T = { urls: [], sockets: [], tokens: [], tokenFetches: 0, events: [], messages: [], subs: [] };
  class RecordingSocket extends WebSocket {
    constructor(url) { super(url); T.urls.push(url); T.sockets.push(this); }
  }
  const options = { WebSocket: RecordingSocket, minDelay: 50, maxDelay: 400, stableAfter: 1000, ...(opts.options || {}) };
  if (opts.tokenUser) {
    options.getToken = async () => {
      T.tokenFetches++;
      const res = await fetch("/api/tokens", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ identity: { user: opts.tokenUser }, ttl_secs: 30 }),
      });
      if (!res.ok) throw new Error("token: HTTP " + res.status);
      const { token } = await res.json();
      T.tokens.push(token);
      return token;
    };
  }
  const client = window.client = connect(options);
  for (const ev of ["connecting", "connected", "disconnected"]) {
    client.on(ev, (e) => T.events.push({
      ev, code: e.code, reason: e.reason, terminal: e.terminal,
      reconnect: e.reconnect, user: e.welcome ? e.welcome.user : undefined,
    }));
  }
  client.on("message", (m) => T.messages.push({ channel: m.channel, data: m.data, from: m.from }));
  for (const ch of opts.subscribe || []) {
    const sub = client.subscribe(ch);
    sub.on("subscribed", (e) => T.subs.push({ ch, ev: "subscribed", reconnect: e.reconnect }));
    sub.on("gap", (e) => T.subs.push({ ch, ev: "gap", reason: e.reason }));
    sub.on("message", (m) => T.subs.push({ ch, ev: "message", data: m.data }));
    sub.on("error", (e) => T.subs.push({ ch, ev: "error", code: e.code }));
  }
  return true;
};
true
"#;

/// Opens the gateway's `/healthz` in a new tab and starts the client there
/// with `opts` (see [`HARNESS`]).
async fn open_client(browser: &Browser, addr: SocketAddr, opts: Value) -> Page {
    let page = browser.new_page().await;
    page.navigate(&format!("http://{addr}/healthz")).await;
    page.wait_for(
        "the page to load",
        "document.readyState === 'complete' && location.pathname === '/healthz'",
    )
    .await;
    assert_eq!(page.eval(HARNESS).await, Ok(json!(true)), "the harness");
    assert_eq!(
        page.eval(&format!("startClient({opts})")).await,
        Ok(json!(true)),
        "starting the client"
    );
    page
}

/// Waits until the client has reported `n` `connected` events.
async fn wait_connected(page: &Page, n: usize) {
    page.wait_for(
        &format!("connection number {n}"),
        &format!(
            "T.events.filter(e => e.ev === 'connected').length >= {n} && client.state === 'connected'"
        ),
    )
    .await;
}

/// The data of the messages the subscription to `ch` received, in order.
async fn sub_messages(page: &Page, ch: &str) -> Value {
    page.eval(&format!(
        "T.subs.filter(e => e.ch === {} && e.ev === 'message').map(e => e.data)",
        json!(ch)
    ))
    .await
    .expect("read the messages")
}

/// Waits until the subscription to `ch` has received `n` messages.
async fn wait_sub_messages(page: &Page, ch: &str, n: usize) {
    page.wait_for(
        &format!("{n} messages on {ch}"),
        &format!(
            "T.subs.filter(e => e.ch === {} && e.ev === 'message').length >= {n}",
            json!(ch)
        ),
    )
    .await;
}

/// Fails on any uncaught exception or `console.error` in the page (network
/// errors while the gateway is down are expected and not checked).
fn assert_no_exceptions(page: &Page) {
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| e.starts_with("exception:") || e.starts_with("console."))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
}

/// SIGKILLs the gateway and waits for it to be gone.
async fn sigkill(gw: &mut Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        gw.wait_exit(Duration::from_secs(10)).await.is_some(),
        "the gateway did not die"
    );
}

/// Sends `signal` (`STOP`, `CONT`) to the gateway.
fn signal(gw: &Gateway, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Starts a gateway with `opts` on exactly `addr`.
async fn restart_on(addr: SocketAddr, opts: GatewayOptions) -> Gateway {
    let gw = Gateway::start_with(opts.env("TIDINGS_LISTEN", addr.to_string())).await;
    assert_eq!(gw.addr, addr, "restarted on the same port");
    gw
}

#[tokio::test]
async fn tidings_js_is_served_with_its_type_and_an_etag() {
    let gw = Gateway::start().await;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/js/tidings.js"
    ))
    .expect("read clients/js/tidings.js");

    let res = http::get(gw.addr, "/tidings.js").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(res.header("cache-control"), Some("public, no-cache"));
    assert_eq!(res.header("access-control-allow-origin"), Some("*"));
    assert_eq!(res.body, source, "the gateway serves clients/js/tidings.js");
    let etag = res.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with(&format!("\"{}-", env!("CARGO_PKG_VERSION"))),
        "{etag}"
    );

    // Revalidation: 304 without a body for the same tag (weak or in a list).
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        let res = http::request(
            gw.addr,
            "GET",
            "/tidings.js",
            &[("If-None-Match".to_owned(), inm.clone())],
            b"",
        )
        .await;
        assert_eq!(res.status, 304, "If-None-Match: {inm}");
        assert_eq!(res.body, "", "If-None-Match: {inm}");
        assert_eq!(res.header("etag"), Some(etag.as_str()));
    }
    let res = http::request(
        gw.addr,
        "GET",
        "/tidings.js",
        &[("If-None-Match".to_owned(), "\"0.0.0-stale\"".to_owned())],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, source);

    let res = http::request(gw.addr, "POST", "/tidings.js", &[], b"").await;
    assert_eq!(res.status, 405);
    assert_eq!(res.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn js_client_connects_subscribes_publishes_and_calls_rpc() {
    let backend = Backend::start(Mode::Rpc).await;
    let gw = Gateway::start_with(GatewayOptions::default().toml(&format!(
        "{RULES}\n[rpc]\nurl = \"{}\"\nallowed_paths = [\"/api/\"]\n",
        backend.base_url()
    )))
    .await;
    let browser = Browser::launch().await;
    let page = open_client(
        &browser,
        gw.addr,
        json!({ "subscribe": ["/app/room/7", "/app/room/lobby"] }),
    )
    .await;
    wait_connected(&page, 1).await;
    page.wait_for(
        "both subscriptions confirmed",
        "T.subs.filter(e => e.ev === 'subscribed').length === 2",
    )
    .await;

    // A message published through the HTTP API reaches the subscription.
    let r = gw.publish("/app/room/7", json!({ "n": 1 })).await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_sub_messages(&page, "/app/room/7", 1).await;
    assert_eq!(
        sub_messages(&page, "/app/room/7").await,
        json!([{ "n": 1 }])
    );
    // ... and to the channel joined on connect, through the client's event.
    let r = gw.publish("/app/broadcast", json!("to all")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    page.wait_for(
        "the broadcast",
        "T.messages.some(m => m.channel === '/app/broadcast' && m.data === 'to all')",
    )
    .await;

    // publish() resolves once accepted, and the message comes back.
    let published = page
        .eval("client.publish('/app/room/lobby', { text: 'hi' }).then(() => 'ok', e => e.code)")
        .await;
    assert_eq!(published, Ok(json!("ok")));
    wait_sub_messages(&page, "/app/room/lobby", 1).await;
    assert_eq!(
        sub_messages(&page, "/app/room/lobby").await,
        json!([{ "text": "hi" }])
    );
    // A refused publish rejects with the protocol's code.
    let refused = page
        .eval("client.publish('/app/broadcast', 1).then(() => 'ok', e => [e.name, e.code])")
        .await;
    assert_eq!(refused, Ok(json!(["TidingsError", "forbidden"])));

    // rpc() resolves with the backend's answer.
    let answer = page
        .eval("client.rpc('/api/echo/items', { a: 1 })")
        .await
        .expect("rpc");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["data"]["got"], json!({ "a": 1 }), "{answer}");
    assert_eq!(answer["data"]["method"], "POST", "{answer}");
    let failed = page.eval("client.rpc('/api/fail')").await.expect("rpc");
    assert_eq!(failed["status"], 500, "{failed}");
    let refused = page
        .eval("client.rpc('/admin/x', null, { method: 'GET' }).then(() => 'ok', e => e.code)")
        .await;
    assert_eq!(refused, Ok(json!("forbidden")));
    assert!(
        backend.calls().iter().any(|c| c.path == "/api/echo/items"),
        "the backend got the call"
    );

    // A subscription the rules refuse fails with `forbidden`.
    page.eval("client.subscribe('/app/secret').on('error', e => T.subs.push({ ch: '/app/secret', ev: 'error', code: e.code })); true")
        .await
        .expect("subscribe");
    page.wait_for(
        "the refused subscription",
        "T.subs.some(e => e.ch === '/app/secret' && e.code === 'forbidden')",
    )
    .await;
    assert_no_exceptions(&page);
}

#[tokio::test]
async fn js_client_survives_a_gateway_sigkill_and_restart_on_the_same_port() {
    let opts = GatewayOptions::default().toml(RULES);
    let mut gw = Gateway::start_with(opts.clone()).await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = open_client(&browser, addr, json!({ "subscribe": ["/app/room/7"] })).await;
    wait_connected(&page, 1).await;
    page.wait_for(
        "the subscription",
        "T.subs.some(e => e.ev === 'subscribed')",
    )
    .await;

    for n in 1..=3 {
        let r = gw.publish("/app/room/7", json!({ "before": n })).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    wait_sub_messages(&page, "/app/room/7", 3).await;

    sigkill(&mut gw).await;
    page.wait_for(
        "the page to see the connection drop",
        "T.events.some(e => e.ev === 'disconnected' && e.terminal === false)",
    )
    .await;
    let gw = restart_on(addr, opts).await;

    // The page reconnects on its own, subscribes again, and reports the gap.
    wait_connected(&page, 2).await;
    page.wait_for(
        "the resubscription after the restart",
        "T.subs.some(e => e.ev === 'subscribed' && e.reconnect === true) \
         && T.subs.some(e => e.ev === 'gap' && e.reason === 'reconnected')",
    )
    .await;
    for n in 1..=3 {
        let r = gw.publish("/app/room/7", json!({ "after": n })).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let r = gw
        .publish("/app/broadcast", json!("after the restart"))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_sub_messages(&page, "/app/room/7", 6).await;
    page.wait_for(
        "the broadcast after the restart",
        "T.messages.some(m => m.channel === '/app/broadcast' && m.data === 'after the restart')",
    )
    .await;

    // Every message once, in order.
    assert_eq!(
        sub_messages(&page, "/app/room/7").await,
        json!([
            { "before": 1 }, { "before": 2 }, { "before": 3 },
            { "after": 1 }, { "after": 2 }, { "after": 3 },
        ])
    );
    assert_no_exceptions(&page);
}

/// Issue 13's promise: a page on `/tidings.js` loses nothing across gateway
/// restarts (a SIGKILL, then a SIGTERM drain) while a backend keeps
/// publishing with the one-command publish: its joined notification channel
/// (recovered on connect) and its subscribed room (recovered on subscribe)
/// each get every publication once, in order, and no gap is reported.
#[tokio::test]
async fn js_client_loses_nothing_across_gateway_restarts_with_redis() {
    let redis = tidings_e2e::redis::RedisServer::start().await;
    let rules = r#"
[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true
history = { size = 500, ttl_secs = 600 }

[[routing.rules]]
channel = "/app/room/*"
subscribe = true
anonymous = true
history = { size = 500, ttl_secs = 600 }
"#;
    let opts = GatewayOptions::default()
        .toml(rules)
        .env("TIDINGS_REDIS_URL", redis.url())
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["token"]"#)
        .env("TIDINGS_SHUTDOWN__DRAIN_SPREAD_SECS", "0.2")
        .env("TIDINGS_SHUTDOWN__GRACE_SECS", "2");
    let mut gw = Gateway::start_with(opts.clone()).await;
    gw.wait_ready().await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = open_client(
        &browser,
        addr,
        json!({ "tokenUser": "42", "subscribe": ["/app/room/9"] }),
    )
    .await;
    wait_connected(&page, 1).await;
    page.wait_for(
        "the subscription",
        "T.subs.some(e => e.ev === 'subscribed')",
    )
    .await;
    const NOTES: &str = "/app/user/42/notifications";
    const N: usize = 150;
    let port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let publisher = tokio::spawn(async move {
        let mut r = tidings_e2e::redis::Resp::connect(port).await.unwrap();
        for n in 1..=N {
            for ch in [NOTES, "/app/room/9"] {
                r.fcall_publish(ch, &n.to_string(), 500, 600)
                    .await
                    .unwrap_or_else(|reply| panic!("FCALL: {reply:?}"));
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    });
    let notes = |n: usize| {
        format!(
            "T.messages.filter(m => m.channel === {}).length >= {n}",
            json!(NOTES)
        )
    };
    page.wait_for("some notifications", &notes(20)).await;
    sigkill(&mut gw).await;
    let gw = restart_on(addr, opts.clone()).await;
    wait_connected(&page, 2).await;
    page.wait_for("more notifications", &notes(60)).await;
    gw.sigterm();
    let mut gw = gw;
    assert!(
        gw.wait_exit(Duration::from_secs(10)).await.is_some(),
        "drained"
    );
    let gw = restart_on(addr, opts).await;
    wait_connected(&page, 3).await;
    publisher.await.unwrap();
    page.wait_for("every notification", &notes(N)).await;
    wait_sub_messages(&page, "/app/room/9", N).await;
    let all: Vec<usize> = (1..=N).collect();
    let got = page
        .eval(&format!(
            "T.messages.filter(m => m.channel === {}).map(m => m.data)",
            json!(NOTES)
        ))
        .await
        .unwrap();
    assert_eq!(got, json!(all), "notifications: every one once, in order");
    assert_eq!(sub_messages(&page, "/app/room/9").await, json!(all));
    let gaps = page
        .eval("T.subs.filter(e => e.ev === 'gap')")
        .await
        .unwrap();
    assert_eq!(gaps, json!([]), "nothing to reload");
    drop(gw);
    assert_no_exceptions(&page);
}

#[tokio::test]
async fn js_client_fetches_a_fresh_token_for_every_connection() {
    let opts = GatewayOptions::default()
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["token"]"#)
        .env("TIDINGS_IDENTITY__ANONYMOUS", r#""refuse""#);
    let mut gw = Gateway::start_with(opts.clone()).await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = open_client(&browser, addr, json!({ "tokenUser": "u7" })).await;
    wait_connected(&page, 1).await;

    // A restart loses every token (the in-memory store), so only a fresh
    // token, minted by the new process, gets the page back in.
    sigkill(&mut gw).await;
    let _gw = restart_on(addr, opts).await;
    wait_connected(&page, 2).await;

    let t = page.eval("T").await.expect("read T");
    let users: Vec<&Value> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ev"] == "connected")
        .map(|e| &e["user"])
        .collect();
    assert_eq!(users, [&json!("u7"), &json!("u7")], "{t:#}");
    let tokens: Vec<&str> = t["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let urls: Vec<&str> = t["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Every socket was opened with the token fetched for it, each used once.
    assert!(tokens.len() >= 2, "{t:#}");
    assert_eq!(urls.len(), tokens.len(), "one token per socket: {t:#}");
    for (url, token) in urls.iter().zip(&tokens) {
        // Then, on a reconnect, the positions of the joined channels.
        let url = url.split("&since=").next().unwrap();
        assert_eq!(url, format!("ws://{addr}/ws?token={token}"));
    }
    let mut distinct = tokens.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), tokens.len(), "no token used twice: {t:#}");
    assert_no_exceptions(&page);
}

#[tokio::test]
async fn js_client_stops_after_a_terminal_close_code() {
    let gw = Gateway::start().await;
    let browser = Browser::launch().await;
    let page = open_client(&browser, gw.addr, json!({})).await;
    wait_connected(&page, 1).await;

    // Flood the socket past the rate limit: the gateway closes it with 1008,
    // which the client takes as final.
    page.eval("(() => { const ws = T.sockets.at(-1); for (let i = 0; i < 400; i++) ws.send('{}'); return true; })()")
        .await
        .expect("flood");
    page.wait_for("the client to give up", "client.state === 'closed'")
        .await;
    let t = page.eval("T").await.expect("read T");
    let last = t["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last,
        json!({ "ev": "disconnected", "code": 1008, "reason": "rate limit exceeded", "terminal": true }),
        "{t:#}"
    );
    // Closed for good: no retry is scheduled, and only one socket was opened.
    assert_eq!(
        page.eval("!client._timers.retry && T.urls.length").await,
        Ok(json!(1)),
        "{t:#}"
    );
    let rejected = page
        .eval("client.publish('/app/broadcast', 1).then(() => 'ok', e => e.code)")
        .await;
    assert_eq!(rejected, Ok(json!("closed")));
    assert_no_exceptions(&page);
}

#[tokio::test]
async fn js_client_watchdog_notices_a_frozen_gateway() {
    let gw = Gateway::start().await;
    let browser = Browser::launch().await;
    let page = open_client(
        &browser,
        gw.addr,
        json!({ "options": { "pingInterval": 300, "pongTimeout": 500 } }),
    )
    .await;
    wait_connected(&page, 1).await;
    // A heartbeat goes through while the gateway runs.
    assert_eq!(
        page.eval("client.ping().then(() => 'pong')").await,
        Ok(json!("pong"))
    );

    // Frozen: the TCP connection stays up and the browser never fires
    // `close`; only the watchdog can notice.
    // (Only what happens after the freeze counts: on a loaded machine a slow
    // pong may already have cost a connection.)
    let before = page
        .eval("T.events.length")
        .await
        .expect("count the events");
    let connections = page
        .eval("T.events.filter(e => e.ev === 'connected').length")
        .await
        .expect("count the connections");
    signal(&gw, "STOP");
    let seen = page
        .wait_for(
            "the watchdog to drop the connection",
            &format!("T.events.slice({before}).find(e => e.ev === 'disconnected')"),
        )
        .await;
    signal(&gw, "CONT");
    assert_eq!(seen["code"], 4000, "{seen}");
    assert_eq!(seen["reason"], "heartbeat timeout", "{seen}");
    assert_eq!(seen["terminal"], false, "{seen}");
    // And it reconnects once the gateway answers again.
    let connections = connections.as_u64().expect("a count") as usize;
    wait_connected(&page, connections + 1).await;
    assert_no_exceptions(&page);
}
