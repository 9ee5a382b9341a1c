//! Channel routing through the real binary: every facility (broadcast,
//! per-user, per-group, per-session, attribute, pattern) reaches exactly the
//! right sockets over a real Redis; a Channels-style chat room where clients
//! publish and every message carries its sender's id, which no client can
//! forge; client publish across two gateways; refused requests and hostile
//! identity values; the per-socket rate limit; and RPC to a real HTTP
//! backend (forwarded cookie, errors, timeouts, limits).
//!
//! Identities come from one-time tokens minted over `POST /api/tokens`
//! (`identity.resolvers = ["token"]`), so a test can give a socket any
//! identity, hostile ones included.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    http,
    redis::{RedisServer, Reply, Resp},
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::{
    net::TcpStream,
    time::{sleep, timeout, Instant},
};
use tokio_tungstenite::{tungstenite::Message as WsMessage, MaybeTlsStream, WebSocketStream};

/// How long "nothing arrives" is watched for.
const SHORT: Duration = Duration::from_millis(300);

const RESOLVERS: &str = "TIDINGS_IDENTITY__RESOLVERS";

/// The ws4redis facilities plus a subscribe-only pattern rule and a pattern
/// joined on connect.
const FACILITIES: &str = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/group/{group}"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/session/{session}"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/tenant/{attr.tenant}/feed"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/room/*"
subscribe = true

[[routing.rules]]
channel = "/app/alerts/*"
join = true
"#;

/// A Channels-style chat: each member joins the room named by its `room`
/// attribute and may publish there; anyone (anonymous visitors too) may
/// subscribe to and publish on `/app/lobby`.
const CHAT: &str = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/room/{attr.room}"
join = true
publish = true

[[routing.rules]]
channel = "/app/lobby"
subscribe = true
publish = true
anonymous = true
"#;

// ---------------------------------------------------------------- helpers

