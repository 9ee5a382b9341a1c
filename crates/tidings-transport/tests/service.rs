//! `WsService` mounted in a plain hyper accept loop of one's own, with
//! real sockets: the upgrade works, and the peer address it is given is
//! the one the limits count.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use futures_util::StreamExt;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tidings_bridge::Bridge;
use tidings_transport::{
    http::Request, text_response, Gateway, PeerAddr, StatusCode, TransportConfig,
};
use tokio_tungstenite::tungstenite::{Error, Message};
use tower_service::Service as _;

/// The accept loop of docs/embedding.md ("Plain hyper"), with a 404 for
/// every other path.
async fn start(gateway: Gateway) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ws = gateway.service();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let ws = ws.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let mut ws = ws.clone();
                    async move {
                        if req.uri().path() != "/live" {
                            return Ok::<_, Infallible>(text_response(StatusCode::NOT_FOUND, ""));
                        }
                        req.extensions_mut().insert(PeerAddr(peer));
                        ws.call(req).await
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_plain_hyper_loop_serves_the_socket_and_passes_the_peer() {
    let mut config = TransportConfig::default();
    config.limits.max_connections_per_ip = 1;
    let gateway = Gateway::builder(Bridge::in_process())
        .config(config)
        .build();
    let addr = start(gateway.clone()).await;

    // Mounted where the loop routes it (not on the configured ws_path).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/live"))
        .await
        .expect("upgrade accepted");
    let welcome = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("a frame");
    let Message::Text(welcome) = welcome else {
        panic!("expected the welcome frame, got {welcome:?}")
    };
    assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");

    // The second socket from the same address is over the per-address
    // limit: the service counted the peer it was given.
    match tokio_tungstenite::connect_async(format!("ws://{addr}/live")).await {
        Err(Error::Http(res)) => assert_eq!(res.status().as_u16(), 429),
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(gateway.stats().current(), 1);
}
