//! Protocol v1 through the real binary: round trips, bad input, limits.

use std::time::Duration;

use serde_json::json;
use tidings_e2e::{
    raw::{self, op, RawWs},
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn welcome_subscribe_publish_unsubscribe() {
    let gw = Gateway::start_with(GatewayOptions::default().toml(
        r#"
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
        publish = true
        anonymous = true
        "#,
    ))
    .await;
    let mut a = Client::connect(&gw.ws_url()).await;
    assert_eq!(a.welcome["protocol"], 1);
    assert_eq!(a.welcome["user"], serde_json::Value::Null);
    assert_eq!(a.welcome["channels"], json!(["/app/broadcast"]));

    // Publish over HTTP reaches the joined channel.
    let r = gw.publish("/app/broadcast", json!({"n": 1})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        a.next_json().await,
        json!({"type":"message","channel":"/app/broadcast","data":{"n":1}})
    );

    // Subscribe with an id: the id comes back.
    let r = a
        .request(json!({"type":"subscribe","channel":"/app/room/7","id":"s1"}))
        .await;
    assert_eq!(
        r,
        json!({"type":"subscribed","channel":"/app/room/7","id":"s1"})
    );
    // Not granted by any rule.
    let r = a
        .request(json!({"type":"subscribe","channel":"/app/secret","id":2}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str(), r["id"].as_i64()),
        (Some("error"), Some("forbidden"), Some(2))
    );
    // Not a valid channel name.
    let r = a
        .request(json!({"type":"subscribe","channel":"/app/room/*"}))
        .await;
    assert_eq!(r["code"], "invalid_channel");

    // Client publish where a rule allows it; refused elsewhere.
    let mut b = Client::connect(&gw.ws_url()).await;
    b.subscribe("/app/room/lobby").await;
    let r = a
        .request(json!({"type":"publish","channel":"/app/room/lobby","data":"hi","id":9}))
        .await;
    assert_eq!(
        r,
        json!({"type":"published","channel":"/app/room/lobby","id":9})
    );
    assert_eq!(
        b.next_json().await,
        json!({"type":"message","channel":"/app/room/lobby","from":null,"data":"hi"}),
        "an anonymous sender is stamped as from: null"
    );
    let r = a
        .request(json!({"type":"publish","channel":"/app/broadcast","data":1}))
        .await;
    assert_eq!(r["code"], "forbidden");

    // Unsubscribe stops delivery.
    let r = a
        .request(json!({"type":"unsubscribe","channel":"/app/room/7"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    gw.publish("/app/room/7", json!("gone")).await;
    gw.publish("/app/broadcast", json!("still here")).await;
    assert_eq!(
        a.next_json().await["data"],
        "still here",
        "nothing from /app/room/7 after unsubscribing"
    );

    // Application-level ping.
    assert_eq!(
        a.request(json!({"type":"ping","id":[1]})).await,
        json!({"type":"pong","id":[1]})
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let gw = Gateway::start().await;
    let mut a = Client::connect(&gw.ws_url()).await;
    let mut other = Client::connect(&gw.ws_url()).await;

    a.send_text("{not json").await;
    assert_eq!(a.next_json().await["code"], "bad_json");
    a.send_text("[1,2]").await;
    assert_eq!(a.next_json().await["code"], "bad_request");
    let r = a.request(json!({"type":"dance","id":"x"})).await;
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("unknown_type"), Some("x"))
    );
    let r = a.request(json!({"type":"subscribe"})).await;
    assert_eq!(r["code"], "bad_request");
    a.send_binary(vec![1, 2, 3]).await;
    assert_eq!(a.next_json().await["code"], "binary_unsupported");

    // Still open and served, and the other client never noticed.
    assert_eq!(a.request(json!({"type":"ping"})).await["type"], "pong");
    gw.publish("/app/broadcast", json!(5)).await;
    assert_eq!(a.next_json().await["data"], 5);
    assert_eq!(other.next_json().await["data"], 5);
    assert!(
        other.next_json_within(SHORT).await.is_none(),
        "the other client got only the message"
    );
}

#[tokio::test]
async fn size_limit_counts_all_fragments() {
    let gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_WEBSOCKET__MAX_MESSAGE_BYTES", "1024"),
    )
    .await;
    let mut bystander = Client::connect(&gw.ws_url()).await;

    // Exactly the limit is fine.
    let mut r = RawWs::welcomed(&gw).await;
    let frame = |pad: usize| format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(pad));
    let ping = frame(1024 - frame(0).len());
    assert_eq!(ping.len(), 1024);
    r.send_frame(true, op::TEXT, ping.as_bytes()).await;
    assert_eq!(r.next_json(PATIENCE).await.expect("pong")["type"], "pong");

    // One frame over the limit.
    r.send_frame(true, op::TEXT, &vec![b' '; 1025]).await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1009));

    // Many small fragments that add up to more than the limit.
    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(false, op::TEXT, b"[").await;
    for _ in 0..40 {
        r.send_frame(false, op::CONT, &[b' '; 32]).await;
    }
    r.send_frame(true, op::CONT, b"]").await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1009));

    // Fragments under the limit are reassembled.
    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(false, op::TEXT, br#"{"type":"#).await;
    r.send_frame(false, op::CONT, br#""pi"#).await;
    r.send_frame(true, op::CONT, br#"ng","id":3}"#).await;
    assert_eq!(
        r.next_json(PATIENCE).await.expect("pong"),
        json!({"type":"pong","id":3})
    );

    gw.publish("/app/broadcast", json!("ok")).await;
    assert_eq!(bystander.next_json().await["data"], "ok");
}

#[tokio::test]
async fn invalid_utf8_and_protocol_violations_get_their_close_codes() {
    let gw = Gateway::start().await;
    let mut bystander = Client::connect(&gw.ws_url()).await;

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, op::TEXT, &[b'"', 0xff, 0xfe, b'"'])
        .await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1007),
        "invalid UTF-8 in one frame"
    );

    let mut r = RawWs::welcomed(&gw).await;
    // A multi-byte character split across fragments is fine...
    let snowman = "\"☃\"".as_bytes();
    r.send_frame(false, op::TEXT, &snowman[..2]).await;
    r.send_frame(true, op::CONT, &snowman[2..]).await;
    assert_eq!(
        r.next_json(PATIENCE).await.expect("reply")["code"],
        "bad_request"
    );
    // ...but bytes that never form valid UTF-8 are not.
    r.send_frame(false, op::TEXT, b"\"a").await;
    r.send_frame(true, op::CONT, &[0xc3, b'"']).await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1007),
        "invalid UTF-8 across fragments"
    );

    let mut r = RawWs::welcomed(&gw).await;
    // An unmasked client frame (RFC 6455 5.1: the server must close).
    r.send_raw(&[0x81, 0x02, b'{', b'}']).await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1002), "unmasked frame");

    let mut r = RawWs::welcomed(&gw).await;
    // A close frame with a code nobody may send (1005), and one with a
    // 1-byte payload.
    r.send_frame(true, op::CLOSE, &1005u16.to_be_bytes()).await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "reserved close code"
    );
    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, op::CLOSE, &[3]).await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "1-byte close payload"
    );

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, op::CONT, b"x").await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "continuation without a message"
    );

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(false, op::TEXT, b"[").await;
    r.send_frame(true, op::TEXT, b"]").await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "new message inside a fragmented one"
    );

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame_rsv(true, 4, op::TEXT, b"{}").await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "reserved bits set"
    );

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(false, op::PING, b"").await;
    assert_eq!(
        r.close_code(PATIENCE).await,
        Some(1002),
        "fragmented control frame"
    );

    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, 0x3, b"").await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1002), "reserved opcode");

    // A client close is echoed.
    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, op::CLOSE, &1000u16.to_be_bytes()).await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1000));

    gw.publish("/app/broadcast", json!("fine")).await;
    assert_eq!(bystander.next_json().await["data"], "fine");
}

