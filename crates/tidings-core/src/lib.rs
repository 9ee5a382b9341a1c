//! The shared vocabulary of the Tidings gateway.
//!
//! Every Tidings crate speaks these types, so they live here, apart from any
//! crate's internals: an identity resolver produces an [`Identity`], the
//! router turns it into [`ChannelName`]s, the bridge carries [`Message`]s and
//! the transport writes protocol v1 frames built by [`protocol`].
//!
//! # Layout
//!
//! - [`channel`]: validated channel names ([`ChannelName`]) and glob patterns
//!   ([`ChannelPattern`]) with Redis `PSUBSCRIBE` semantics.
//! - [`identity`]: who a socket is ([`Identity`]).
//! - [`message`]: a published message ([`Message`]) and the shared, encoded
//!   [`Delivery`] that fan-out hands to every recipient.
//! - [`protocol`]: protocol v1, the JSON frames exchanged with clients.
//!
//! This crate does no I/O.

pub mod channel;
pub mod identity;
pub mod message;
pub mod protocol;

pub use channel::{ChannelError, ChannelName, ChannelPattern, Topic};
pub use identity::Identity;
pub use message::{Delivery, Message};
