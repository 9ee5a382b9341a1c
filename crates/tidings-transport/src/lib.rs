#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`config`]: [`TransportConfig`], every tunable with its default.
//! - [`settings`]: the `[websocket]`, `[shutdown]`, `[limits]` and `[rpc]`
//!   configuration sections, deserializing and checking themselves.
//! - [`server`]: [`serve`], the accept loop and shutdown, and [`Gateway`],
//!   the upgrade handler.
//! - [`service`]: [`WsService`], the WebSocket endpoint as a
//!   `tower_service::Service` to mount on a route of your own axum or
//!   hyper service ([`Gateway::service`]); [`serve`] uses it too.
//! - [`limits`]: connection limits (total, per address, per user) and the
//!   client address behind trusted proxies.
//! - [`rpc`]: the seam for RPC from sockets ([`RpcHandler`]) and the path
//!   grammar calls must pass; the HTTP client is the `tidings-rpc` crate.
//! - `session`, `codec`: one socket's task (the connection loop) and its
//!   framing (private); `direct`: the socket a session shares with the
//!   fan-out, which writes deliveries to it directly; `context`: what a session gets from its gateway;
//!   `requests`: a socket's subscribe, unsubscribe, publish, ping and RPC
//!   requests; `rate`: its rate limit on client frames (all private).
//! - [`stats`]: connection counters.

mod codec;
pub mod config;
mod context;
mod direct;
pub mod limits;
mod rate;
mod requests;
pub mod rpc;
pub mod server;
pub mod service;
mod session;
pub mod settings;
pub mod stats;

pub use config::TransportConfig;
/// The `http` crate this API speaks (requests, responses, status codes).
pub use http::{self, StatusCode};
pub use limits::{IpNet, LimitHit, Limits};
pub use rpc::RpcHandler;
pub use server::{serve, text_response, Gateway, GatewayBuilder, HttpHandler, HttpResponse};
pub use service::{PeerAddr, PeerLookup, WsService};
pub use settings::{LimitsSettings, ShutdownSettings, WebSocketSettings};
pub use stats::{CloseReason, IdentityOutcome, RejectReason, TransportStats};
pub use tidings_bridge::BoxFuture;