#[tokio::test]
async fn dead_peer_is_closed_live_peer_is_not() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "0.2")
            .env("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS", "0.4"),
    )
    .await;
    // tungstenite answers pings automatically: a live peer.
    let mut live = Client::connect(&gw.ws_url()).await;
    // The raw client never answers: a dead peer.
    let mut dead = RawWs::welcomed(&gw).await;
    // The live one keeps reading (so tungstenite answers its pings) for well
    // past several ping intervals, while the dead one is cut off.
    let keep_live = async {
        if let Some(frame) = live.next_json_within(Duration::from_millis(1500)).await {
            panic!("nothing arrives meanwhile, got {frame}");
        }
    };
    let watch_dead = async {
        let ping = dead.read_frame(PATIENCE).await.expect("a ping");
        assert_eq!(ping.opcode, op::PING);
        assert_eq!(dead.close_code(PATIENCE).await, Some(4000));
    };
    tokio::join!(keep_live, watch_dead);
    gw.publish("/app/broadcast", json!("alive")).await;
    assert_eq!(live.next_json().await["data"], "alive");
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1012_and_exits() {
    let mut gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_SHUTDOWN__DRAIN_SPREAD_SECS", "0.5"),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(&gw.ws_url()).await);
    }
    gw.sigterm();
    for c in &mut clients {
        assert_eq!(c.closed_with(PATIENCE).await, Some(1012));
    }
    let status = gw
        .wait_exit(PATIENCE)
        .await
        .expect("exited within the deadline");
    assert!(status.success(), "{status:?}");
    assert!(gw.logs().contains("SIGTERM received"));
}

