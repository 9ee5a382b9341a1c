//! Transport tunables.

use std::time::Duration;

use tidings_bridge::SlowConsumerPolicy;

/// Tunables of the WebSocket transport. [`Default`] gives the documented
/// defaults (see `docs/configuration.md`).
///
/// Every field is public, so any value can be set; [`TransportConfig::validate`]
/// says which are out of range, and a [`Gateway`](crate::Gateway) is always
/// built from [`TransportConfig::clamped`] values, so no setting can make it
/// panic or spin (durations are kept within [`MIN_DURATION`] and
/// [`MAX_DURATION`], counts and rates above zero).
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
    /// Longest time a WebSocket frame may take to arrive once its first
    /// byte has: a frame still incomplete then closes the socket with 1008
    /// (`"frame not completed in time"`). Waiting for a frame to *start*
    /// is not limited by it (idle sockets are the heartbeat's business).
    /// Default 10 s.
    pub frame_timeout: Duration,
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
    /// Most publications one recovery of one channel replays; a client
    /// that missed more is told `recovered: false`. Default 1,000.
    pub max_replay: u64,
    /// Whether the permessage-deflate extension (RFC 7692) is accepted
    /// when a client offers it, with no context takeover either way (see
    /// `docs/transports.md`). Default `false`.
    pub permessage_deflate: bool,
    /// With permessage-deflate negotiated, deliveries smaller than this
    /// many bytes go uncompressed. Default 1,024.
    pub deflate_threshold: usize,
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
            frame_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_subscriptions: 64,
            shutdown_grace: Duration::from_secs(10),
            drain_readiness_delay: Duration::ZERO,
            drain_spread: Duration::from_secs(5),
            limits: crate::Limits::default(),
            client_messages_per_sec: 20.0,
            client_message_burst: 40,
            rate_limit_close_after: 100,
            max_replay: 1_000,
            permessage_deflate: false,
            deflate_threshold: 1024,
        }
    }
}

/// The shortest timeout or interval a gateway uses: shorter ones (zero
/// included) are raised to it by [`TransportConfig::clamped`].
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The longest timeout or interval a gateway uses (about one year): longer
/// ones are lowered to it by [`TransportConfig::clamped`], so no deadline
/// computed from them can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The highest `client_messages_per_sec` a gateway uses.
pub const MAX_RATE: f64 = 1e9;

