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
//!   client address behind trusted proxies (from `tidings-admission`, whose
//!   [`Admission`](tidings_admission::Admission) every wire adapter passes).
//! - [`rpc`]: the seam for RPC from sockets ([`RpcHandler`]) and the path
//!   grammar calls must pass (from `tidings-session`); the HTTP client is
//!   the `tidings-rpc` crate.
//! - `ws`, `codec`: the WebSocket adapter, one socket's task driving a
//!   `tidings_session::Session` (subscriptions, requests, rate limit and
//!   recovery are the session's), and its framing (private); `direct`:
//!   the socket a session shares with the fan-out, which writes
//!   deliveries to it directly; `deflate`: permessage-deflate (RFC 7692),
//!   negotiated without context takeover so that a delivery is
//!   compressed once for every socket ([`DeflateStats`], its counters).
//! - [`stats`]: connection counters (from `tidings-session`).

mod codec;
pub mod config;
mod deflate;
mod direct;
pub mod server;
pub mod service;
pub mod settings;
mod shared;
mod tcp;
mod ws;

/// Connection limits, from `tidings-admission` (shared by every wire adapter).
pub use tidings_admission::limits;
/// The RPC seam, from `tidings-session`.
pub use tidings_session::rpc;
/// The connection counters, from `tidings-session`.
pub use tidings_session::stats;

pub use config::TransportConfig;
pub use deflate::{compress as deflate_message, DeflateStats};
/// The `http` crate this API speaks (requests, responses, status codes).
pub use http::{self, StatusCode};
pub use limits::{IpNet, LimitHit, Limits};
pub use rpc::RpcHandler;
pub use server::{
    serve, serve_with, text_response, Gateway, GatewayBuilder, HttpHandler, HttpResponse, Mounts,
};
pub use service::{PeerAddr, PeerLookup, WsService};
pub use settings::{LimitsSettings, ShutdownSettings, WebSocketSettings};
pub use stats::{CloseReason, IdentityOutcome, RejectReason, TransportStats};
/// The seam other wire adapters mount on [`serve_with`] with.
pub use tidings_admission::{Admission, Endpoint};
pub use tidings_bridge::BoxFuture;
