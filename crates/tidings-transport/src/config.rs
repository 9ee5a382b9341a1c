//! Transport tunables.

use std::time::Duration;

use tidings_bridge::SlowConsumerPolicy;

/// Tunables of the WebSocket transport. [`Default`] gives the documented
/// defaults (see `docs/configuration.md`).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Path of the WebSocket endpoint. Default `/ws`.
    pub ws_path: String,
    /// How often the server pings each socket. Default 20 s.
    pub ping_interval: Duration,
    /// How long a socket may take to answer a ping before it is closed with
    /// 4000. Default 10 s.
    pub pong_timeout: Duration,
    /// Largest client message accepted, all fragments together, in bytes.
    /// Larger ones close the socket with 1009. Default 64 KiB.
    pub max_message_size: usize,
    /// Most messages queued for one socket. Default 256.
    pub outbound_queue: usize,
    /// What happens when a socket's queue is full. Default `close`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Longest time one write to a socket may block before the socket is
    /// considered dead. Default 10 s.
    pub write_timeout: Duration,
    /// Longest time a client may take to send its HTTP request headers
    /// (slowloris protection). Default 10 s.
    pub handshake_timeout: Duration,
    /// Origins allowed to open a socket. Empty (the default) means same
    /// origin only (the `Origin` host must equal the `Host` header); `"*"`
    /// allows any. Requests without an `Origin` header (non-browser
    /// clients) are always allowed: Origin protects browsers' cookies.
    pub allowed_origins: Vec<String>,
    /// Most subscriptions one socket may hold (joined ones included). Default 64.
    pub max_subscriptions: usize,
    /// How long, at shutdown (after the readiness delay), sockets get to
    /// close before they are dropped. Default 10 s.
    pub shutdown_grace: Duration,
    /// At shutdown, how long `/readyz` reports not ready (and new upgrades
    /// are refused) before sockets are closed, so load balancers stop
    /// sending new clients first. Default 0 s.
    pub drain_readiness_delay: Duration,
    /// At shutdown, the window over which sockets are closed (with 1012),
    /// each at its own moment, so a fleet of clients does not reconnect all
    /// at once. Default 5 s; must be shorter than `shutdown_grace`.
    pub drain_spread: Duration,
    /// Connection limits.
    pub limits: crate::Limits,
    /// Client messages per second one socket may send, sustained (a token
    /// bucket). Beyond it, requests get a `rate_limited` error. Default 20.
    pub client_messages_per_sec: f64,
    /// Client messages one socket may send in a burst. Default 40.
    pub client_message_burst: u32,
    /// Consecutive rate-limited messages after which the socket is closed
    /// with 1008. Default 100.
    pub rate_limit_close_after: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            ws_path: "/ws".into(),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            outbound_queue: 256,
            slow_consumer: SlowConsumerPolicy::Close,
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_subscriptions: 64,
            shutdown_grace: Duration::from_secs(10),
            drain_readiness_delay: Duration::ZERO,
            drain_spread: Duration::from_secs(5),
            limits: crate::Limits::default(),
            client_messages_per_sec: 20.0,
            client_message_burst: 40,
            rate_limit_close_after: 100,
        }
    }
}