/// A [`TransportConfig`] value out of range (see [`TransportConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidConfig {
    /// The field, as named in [`TransportConfig`] (`limits.` for [`crate::Limits`]).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl TransportConfig {
    /// Checks every value: timeouts and intervals (not the drain ones)
    /// within [`MIN_DURATION`]..=[`MAX_DURATION`], drain durations at most
    /// [`MAX_DURATION`], `client_messages_per_sec` a finite number above
    /// zero (at most [`MAX_RATE`]), `outbound_queue`,
    /// `client_message_burst`, `rate_limit_close_after` and the connection
    /// limits above zero. The first problem found is returned.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |field, reason: String| Err(InvalidConfig { field, reason });
        for (field, d) in [
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("write_timeout", self.write_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("frame_timeout", self.frame_timeout),
            ("shutdown_grace", self.shutdown_grace),
        ] {
            if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
                return bad(
                    field,
                    format!("must be between {MIN_DURATION:?} and {MAX_DURATION:?}, got {d:?}"),
                );
            }
        }
        for (field, d) in [
            ("drain_readiness_delay", self.drain_readiness_delay),
            ("drain_spread", self.drain_spread),
        ] {
            if d > MAX_DURATION {
                return bad(
                    field,
                    format!("must be at most {MAX_DURATION:?}, got {d:?}"),
                );
            }
        }
        let rate = self.client_messages_per_sec;
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
            return bad(
                "client_messages_per_sec",
                format!("must be a number above 0 and at most {MAX_RATE}, got {rate}"),
            );
        }
        for (field, n) in [
            ("outbound_queue", self.outbound_queue),
            ("client_message_burst", self.client_message_burst as usize),
            (
                "rate_limit_close_after",
                self.rate_limit_close_after as usize,
            ),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            (
                "limits.max_connections_per_user",
                self.limits.max_connections_per_user,
            ),
        ] {
            if n == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// This config with every value brought into the range
    /// [`TransportConfig::validate`] checks: durations to the nearest bound,
    /// zero counts to 1, a rate that is not a positive number to the
    /// default (20), one above [`MAX_RATE`] to it. Connection limits of
    /// zero are kept (they refuse every socket, which is harmless). The
    /// [`Gateway`](crate::Gateway) builder applies it.
    pub fn clamped(mut self) -> Self {
        let clamp = |d: Duration| d.clamp(MIN_DURATION, MAX_DURATION);
        self.ping_interval = clamp(self.ping_interval);
        self.pong_timeout = clamp(self.pong_timeout);
        self.write_timeout = clamp(self.write_timeout);
        self.handshake_timeout = clamp(self.handshake_timeout);
        self.frame_timeout = clamp(self.frame_timeout);
        self.shutdown_grace = clamp(self.shutdown_grace);
        self.drain_readiness_delay = self.drain_readiness_delay.min(MAX_DURATION);
        self.drain_spread = self.drain_spread.min(MAX_DURATION);
        let rate = self.client_messages_per_sec;
        self.client_messages_per_sec = if rate.is_finite() && rate > 0.0 {
            rate.min(MAX_RATE)
        } else if rate == f64::INFINITY {
            MAX_RATE
        } else {
            Self::default().client_messages_per_sec
        };
        self.outbound_queue = self.outbound_queue.max(1);
        self.client_message_burst = self.client_message_burst.max(1);
        self.rate_limit_close_after = self.rate_limit_close_after.max(1);
        self.max_replay = self.max_replay.max(1);
        self
    }

    /// The session tunables among these.
    pub fn session_config(&self) -> tidings_session::SessionConfig {
        tidings_session::SessionConfig {
            outbound_queue: self.outbound_queue,
            slow_consumer: self.slow_consumer,
            max_subscriptions: self.max_subscriptions,
            client_messages_per_sec: self.client_messages_per_sec,
            client_message_burst: self.client_message_burst,
            rate_limit_close_after: self.rate_limit_close_after,
            max_replay: self.max_replay,
        }
    }
}

/// `from + d`, or a moment far in the future when that would overflow
/// (an `Instant` cannot hold every `Duration`).
pub(crate) fn deadline_after(from: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(MAX_DURATION))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_clamping_keeps_them() {
        let d = TransportConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let c = d.clone().clamped();
        assert_eq!(
            (c.ping_interval, c.client_messages_per_sec, c.outbound_queue),
            (d.ping_interval, d.client_messages_per_sec, d.outbound_queue)
        );
    }

    #[test]
    fn out_of_range_values_are_reported_and_clamped() {
        let wild = TransportConfig {
            ping_interval: Duration::MAX,
            pong_timeout: Duration::ZERO,
            frame_timeout: Duration::MAX,
            drain_spread: Duration::MAX,
            client_messages_per_sec: f64::NAN,
            outbound_queue: 0,
            client_message_burst: 0,
            rate_limit_close_after: 0,
            ..TransportConfig::default()
        };
        assert_eq!(wild.validate().unwrap_err().field, "ping_interval");
        let c = wild.clamped();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.ping_interval, MAX_DURATION);
        assert_eq!(c.pong_timeout, MIN_DURATION);
        assert_eq!(c.drain_spread, MAX_DURATION);
        assert_eq!(c.client_messages_per_sec, 20.0);
        assert_eq!((c.outbound_queue, c.client_message_burst), (1, 1));
        let zero_limit = TransportConfig {
            limits: crate::Limits {
                max_connections_per_ip: 0,
                ..crate::Limits::default()
            },
            ..TransportConfig::default()
        };
        assert_eq!(
            zero_limit.validate().unwrap_err().field,
            "limits.max_connections_per_ip"
        );
        for rate in [f64::INFINITY, -1.0, 0.0, 1e300] {
            let c = TransportConfig {
                client_messages_per_sec: rate,
                ..TransportConfig::default()
            };
            assert!(c.validate().is_err(), "{rate}");
            assert_eq!(c.clamped().validate(), Ok(()), "{rate}");
        }
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = tokio::time::Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now);
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
