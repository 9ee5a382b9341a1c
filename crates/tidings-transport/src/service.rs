//! The WebSocket endpoint as a [`tower_service::Service`], to mount in any
//! router (axum, or a `service_fn` of your own on plain hyper).
//!
//! [`Gateway::service`] returns a [`WsService`]: a cheap, cloneable service
//! that answers every request it is given the way [`Gateway::upgrade`] does
//! (refuses it with a clear status, or switches protocols and starts a
//! session). It does no path matching: mount it on the route you want
//! (`TransportConfig::ws_path` is only what [`serve`](crate::serve)
//! matches).
//!
//! # The peer address
//!
//! The per-address connection limits, the trusted-proxy rule for
//! `X-Forwarded-For` and resolvers that check the peer need the TCP peer's
//! address. A service only sees the request, so the address must travel in
//! the request extensions. By default [`WsService`] reads a [`PeerAddr`]
//! extension, which [`serve`](crate::serve) inserts (and which your own
//! hyper accept loop inserts in one line). With axum, tell the service to
//! read axum's `ConnectInfo` instead:
//!
//! ```ignore
//! let ws = gateway
//!     .service()
//!     .peer_from(|ext| ext.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0));
//! let app = axum::Router::new().route_service("/ws", ws);
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! ```
//!
//! **When the address is missing** the upgrade is refused with
//! `500 Internal Server Error` and an error is logged: it is a wiring
//! mistake of the embedding service, and guessing an address would put
//! every socket in one per-address bucket or trust forwarded headers from
//! anyone.
//!
//! # The upgrade
//!
//! The switch to WebSocket needs hyper's `OnUpgrade` in the request
//! extensions, which hyper (`serve_connection(..).with_upgrades()`) and
//! `axum::serve` put there. The request body is not read (an upgrade
//! request has none), so any body type will do.
//!
//! # Example: plain hyper
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use hyper::{server::conn::http1, service::service_fn};
//! use hyper_util::rt::TokioIo;
//! use tidings_bridge::Bridge;
//! use tidings_transport::{Gateway, PeerAddr};
//! use tower_service::Service as _;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let gateway = Gateway::builder(Bridge::in_process()).build();
//! let ws = gateway.service();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     let ws = ws.clone();
//!     tokio::spawn(async move {
//!         let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
//!             req.extensions_mut().insert(PeerAddr(peer));
//!             ws.clone().call(req)
//!         });
//!         let _ = http1::Builder::new()
//!             .serve_connection(TokioIo::new(stream), svc)
//!             .with_upgrades()
//!             .await;
//!     });
//! }
//! # }
//! ```

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    task::{Context, Poll},
};

use http::{Extensions, Request, StatusCode};

use crate::{
    server::{text_response, Gateway, HttpResponse},
    BoxFuture,
};

pub use crate::server::PeerAddr;

/// How a [`WsService`] finds the TCP peer in the request extensions.
pub type PeerLookup = fn(&Extensions) -> Option<SocketAddr>;

/// The default [`PeerLookup`]: the [`PeerAddr`] extension.
fn peer_addr_extension(ext: &Extensions) -> Option<SocketAddr> {
    ext.get::<PeerAddr>().map(|p| p.0)
}

/// The gateway's WebSocket endpoint as a [`tower_service::Service`]
/// (see the [module docs](self)). Cheap to clone; always ready; never
/// fails (every refusal is an HTTP response).
#[derive(Clone)]
pub struct WsService {
    gateway: Gateway,
    peer: PeerLookup,
}

impl fmt::Debug for WsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsService")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl WsService {
    /// Reads the TCP peer with `lookup` instead of from the [`PeerAddr`]
    /// extension; for axum,
    /// `|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)`.
    pub fn peer_from(mut self, lookup: PeerLookup) -> Self {
        self.peer = lookup;
        self
    }

    /// The gateway behind this service.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }
}

impl Gateway {
    /// The WebSocket endpoint as a [`tower_service::Service`], to mount on
    /// a route of your own (see [`WsService`]).
    pub fn service(&self) -> WsService {
        WsService {
            gateway: self.clone(),
            peer: peer_addr_extension,
        }
    }
}

impl<B> tower_service::Service<Request<B>> for WsService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The body is never read: dropping it here frees the future from
        // the body type (any `B`, `Send` or not).
        let req = req.map(|_| ());
        let gateway = self.gateway.clone();
        let peer = (self.peer)(req.extensions());
        Box::pin(async move {
            Ok(match peer {
                Some(peer) => gateway.upgrade(req, peer).await,
                None => {
                    tracing::error!(
                        path = req.uri().path(),
                        "WebSocket upgrade without the peer address in the request extensions \
                         (insert tidings_transport::PeerAddr, or set WsService::peer_from); refused"
                    );
                    text_response(StatusCode::INTERNAL_SERVER_ERROR, "peer address unknown\n")
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_bridge::Bridge;
    use tower_service::Service as _;

    fn upgrade_request() -> Request<()> {
        Request::builder()
            .uri("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn refuses_without_a_peer_address() {
        let gateway = Gateway::builder(Bridge::in_process()).build();
        let res = gateway.service().call(upgrade_request()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn answers_a_plain_request_with_426_whatever_the_body() {
        let gateway = Gateway::builder(Bridge::in_process()).build();
        let mut req = Request::new(String::from("a body"));
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.1:1".parse().unwrap()));
        let res = gateway.service().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[tokio::test]
    async fn a_custom_lookup_finds_the_peer() {
        let gateway = Gateway::builder(Bridge::in_process()).build();
        let mut req = Request::new(());
        req.extensions_mut()
            .insert("127.0.0.1:1".parse::<SocketAddr>().unwrap());
        let res = gateway
            .service()
            .peer_from(|ext| ext.get::<SocketAddr>().copied())
            .call(req)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    }
}