#[tokio::test]
async fn origin_is_checked_on_upgrade() {
    let gw = Gateway::start().await;
    let host = gw.addr.to_string();
    let same = format!("http://{host}");
    assert!(Client::connect_with(&gw.ws_url(), &[("Origin", &same)])
        .await
        .is_ok());
    let refused = Client::connect_with(&gw.ws_url(), &[("Origin", "https://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
    // Non-browser clients send no Origin.
    assert!(Client::connect_with(&gw.ws_url(), &[]).await.is_ok());

    let gw = Gateway::start_with(GatewayOptions::default().toml(
        r#"
        [websocket]
        allowed_origins = ["https://app.example"]
        "#,
    ))
    .await;
    assert!(
        Client::connect_with(&gw.ws_url(), &[("Origin", "https://app.example")])
            .await
            .is_ok()
    );
    let refused = Client::connect_with(&gw.ws_url(), &[("Origin", "https://app.example.evil")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
}

/// An upgrade request in HTTP/1.0 (which has no upgrade mechanism) must be
/// refused with a clear answer, not switched to 101 and then dropped.
#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_clearly() {
    let gw = Gateway::start().await;
    let req = format!(
        "GET /ws HTTP/1.0\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    );
    let res = raw::http_exchange(gw.addr, req.as_bytes())
        .await
        .expect("a response");
    assert_eq!(res.status, 400, "{}{}", res.head, res.body);
    assert!(res.body.contains("HTTP/1.1"), "{}", res.body);
    // HTTP/1.1 still upgrades.
    RawWs::welcomed(&gw).await;
}

/// Two `Origin` headers: whichever one a check reads, the other could be
/// the browser's real one. The request is refused, whatever their order.
#[tokio::test]
async fn two_origin_headers_are_refused() {
    let gw = Gateway::start().await;
    let same = format!("http://{}", gw.addr);
    for (first, second) in [
        (same.as_str(), "https://evil.example"),
        ("https://evil.example", same.as_str()),
        (same.as_str(), same.as_str()),
    ] {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nOrigin: {first}\r\nOrigin: {second}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            gw.addr
        );
        let res = raw::http_exchange(gw.addr, req.as_bytes())
            .await
            .expect("a response");
        assert_eq!(res.status, 403, "{first} then {second}: {}", res.head);
        assert_eq!(res.body, "more than one Origin header\n");
    }
    // One Origin, the same one, is still fine.
    let refused = Client::connect_with(&gw.ws_url(), &[("Origin", &same)]).await;
    assert!(refused.is_ok());
}

/// A frame that starts arriving must finish within
/// `websocket.handshake_timeout_secs`: half a frame closes the socket with
/// 1008, instead of holding it until the heartbeat (here far away).
#[tokio::test]
async fn a_half_sent_frame_is_closed_with_1008() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_WEBSOCKET__HANDSHAKE_TIMEOUT_SECS", "0.5")
            .env("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "600"),
    )
    .await;
    let mut r = RawWs::welcomed(&gw).await;
    // The header of a 100-byte masked text frame and 10 of its bytes.
    let mut half = vec![0x81u8, 0x80 | 100, 1, 2, 3, 4];
    half.extend_from_slice(&[b'x'; 10]);
    r.send_raw(&half).await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1008));
    // A socket that sends nothing at all is not closed by it.
    let mut idle = RawWs::welcomed(&gw).await;
    let mut busy = RawWs::welcomed(&gw).await;
    busy.send_raw(&half).await;
    assert_eq!(busy.close_code(PATIENCE).await, Some(1008));
    idle.send_frame(true, op::TEXT, br#"{"type":"ping","id":1}"#)
        .await;
    let pong = idle.next_json(PATIENCE).await.expect("pong");
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// A gateway with a rate limit of one frame per second.
async fn strictly_rate_limited() -> Gateway {
    let opts = GatewayOptions::default()
        .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGES_PER_SEC", "1")
        .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGE_BURST", "1");
    Gateway::start_with(opts).await
}

/// Unsolicited pongs are frames to read like any other: a flood of them is
/// rate limited and closed with 1008.
#[tokio::test]
async fn a_pong_flood_is_rate_limited() {
    let gw = strictly_rate_limited().await;
    let mut pongs = RawWs::welcomed(&gw).await;
    let flood: Vec<u8> = (0..500).flat_map(|_| [0x8Au8, 0x80, 0, 0, 0, 0]).collect();
    pongs.send_raw(&flood).await;
    assert_eq!(pongs.close_code(PATIENCE).await, Some(1008));
}

/// Empty continuation frames grow nothing, but each is a frame to read: a
/// flood of them is rate limited and closed with 1008.
#[tokio::test]
async fn an_empty_continuation_flood_is_rate_limited() {
    let gw = strictly_rate_limited().await;
    let mut conts = RawWs::welcomed(&gw).await;
    conts.send_frame(false, op::TEXT, b"{").await;
    let flood: Vec<u8> = (0..500).flat_map(|_| [0x00u8, 0x80, 0, 0, 0, 0]).collect();
    conts.send_raw(&flood).await;
    assert_eq!(conts.close_code(PATIENCE).await, Some(1008));
}

/// The 101 is held in the kernel until the welcome is written, so both
/// leave in one TCP segment (one transmission and one wake-up of the
/// client fewer per connection): the client's kernel counts one data
/// segment received for the two, read with `ss` from iproute2.
#[tokio::test]
async fn the_101_and_the_welcome_arrive_in_one_segment() {
    let gw = Gateway::start().await;
    for _ in 0..3 {
        let mut r = RawWs::connect(gw.addr, "/ws").await;
        let w = r.next_json(PATIENCE).await.expect("welcome");
        assert_eq!(w["type"], "welcome");
        let local = r.local_addr().to_string();
        let out = std::process::Command::new("ss")
            .args(["-tinH", "src", &local])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let segs: u64 = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("data_segs_in:"))
            .unwrap_or_else(|| panic!("no data_segs_in for {local}: {text}"))
            .parse()
            .expect("a count");
        assert_eq!(segs, 1, "the 101 and the welcome in one segment: {text}");
    }
}
