//! What every session of a gateway shares: the tunables, the routing
//! rules, the bridge, the counters, the RPC handler and the shutdown signal.

use std::sync::Arc;

use tidings_bridge::{Bridge, SlowConsumerPolicy};
use tidings_routing::Router;
use tokio_util::sync::CancellationToken;

use crate::{control::SessionHooks, rpc::RpcHandler, stats::TransportStats};

/// The tunables of a session, whatever its wire format. [`Default`] gives
/// the documented defaults (see `docs/configuration.md`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most messages queued for one connection. Default 256.
    pub outbound_queue: usize,
    /// What happens when a connection's queue is full. Default `close`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Most channels one connection may subscribe to (joined channels
    /// included). Default 64.
    pub max_subscriptions: usize,
    /// Client messages per second one connection may send, sustained (a
    /// token bucket). Beyond it, requests get a `rate_limited` error.
    /// Default 20.
    pub client_messages_per_sec: f64,
    /// Client messages one connection may send in a burst. Default 40.
    pub client_message_burst: u32,
    /// Consecutive rate-limited messages after which the connection is
    /// closed with 1008. Default 100.
    pub rate_limit_close_after: u32,
    /// Most publications one recovery of one channel replays; a client
    /// that missed more is told `recovered: false`. Default 1,000 (and
    /// never more than the channel's history keeps).
    pub max_replay: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            outbound_queue: 256,
            slow_consumer: SlowConsumerPolicy::Close,
            max_subscriptions: 64,
            client_messages_per_sec: 20.0,
            client_message_burst: 40,
            rate_limit_close_after: 100,
            max_replay: 1_000,
        }
    }
}

/// What a session needs from its gateway, and nothing more: a gateway
/// builds one and every session of every wire format shares it.
pub struct Context {
    /// The session tunables.
    pub config: SessionConfig,
    /// Who may subscribe and publish where.
    pub router: Arc<Router>,
    /// The bridge to the broker (and the history, when channels keep one).
    pub bridge: Bridge,
    /// The connection counters.
    pub stats: Arc<TransportStats>,
    /// The RPC handler, when RPC is on.
    pub rpc: Option<Arc<dyn RpcHandler>>,
    /// The control registry, presence and webhooks, when the gateway has
    /// them.
    pub hooks: Option<Arc<dyn SessionHooks>>,
    /// What a connection's id starts with (`<gateway id>-`, so that ids are
    /// unique across gateways; empty: the bare number). A connection's id
    /// is in its `welcome`, and is what a publish's `exclude` names.
    pub connection_prefix: Arc<str>,
    /// Cancelled when connections must go: each closes at its own moment
    /// within the drain spread (the wire adapter decides how).
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("bridge", &self.bridge.broker_name())
            .field("rpc", &self.rpc.is_some())
            .field("hooks", &self.hooks.is_some())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `bridge` and `router` with `config`, no RPC, and a
    /// fresh shutdown signal and counters.
    pub fn new(config: SessionConfig, router: Arc<Router>, bridge: Bridge) -> Self {
        Self {
            config,
            router,
            bridge,
            stats: Arc::default(),
            rpc: None,
            hooks: None,
            connection_prefix: Arc::from(""),
            shutdown: CancellationToken::new(),
        }
    }
}
