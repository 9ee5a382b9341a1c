#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`endpoint`]: [`Pusher`], the endpoint (the WebSocket at `/app/{key}`,
//!   the HTTP API under `/apps/{id}/`).
//! - [`config`]: [`PusherConfig`], [`App`] and the `[pusher]` section.
//! - [`wire`]: Pusher protocol 7 messages and the error and close codes.
//! - `conn`: one WebSocket's task: subscriptions, authorizations, client
//!   events, the activity timeout, the `tidings_session::Session` (private).
//! - `api`: the HTTP API (private).
//! - `sign`: channel authorizations and request signing (private).
//! - `shared`: what connections and API requests share (private).
//! - `presence`: presence channels' members and member lists (private).
//! - `hooks`: webhooks in Pusher's format (private).

mod api;
pub mod config;
mod conn;
pub mod endpoint;
mod hooks;
mod presence;
mod shared;
mod sign;
pub mod wire;

pub use config::{App, AppWebhook, PusherConfig, PusherSettings, WEBHOOK_EVENTS};
pub use endpoint::{Pusher, API_PREFIX, SOCKET_PREFIX};