/// A gateway whose sockets are identified by one-time tokens, with `rules`.
fn with_tokens(rules: &str) -> GatewayOptions {
    GatewayOptions::default()
        .env(RESOLVERS, r#"["token"]"#)
        .toml(rules)
}

/// Like [`with_tokens`], on the Redis `redis` (tokens live there too).
fn on_redis(redis: &RedisServer, rules: &str) -> GatewayOptions {
    with_tokens(rules).env("TIDINGS_REDIS_URL", redis.url())
}

/// Starts a gateway and waits until `/readyz` says it is ready (its broker
/// connected).
async fn start_ready(opts: GatewayOptions) -> Gateway {
    let gw = Gateway::start_with(opts).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if http::get(gw.addr, "/readyz").await.status == 200 {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "gateway not ready in time; logs:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Mints a one-time token for `identity` over the HTTP API. Right after
/// startup the token store's Redis connection may still be coming up while
/// `/readyz` already says 200 (a known gap, checked by
/// `identity.rs::ready_means_tokens_can_be_redeemed`): a 503 is retried.
async fn mint(gw: &Gateway, identity: &Value) -> String {
    let body = json!({"identity": identity, "ttl_secs": 30}).to_string();
    let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = http::request(gw.addr, "POST", "/api/tokens", &headers, body.as_bytes()).await;
        if r.status == 503 && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(r.status, 201, "mint a token for {identity}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("token JSON");
        return v["token"].as_str().expect("a token").to_owned();
    }
}

/// Waits until the socket's joins are done: the session reads its first
/// request only once they are, so the answer to a ping proves them.
async fn settle(c: &mut Client) {
    c.send_json(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(c.next_json().await, json!({"type":"pong","id":"settle"}));
}

/// Connects as `identity` (through a fresh token), with extra upgrade
/// headers, and settles.
async fn connect_as_with(gw: &Gateway, identity: Value, headers: &[(&str, &str)]) -> Client {
    let token = mint(gw, &identity).await;
    let url = format!("{}?token={token}", gw.ws_url());
    let mut c = match Client::connect_with(&url, headers).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade as {identity} refused: {} {}", r.status, r.body),
    };
    settle(&mut c).await;
    c
}

/// Connects as `identity` and settles.
async fn connect_as(gw: &Gateway, identity: Value) -> Client {
    connect_as_with(gw, identity, &[]).await
}

/// Connects without a token (an anonymous visitor) and settles.
async fn connect_anonymous(gw: &Gateway) -> Client {
    let mut c = Client::connect(&gw.ws_url()).await;
    assert_eq!(c.welcome["user"], Value::Null, "{}", c.welcome);
    settle(&mut c).await;
    c
}

/// A message published by a server-side publisher (no sender).
fn message(channel: &str, data: Value) -> Value {
    json!({"type":"message","channel":channel,"data":data})
}

/// A message a client (or the backend on a user's behalf) published.
fn stamped(channel: &str, from: Value, data: Value) -> Value {
    json!({"type":"message","channel":channel,"from":from,"data":data})
}

/// Asserts that `c`'s next frame is `expected`.
async fn expect(c: &mut Client, who: &str, expected: &Value) {
    match c.next_json_within(PATIENCE).await {
        Some(f) => assert_eq!(&f, expected, "{who}"),
        None => panic!("{who} received nothing; expected {expected}"),
    }
}

/// Asserts that `c`'s next frame is `expected` at `offset` of the channel's
/// history (the default user notification rule keeps one).
async fn expect_at(c: &mut Client, expected: &Value, offset: u64) {
    let mut f = c
        .next_json_within(PATIENCE)
        .await
        .unwrap_or_else(|| panic!("received nothing; expected {expected}"));
    assert_eq!(f["offset"], json!(offset), "{f}");
    assert!(f["epoch"].is_string(), "{f}");
    let o = f.as_object_mut().expect("an object");
    o.remove("offset");
    o.remove("epoch");
    assert_eq!(&f, expected);
}

/// Asserts that `c` receives nothing for a while.
async fn expect_silence(c: &mut Client, who: &str) {
    if let Some(f) = c.next_json_within(SHORT).await {
        panic!("{who} must receive nothing, got {f}");
    }
}

/// `POST /api/publish`, asserting it was accepted.
async fn publish_http(gw: &Gateway, channel: &str, data: Value) {
    let r = gw.publish(channel, data).await;
    assert_eq!(r.status, 202, "publish on {channel}: {}", r.body);
}

/// Sends `request` and asserts the very next frame is an error with `code`
/// echoing the request's id.
async fn expect_error(c: &mut Client, who: &str, request: Value, code: &str) {
    c.send_json(request.clone()).await;
    let f = c.next_json().await;
    assert_eq!(f["type"], "error", "{who}: {request} -> {f}");
    assert_eq!(f["code"], code, "{who}: {request} -> {f}");
    assert_eq!(f["id"], request["id"], "{who}: {request} -> {f}");
}

/// A client publish: sends it and reads the `published` ack, plus the
/// publisher's own copy when it is a member of the channel (`echo`; the
/// two may come in either order: the ack is a reply, the copy a delivery).
async fn client_publish(
    c: &mut Client,
    who: &str,
    channel: &str,
    data: Value,
    echo: Option<Value>,
) {
    let id = format!("pub-{}", data);
    c.send_json(json!({"type":"publish","channel":channel,"data":data,"id":id}))
        .await;
    let ack = json!({"type":"published","channel":channel,"id":id});
    let mut want = vec![ack];
    want.extend(echo);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(c.next_json().await);
    }
    for w in &want {
        assert!(got.contains(w), "{who}: expected {w} among {got:?}");
    }
}

/// A RESP connection subscribed to `channel`, to see what other Redis
/// subscribers see.
async fn redis_listener(redis: &RedisServer, channel: &str) -> Resp {
    let mut sub = redis.client().await;
    match sub.cmd(&["SUBSCRIBE", channel]).await {
        Reply::Array(v) if v.first().and_then(Reply::as_str) == Some("subscribe") => {}
        other => panic!("SUBSCRIBE {channel}: {other:?}"),
    }
    sub
}

/// The first message `sub` received on its channel, once a publish on it is
/// known to be done. The minimal RESP client only reads a reply to a
/// command, so this sends a PING: in subscribed mode Redis queues the
/// pending message ahead of the PING's answer, and that message is what is
/// read. Use once per listener.
async fn first_payload(sub: &mut Resp, channel: &str) -> Vec<u8> {
    match sub.cmd(&["PING"]).await {
        Reply::Array(v) if v.len() == 3 && v[0].as_str() == Some("message") => {
            assert_eq!(v[1].as_str(), Some(channel));
            match &v[2] {
                Reply::Bulk(Some(b)) => b.clone(),
                other => panic!("payload {other:?}"),
            }
        }
        other => panic!("expected a message on {channel}, got {other:?}"),
    }
}

// ------------------------------------------------------------- facilities

/// Every facility over a real Redis, published with `PUBLISH` (as a Django
/// app would) or the HTTP API: each message reaches exactly the sockets its
/// channel names, in order, and nothing else reaches anyone.
#[tokio::test]
async fn every_facility_reaches_exactly_the_right_sockets() {
    let redis = RedisServer::start().await;
    let gw = start_ready(on_redis(&redis, FACILITIES)).await;
    let mut resp = redis.client().await;

    let alice_identity =
        json!({"user":"1","session":"sa","groups":["staff","ops"],"attributes":{"tenant":"acme"}});
    let mut alice = connect_as(&gw, alice_identity).await;
    // Alice's second tab: same user, groups and tenant, another session.
    let mut alice2 = connect_as(
        &gw,
        json!({"user":1,"session":"sb","groups":["staff","ops"],"attributes":{"tenant":"acme"}}),
    )
    .await;
    let mut bob = connect_as(
        &gw,
        json!({"user":"2","session":"sc","groups":["staff"],"attributes":{"tenant":"globex"}}),
    )
    .await;
    let mut carol = connect_as(
        &gw,
        json!({"user":"3","session":"sd","attributes":{"tenant":"acme"}}),
    )
    .await;
    let mut anon = connect_anonymous(&gw).await;

    // What each joined on connect, as the welcome says.
    assert_eq!(alice.welcome["user"], "1");
    assert_eq!(
        alice.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/1/notifications",
            "/app/group/staff",
            "/app/group/ops",
            "/app/session/sa",
            "/app/tenant/acme/feed"
        ])
    );
    assert_eq!(alice.welcome["patterns"], json!(["/app/alerts/*"]));
    assert_eq!(
        bob.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/2/notifications",
            "/app/group/staff",
            "/app/session/sc",
            "/app/tenant/globex/feed"
        ])
    );
    assert_eq!(
        carol.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/3/notifications",
            "/app/session/sd",
            "/app/tenant/acme/feed"
        ])
    );
    assert_eq!(anon.welcome["channels"], json!(["/app/broadcast"]));
    assert_eq!(anon.welcome["patterns"], json!([]));

    // The pattern rule grants exact rooms on request, to logged-in users.
    alice.subscribe("/app/room/7").await;
    carol.subscribe("/app/room/7").await;
    bob.subscribe("/app/room/8").await;
    expect_error(
        &mut anon,
        "anonymous",
        json!({"type":"subscribe","channel":"/app/room/7","id":"r"}),
        "forbidden",
    )
    .await;

    const A: usize = 0;
    const A2: usize = 1;
    const B: usize = 2;
    const C: usize = 3;
    const N: usize = 4;
    let names = ["alice", "alice's 2nd tab", "bob", "carol", "anonymous"];
    // (channel, through Redis PUBLISH rather than the HTTP API, recipients)
    let plan: &[(&str, bool, &[usize])] = &[
        ("/app/broadcast", true, &[A, A2, B, C, N]),
        ("/app/user/1/notifications", true, &[A, A2]),
        ("/app/user/2/notifications", false, &[B]),
        ("/app/user/4/notifications", true, &[]),
        ("/app/group/staff", true, &[A, A2, B]),
        ("/app/group/ops", false, &[A, A2]),
        ("/app/group/admins", true, &[]),
        ("/app/session/sa", true, &[A]),
        ("/app/session/sc", false, &[B]),
        ("/app/tenant/acme/feed", true, &[A, A2, C]),
        ("/app/tenant/globex/feed", false, &[B]),
        ("/app/room/7", true, &[A, C]),
        ("/app/room/8", false, &[B]),
        ("/app/room/9", true, &[]),
        ("/app/alerts/disk", true, &[A, A2, B, C]),
        ("/app/broadcast", false, &[A, A2, B, C, N]),
    ];
    for (n, (channel, via_redis, recipients)) in plan.iter().enumerate() {
        let data = json!({"n": n, "on": channel});
        if *via_redis {
            resp.publish(channel, data.to_string().as_bytes()).await;
        } else {
            publish_http(&gw, channel, data.clone()).await;
        }
        let mut expected = message(channel, data);
        if channel.starts_with("/app/alerts/") {
            expected["pattern"] = json!("/app/alerts/*");
        }
        let clients = [&mut alice, &mut alice2, &mut bob, &mut carol, &mut anon];
        for &r in recipients.iter() {
            expect(clients[r], names[r], &expected).await;
        }
    }
    // Each socket saw exactly its messages, in order; nothing else came.
    for (c, who) in [&mut alice, &mut alice2, &mut bob, &mut carol, &mut anon]
        .into_iter()
        .zip(names)
    {
        expect_silence(c, who).await;
    }
}

