//! What the WebSocket sockets of one kind share (see [`Shared`]).

use std::sync::Arc;

use crate::{config::TransportConfig, deflate::Deflate, stats::TransportStats};

/// What the sockets of one kind share: the gateway keeps one for sockets
/// that negotiated permessage-deflate and one for the others, so a socket
/// holds a single pointer whichever it is.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) stats: Arc<TransportStats>,
    /// permessage-deflate, as negotiated (no context takeover either way).
    pub(crate) deflate: Option<Deflate>,
}
