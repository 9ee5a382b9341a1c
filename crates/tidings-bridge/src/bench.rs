//! Not part of the API: entry points for this crate's own benchmarks
//! (`benches/fanout.rs`), which run the hub's fan-out without a bridge.
//!
//! The [`Hub`]'s mutating methods are crate-private: only the bridge (and a
//! broker through [`Inbound`](crate::broker::Inbound)) may change who is
//! subscribed or dispatch. The benchmarks, an outside crate, reach them
//! here. Hidden from the docs and exempt from semver: do not use.

use tidings_core::{Message, Topic};

use crate::{hub::Hub, mailbox::Mailbox};

/// `Hub::add`: adds connection `conn` to `topic`.
pub fn add(hub: &Hub, topic: &Topic, conn: u64, mailbox: &Mailbox) -> bool {
    hub.add(topic, conn, mailbox)
}

/// `Hub::dispatch_channel`: delivers `message` to its channel's sockets.
pub fn dispatch_channel(hub: &Hub, message: &Message) {
    hub.dispatch_channel(message);
}

/// `Hub::dispatch_all`: delivers `message` to every matching socket.
pub fn dispatch_all(hub: &Hub, message: &Message) {
    hub.dispatch_all(message);
}