// -------------------------------------------------------------- chat room

/// A chat room over a real Redis: members publish, every member (the
/// sender too) gets each message stamped with the sender's id; a client
/// cannot forge the sender; an anonymous publisher is `null`; other Redis
/// subscribers see the envelope; the backend may publish on a user's behalf.
#[tokio::test]
async fn chat_room_messages_carry_the_senders_id_and_cannot_be_forged() {
    let redis = RedisServer::start().await;
    let gw = start_ready(on_redis(&redis, CHAT)).await;
    let mut alice = connect_as(&gw, json!({"user":"1","attributes":{"room":"lobby"}})).await;
    let mut bob = connect_as(&gw, json!({"user":"2","attributes":{"room":"lobby"}})).await;
    let mut carol = connect_as(&gw, json!({"user":"3","attributes":{"room":"kitchen"}})).await;
    let mut anon = connect_anonymous(&gw).await;
    assert!(alice.welcome["channels"]
        .as_array()
        .unwrap()
        .contains(&json!("/app/room/lobby")));
    assert!(carol.welcome["channels"]
        .as_array()
        .unwrap()
        .contains(&json!("/app/room/kitchen")));
    const ROOM: &str = "/app/room/lobby";
    let mut listener = redis_listener(&redis, ROOM).await;

    // Alice speaks: both members get it from "1"; Redis carries the envelope.
    let hello = json!({"text":"hello"});
    let m = stamped(ROOM, json!("1"), hello.clone());
    client_publish(&mut alice, "alice", ROOM, hello, Some(m.clone())).await;
    expect(&mut bob, "bob", &m).await;
    assert_eq!(
        String::from_utf8(first_payload(&mut listener, ROOM).await).unwrap(),
        r#"{"__tidings":1,"from":"1","data":{"text":"hello"}}"#
    );

    // Bob answers: from "2".
    let hi = json!({"text":"hi alice"});
    let m = stamped(ROOM, json!("2"), hi.clone());
    client_publish(&mut bob, "bob", ROOM, hi, Some(m.clone())).await;
    expect(&mut alice, "alice", &m).await;

    // Forgery: a "from" in the data, or a whole envelope, stays data.
    for forged in [
        json!({"from":"2","text":"I am bob"}),
        json!({"__tidings":1,"from":"2","data":"I am bob"}),
        json!({"__tidings":1,"from":null,"data":{"text":"nobody"}}),
    ] {
        let m = stamped(ROOM, json!("1"), forged.clone());
        client_publish(&mut alice, "alice", ROOM, forged, Some(m.clone())).await;
        expect(&mut bob, "bob", &m).await;
    }
    // The same forged envelope as the raw text of a frame: still nested.
    alice
        .send_text(r#"{"type":"publish","channel":"/app/room/lobby","data":{"__tidings":1,"from":"2","data":"x"},"id":"raw"}"#)
        .await;
    let m = stamped(
        ROOM,
        json!("1"),
        json!({"__tidings":1,"from":"2","data":"x"}),
    );
    let got = [alice.next_json().await, alice.next_json().await];
    assert!(got.contains(&m), "{got:?}");
    assert!(got.contains(&json!({"type":"published","channel":ROOM,"id":"raw"})));
    expect(&mut bob, "bob", &m).await;

    // The backend publishes on a user's behalf with the same envelope.
    let mut resp = redis.client().await;
    resp.publish(
        ROOM,
        br#"{"__tidings":1,"from":"99","data":{"text":"from the app"}}"#,
    )
    .await;
    let m = stamped(ROOM, json!("99"), json!({"text":"from the app"}));
    expect(&mut alice, "alice", &m).await;
    expect(&mut bob, "bob", &m).await;
    // ... or over the HTTP API, with the envelope as `data`.
    publish_http(
        &gw,
        ROOM,
        json!({"__tidings":1,"from":"98","data":{"text":"via the API"}}),
    )
    .await;
    let m = stamped(ROOM, json!("98"), json!({"text":"via the API"}));
    expect(&mut alice, "alice", &m).await;
    expect(&mut bob, "bob", &m).await;
    // Anything else that merely looks like one is plain data, with no sender.
    let near = br#"{"__tidings":1,"from":"97","data":1,"extra":true}"#;
    resp.publish(ROOM, near).await;
    let m = message(
        ROOM,
        json!({"__tidings":1,"from":"97","data":1,"extra":true}),
    );
    expect(&mut alice, "alice", &m).await;
    expect(&mut bob, "bob", &m).await;

    // An anonymous publisher where a rule allows it: from null.
    const LOBBY: &str = "/app/lobby";
    alice.subscribe(LOBBY).await;
    bob.subscribe(LOBBY).await;
    anon.subscribe(LOBBY).await;
    let note = json!({"text":"psst"});
    let m = stamped(LOBBY, Value::Null, note.clone());
    client_publish(&mut anon, "anonymous", LOBBY, note, Some(m.clone())).await;
    expect(&mut alice, "alice", &m).await;
    expect(&mut bob, "bob", &m).await;
    // A member there is stamped too.
    let m = stamped(LOBBY, json!("2"), json!(7));
    client_publish(&mut bob, "bob", LOBBY, json!(7), Some(m.clone())).await;
    expect(&mut alice, "alice", &m).await;
    expect(&mut anon, "anonymous", &m).await;

    // A user id full of JSON syntax is carried as a string, never spliced.
    let tricky = r#"5","from":"1"#;
    let mut mallory = connect_as(&gw, json!({"user": tricky, "attributes":{"room":"lobby"}})).await;
    let m = stamped(ROOM, json!(tricky), json!({"text":"who am I"}));
    client_publish(
        &mut mallory,
        "mallory",
        ROOM,
        json!({"text":"who am I"}),
        Some(m.clone()),
    )
    .await;
    expect(&mut alice, "alice", &m).await;
    expect(&mut bob, "bob", &m).await;

    // Outsiders may not speak in the room.
    expect_error(
        &mut carol,
        "carol",
        json!({"type":"publish","channel":ROOM,"data":"intrude","id":1}),
        "forbidden",
    )
    .await;
    expect_error(
        &mut anon,
        "anonymous",
        json!({"type":"publish","channel":ROOM,"data":"intrude","id":2}),
        "forbidden",
    )
    .await;
    expect_error(
        &mut anon,
        "anonymous",
        json!({"type":"subscribe","channel":ROOM,"id":3}),
        "forbidden",
    )
    .await;

    for (c, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut anon, "anonymous"),
        (&mut mallory, "mallory"),
    ] {
        expect_silence(c, who).await;
    }
}

