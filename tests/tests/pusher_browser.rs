//! pusher-js in a real Chromium: the pinned browser build of `pusher-js`
//! (tests/pusher/node_modules) on a page served over loopback by a small
//! app server (tests/pusher/server.js) whose channel authorization and user
//! authentication endpoints are the real Pusher server SDK's
//! `authorizeChannel` and `authenticateUser`, as a Laravel or Express app
//! would have them. The page subscribes to public, private and presence
//! channels on the gateway, receives events the SDK triggers, is refused a
//! private channel its auth endpoint forbids (403), signs in, and is
//! disconnected by the SDK's `terminateUserConnections`.

use serde_json::{json, Value};
use tidings_e2e::{
    browser::{Browser, Page},
    pusher::{AppServer, PusherClient},
    redis::RedisServer,
    Gateway, GatewayOptions,
};

const APP: &str = "1";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret-123";

/// Waits until the page's log has an entry for which the JavaScript
/// predicate `pred` (over `e`) holds; returns it.
async fn logged(page: &Page, what: &str, pred: &str) -> Value {
    page.wait_for(what, &format!("window.log && window.log.find(e => {pred})"))
        .await
}

#[tokio::test]
async fn pusher_js_in_chromium_with_a_real_auth_endpoint() {
    let redis = RedisServer::start().await;
    let mut app = AppServer::start(APP, KEY, SECRET).await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(&format!(
                r#"
[websocket]
allowed_origins = ["{origin}"]

[pusher]
enabled = true

[[pusher.apps]]
id = "{APP}"
key = "{KEY}"
secret = "{SECRET}"
"#,
                origin = app.url()
            ))
            .env("TIDINGS_REDIS_URL", redis.url()),
    )
    .await;
    gw.wait_ready().await;
    app.use_gateway(&gw.addr.to_string()).await;

    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&format!("{}/?gw={}&user=7", app.url(), gw.addr))
        .await;
    logged(&page, "pusher-js connected", "e.ev === 'connected'").await;

    for channel in [
        "public-news",
        "private-orders",
        "presence-room",
        "private-forbidden-admin",
    ] {
        page.eval(&format!("sub('{channel}')")).await.expect("sub");
    }
    for channel in ["public-news", "private-orders"] {
        logged(
            &page,
            &format!("{channel} subscribed"),
            &format!("e.channel === '{channel}' && e.event === 'pusher:subscription_succeeded'"),
        )
        .await;
    }
    let presence = logged(
        &page,
        "presence-room subscribed",
        "e.channel === 'presence-room' && e.event === 'pusher:subscription_succeeded'",
    )
    .await;
    assert_eq!(presence["me"], "7", "{presence}");
    assert_eq!(presence["members"], json!(["7"]), "{presence}");
    // The auth endpoint's 403 is pusher-js's subscription_error.
    let refused = logged(
        &page,
        "the forbidden channel refused",
        "e.channel === 'private-forbidden-admin' && e.event === 'pusher:subscription_error'",
    )
    .await;
    assert_eq!(refused["status"], 403, "{refused}");
    // Every channel but the public one went through the auth endpoint.
    let mut authorized = Vec::new();
    for _ in 0..3 {
        let a = app.next_ev("auth").await;
        authorized.push(a["channel"].as_str().unwrap_or("").to_owned());
    }
    authorized.sort();
    assert_eq!(
        authorized,
        ["presence-room", "private-forbidden-admin", "private-orders"]
    );

    // Events the SDK triggers arrive on the three subscribed channels, and
    // not on the refused one.
    app.send(json!({"trigger": {
        "channels": ["public-news", "private-orders", "presence-room", "private-forbidden-admin"],
        "event": "order.shipped",
        "data": {"id": 7}
    }}))
    .await;
    assert_eq!(app.next_ev("triggered").await["status"], 200);
    for channel in ["public-news", "private-orders", "presence-room"] {
        let e = logged(
            &page,
            &format!("the event on {channel}"),
            &format!("e.channel === '{channel}' && e.event === 'order.shipped'"),
        )
        .await;
        assert_eq!(e["data"], json!({"id": 7}), "{e}");
    }
    assert_eq!(
        page.eval("window.log.filter(e => e.channel === 'private-forbidden-admin' && e.event === 'order.shipped').length")
            .await,
        Ok(json!(0))
    );

    // Another member (pusher-js in Node, signed by the same SDK) joins the
    // presence channel: the page sees member_added.
    let mut other = PusherClient::start(&gw.addr.to_string(), APP, KEY, SECRET).await;
    other.connected().await;
    other
        .send(json!({"subscribe": "presence-room", "member": {"user_id": "8", "user_info": {"name": "Bo"}}}))
        .await;
    let joined = other
        .event("presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(joined["members"], 2, "{joined}");
    let added = logged(
        &page,
        "member_added for user 8",
        "e.channel === 'presence-room' && e.event === 'pusher:member_added'",
    )
    .await;
    assert_eq!(added["data"]["id"], "8", "{added}");

    // Sign-in through the user authentication endpoint, then the SDK's
    // terminateUserConnections closes the page's connection (4009) and not
    // the other user's.
    page.eval("client.signin(), true").await.expect("signin");
    logged(&page, "signed in", "e.ev === 'signed_in'").await;
    assert_eq!(app.next_ev("user_auth").await["user"], "7");
    app.send(json!({"terminate": "7"})).await;
    assert_eq!(app.next_ev("terminated").await["status"], 200);
    let error = logged(
        &page,
        "the 4009 error",
        "e.ev === 'error' && e.error && e.error.code === 4009",
    )
    .await;
    assert!(error["error"]["message"].is_string(), "{error}");
    logged(
        &page,
        "the page disconnected",
        "e.ev === 'state' && e.state === 'disconnected'",
    )
    .await;
    // The other member sees the page's user leave; its own connection
    // stays up (a server event still reaches it).
    other.event("presence-room", "pusher:member_removed").await;
    app.send(json!({"trigger": {"channels": ["presence-room"], "event": "still", "data": 1}}))
        .await;
    assert_eq!(app.next_ev("triggered").await["status"], 200);
    other.event("presence-room", "still").await;
    assert!(
        page.errors().iter().all(|e| !e.starts_with("exception")),
        "{:?}",
        page.errors()
    );
}
