//! Connection counters, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it or went away.
    Client,
    /// The client broke the WebSocket protocol (1002, 1007).
    Protocol,
    /// A message exceeded the size limit (1009).
    TooBig,
    /// No pong within the timeout (4000).
    Heartbeat,
    /// Outbound queue overflowed (4001), or a write blocked longer than the
    /// write timeout.
    SlowConsumer,
    /// The server shut down (1012, drain).
    Shutdown,
    /// The client kept sending faster than its rate limit (1008).
    RateLimited,
    /// The backend disconnected it (the control API: 4002, 4003 or its
    /// own code).
    Backend,
}

impl CloseReason {
    /// Every reason, for exporting counters.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::Protocol,
        CloseReason::TooBig,
        CloseReason::Heartbeat,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::RateLimited,
        CloseReason::Backend,
    ];

    /// The WebSocket close code a connection that ended for this reason
    /// most likely saw (what other wire formats report, and the
    /// disconnect webhook's `code`; a backend disconnect's own code is
    /// reported by the session instead).
    pub fn code(self) -> u16 {
        use tidings_core::protocol::close;
        match self {
            CloseReason::Client | CloseReason::Backend => close::NORMAL,
            CloseReason::Protocol => close::PROTOCOL_ERROR,
            CloseReason::TooBig => close::MESSAGE_TOO_BIG,
            CloseReason::Heartbeat => close::HEARTBEAT_TIMEOUT,
            CloseReason::SlowConsumer => close::SLOW_CONSUMER,
            CloseReason::Shutdown => close::SERVICE_RESTART,
            CloseReason::RateLimited => close::POLICY_VIOLATION,
        }
    }

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Protocol => "protocol_error",
            CloseReason::TooBig => "message_too_big",
            CloseReason::Heartbeat => "heartbeat_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Backend => "backend",
        }
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a WebSocket upgrade request (426).
    NotUpgrade,
    /// The gateway is draining (503).
    ShuttingDown,
    /// The `Origin` is not allowed (403).
    Origin,
    /// The handshake was malformed (400).
    BadHandshake,
    /// The identity resolver refused the credentials (401, 403, ...).
    Identity,
    /// The identity source was unavailable (503).
    IdentityUnavailable,
    /// `max_connections` reached (503).
    LimitTotal,
    /// `max_connections_per_ip` reached (429).
    LimitPerIp,
    /// `max_connections_per_user` reached (429).
    LimitPerUser,
}

impl RejectReason {
    /// Every reason, for exporting counters.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::NotUpgrade,
        RejectReason::ShuttingDown,
        RejectReason::Origin,
        RejectReason::BadHandshake,
        RejectReason::Identity,
        RejectReason::IdentityUnavailable,
        RejectReason::LimitTotal,
        RejectReason::LimitPerIp,
        RejectReason::LimitPerUser,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotUpgrade => "not_upgrade",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::Origin => "origin",
            RejectReason::BadHandshake => "bad_handshake",
            RejectReason::Identity => "identity_refused",
            RejectReason::IdentityUnavailable => "identity_unavailable",
            RejectReason::LimitTotal => "limit_total",
            RejectReason::LimitPerIp => "limit_per_ip",
            RejectReason::LimitPerUser => "limit_per_user",
        }
    }
}

/// Upper bounds (seconds) of the identity lookup latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram (Prometheus style), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`] (as Prometheus
    /// wants them), the total count and the sum in seconds.
    pub fn snapshot(&self) -> ([u64; 12], u64, f64) {
        let mut cumulative = [0u64; 12];
        let mut running = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            running += b.load(Ordering::Relaxed);
            cumulative[i] = running;
        }
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Outcomes of identity lookups, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityOutcome {
    /// A user was identified.
    User,
    /// Accepted as an anonymous visitor.
    Anonymous,
    /// Refused (401, 403, ...).
    Refused,
    /// The identity source was unavailable (503).
    Unavailable,
}