/// Client publish through one gateway reaches the members on another
/// gateway sharing the Redis, stamped the same.
#[tokio::test]
async fn client_publish_reaches_members_on_every_gateway() {
    let redis = RedisServer::start().await;
    let gw1 = start_ready(on_redis(&redis, CHAT)).await;
    let gw2 = start_ready(on_redis(&redis, CHAT)).await;
    const ROOM: &str = "/app/room/lobby";
    let mut alice = connect_as(&gw1, json!({"user":"1","attributes":{"room":"lobby"}})).await;
    let mut bob = connect_as(&gw2, json!({"user":"2","attributes":{"room":"lobby"}})).await;
    // A token is redeemable on any gateway of the Redis.
    let token = mint(&gw1, &json!({"user":"4","attributes":{"room":"lobby"}})).await;
    let mut dave = Client::connect(&format!("{}?token={token}", gw2.ws_url())).await;
    assert_eq!(dave.welcome["user"], "4");
    settle(&mut dave).await;
    let mut carol = connect_as(&gw2, json!({"user":"3","attributes":{"room":"kitchen"}})).await;

    let m = stamped(ROOM, json!("1"), json!({"text":"from gateway 1"}));
    client_publish(
        &mut alice,
        "alice",
        ROOM,
        json!({"text":"from gateway 1"}),
        Some(m.clone()),
    )
    .await;
    expect(&mut bob, "bob", &m).await;
    expect(&mut dave, "dave", &m).await;

    let m = stamped(ROOM, json!("2"), json!({"text":"from gateway 2"}));
    client_publish(
        &mut bob,
        "bob",
        ROOM,
        json!({"text":"from gateway 2"}),
        Some(m.clone()),
    )
    .await;
    expect(&mut alice, "alice", &m).await;
    expect(&mut dave, "dave", &m).await;

    for (c, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut dave, "dave"),
        (&mut carol, "carol"),
    ] {
        expect_silence(c, who).await;
    }
}

// ------------------------------------------------------ refusals, hostile ids

