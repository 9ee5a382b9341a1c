//! Pusher Channels compatibility with the real binary: the real `pusher-js`
//! client in Node subscribing to public, private and presence channels with
//! authorizations signed by the real Pusher server SDK (`pusher` on npm),
//! events triggered through the SDK's `trigger` and `triggerBatch` (signed
//! requests), `socket_id` exclusion, client events, the protocol's errors
//! for wrong signatures, stale timestamps and unknown keys, and the same
//! channel shared with `redis-cli PUBLISH` and the native protocol; webhooks
//! in Pusher's format checked by the SDK's `webhook(request).isValid()`,
//! channel counts and `terminateUserConnections` across two gateways.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings_e2e::{
    pusher::{AppServer, PusherClient},
    redis::RedisServer,
    ws::Client,
    Gateway, GatewayOptions,
};
use tokio_tungstenite::tungstenite::Message;

const APP: &str = "1";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret-123";

const CONFIG: &str = r#"
[pusher]
enabled = true
client_events_per_sec = 5

[[pusher.apps]]
id = "1"
key = "app-key"
secret = "app-secret-123"
client_events = true

[[pusher.apps]]
id = "2"
key = "quiet-key"
secret = "quiet-secret-123"

[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/pusher/1/public-*"
subscribe = true
anonymous = true
"#;

async fn gateway(redis: &RedisServer) -> Gateway {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(CONFIG)
            .env("TIDINGS_REDIS_URL", redis.url()),
    )
    .await;
    gw.wait_ready().await;
    gw
}

async fn client(gw: &Gateway) -> PusherClient {
    PusherClient::start(&gw.addr.to_string(), APP, KEY, SECRET).await
}

/// Reads reports until every one of `keys` was seen, in any order: a
/// channel event's key is `channel/event`, anything else's its `ev`.
async fn all_of(c: &mut PusherClient, keys: &[&str]) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    while !keys.iter().all(|k| seen.contains_key(*k)) {
        let v = c.next().await;
        let key = if v["ev"] == "event" {
            format!(
                "{}/{}",
                v["channel"].as_str().unwrap_or(""),
                v["event"].as_str().unwrap_or("")
            )
        } else {
            v["ev"].as_str().unwrap_or("").to_owned()
        };
        seen.insert(key, v);
    }
    seen
}

async fn subscribed(c: &mut PusherClient, channel: &str) -> Value {
    c.send(json!({ "subscribe": channel })).await;
    c.event(channel, "pusher:subscription_succeeded").await
}

#[tokio::test]
async fn pusher_js_and_the_server_sdk_meet_redis_and_the_native_protocol() {
    let redis = RedisServer::start().await;
    let gw = gateway(&redis).await;
    let mut a = client(&gw).await;
    let socket_id = a.connected().await;
    let (x, y) = socket_id.split_once('.').expect("socket_id is N.N");
    assert!(
        x.parse::<u64>().is_ok() && y.parse::<u64>().is_ok(),
        "{socket_id}"
    );
    subscribed(&mut a, "public-news").await;
    subscribed(&mut a, "private-orders").await;

    // The server SDK's trigger (a signed request) reaches both channels.
    a.send(json!({"trigger": {"channels": ["public-news", "private-orders"], "event": "order.shipped", "data": {"id": 7}}}))
        .await;
    let got = all_of(
        &mut a,
        &[
            "triggered",
            "public-news/order.shipped",
            "private-orders/order.shipped",
        ],
    )
    .await;
    assert_eq!(got["triggered"]["status"], 200);
    assert_eq!(got["public-news/order.shipped"]["data"], json!({"id": 7}));
    assert_eq!(
        got["private-orders/order.shipped"]["data"],
        json!({"id": 7})
    );

    // triggerBatch.
    a.send(json!({"batch": [
        {"channel": "public-news", "name": "b1", "data": "one"},
        {"channel": "private-orders", "name": "b2", "data": "two"}
    ]}))
    .await;
    let got = all_of(
        &mut a,
        &["triggered", "public-news/b1", "private-orders/b2"],
    )
    .await;
    assert_eq!(got["triggered"]["status"], 200);
    assert_eq!(got["public-news/b1"]["data"], "one");
    assert_eq!(got["private-orders/b2"]["data"], "two");

    // redis-cli PUBLISH on the mapped channel: a named event, and a plain
    // payload as the default event.
    let mut r = redis.client().await;
    r.publish(
        "/pusher/1/public-news",
        br#"{"event":"from-redis","data":{"n":1}}"#,
    )
    .await;
    assert_eq!(
        a.event("public-news", "from-redis").await["data"],
        json!({"n": 1})
    );
    r.publish("/pusher/1/public-news", b"plain text").await;
    assert_eq!(
        a.event("public-news", "message").await["data"],
        "plain text"
    );

    // A native client on the same channel gets the SDK's events.
    let mut native = Client::connect(&gw.ws_url()).await;
    native.subscribe("/pusher/1/public-news").await;
    a.send(json!({"trigger": {"channels": ["public-news"], "event": "both", "data": "hi"}}))
        .await;
    let m = loop {
        let f = native.next_json().await;
        if f["type"] == "message" && f["channel"] == "/pusher/1/public-news" {
            break f;
        }
    };
    assert_eq!(m["data"]["event"], "both");
    assert_eq!(a.event("public-news", "both").await["data"], "hi");

    // The channel query endpoints, signed.
    a.send(json!({"get": "/channels"})).await;
    let got = a.next_ev("got").await;
    assert_eq!(got["status"], 200);
    assert!(
        got["body"]["channels"]["private-orders"].is_object(),
        "{got}"
    );
    a.send(json!({"get": "/channels/public-news"})).await;
    let got = a.next_ev("got").await;
    assert_eq!(got["body"]["occupied"], true, "{got}");
    assert_eq!(got["body"]["subscription_count"], 1, "{got}");
    a.kill().await;
}

