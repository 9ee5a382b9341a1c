//! The HTTP endpoints of the real binary.

use serde_json::json;
use tidings_e2e::{http, ws::Client, Gateway, GatewayOptions};

const KEY: &str = "00123456789012345678";

#[tokio::test]
async fn health_readiness_and_demo_page() {
    let gw = Gateway::start().await;
    let r = http::get(gw.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    let r = http::get(gw.addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let r = http::get(gw.addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains(r#"import { connect } from "/tidings.js""#));
    assert_eq!(http::get(gw.addr, "/nope").await.status, 404);
    assert_eq!(http::get(gw.addr, "/api/publish").await.status, 405);
    let r = http::get(gw.addr, "/ws").await;
    assert_eq!(r.status, 426, "plain GET on the socket path");
}

#[tokio::test]
async fn publish_with_an_api_key() {
    // A key of digits only, from the environment, must stay a string.
    let gw = Gateway::start_with(GatewayOptions::default().env("TIDINGS_API_KEY", KEY)).await;
    let mut c = Client::connect(&gw.ws_url()).await;

    assert_eq!(
        gw.publish("/app/broadcast", json!(1)).await.status,
        401,
        "no key"
    );
    let r = gw
        .publish_with_key("/app/broadcast", json!(1), Some("wrong-key-wrong-key"))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = gw
        .publish_with_key("/app/broadcast", json!({"ok": true}), Some(KEY))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(c.next_json().await["data"], json!({"ok": true}));
    // The scheme name is case-insensitive.
    let body = json!({"channel": "/app/broadcast", "data": 2}).to_string();
    let r = tidings_e2e::http::request(
        gw.addr,
        "POST",
        "/api/publish",
        &[
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Authorization".to_owned(), format!("bearer {KEY}")),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(c.next_json().await["data"], json!(2));
    assert!(!gw.logs().contains(KEY), "the API key must never be logged");
}

#[tokio::test]
async fn publish_errors_are_clear() {
    let gw =
        Gateway::start_with(GatewayOptions::default().env("TIDINGS_API__MAX_BODY_BYTES", "256"))
            .await;
    let json_ct = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    let post = |body: &str, headers: Vec<(String, String)>| {
        let body = body.to_owned();
        let addr = gw.addr;
        async move { http::request(addr, "POST", "/api/publish", &headers, body.as_bytes()).await }
    };
    let r = post(
        r#"{"channel":"/a","data":1}"#,
        vec![("Content-Type".into(), "text/plain".into())],
    )
    .await;
    assert_eq!(r.status, 415);
    let r = post("{oops", json_ct.clone()).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("bad_json"));
    let r = post(r#"{"channel":"/a"}"#, json_ct.clone()).await;
    assert_eq!(r.status, 400);
    let r = post(r#"{"channel":"/a/*","data":1}"#, json_ct.clone()).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid_channel"));
    let r = post(
        &format!(r#"{{"channel":"/a","data":"{}"}}"#, "x".repeat(300)),
        json_ct.clone(),
    )
    .await;
    assert_eq!(r.status, 413);
    // Through a proxy (or from another host), no key means no publishing.
    let mut proxied = json_ct.clone();
    proxied.push(("X-Forwarded-For".into(), "203.0.113.9".into()));
    let r = post(r#"{"channel":"/a","data":1}"#, proxied).await;
    assert_eq!(r.status, 401);
    let r = post(r#"{"channel":"/a","data":1}"#, json_ct).await;
    assert_eq!(r.status, 202);
}

/// A `Content-Length` over `api.max_body_bytes` is refused with 413 on the
/// header alone: the gateway does not wait for (or read) a body it would
/// refuse anyway.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_on_the_header() {
    let gw =
        Gateway::start_with(GatewayOptions::default().env("TIDINGS_API__MAX_BODY_BYTES", "256"))
            .await;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
        gw.addr
    );
    // No body byte is ever sent.
    let r = tidings_e2e::raw::http_exchange(gw.addr, req.as_bytes())
        .await
        .expect("an answer without the body");
    assert_eq!(r.status, 413, "{}{}", r.head, r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["error"], "too_large", "{body}");
}

/// A body that stops arriving is answered 408 after
/// `websocket.handshake_timeout_secs`, not waited for forever.
#[tokio::test]
async fn a_stalled_body_gets_408() {
    let gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_WEBSOCKET__HANDSHAKE_TIMEOUT_SECS", "0.5"),
    )
    .await;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"channel\":\"/a\",",
        gw.addr
    );
    let r = tidings_e2e::raw::http_exchange(gw.addr, req.as_bytes())
        .await
        .expect("an answer for the stalled body");
    assert_eq!(r.status, 408, "{}{}", r.head, r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["error"], "body_timeout", "{body}");
}
