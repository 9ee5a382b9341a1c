//! The WebSocket transport of the Tidings gateway, on hyper 1 and
//! fastwebsockets.
//!
//! It accepts HTTP/1.1 connections, upgrades requests on the WebSocket path
//! (checking `Origin` and asking the [`IdentityResolver`](tidings_identity::IdentityResolver)
//! who the socket is), and runs each socket as a session speaking protocol v1
//! (`docs/protocol.md`): one task per socket, and a bounded outbound queue
//! between the [`Bridge`](tidings_bridge::Bridge) and the socket. The
//! handshake is fastwebsockets'; the framing after it is this crate's own
//! (`codec`), so that an idle socket holds no read buffer. Everything else
//! on the listener goes to an [`HttpHandler`] you provide; or, in a service
//! of your own, mount [`Gateway::service`] on a route of your router
//! (`docs/embedding.md`).
//!
//! # Layout
//!
//! - [`config`]: [`TransportConfig`], every tunable with its default.
//! - [`server`]: [`serve`], the accept loop and shutdown, and [`Gateway`],
//!   the upgrade handler.
//! - [`service`]: [`WsService`], the WebSocket endpoint as a
//!   `tower_service::Service` to mount on a route of your own axum or
//!   hyper service ([`Gateway::service`]); [`serve`] uses it too.
//! - [`limits`]: connection limits (total, per address, per user) and the
//!   client address behind trusted proxies.
//! - [`rpc`]: RPC from sockets to the backend.
//! - `session`, `codec`: one socket's task and its framing (private).
//! - [`stats`]: connection counters.
//!
//! # Guarantees
//!
//! - Frames that break the WebSocket protocol close the socket with 1002,
//!   invalid UTF-8 with 1007, a message over the size limit (all fragments
//!   together) with 1009. Malformed or unknown JSON gets an error frame and
//!   the socket stays open.
//! - A socket that does not answer pings within the pong timeout is closed
//!   with 4000; a socket whose queue overflows is handled by the
//!   slow-consumer policy. Neither slows any other socket.
//! - On shutdown readiness goes first, then every socket receives 1012, each
//!   at its own moment within the drain window.
//!
//! # Example
//!
//! ```no_run
//! use tidings_bridge::Bridge;
//! use tidings_transport::{serve, text_response, Gateway};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let gateway = Gateway::builder(Bridge::in_process()).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let http = |_req, _peer| async { text_response(http::StatusCode::NOT_FOUND, "not found") };
//! serve(listener, gateway, http, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod codec;
pub mod config;
pub mod limits;
pub mod rpc;
pub mod server;
pub mod service;
mod session;
pub mod stats;

pub use config::TransportConfig;
/// The `http` crate this API speaks (requests, responses, status codes).
pub use http::{self, StatusCode};
pub use limits::{IpNet, LimitHit, Limits};
pub use rpc::{HttpRpc, RpcConfig, RpcHandler};
pub use server::{serve, text_response, Gateway, GatewayBuilder, HttpHandler, HttpResponse};
pub use service::{PeerAddr, PeerLookup, WsService};
pub use stats::{CloseReason, IdentityOutcome, RejectReason, TransportStats};
pub use tidings_bridge::BoxFuture;
