#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`endpoint`]: [`Sse`], the endpoint (GET: the stream; POST: actions;
//!   OPTIONS: CORS preflight).
//! - [`config`]: [`SseConfig`] and the `[sse]` section ([`SseSettings`]).
//! - `stream`: one stream's task driving a `tidings_session::Session`, and
//!   its response body (private).
//! - `event`: the SSE encoding, the `id:` positions, heartbeats (private).
//! - `registry`: the open streams actions address (private).
//! - `queue`: a stream's output and action queues, allocating nothing
//!   while empty (private).

pub mod config;
pub mod endpoint;
mod event;
mod queue;
mod registry;
mod stream;

pub use config::{SseConfig, SseSettings};
pub use endpoint::{Sse, SESSION_HEADER};