impl IdentityOutcome {
    /// Every outcome, for exporting counters.
    pub const ALL: [IdentityOutcome; 4] = [
        IdentityOutcome::User,
        IdentityOutcome::Anonymous,
        IdentityOutcome::Refused,
        IdentityOutcome::Unavailable,
    ];

    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityOutcome::User => "user",
            IdentityOutcome::Anonymous => "anonymous",
            IdentityOutcome::Refused => "refused",
            IdentityOutcome::Unavailable => "unavailable",
        }
    }
}

/// Counters of the transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    current: AtomicU64,
    opened: AtomicU64,
    rejected: AtomicU64,
    rejected_by: [AtomicU64; 9],
    closed: [AtomicU64; 8],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    rate_limited: AtomicU64,
    rpc_calls: AtomicU64,
    rpc_failures: AtomicU64,
    recoveries: AtomicU64,
    recoveries_failed: AtomicU64,
    replayed: AtomicU64,
    identity: [AtomicU64; 4],
    /// How long identity resolution took, per upgrade.
    pub identity_latency: Histogram,
}

impl TransportStats {
    /// Counts a connection opened (and now open).
    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.current.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts a connection closed for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        self.current.fetch_sub(1, Ordering::Relaxed);
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.closed[i].fetch_add(1, Ordering::Relaxed);
    }
    /// Counts a connection refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected_by[i].fetch_add(1, Ordering::Relaxed);
    }
    /// Counts an identity lookup's `outcome` and how long it `took`.
    pub fn identity(&self, outcome: IdentityOutcome, took: std::time::Duration) {
        let i = IdentityOutcome::ALL
            .iter()
            .position(|r| *r == outcome)
            .unwrap_or(0);
        self.identity[i].fetch_add(1, Ordering::Relaxed);
        self.identity_latency.observe(took);
    }
    /// Counts a client message refused by the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts an RPC call, failed unless `ok`.
    pub fn rpc(&self, ok: bool) {
        self.rpc_calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.rpc_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one recovery: `asked` (the client gave a position), whether
    /// it `recovered` everything, and how many publications it replayed.
    pub fn recovery(&self, asked: bool, recovered: bool, replayed: usize) {
        if asked {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            if !recovered {
                self.recoveries_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
    }

    /// Recoveries asked for (a position sent on connect, subscribe or a
    /// repair after a hole), and how many of them could not replay
    /// everything (`recovered: false`).
    pub fn recovery_totals(&self) -> (u64, u64) {
        (
            self.recoveries.load(Ordering::Relaxed),
            self.recoveries_failed.load(Ordering::Relaxed),
        )
    }

    /// Publications replayed from history to connections.
    pub fn replayed_total(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Upgrades refused for `reason` since start.
    pub fn rejected_by(&self, reason: RejectReason) -> u64 {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected_by[i].load(Ordering::Relaxed)
    }
    /// Identity lookups that ended in `outcome`.
    pub fn identity_total(&self, outcome: IdentityOutcome) -> u64 {
        let i = IdentityOutcome::ALL
            .iter()
            .position(|r| *r == outcome)
            .unwrap_or(0);
        self.identity[i].load(Ordering::Relaxed)
    }
    /// Client messages refused by the rate limit.
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
    /// RPC calls made, and how many of them failed (timeout, unreachable, refused).
    pub fn rpc_totals(&self) -> (u64, u64) {
        (
            self.rpc_calls.load(Ordering::Relaxed),
            self.rpc_failures.load(Ordering::Relaxed),
        )
    }
    /// Counts a client message received.
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts `n` frames written to a connection.
    pub fn frames_out(&self, n: u64) {
        self.frames_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Sockets open now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
    /// Sockets opened since start.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
    /// Upgrades refused (origin, identity, shutdown).
    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Sockets closed for `reason` since start.
    pub fn closed_total(&self, reason: CloseReason) -> u64 {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.closed[i].load(Ordering::Relaxed)
    }
    /// Client messages received.
    pub fn frames_in_total(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }
    /// Frames written to sockets.
    pub fn frames_out_total(&self) -> u64 {
        self.frames_out.load(Ordering::Relaxed)
    }
}
