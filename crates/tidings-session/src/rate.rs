//! A socket's rate limit on client frames: a token bucket, and how many
//! frames in a row went over it.

use tokio::time::Instant;

use crate::stats::TransportStats;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What went over the limit asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Refuse this frame; the socket stays.
    Refuse,
    /// Over the limit too many times in a row: close the socket.
    Close,
}

/// A socket's rate limiter: `client_messages_per_sec` tokens per second, at
/// most `client_message_burst` saved up, and the socket closes after
/// `rate_limit_close_after` refusals in a row.
pub(crate) struct RateLimiter {
    bucket: TokenBucket,
    limited_in_a_row: u32,
    close_after: u32,
}

impl RateLimiter {
    /// A full limiter.
    pub(crate) fn new(rate: f64, burst: u32, close_after: u32) -> Self {
        Self {
            bucket: TokenBucket::new(rate, burst),
            limited_in_a_row: 0,
            close_after,
        }
    }

    /// Takes a token for one client message, ping, pong or non-final
    /// fragment; over the limit, counts it in `stats`.
    pub(crate) fn take(&mut self, stats: &TransportStats) -> Result<(), Limited> {
        if self.bucket.take() {
            self.limited_in_a_row = 0;
            return Ok(());
        }
        stats.rate_limited();
        self.limited_in_a_row += 1;
        if self.limited_in_a_row >= self.close_after {
            return Err(Limited::Close);
        }
        Err(Limited::Refuse)
    }
}
