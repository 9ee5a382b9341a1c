#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`endpoint`]: [`SocketIo`], the endpoint (Engine.IO handshake,
//!   long-polling, WebSocket and the upgrade between them).
//! - [`config`]: [`SocketIoConfig`] and the `[socketio]` section.
//! - `engine`: Engine.IO protocol 4 packets and payloads (private).
//! - `sio`: Socket.IO protocol 5 packets, and their mapping to protocol v1
//!   requests and from the session's output (private).
//! - `store`: the sessions by sid (private).
//! - `conn`: one session's task: heartbeat, packets, the
//!   `tidings_session::Session` (private).
//! - `ws`: the WebSocket transport and the upgrade (private).

pub mod config;
mod conn;
pub mod endpoint;
mod engine;
mod sio;
mod store;
mod ws;

pub use config::{EventSetting, SocketIoConfig, SocketIoSettings};
pub use endpoint::SocketIo;
