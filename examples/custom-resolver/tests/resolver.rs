//! The example resolver inside a real gateway, with real WebSocket clients.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tidings_bridge::Bridge;
use tidings_example_custom_resolver::ProxyHeaderResolver;
use tidings_identity::{AnonymousPolicy, Chain};
use tidings_transport::{serve, text_response, Gateway, StatusCode};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, Error, Message,
};

async fn start(trusted: &str) -> (SocketAddr, Gateway) {
    let resolver = Chain::new()
        .with(
            "proxy_header",
            Arc::new(ProxyHeaderResolver {
                trusted_proxies: vec![trusted.parse().unwrap()],
            }),
        )
        .anonymous(AnonymousPolicy::Refuse);
    let gateway = Gateway::builder(Bridge::in_process())
        .resolver(Arc::new(resolver))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = |_req, _peer| async { text_response(StatusCode::NOT_FOUND, "") };
    tokio::spawn(serve(
        listener,
        gateway.clone(),
        http,
        std::future::pending(),
    ));
    (addr, gateway)
}

async fn connect(addr: SocketAddr, user: Option<&str>) -> Result<serde_json::Value, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(user) = user {
        req.headers_mut()
            .insert("x-forwarded-user", HeaderValue::from_str(user).unwrap());
        req.headers_mut()
            .insert("x-forwarded-groups", HeaderValue::from_static("staff, ops"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap();
            match frame {
                Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(&t).unwrap()),
                other => panic!("expected the welcome frame, got {other:?}"),
            }
        }
        Err(Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

#[tokio::test]
async fn trusted_proxy_header_identifies_the_socket() {
    let (addr, _gw) = start("127.0.0.1").await;
    let welcome = connect(addr, Some("alice"))
        .await
        .expect("upgrade accepted");
    assert_eq!(welcome["user"], "alice");
    let channels: Vec<&str> = welcome["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        channels.contains(&"/app/user/alice/notifications"),
        "{welcome}"
    );
}

#[tokio::test]
async fn untrusted_peer_and_missing_header_are_refused() {
    // The proxy is elsewhere: a header from 127.0.0.1 is not believed.
    let (addr, _gw) = start("10.0.0.1").await;
    assert_eq!(connect(addr, Some("alice")).await, Err(403));
    // No header at all, and anonymous visitors are refused.
    assert_eq!(connect(addr, None).await, Err(401));
}