#[tokio::test]
async fn wrong_signatures_stale_timestamps_and_unknown_keys_get_the_protocols_errors() {
    let redis = RedisServer::start().await;
    let gw = gateway(&redis).await;
    let mut a = client(&gw).await;
    a.connected().await;

    // A private channel authorized with the wrong secret.
    a.send(json!({"subscribe": "private-vault", "secret": "not-the-secret"}))
        .await;
    let e = a.event("private-vault", "pusher:subscription_error").await;
    assert_eq!(e["data"]["status"], 401, "{e}");
    let err = a.next_ev("error").await;
    assert_eq!(err["error"]["code"], 4009, "{err}");
    // Nothing published there reaches it.
    subscribed(&mut a, "public-after").await;
    let mut r = redis.client().await;
    r.publish("/pusher/1/private-vault", br#"{"event":"x","data":1}"#)
        .await;
    r.publish("/pusher/1/public-after", br#"{"event":"y","data":2}"#)
        .await;
    let next = a.next_where(|v| v["ev"] == "event").await;
    assert_eq!(next["event"], "y", "the unauthorized channel got {next}");

    // An API request signed with the wrong secret, and a stale one.
    a.send(json!({"trigger": {"channels": ["public-after"], "event": "e", "data": 1, "secret": "not-the-secret"}}))
        .await;
    let res = a.next_ev("request_error").await;
    assert_eq!(res["status"], 401, "{res}");
    assert!(res["body"].as_str().unwrap().contains("signature"), "{res}");
    a.send(json!({"trigger": {"channels": ["public-after"], "event": "e", "data": 1, "skew_secs": -700}}))
        .await;
    let res = a.next_ev("request_error").await;
    assert_eq!(res["status"], 401, "{res}");
    assert!(
        res["body"].as_str().unwrap().contains("auth_timestamp"),
        "{res}"
    );

    // An unknown key: pusher:error 4001, and the client does not retry.
    let mut stranger = PusherClient::start(&gw.addr.to_string(), APP, "no-such-key", SECRET).await;
    let err = stranger
        .next_where(|v| v["ev"] == "error" && !v["error"]["code"].is_null())
        .await;
    assert_eq!(err["error"]["code"], 4001, "{err}");
    let state = stranger.next_ev("state").await;
    assert_eq!(state["state"], "disconnected", "{state}");
    stranger.kill().await;
    a.kill().await;
}

#[tokio::test]
async fn socket_id_exclusion_client_events_and_presence() {
    let redis = RedisServer::start().await;
    let gw = gateway(&redis).await;
    let mut a = client(&gw).await;
    let mut b = client(&gw).await;
    a.connected().await;
    b.connected().await;
    subscribed(&mut a, "private-chat").await;
    subscribed(&mut b, "private-chat").await;
    subscribed(&mut a, "public-lobby").await;
    subscribed(&mut b, "public-lobby").await;

    // A trigger excluding A's socket reaches B only: A's next event is the
    // one after it.
    let not_excluded = |v: &Value| {
        assert_ne!(v["event"], "not-for-a", "A got what excluded it");
        assert_ne!(v["event"], "client-typing", "A got its own client event");
    };
    a.send(json!({"trigger": {"channels": ["private-chat"], "event": "not-for-a", "data": 1, "exclude_self": true}}))
        .await;
    let t = a
        .next_where(|v| {
            not_excluded(v);
            v["ev"] == "triggered"
        })
        .await;
    assert_eq!(t["status"], 200);
    b.event("private-chat", "not-for-a").await;
    a.send(json!({"trigger": {"channels": ["private-chat"], "event": "for-all", "data": 2}}))
        .await;
    a.next_where(|v| {
        not_excluded(v);
        v["event"] == "for-all"
    })
    .await;

    // A client event reaches B, not A; on a public channel it is refused.
    a.send(json!({"client_event": {"channel": "private-chat", "event": "client-typing", "data": {"who": "a"}}}))
        .await;
    let e = b.event("private-chat", "client-typing").await;
    assert_eq!(e["data"], json!({"who": "a"}));
    a.send(
        json!({"client_event": {"channel": "public-lobby", "event": "client-shout", "data": 1}}),
    )
    .await;
    a.next_where(|v| {
        not_excluded(v);
        v["ev"] == "error"
    })
    .await;
    // Over the rate limit (5 a second): 4301.
    for i in 0..8 {
        a.send(json!({"client_event": {"channel": "private-chat", "event": "client-burst", "data": i}}))
            .await;
    }
    let err = a
        .next_where(|v| v["ev"] == "error" && v["error"]["code"] == 4301)
        .await;
    assert_eq!(err["error"]["code"], 4301);
    // B saw no shout on the public channel: its next lobby event is this.
    a.send(json!({"trigger": {"channels": ["public-lobby"], "event": "marker", "data": 0}}))
        .await;
    let next = b
        .next_where(|v| v["ev"] == "event" && v["channel"] == "public-lobby")
        .await;
    assert_eq!(next["event"], "marker", "B got {next}");

    // Presence: members, member_added and member_removed.
    a.send(json!({"subscribe": "presence-room", "member": {"user_id": "ann", "user_info": {"name": "Ann"}}}))
        .await;
    let ok = a
        .event("presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(ok["members"], 1, "{ok}");
    b.send(json!({"subscribe": "presence-room", "member": {"user_id": "bob", "user_info": {"name": "Bob"}}}))
        .await;
    let ok = b
        .event("presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(ok["members"], 2, "{ok}");
    assert_eq!(ok["me"]["id"], "bob");
    let added = a.event("presence-room", "pusher:member_added").await;
    assert_eq!(added["data"]["id"], "bob", "{added}");
    b.send(json!({"unsubscribe": "presence-room"})).await;
    let removed = a.event("presence-room", "pusher:member_removed").await;
    assert_eq!(removed["data"]["id"], "bob", "{removed}");
    a.kill().await;
    b.kill().await;
}

#[tokio::test]
async fn client_events_are_off_unless_the_app_allows_them() {
    let redis = RedisServer::start().await;
    let gw = gateway(&redis).await;
    let mut q =
        PusherClient::start(&gw.addr.to_string(), "2", "quiet-key", "quiet-secret-123").await;
    q.connected().await;
    subscribed(&mut q, "private-x").await;
    q.send(json!({"client_event": {"channel": "private-x", "event": "client-a", "data": 1}}))
        .await;
    let err = q.next_ev("error").await;
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("client events")),
        "{err}"
    );
    // And app 2's channels are not app 1's.
    let mut r = redis.client().await;
    assert_eq!(r.publish("/pusher/1/private-x", b"x").await, 0);
    assert_eq!(r.publish("/pusher/2/private-x", b"x").await, 1);
    q.kill().await;
}

#[tokio::test]
async fn presence_is_right_across_two_gateways() {
    let redis = RedisServer::start().await;
    let gw1 = gateway(&redis).await;
    let gw2 = gateway(&redis).await;
    let mut a = client(&gw1).await;
    let mut b = PusherClient::start(&gw2.addr.to_string(), APP, KEY, SECRET).await;
    a.connected().await;
    b.connected().await;
    a.send(json!({"subscribe": "presence-hall", "member": {"user_id": 1, "user_info": {"name": "Ann"}}}))
        .await;
    let ok = a
        .event("presence-hall", "pusher:subscription_succeeded")
        .await;
    assert_eq!(ok["members"], 1, "{ok}");
    // Bob, on the other gateway, sees Ann in his list.
    b.send(json!({"subscribe": "presence-hall", "member": {"user_id": 2, "user_info": {"name": "Bob"}}}))
        .await;
    let ok = b
        .event("presence-hall", "pusher:subscription_succeeded")
        .await;
    assert_eq!(ok["members"], 2, "{ok}");
    let added = a.event("presence-hall", "pusher:member_added").await;
    assert_eq!(added["data"]["id"], "2", "{added}");
    assert_eq!(added["data"]["info"]["name"], "Bob", "{added}");
    // The users endpoint counts both gateways' members.
    a.send(json!({"get": "/channels/presence-hall/users"}))
        .await;
    let got = a.next_ev("got").await;
    assert_eq!(
        got["body"]["users"].as_array().map(Vec::len),
        Some(2),
        "{got}"
    );
    // Bob's connection goes: Ann is told.
    b.kill().await;
    let removed = a.event("presence-hall", "pusher:member_removed").await;
    assert_eq!(removed["data"]["id"], "2", "{removed}");
    a.kill().await;
}

#[tokio::test]
async fn a_draining_gateway_closes_with_4200_and_pusher_js_reconnects() {
    let redis = RedisServer::start().await;
    let mut gw = gateway(&redis).await;
    let mut a = client(&gw).await;
    a.connected().await;
    subscribed(&mut a, "public-x").await;
    // And a raw WebSocket, to see the close code itself.
    let url = format!("ws://{}/app/{KEY}?protocol=7", gw.addr);
    let (mut raw, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let first = raw.next().await.expect("a frame").expect("ok");
    assert!(
        first
            .to_text()
            .unwrap()
            .contains("pusher:connection_established"),
        "{first:?}"
    );
    gw.sigterm();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(15), raw.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4200);
    // 4200: reconnect at once (pusher-js goes back to connecting, not to
    // failed or unavailable first).
    let state = a
        .next_where(|v| v["ev"] == "state" && v["state"] != "connected")
        .await;
    assert_eq!(state["state"], "connecting", "{state}");
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
    a.kill().await;
}

/// Reads the app server's webhook reports until `want` events (each
/// `{"name": ..., ...}` matched on the fields it gives) were all received,
/// in any order; every POST must be valid by the SDK's check and carry the
/// app's key. Returns every event received meanwhile.
async fn webhooks_until(app: &mut AppServer, want: &[Value]) -> Vec<Value> {
    let matches = |e: &Value, w: &Value| {
        w.as_object()
            .expect("an object")
            .iter()
            .all(|(k, v)| &e[k] == v)
    };
    let mut got: Vec<Value> = Vec::new();
    while !want.iter().all(|w| got.iter().any(|e| matches(e, w))) {
        let hook = app.next_ev("webhook").await;
        assert_eq!(hook["valid"], true, "the SDK's signature check: {hook}");
        assert_eq!(hook["key"], KEY, "{hook}");
        got.extend(hook["events"].as_array().expect("events").iter().cloned());
    }
    got
}

#[tokio::test]
async fn webhooks_channel_counts_and_terminate_connections_across_two_gateways() {
    let redis = RedisServer::start().await;
    let mut app = AppServer::start(APP, KEY, SECRET).await;
    let config = format!(
        r#"
[pusher]
enabled = true

[[pusher.apps]]
id = "{APP}"
key = "{KEY}"
secret = "{SECRET}"
client_events = true
webhooks = [{{ url = "{url}/webhook" }}]
"#,
        url = app.url()
    );
    let start = || async {
        let gw = Gateway::start_with(
            GatewayOptions::default()
                .toml(&config)
                .env("TIDINGS_REDIS_URL", redis.url()),
        )
        .await;
        gw.wait_ready().await;
        gw
    };
    let gw1 = start().await;
    let gw2 = start().await;
    app.use_gateway(&gw1.addr.to_string()).await;
    let mut a = client(&gw1).await;
    let mut b = PusherClient::start(&gw2.addr.to_string(), APP, KEY, SECRET).await;
    a.connected().await;
    b.connected().await;

    // Ann on the first gateway: the channel is occupied, Ann is added.
    a.send(json!({"subscribe": "presence-hall", "member": {"user_id": "1", "user_info": {}}}))
        .await;
    a.event("presence-hall", "pusher:subscription_succeeded")
        .await;
    let first = webhooks_until(
        &mut app,
        &[
            json!({"name": "channel_occupied", "channel": "presence-hall"}),
            json!({"name": "member_added", "channel": "presence-hall", "user_id": "1"}),
        ],
    )
    .await;
    assert_eq!(first.len(), 2, "{first:?}");
    // Bob on the other gateway: added, and the channel is not occupied a
    // second time.
    b.send(json!({"subscribe": "presence-hall", "member": {"user_id": "2", "user_info": {}}}))
        .await;
    b.event("presence-hall", "pusher:subscription_succeeded")
        .await;
    let second = webhooks_until(
        &mut app,
        &[json!({"name": "member_added", "channel": "presence-hall", "user_id": "2"})],
    )
    .await;
    assert!(
        second.iter().all(|e| e["name"] != "channel_occupied"),
        "{second:?}"
    );

    // The channel's counts, asked of the first gateway, are both
    // gateways'.
    app.send(json!({"get": "/channels/presence-hall", "params": {"info": "user_count,subscription_count"}}))
        .await;
    let got = app.next_ev("got").await;
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["body"]["occupied"], true, "{got}");
    assert_eq!(got["body"]["subscription_count"], 2, "{got}");
    assert_eq!(got["body"]["user_count"], 2, "{got}");

    // A client event: to Bob, and to the webhook with its sender.
    a.send(json!({"client_event": {"channel": "presence-hall", "event": "client-wave", "data": {"hi": 1}}}))
        .await;
    b.event("presence-hall", "client-wave").await;
    let sent = webhooks_until(
        &mut app,
        &[json!({"name": "client_event", "channel": "presence-hall", "event": "client-wave", "user_id": "1"})],
    )
    .await;
    let ce = sent
        .iter()
        .find(|e| e["name"] == "client_event")
        .expect("client_event");
    assert_eq!(ce["data"], r#"{"hi":1}"#, "{ce}");
    assert!(ce["socket_id"].is_string(), "{ce}");

    // Bob signs in on the second gateway; terminateUserConnections through
    // the first closes his connection (4009), and he leaves.
    b.send(json!({"signin": {"id": "2", "name": "Bob"}})).await;
    b.next_ev("signed_in").await;
    app.send(json!({"terminate": "2"})).await;
    assert_eq!(app.next_ev("terminated").await["status"], 200);
    let err = b
        .next_where(|v| v["ev"] == "error" && v["error"]["code"] == 4009)
        .await;
    assert!(err["error"]["message"].is_string(), "{err}");
    let removed = a.event("presence-hall", "pusher:member_removed").await;
    assert_eq!(removed["data"]["id"], "2", "{removed}");
    webhooks_until(
        &mut app,
        &[json!({"name": "member_removed", "channel": "presence-hall", "user_id": "2"})],
    )
    .await;
    // A signature by the wrong secret is refused.
    a.send(json!({"trigger": {"channels": ["presence-hall"], "event": "x", "data": 1, "secret": "not-the-secret"}}))
        .await;
    assert_eq!(a.next_ev("request_error").await["status"], 401);

    // Ann leaves: the last member and the last subscription.
    a.send(json!({"unsubscribe": "presence-hall"})).await;
    let last = webhooks_until(
        &mut app,
        &[
            json!({"name": "member_removed", "channel": "presence-hall", "user_id": "1"}),
            json!({"name": "channel_vacated", "channel": "presence-hall"}),
        ],
    )
    .await;
    assert!(
        last.iter().all(|e| e["name"] != "channel_occupied"),
        "{last:?}"
    );
    app.send(json!({"get": "/channels/presence-hall", "params": {"info": "subscription_count"}}))
        .await;
    let got = app.next_ev("got").await;
    assert_eq!(got["body"]["occupied"], false, "{got}");
    assert_eq!(got["body"]["subscription_count"], 0, "{got}");
    a.kill().await;
}