/// Subscribing to or publishing on channels no rule grants is refused with
/// `forbidden`, and what is then published there reaches only its owners.
#[tokio::test]
async fn channels_no_rule_grants_are_refused() {
    let gw = start_ready(with_tokens(FACILITIES)).await;
    let mut alice = connect_as(
        &gw,
        json!({"user":"1","groups":["staff"],"channels":["/app/report/9","/app/*"]}),
    )
    .await;
    let mut bob = connect_as(&gw, json!({"user":"2","groups":["admins"]})).await;
    let mut anon = connect_anonymous(&gw).await;

    // Identity-granted channels: the valid one is joined, the glob one is not.
    assert_eq!(
        alice.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/1/notifications",
            "/app/group/staff",
            "/app/report/9"
        ])
    );
    assert_eq!(alice.welcome["patterns"], json!(["/app/alerts/*"]));

    let sub = |channel: &str, id: u32| json!({"type":"subscribe","channel":channel,"id":id});
    let publ =
        |channel: &str, id: u32| json!({"type":"publish","channel":channel,"data":{"x":1},"id":id});
    for (n, (req, code)) in [
        (sub("/app/user/2/notifications", 1), "forbidden"),
        (publ("/app/user/2/notifications", 2), "forbidden"),
        // Her own channels are subscribe-only.
        (publ("/app/user/1/notifications", 3), "forbidden"),
        (publ("/app/broadcast", 4), "forbidden"),
        (publ("/app/group/staff", 5), "forbidden"),
        (sub("/app/group/admins", 6), "forbidden"),
        (publ("/app/group/admins", 7), "forbidden"),
        (sub("/app/secret", 8), "forbidden"),
        (publ("/app/secret", 9), "forbidden"),
        // A pattern rule never grants publishing.
        (publ("/app/room/1", 10), "forbidden"),
        (sub("/app/alerts/disk", 11), "forbidden"),
        (sub("/app/room/*", 12), "invalid_channel"),
        (publ("/app/*", 13), "invalid_channel"),
        (publ("/app/report/9", 14), "forbidden"),
    ]
    .into_iter()
    .enumerate()
    {
        expect_error(&mut alice, &format!("alice #{n}"), req, code).await;
    }
    expect_error(&mut bob, "bob", sub("/app/report/9", 20), "forbidden").await;
    expect_error(&mut bob, "bob", sub("/app/group/staff", 21), "forbidden").await;
    for (n, ch) in [
        "/app/user/1/notifications",
        "/app/room/1",
        "/app/group/staff",
        "/app/report/9",
    ]
    .into_iter()
    .enumerate()
    {
        expect_error(&mut anon, "anonymous", sub(ch, 30 + n as u32), "forbidden").await;
    }

    // What is published on those channels reaches only their owners.
    publish_http(&gw, "/app/user/2/notifications", json!("for bob")).await;
    publish_http(&gw, "/app/group/admins", json!("for admins")).await;
    publish_http(&gw, "/app/report/9", json!("report")).await;
    publish_http(&gw, "/app/secret", json!("nobody")).await;
    expect(
        &mut bob,
        "bob",
        &message("/app/user/2/notifications", json!("for bob")),
    )
    .await;
    expect(
        &mut bob,
        "bob",
        &message("/app/group/admins", json!("for admins")),
    )
    .await;
    expect(
        &mut alice,
        "alice",
        &message("/app/report/9", json!("report")),
    )
    .await;
    for (c, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut anon, "anonymous"),
    ] {
        expect_silence(c, who).await;
    }
}

/// Identity values that would change a channel's meaning make the rules
/// using them not apply (and unsafe groups are skipped): no socket with a
/// hostile id gets anybody's channel, and nothing published reaches it.
#[tokio::test]
async fn hostile_identity_values_produce_no_channels() {
    let gw = start_ready(with_tokens(FACILITIES)).await;
    let mut seven = connect_as(&gw, json!({"user":"7","groups":["staff"]})).await;
    let long = "9".repeat(200);
    let hostile = [
        "42/../7", "*", "a?b", "[7]", "..", ".", "7\\", "{user}", "a\u{7}b", &long,
    ];
    // An empty user id is no user at all: an anonymous visitor.
    let empty = connect_as(&gw, json!({"user": "", "groups": ["staff"]})).await;
    assert_eq!(empty.welcome["user"], Value::Null, "{}", empty.welcome);
    assert!(
        !empty.welcome["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("/app/user/")),
        "{}",
        empty.welcome
    );
    let mut sockets = Vec::new();
    for evil in hostile {
        let c = connect_as(
            &gw,
            json!({
                "user": evil,
                "session": evil,
                "groups": ["staff", evil, "../admins", "*", "st?ff"],
                "attributes": {"tenant": evil},
                "channels": [format!("/app/user/{evil}/x")],
            }),
        )
        .await;
        let mut want = vec![json!("/app/broadcast"), json!("/app/group/staff")];
        // A granted channel is taken as given, when it is a valid name.
        let granted = format!("/app/user/{evil}/x");
        if tidings_valid(&granted) {
            want.push(json!(granted));
        }
        assert_eq!(c.welcome["user"], json!(evil));
        assert_eq!(c.welcome["channels"], Value::Array(want), "user {evil:?}");
        // The alerts pattern rule has no placeholder: it applies as usual.
        assert_eq!(c.welcome["patterns"], json!(["/app/alerts/*"]), "{evil:?}");
        sockets.push((evil.to_owned(), c));
    }
    for (evil, c) in &mut sockets {
        for (n, ch) in [
            "/app/user/7/notifications".to_owned(),
            format!("/app/user/{evil}/notifications"),
            "/app/user/42/../7/notifications".to_owned(),
            "/app/group/admins".to_owned(),
            "/app/group/../admins".to_owned(),
            format!("/app/tenant/{evil}/feed"),
            format!("/app/session/{evil}"),
        ]
        .into_iter()
        .enumerate()
        {
            c.send_json(json!({"type":"subscribe","channel":ch,"id":n}))
                .await;
            let f = c.next_json().await;
            assert_eq!(f["type"], "error", "{evil:?} subscribe {ch:?}: {f}");
            assert!(
                f["code"] == "forbidden" || f["code"] == "invalid_channel",
                "{evil:?} subscribe {ch:?}: {f}"
            );
        }
    }
    // Everything a hostile id could have been turned into, published.
    let targets = [
        "/app/user/7/notifications",
        "/app/user/42/../7/notifications",
        "/app/user/../notifications",
        "/app/user/./notifications",
        "/app/user//notifications",
        "/app/user/{user}/notifications",
        "/app/group/admins",
        "/app/group/../admins",
        "/app/session/..",
        "/app/tenant/../feed",
    ];
    for (n, ch) in targets.iter().enumerate() {
        publish_http(&gw, ch, json!({"n": n})).await;
    }
    let long_channel = format!("/app/user/{long}/notifications");
    publish_http(&gw, &long_channel, json!("long")).await;
    // Glob names are not channels: refused at the API.
    let r = gw.publish("/app/user/*/notifications", json!(1)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // User 7 got exactly its own; the hostile sockets got nothing.
    expect(
        &mut seven,
        "user 7",
        &message("/app/user/7/notifications", json!({"n": 0})),
    )
    .await;
    expect_silence(&mut seven, "user 7").await;
    for (evil, c) in &mut sockets {
        expect_silence(c, &format!("user {evil:?}")).await;
    }
}

/// Whether `s` is a valid exact channel name (mirrors the gateway's rule:
/// 1-512 bytes, no control or glob characters).
fn tidings_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, '*' | '?' | '[' | ']' | '\\'))
}

