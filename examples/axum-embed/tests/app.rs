//! The axum app with Tidings on `/ws`, served on a real port and driven
//! with real HTTP requests and real WebSocket clients.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tidings_bridge::Bridge;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode, Error,
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts the app on 127.0.0.1:0; it stops when the returned sender is
/// dropped or sent to.
async fn start() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let state = tidings_example_axum_embed::state(Bridge::in_process());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tidings_example_axum_embed::run(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

/// One HTTP/1.1 request; the status, the `Set-Cookie` header and the body.
async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let res = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        set_cookie,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Logs `user` in; the `Cookie` header value that carries the session.
async fn login(addr: SocketAddr, user: &str) -> String {
    let (status, set_cookie, body) = http(
        addr,
        Method::POST,
        "/login",
        None,
        Some(json!({ "user": user })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set_cookie = set_cookie.expect("login sets the session cookie");
    set_cookie.split(';').next().unwrap().to_string()
}

/// Opens a socket with `cookie`: the socket and its welcome frame, or the
/// HTTP status the upgrade was refused with.
async fn connect(addr: SocketAddr, cookie: Option<&str>) -> Result<(Ws, Value), u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(cookie) = cookie {
        req.headers_mut()
            .insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let welcome = next_frame(&mut ws).await;
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            Ok((ws, welcome))
        }
        Err(Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// The next text frame, as JSON (bounded wait so a bug fails, not hangs).
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match frame {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_logged_in_socket_receives_what_an_app_route_publishes() {
    let (addr, _stop, _server) = start().await;
    let alice = login(addr, "alice").await;

    // The app's own routes see the same session.
    let (status, _, body) = http(addr, Method::GET, "/api/hello", Some(&alice), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello, alice\n"));

    // Tidings on /ws knows the socket by the app's session cookie.
    let (mut ws, welcome) = connect(addr, Some(&alice)).await.expect("upgrade accepted");
    assert_eq!(welcome["user"], "alice", "{welcome}");
    assert!(
        welcome["channels"]
            .as_array()
            .unwrap()
            .contains(&json!("/app/user/alice/notifications")),
        "{welcome}"
    );

    // An app route publishes through the gateway's bridge.
    let bob = login(addr, "bob").await;
    let (status, _, body) = http(
        addr,
        Method::POST,
        "/api/notify/alice",
        Some(&bob),
        Some(json!({ "text": "lunch?" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let frame = next_frame(&mut ws).await;
    assert_eq!(
        frame,
        json!({
            "type": "message",
            "channel": "/app/user/alice/notifications",
            "data": { "from": "bob", "data": { "text": "lunch?" } },
        })
    );
}

#[tokio::test]
async fn a_socket_without_a_session_is_refused() {
    let (addr, _stop, _server) = start().await;
    // No cookie at all.
    assert_eq!(connect(addr, None).await.err(), Some(401));
    // A cookie the app never issued.
    assert_eq!(
        connect(addr, Some("app_session=00112233445566778899aabbccddeeff"))
            .await
            .err(),
        Some(401)
    );
    // A session that has ended.
    let carol = login(addr, "carol").await;
    let (status, _, _) = http(addr, Method::POST, "/logout", Some(&carol), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(connect(addr, Some(&carol)).await.err(), Some(401));
    // And the app's routes agree.
    let (status, _, _) = http(addr, Method::GET, "/api/hello", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_users_channel_is_not_delivered() {
    let (addr, _stop, _server) = start().await;
    let alice = login(addr, "alice").await;
    let bob = login(addr, "bob").await;
    let (mut alice_ws, _) = connect(addr, Some(&alice)).await.expect("alice");
    let (mut bob_ws, _) = connect(addr, Some(&bob)).await.expect("bob");

    // Bob may not subscribe to Alice's channel.
    bob_ws
        .send(Message::text(
            json!({"type": "subscribe", "channel": "/app/user/alice/notifications", "id": 1})
                .to_string(),
        ))
        .await
        .unwrap();
    let refused = next_frame(&mut bob_ws).await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["id"]),
        (&json!("error"), &json!("forbidden"), &json!(1)),
        "{refused}"
    );

    // A message for Alice, then one for Bob: Bob's first message is his
    // own (one broker, delivered in order), so Alice's never reached him.
    for (to, sender, text) in [("alice", &bob, "for alice"), ("bob", &alice, "for bob")] {
        let (status, _, body) = http(
            addr,
            Method::POST,
            &format!("/api/notify/{to}"),
            Some(sender),
            Some(json!({ "text": text })),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let to_bob = next_frame(&mut bob_ws).await;
    assert_eq!(to_bob["channel"], "/app/user/bob/notifications", "{to_bob}");
    assert_eq!(to_bob["data"]["data"]["text"], "for bob", "{to_bob}");
    let to_alice = next_frame(&mut alice_ws).await;
    assert_eq!(
        to_alice["channel"], "/app/user/alice/notifications",
        "{to_alice}"
    );
    assert_eq!(to_alice["data"]["data"]["text"], "for alice", "{to_alice}");
}

#[tokio::test]
async fn stopping_the_app_closes_its_sockets_with_1012() {
    let (addr, stop, server) = start().await;
    let alice = login(addr, "alice").await;
    let (mut ws, _) = connect(addr, Some(&alice)).await.expect("alice");
    stop.send(()).unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("closed within the drain window")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
    drop(ws);
    server.await.unwrap().unwrap();
}
