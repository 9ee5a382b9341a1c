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
    /// No pong within the timeout (4000), or a write blocked too long.
    Heartbeat,
    /// Outbound queue overflowed (4001).
    SlowConsumer,
    /// The server shut down (1001).
    Shutdown,
    /// The client kept sending faster than its rate limit (1008).
    RateLimited,
}

impl CloseReason {
    /// Every reason, for exporting counters.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::Protocol,
        CloseReason::TooBig,
        CloseReason::Heartbeat,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::RateLimited,
    ];

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
        }
    }
}

/// Counters of the transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    current: AtomicU64,
    opened: AtomicU64,
    rejected: AtomicU64,
    closed: [AtomicU64; 6],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
}

impl TransportStats {
    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.current.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.current.fetch_sub(1, Ordering::Relaxed);
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.closed[i].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn frames_out(&self, n: u64) {
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
