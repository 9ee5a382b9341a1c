#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`presence`](mod@presence): the [`Presence`] store trait, its types and
//!   `join`/`leave` events; `presence_redis`: [`RedisPresence`] (feature
//!   `redis`); `presence_memory`: [`MemoryPresence`]; `presence_tracker`:
//!   the gateway's [`PresenceTracker`].
//! - [`command`]: control commands (wire format, validation).
//! - [`registry`]: this gateway's connections by user, and the
//!   [`Connection`] seam the session side implements.
//! - [`hooks`]: [`ControlHooks`], the session hooks that register each
//!   session, list it in its user's presence set and send webhooks.
//! - [`listener`]: the control channel over the bridge.
//! - [`survey`]: a user's connections on every gateway, by asking them
//!   ([`Surveys`]).
//! - [`webhook`]: signed lifecycle webhooks from a bounded queue.
//! - `hmac`: HMAC-SHA256 for the signatures.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod command;
mod hmac;
pub mod hooks;
pub mod listener;
pub mod presence;
mod presence_memory;
#[cfg(feature = "redis")]
mod presence_redis;
mod presence_tracker;
pub mod registry;
pub mod survey;
pub mod webhook;

use std::{future::Future, pin::Pin};

pub use command::{Command, CommandError, Target, DEFAULT_CONTROL_CHANNEL};
pub use hmac::{hex, hmac_sha256};
pub use hooks::{
    occupancy_webhooks, presence_publisher, random_gateway_id, ControlHooks, PresenceLookup,
};
pub use listener::ControlChannel;
pub use presence::{
    Presence, PresenceChange, PresenceConfig, PresenceEntry, PresenceError, PresenceEvent,
    PresenceKey, PresenceStats,
};
pub use presence_memory::MemoryPresence;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use presence_redis::{EventChannels, RedisPresence, DEFAULT_PRESENCE_PREFIX, PRESENCE_SCRIPT};
pub use presence_tracker::{PresenceSink, PresenceTracker};
pub use registry::{Connection, ConnectionInfo, Registration, Registry};
pub use survey::{SurveyAnswer, SurveyError, SurveyStats, Surveys, DEFAULT_SURVEY_TIMEOUT};
pub use webhook::{WebhookConfig, WebhookEvent, WebhookSigning, WebhookStats, Webhooks};

/// A boxed, sendable future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
