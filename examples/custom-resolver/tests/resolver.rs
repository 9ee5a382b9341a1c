//! The example resolver inside a real gateway, with real WebSocket clients
//! connecting from chosen loopback addresses (127.0.0.1 plays a client,
//! 127.0.0.2 the authenticating proxy).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tidings_bridge::Bridge;
use tidings_example_custom_resolver::ProxyHeaderResolver;
use tidings_identity::{AnonymousPolicy, Chain};
use tidings_transport::{serve, text_response, Gateway, StatusCode, TransportConfig};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, Error, Message,
};

/// The proxy's address in these tests.
const PROXY: &str = "127.0.0.2";

/// A gateway whose resolver believes `X-Forwarded-User` from `trusted`
/// only. The transport itself believes `X-Forwarded-For` from all of
/// 127.0.0.0/8 (as it would behind a proxy on the same host), so the
/// client address it derives is attacker-influenced: the resolver must
/// look at the TCP peer instead.
async fn start(trusted: &str) -> (SocketAddr, Gateway) {
    let resolver = Chain::new()
        .with(
            "proxy_header",
            Arc::new(ProxyHeaderResolver {
                trusted_proxies: vec![trusted.parse().unwrap()],
            }),
        )
        .anonymous(AnonymousPolicy::Refuse);
    let mut config = TransportConfig::default();
    config.limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gateway = Gateway::builder(Bridge::in_process())
        .config(config)
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

/// Opens a socket from the loopback address `from`, with `headers`;
/// the welcome frame, or the refusal's status.
async fn connect_from(
    addr: SocketAddr,
    from: &str,
    headers: &[(&'static str, &str)],
) -> Result<serde_json::Value, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let stream = socket.connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
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

/// What the proxy adds: the user and their groups.
fn asserted(user: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("x-forwarded-user", user),
        ("x-forwarded-groups", "staff, ops"),
    ]
}

#[tokio::test]
async fn trusted_proxy_header_identifies_the_socket() {
    let (addr, _gw) = start(PROXY).await;
    // The proxy also says who the browser is (X-Forwarded-For): the
    // resolver still sees the proxy's own address as the peer.
    let mut headers = asserted("alice");
    headers.push(("x-forwarded-for", "203.0.113.7"));
    let welcome = connect_from(addr, PROXY, &headers)
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
async fn a_forged_x_forwarded_for_does_not_make_a_client_the_proxy() {
    let (addr, _gw) = start(PROXY).await;
    // A client that is not the proxy claims to come from it: the gateway
    // derives 127.0.0.2 as its client address (127.0.0.0/8 is trusted for
    // X-Forwarded-For), but the TCP peer is 127.0.0.1.
    let mut headers = asserted("alice");
    headers.push(("x-forwarded-for", PROXY));
    assert_eq!(connect_from(addr, "127.0.0.1", &headers).await, Err(403));
    let chain = format!("198.51.100.9, {PROXY}");
    let mut headers = asserted("alice");
    headers.push(("x-forwarded-for", &chain));
    assert_eq!(connect_from(addr, "127.0.0.1", &headers).await, Err(403));
}

#[tokio::test]
async fn untrusted_peer_and_missing_header_are_refused() {
    // The proxy is elsewhere: a header from 127.0.0.1 is not believed.
    let (addr, _gw) = start(PROXY).await;
    assert_eq!(
        connect_from(addr, "127.0.0.1", &asserted("alice")).await,
        Err(403)
    );
    // No header at all, and anonymous visitors are refused.
    assert_eq!(connect_from(addr, PROXY, &[]).await, Err(401));
}
