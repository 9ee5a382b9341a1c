#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`presence`](mod@presence): the [`Presence`] store trait, [`RedisPresence`]
//!   (feature `redis`) and [`MemoryPresence`], the gateway's
//!   [`PresenceTracker`], and `join`/`leave` frames.
//! - [`command`]: control commands (wire format, validation).
//! - [`registry`]: this gateway's connections by user, and the
//!   [`Connection`] seam the session side implements.
//! - [`hooks`]: [`ControlHooks`], the session hooks that register each
//!   session, list it in its user's presence set and send webhooks.
//! - [`listener`]: the control channel over the bridge.
//! - [`webhook`]: signed lifecycle webhooks from a bounded queue.
//! - `hmac`: HMAC-SHA256 for the signatures.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod command;
mod hmac;
pub mod hooks;
pub mod listener;
pub mod presence;
pub mod registry;
pub mod webhook;

use std::{future::Future, pin::Pin};

pub use command::{Command, CommandError, Target, DEFAULT_CONTROL_CHANNEL};
pub use hmac::{hex, hmac_sha256};
pub use hooks::{
    occupancy_webhooks, presence_publisher, random_gateway_id, ControlHooks, PresenceLookup,
};
pub use listener::ControlChannel;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use presence::redis::{RedisPresence, DEFAULT_PRESENCE_PREFIX, PRESENCE_SCRIPT};
pub use presence::{
    MemoryPresence, Presence, PresenceChange, PresenceConfig, PresenceEntry, PresenceError,
    PresenceEvent, PresenceKey, PresenceSink, PresenceStats, PresenceTracker,
};
pub use registry::{Connection, ConnectionInfo, Registration, Registry};
pub use webhook::{WebhookConfig, WebhookEvent, WebhookStats, Webhooks};

/// A boxed, sendable future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
