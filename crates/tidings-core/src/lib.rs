#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`config`]: shared pieces of the crates' configuration sections
//!   ([`config::ConfigError`], [`config::Secret`], `*_secs` durations).
//! - [`channel`]: validated channel names ([`ChannelName`]) and glob patterns
//!   ([`ChannelPattern`]) with Redis `PSUBSCRIBE` semantics.
//! - [`identity`]: who a socket is ([`Identity`]).
//! - [`message`]: a published message ([`Message`]) and the shared, encoded
//!   [`Delivery`] that fan-out hands to every recipient.
//! - [`protocol`]: protocol v1, the JSON frames exchanged with clients.

pub mod channel;
pub mod config;
pub mod identity;
pub mod message;
pub mod protocol;
pub mod small;

pub use channel::{ChannelError, ChannelName, ChannelPattern, Topic};
pub use identity::Identity;
pub use message::{Delivery, Message, WireFormat};
