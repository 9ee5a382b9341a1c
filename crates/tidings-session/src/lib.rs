#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`session`]: [`Session`], one connection's protocol-agnostic state
//!   machine, and what it hands its wire adapter ([`Output`], [`End`]).
//! - [`context`]: the [`Context`] every session of a gateway shares
//!   and [`SessionConfig`].
//! - [`control`](mod@control): the seam for the backend's control of
//!   sessions ([`SessionHooks`], [`ControlHandle`]).
//! - [`rpc`]: the seam for RPC from connections ([`RpcHandler`]) and the
//!   path grammar calls must pass.
//! - [`stats`]: connection counters.
//! - `requests` (subscribe, unsubscribe, publish, ping, RPC), `recovery`
//!   (the seam between history replay and live messages) and `rate` (the
//!   per-connection rate limit) are private.

pub mod context;
pub mod control;
mod rate;
mod recovery;
mod requests;
pub mod rpc;
pub mod session;
pub mod stats;

pub use context::{Context, SessionConfig};
pub use control::{ControlHandle, ControlRequest, SessionHooks, SessionInfo};
pub use rpc::{check_path, RpcCall, RpcError, RpcHandler, RpcReply};
pub use session::{parse_positions, Batch, End, Event, Output, Positions, Session};
pub use stats::{CloseReason, IdentityOutcome, RejectReason, TransportStats};
pub use tidings_bridge::BoxFuture;
