//! The SSE adapter's tunables and its `[sse]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::config::{positive_secs, ConfigError};

/// The SSE adapter's tunables. [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SseConfig {
    /// Path of the event stream (GET) and of the action endpoint (POST).
    /// Default `/sse`.
    pub path: String,
    /// How often a heartbeat comment is written. Default 15 s.
    pub heartbeat: Duration,
    /// The `retry:` the stream announces: how long `EventSource` waits
    /// before it reconnects. Default 2 s.
    pub retry: Duration,
    /// Most `channel` query parameters one stream may ask for. Default 16.
    pub max_query_channels: usize,
    /// Largest action (POST body), in bytes. Default 64 KiB.
    pub max_action_bytes: usize,
    /// Actions queued for one stream before more are refused with 429.
    /// Default 16.
    pub action_queue: usize,
    /// Longest time the client may take to read what is written before the
    /// stream is dropped as a slow consumer. Default 10 s.
    pub write_timeout: Duration,
    /// Longest wait for an action's body. Default 10 s.
    pub body_timeout: Duration,
    /// At shutdown, the window over which streams are ended, each at its
    /// own moment. Default 5 s.
    pub drain_spread: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            path: "/sse".into(),
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            max_query_channels: 16,
            max_action_bytes: 64 * 1024,
            action_queue: 16,
            write_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            drain_spread: Duration::from_secs(5),
        }
    }
}

/// The `[sse]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseSettings {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Path of the endpoint; starts with `/`.
    pub path: String,
    /// Heartbeat comment interval, in seconds.
    pub heartbeat_secs: f64,
    /// Reconnection delay announced to `EventSource`, in milliseconds.
    pub retry_ms: u64,
    /// Most `channel` query parameters per stream.
    pub max_query_channels: usize,
    /// Largest action body, in bytes.
    pub max_action_bytes: usize,
}

impl Default for SseSettings {
    fn default() -> Self {
        let c = SseConfig::default();
        Self {
            enabled: true,
            path: c.path,
            heartbeat_secs: c.heartbeat.as_secs_f64(),
            retry_ms: c.retry.as_millis() as u64,
            max_query_channels: c.max_query_channels,
            max_action_bytes: c.max_action_bytes,
        }
    }
}

impl SseSettings {
    /// Checks every key and sets the matching fields of `c`.
    pub fn apply(&self, c: &mut SseConfig) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("path", "must start with '/'"));
        }
        if !(1..=3_600_000).contains(&self.retry_ms) {
            return Err(ConfigError::new(
                "retry_ms",
                "must be between 1 and 3600000",
            ));
        }
        if self.max_query_channels > 256 {
            return Err(ConfigError::new(
                "max_query_channels",
                "must be at most 256",
            ));
        }
        if !(128..=64 * 1024 * 1024).contains(&self.max_action_bytes) {
            return Err(ConfigError::new(
                "max_action_bytes",
                "must be between 128 and 67108864",
            ));
        }
        c.path = self.path.clone();
        c.heartbeat = positive_secs("heartbeat_secs", self.heartbeat_secs)?;
        c.retry = Duration::from_millis(self.retry_ms);
        c.max_query_channels = self.max_query_channels;
        c.max_action_bytes = self.max_action_bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_bad_keys_are_named() {
        let mut c = SseConfig::default();
        SseSettings::default().apply(&mut c).unwrap();
        assert_eq!(c.path, "/sse");
        let bad = SseSettings {
            path: "sse".into(),
            ..SseSettings::default()
        };
        assert_eq!(bad.apply(&mut c).unwrap_err().key(), "path");
        let bad = SseSettings {
            heartbeat_secs: 0.0,
            ..SseSettings::default()
        };
        assert_eq!(bad.apply(&mut c).unwrap_err().key(), "heartbeat_secs");
    }
}
