//! The Socket.IO adapter's tunables and its `[socketio]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::config::{positive_secs, ConfigError};

/// The Socket.IO adapter's tunables. [`Default`] gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Path prefix of the endpoint. Default `/socket.io/`.
    pub path: String,
    /// The event live messages arrive as. Default `notification`.
    pub event: String,
    /// How often the server pings (Engine.IO `pingInterval`). Default 25 s.
    pub ping_interval: Duration,
    /// How long the client may take to answer (`pingTimeout`). Default 20 s.
    pub ping_timeout: Duration,
    /// Largest packet batch a client may send (`maxPayload`), in bytes.
    /// Default 1,000,000.
    pub max_payload: usize,
    /// Longest time between the Engine.IO handshake and the Socket.IO
    /// connect. Default 45 s.
    pub connect_timeout: Duration,
    /// Longest time the client may take to read what is written.
    /// Default 10 s.
    pub write_timeout: Duration,
    /// Longest wait for a polling request's body. Default 10 s.
    pub body_timeout: Duration,
    /// At shutdown, the window over which sessions are closed. Default 5 s.
    pub drain_spread: Duration,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            path: "/socket.io/".into(),
            event: "notification".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            connect_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            drain_spread: Duration::from_secs(5),
        }
    }
}

/// The `[socketio]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoSettings {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Path prefix; starts and ends with `/`.
    pub path: String,
    /// The event live messages arrive as.
    pub event: String,
    /// Engine.IO `pingInterval`, in seconds.
    pub ping_interval_secs: f64,
    /// Engine.IO `pingTimeout`, in seconds.
    pub ping_timeout_secs: f64,
    /// Engine.IO `maxPayload`, in bytes.
    pub max_payload: usize,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        let c = SocketIoConfig::default();
        Self {
            enabled: false,
            path: c.path,
            event: c.event,
            ping_interval_secs: c.ping_interval.as_secs_f64(),
            ping_timeout_secs: c.ping_timeout.as_secs_f64(),
            max_payload: c.max_payload,
        }
    }
}

impl SocketIoSettings {
    /// Checks every key and sets the matching fields of `c`.
    pub fn apply(&self, c: &mut SocketIoConfig) -> Result<(), ConfigError> {
        if !(self.path.starts_with('/') && self.path.ends_with('/')) {
            return Err(ConfigError::new("path", "must start and end with '/'"));
        }
        if self.event.is_empty() || self.event.len() > 128 {
            return Err(ConfigError::new("event", "must be 1 to 128 characters"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_payload) {
            return Err(ConfigError::new(
                "max_payload",
                "must be between 1024 and 67108864",
            ));
        }
        c.path = self.path.clone();
        c.event = self.event.clone();
        c.ping_interval = positive_secs("ping_interval_secs", self.ping_interval_secs)?;
        c.ping_timeout = positive_secs("ping_timeout_secs", self.ping_timeout_secs)?;
        c.max_payload = self.max_payload;
        Ok(())
    }
}
