//! Counters the bridge keeps, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of the bridge (read with [`BridgeStats::snapshot`]).
#[derive(Debug, Default)]
pub struct BridgeStats {
    messages_in: AtomicU64,
    unrouted: AtomicU64,
    deliveries: AtomicU64,
    dropped_slow: AtomicU64,
    slow_closes: AtomicU64,
    discarded: AtomicU64,
    reconnects: AtomicU64,
    gap_notices: AtomicU64,
    selfcheck_repairs: AtomicU64,
}

/// A point-in-time copy of [`BridgeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages received from the broker for this process.
    pub messages_in: u64,
    /// Messages that arrived with no local subscriber left (normal right after an unsubscribe).
    pub unrouted: u64,
    /// Messages queued to a socket (one per recipient).
    pub deliveries: u64,
    /// Messages dropped for a slow socket (policy `drop`).
    pub dropped_slow: u64,
    /// Sockets closed as slow consumers (policy `close`).
    pub slow_closes: u64,
    /// Messages from the broker that could not be handed over at all.
    pub discarded: u64,
    /// Times the broker connection was restored after a loss.
    pub reconnects: u64,
    /// `gap` notices queued to sockets.
    pub gap_notices: u64,
    /// Subscriptions the self-check found missing on the broker although
    /// local sockets needed them, and made again.
    pub selfcheck_repairs: u64,
}

impl BridgeStats {
    pub(crate) fn record_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_fanout(&self, delivered: u64, dropped: u64, closed: u64) {
        self.deliveries.fetch_add(delivered, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped_slow.fetch_add(dropped, Ordering::Relaxed);
        }
        if closed > 0 {
            self.slow_closes.fetch_add(closed, Ordering::Relaxed);
        }
    }
    pub(crate) fn record_discard(&self, reason: &'static str, count: u64) {
        tracing::warn!(reason, count, "discarded messages from the broker");
        self.discarded.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_gap_notices(&self, n: u64) {
        self.gap_notices.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn record_selfcheck_repairs(&self, n: u64) {
        self.selfcheck_repairs.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            messages_in: r(&self.messages_in),
            unrouted: r(&self.unrouted),
            deliveries: r(&self.deliveries),
            dropped_slow: r(&self.dropped_slow),
            slow_closes: r(&self.slow_closes),
            discarded: r(&self.discarded),
            reconnects: r(&self.reconnects),
            gap_notices: r(&self.gap_notices),
            selfcheck_repairs: r(&self.selfcheck_repairs),
        }
    }
}
