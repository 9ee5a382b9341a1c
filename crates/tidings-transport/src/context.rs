//! What a session needs from its gateway: the server builds one
//! [`Context`] per gateway and every session shares it.

use std::sync::Arc;

use tidings_bridge::Bridge;
use tidings_routing::Router;
use tokio_util::sync::CancellationToken;

use crate::{config::TransportConfig, rpc::RpcHandler, stats::TransportStats};

/// What a session needs from its gateway, and nothing more: the server
/// builds one per gateway and every session shares it.
pub(crate) struct Context {
    /// The transport tunables (already clamped).
    pub(crate) config: TransportConfig,
    /// Who may subscribe and publish where.
    pub(crate) router: Arc<Router>,
    /// The bridge to the broker.
    pub(crate) bridge: Bridge,
    /// The transport's counters.
    pub(crate) stats: Arc<TransportStats>,
    /// The RPC handler, when RPC is on.
    pub(crate) rpc: Option<Arc<dyn RpcHandler>>,
    /// Cancelled when sockets must go: each session closes with 1012 at its
    /// own moment within the drain spread.
    pub(crate) shutdown: CancellationToken,
}