// ------------------------------------------------------------- rate limit

type RawSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a raw socket read.
#[derive(Debug, PartialEq)]
enum Got {
    Json(Value),
    Close(Option<u16>),
}

async fn read_raw(ws: &mut RawSocket) -> Got {
    loop {
        let next = timeout(PATIENCE, ws.next()).await.expect("a frame in time");
        match next {
            Some(Ok(WsMessage::Text(t))) => {
                return Got::Json(serde_json::from_str(&t).expect("JSON"))
            }
            Some(Ok(WsMessage::Close(f))) => return Got::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn send_raw(ws: &mut RawSocket, v: Value) {
    ws.send(WsMessage::text(v.to_string())).await.expect("send");
}

/// 5 messages a second, bursts of 5: a burst of 20 pings gets 5 pongs and
/// then `rate_limited` errors; a second later pings work again; 100
/// over-limit messages in a row close the socket with 1008; other sockets
/// never notice.
#[tokio::test]
async fn rate_limit_answers_then_closes_the_flooder_only() {
    let gw = start_ready(
        GatewayOptions::default()
            .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGES_PER_SEC", "5")
            .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGE_BURST", "5"),
    )
    .await;
    let mut bystander = connect_anonymous(&gw).await;
    // No settle ping: the flooder's whole burst is left for the test.
    let flooder = Client::connect(&gw.ws_url()).await;
    let mut ws = flooder.into_inner();

    // A burst of 20, written at once.
    for i in 0..20 {
        ws.feed(WsMessage::text(json!({"type":"ping","id":i}).to_string()))
            .await
            .expect("feed");
    }
    ws.flush().await.expect("flush");
    let mut pongs = 0;
    for i in 0..20 {
        match read_raw(&mut ws).await {
            Got::Json(f) if f == json!({"type":"pong","id":i}) => pongs += 1,
            Got::Json(f) => {
                assert!(i >= 5, "the first 5 of the burst are answered: {f}");
                assert_eq!(f["type"], "error", "{f}");
                assert_eq!(f["code"], "rate_limited", "{f}");
                assert_eq!(f["id"], i, "{f}");
                assert!(f["message"].as_str().unwrap().contains('5'), "{f}");
            }
            Got::Close(code) => panic!("closed ({code:?}) after {i} replies"),
        }
    }
    // Exactly the burst (one more only if a token refilled, 200 ms, while
    // the burst was being read).
    assert!((5..=6).contains(&pongs), "{pongs} pongs");

    // The bystander is served meanwhile.
    bystander.send_json(json!({"type":"ping","id":"b1"})).await;
    expect(
        &mut bystander,
        "bystander",
        &json!({"type":"pong","id":"b1"}),
    )
    .await;

    // A second later the bucket has refilled: 5 pings in a row work.
    sleep(Duration::from_millis(1100)).await;
    for i in 100..105 {
        send_raw(&mut ws, json!({"type":"ping","id":i})).await;
        assert_eq!(
            read_raw(&mut ws).await,
            Got::Json(json!({"type":"pong","id":i}))
        );
    }

    // Now flood, one request at a time: 99 errors in a row, then the 100th
    // over-limit message closes the socket with 1008 (a refilled token in
    // between resets the count).
    let mut in_a_row = 0;
    let mut sent = 0;
    let code = loop {
        assert!(sent < 1000, "never closed");
        send_raw(&mut ws, json!({"type":"ping","id":sent})).await;
        sent += 1;
        match read_raw(&mut ws).await {
            Got::Json(f) if f["type"] == "pong" => in_a_row = 0,
            Got::Json(f) => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                in_a_row += 1;
            }
            Got::Close(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(in_a_row, 99, "errors before the close");

    // The bystander is untouched: requests and deliveries go on.
    bystander.send_json(json!({"type":"ping","id":"b2"})).await;
    expect(
        &mut bystander,
        "bystander",
        &json!({"type":"pong","id":"b2"}),
    )
    .await;
    publish_http(&gw, "/app/broadcast", json!("still here")).await;
    expect(
        &mut bystander,
        "bystander",
        &message("/app/broadcast", json!("still here")),
    )
    .await;
    expect_silence(&mut bystander, "bystander").await;
}

// -------------------------------------------------------------------- RPC

/// `[rpc]` for the backend at `url`: `/api/` allowed, 0.5 s timeout, 2 in
/// flight per socket; default rules.
fn rpc_config(url: &str) -> String {
    format!(
        "[rpc]\nurl = \"{url}\"\nallowed_paths = [\"/api/\"]\ntimeout_secs = 0.5\nmax_in_flight = 2\n"
    )
}

fn rpc(id: Value, method: &str, path: &str, data: Option<Value>) -> Value {
    let mut v = json!({"type":"rpc","id":id,"method":method,"path":path});
    if let Some(d) = data {
        v["data"] = d;
    }
    v
}

/// RPC round trips to a real backend: the socket's Cookie, the method, path
/// and JSON body arrive; 200 and 500 answers come back as `rpc_result`;
/// paths outside `allowed_paths` and other methods are refused without a
/// backend call.
#[tokio::test]
async fn rpc_round_trips_carry_the_sockets_cookie() {
    let backend = Backend::start(Mode::Rpc).await;
    let gw = start_ready(with_tokens(&rpc_config(&backend.base_url()))).await;
    const COOKIE: &str = "sessionid=abc123; csrftoken=tok456";
    let mut c = connect_as_with(
        &gw,
        json!({"user":"42"}),
        &[
            ("Cookie", COOKIE),
            ("Authorization", "Bearer socket-credential"),
            ("X-Secret", "not forwarded"),
        ],
    )
    .await;

    // POST with a JSON body.
    c.send_json(rpc(
        json!(1),
        "POST",
        "/api/echo/cart",
        Some(json!({"item":7,"qty":2})),
    ))
    .await;
    let r = c.next_json().await;
    assert_eq!(
        r,
        json!({"type":"rpc_result","id":1,"status":200,"data":{
            "ok":true,"method":"POST","path":"/api/echo/cart","got":{"item":7,"qty":2}}})
    );
    let seen = backend.calls();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let call = &seen[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/api/echo/cart");
    assert_eq!(call.header("cookie"), Some(COOKIE));
    assert_eq!(
        call.header("authorization"),
        Some("Bearer socket-credential")
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("x-secret"), None, "{call:?}");
    let body: Value = serde_json::from_slice(&call.body).expect("JSON body");
    assert_eq!(body, json!({"item":7,"qty":2}));

    // GET with a query and no body; a string id is echoed.
    c.send_json(rpc(json!("g"), "get", "/api/echo/items?page=2", None))
        .await;
    let r = c.next_json().await;
    assert_eq!(r["type"], "rpc_result", "{r}");
    assert_eq!(r["id"], "g");
    assert_eq!(r["status"], 200);
    assert_eq!(r["data"]["path"], "/api/echo/items?page=2");
    let call = backend.calls().pop().unwrap();
    assert_eq!(call.method, "GET");
    assert!(call.body.is_empty());
    assert_eq!(call.header("cookie"), Some(COOKIE));

    // A backend error is an answer, passed through.
    c.send_json(rpc(json!(2), "POST", "/api/fail", Some(json!({}))))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type":"rpc_result","id":2,"status":500,"data":{"error":"boom","detail":"the backend failed"}})
    );
    assert_eq!(backend.calls().len(), 3);

    // Outside the allowed paths, or another method: refused, never sent.
    for (n, (method, path)) in [
        ("POST", "/admin/users"),
        ("GET", "/api/../admin"),
        ("GET", "/api/%2e%2e/admin"),
        ("GET", "//evil.example/api/x"),
        ("GET", "/apix"),
        ("TRACE", "/api/echo"),
        ("CONNECT", "/api/echo"),
    ]
    .into_iter()
    .enumerate()
    {
        expect_error(
            &mut c,
            &format!("{method} {path}"),
            rpc(json!(100 + n), method, path, None),
            "forbidden",
        )
        .await;
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(backend.calls().len(), 3, "{:?}", backend.calls());
}

/// `/api/..?x=1` is `/?x=1` once dot segments are removed (RFC 3986
/// section 5.2.4; nginx and most servers normalize so): it leaves the
/// allowed prefix `/api/` as surely as `/api/../x` does, and must be refused
/// without a backend call. The query must not hide the final `..`.
#[tokio::test]
async fn rpc_dot_segment_before_the_query_is_refused() {
    let backend = Backend::start(Mode::Rpc).await;
    let gw = start_ready(with_tokens(&rpc_config(&backend.base_url()))).await;
    let mut c = connect_as(&gw, json!({"user":"42"})).await;
    for (n, path) in ["/api/..?x=1", "/api/..?", "/api/echo/../..?x=1"]
        .into_iter()
        .enumerate()
    {
        c.send_json(rpc(json!(n), "GET", path, None)).await;
        let f = c.next_json().await;
        assert_eq!(
            f["code"],
            "forbidden",
            "rpc GET {path} must be refused; got {f}; the backend saw {:?}",
            backend.calls().iter().map(|s| &s.path).collect::<Vec<_>>()
        );
    }
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

/// Paths a backend that normalises Unicode or decodes overlong UTF-8 reads
/// as `../` (fullwidth dots and solidus, the two-dot leader, `%c0%ae`), raw
/// non-ASCII and escapes in the path: all refused with `forbidden` before
/// any backend call; only the conservative ASCII grammar goes through.
#[tokio::test]
async fn rpc_paths_outside_the_ascii_grammar_are_refused() {
    let backend = Backend::start(Mode::Rpc).await;
    let gw = start_ready(with_tokens(&rpc_config(&backend.base_url()))).await;
    let mut c = connect_as(&gw, json!({"user":"42"})).await;
    for (n, path) in [
        "/api/\u{ff0e}\u{ff0e}/admin",
        "/api/\u{ff0e}\u{ff0e}\u{ff0f}admin",
        "/api/\u{2025}/admin",
        "/api/%c0%ae%c0%ae/admin",
        "/api/%ef%bc%8e%ef%bc%8e/admin",
        "/api/echo/caf\u{e9}",
        "/api/echo/%41",
        "/api/.../admin",
        "/api/echo?q=\u{e9}",
    ]
    .into_iter()
    .enumerate()
    {
        let f = {
            c.send_json(rpc(json!(n), "GET", path, None)).await;
            c.next_json().await
        };
        assert_eq!(
            (&f["type"], &f["code"]),
            (&json!("error"), &json!("forbidden")),
            "rpc GET {path:?} must be refused; got {f}"
        );
        assert_eq!(f["id"], json!(n), "{f}");
    }
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
    // Plain ASCII paths (and an escaped query) still go through.
    c.send_json(rpc(
        json!("ok"),
        "GET",
        "/api/echo/items-2?q=caf%C3%A9",
        None,
    ))
    .await;
    let f = c.next_json().await;
    assert_eq!(f["type"], "rpc_result", "{f}");
    assert_eq!(backend.calls().len(), 1, "{:?}", backend.calls());
}

/// A slow backend: the call times out with `rpc_timeout` while deliveries
/// go on; beyond `max_in_flight` calls get `too_many_requests`; slots free
/// up again; a backend that is down gives `rpc_unavailable`.
#[tokio::test]
async fn rpc_timeouts_limits_and_outages() {
    let backend = Backend::start(Mode::Rpc).await;
    let gw = start_ready(with_tokens(&rpc_config(&backend.base_url()))).await;
    let mut c = connect_as(&gw, json!({"user":"42"})).await;
    const MINE: &str = "/app/user/42/notifications";

    // A slow call does not hold up deliveries.
    let t0 = Instant::now();
    c.send_json(rpc(json!(10), "GET", "/api/slow?ms=3000", None))
        .await;
    publish_http(&gw, MINE, json!({"while":"slow"})).await;
    expect_at(&mut c, &message(MINE, json!({"while":"slow"})), 1).await;
    let delivered = t0.elapsed();
    assert!(
        delivered < Duration::from_millis(450),
        "delivery took {delivered:?} while the rpc was pending"
    );
    let f = c.next_json().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "rpc_timeout", "{f}");
    assert_eq!(f["id"], 10);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );

    // Two in flight at most: the third is refused at once.
    c.send_json(rpc(json!(20), "GET", "/api/slow?ms=3000", None))
        .await;
    c.send_json(rpc(json!(21), "GET", "/api/slow?ms=3000", None))
        .await;
    let t1 = Instant::now();
    c.send_json(rpc(json!(22), "GET", "/api/echo/third", None))
        .await;
    let f = c.next_json().await;
    assert_eq!(f["code"], "too_many_requests", "{f}");
    assert_eq!(f["id"], 22);
    assert!(t1.elapsed() < Duration::from_millis(400));
    // Meanwhile deliveries still flow.
    publish_http(&gw, MINE, json!({"while":"busy"})).await;
    expect_at(&mut c, &message(MINE, json!({"while":"busy"})), 2).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let f = c.next_json().await;
        assert_eq!(f["code"], "rpc_timeout", "{f}");
        ids.push(f["id"].as_i64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, [20, 21]);
    // The slots are free again.
    c.send_json(rpc(json!(23), "GET", "/api/echo/after", None))
        .await;
    let f = c.next_json().await;
    assert_eq!(f["type"], "rpc_result", "{f}");
    assert_eq!(f["status"], 200);
    assert!(!backend.calls().iter().any(|s| s.path == "/api/echo/third"));

    // The backend goes away.
    backend.stop().await;
    c.send_json(rpc(json!(30), "POST", "/api/echo/x", Some(json!(1))))
        .await;
    let f = c.next_json().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "rpc_unavailable", "{f}");
    assert_eq!(f["id"], 30);
    // The socket itself is fine.
    publish_http(&gw, MINE, json!("after")).await;
    expect_at(&mut c, &message(MINE, json!("after")), 3).await;
}

/// Without `rpc.url`, an `rpc` request gets `rpc_disabled`.
#[tokio::test]
async fn rpc_without_a_backend_is_disabled() {
    let gw = start_ready(GatewayOptions::default()).await;
    let mut c = connect_anonymous(&gw).await;
    expect_error(
        &mut c,
        "socket",
        rpc(json!(1), "POST", "/api/x", Some(json!({"a":1}))),
        "rpc_disabled",
    )
    .await;
    settle(&mut c).await;
}
