//! The transport's configuration sections, as written in a file:
//! `[websocket]`, `[shutdown]` and `[limits]` (together a
//! [`TransportConfig`]). The `[rpc]` section is the `tidings-rpc` crate's.
//!
//! Each deserializes itself (unknown keys refused, every key defaulted) and
//! checks itself, returning a [`ConfigError`] naming the key relative to its
//! section; [`TransportConfig::from_settings`] names it under the section
//! (`websocket.ping_interval_secs`).

use serde::{Deserialize, Serialize};
use tidings_bridge::SlowConsumerPolicy;
use tidings_core::config::{non_negative_secs, positive_secs, ConfigError};

use crate::{IpNet, Limits, TransportConfig};

/// The `[websocket]` section: the endpoint and each socket's tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Path of the endpoint; starts with `/`.
    pub path: String,
    /// How often each socket is pinged, in seconds.
    pub ping_interval_secs: f64,
    /// How long a socket may take to answer a ping, in seconds.
    pub pong_timeout_secs: f64,
    /// Largest client message, in bytes (128 to 67,108,864).
    pub max_message_bytes: usize,
    /// Most messages queued for one socket.
    pub outbound_queue: usize,
    /// What happens when a socket's queue is full.
    pub slow_consumer: SlowConsumer,
    /// Longest time one write may block, in seconds.
    pub write_timeout_secs: f64,
    /// Longest time for the request headers (and for the rest of a started
    /// frame), in seconds.
    pub handshake_timeout_secs: f64,
    /// Origins allowed to open a socket (empty: same origin; `"*"`: any).
    pub allowed_origins: Vec<String>,
    /// Most subscriptions one socket may hold.
    pub max_subscriptions: usize,
    /// Client messages per second one socket may send, sustained.
    pub client_messages_per_sec: f64,
    /// Client messages one socket may send in a burst.
    pub client_message_burst: u32,
    /// Accept permessage-deflate when a client offers it.
    pub permessage_deflate: bool,
    /// Deliveries smaller than this many bytes go uncompressed.
    pub deflate_threshold_bytes: usize,
}

/// `websocket.slow_consumer`: what happens to a socket whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Close it (4001).
    Close,
    /// Drop the message for it.
    Drop,
}

impl From<SlowConsumer> for SlowConsumerPolicy {
    fn from(s: SlowConsumer) -> Self {
        match s {
            SlowConsumer::Close => SlowConsumerPolicy::Close,
            SlowConsumer::Drop => SlowConsumerPolicy::Drop,
        }
    }
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        let t = TransportConfig::default();
        Self {
            path: t.ws_path,
            ping_interval_secs: t.ping_interval.as_secs_f64(),
            pong_timeout_secs: t.pong_timeout.as_secs_f64(),
            max_message_bytes: t.max_message_size,
            outbound_queue: t.outbound_queue,
            slow_consumer: SlowConsumer::Close,
            write_timeout_secs: t.write_timeout.as_secs_f64(),
            handshake_timeout_secs: t.handshake_timeout.as_secs_f64(),
            allowed_origins: t.allowed_origins,
            max_subscriptions: t.max_subscriptions,
            client_messages_per_sec: t.client_messages_per_sec,
            client_message_burst: t.client_message_burst,
            permessage_deflate: t.permessage_deflate,
            deflate_threshold_bytes: t.deflate_threshold,
        }
    }
}

impl WebSocketSettings {
    /// Checks every key and sets the matching fields of `t`.
    pub fn apply(&self, t: &mut TransportConfig) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("path", "must start with '/'"));
        }
        if !(128..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(ConfigError::new(
                "max_message_bytes",
                "must be between 128 and 67108864",
            ));
        }
        if self.outbound_queue == 0 {
            return Err(ConfigError::new("outbound_queue", "must be at least 1"));
        }
        t.ws_path = self.path.clone();
        t.ping_interval = positive_secs("ping_interval_secs", self.ping_interval_secs)?;
        t.pong_timeout = positive_secs("pong_timeout_secs", self.pong_timeout_secs)?;
        t.max_message_size = self.max_message_bytes;
        t.outbound_queue = self.outbound_queue;
        t.slow_consumer = self.slow_consumer.into();
        t.write_timeout = positive_secs("write_timeout_secs", self.write_timeout_secs)?;
        t.handshake_timeout = positive_secs("handshake_timeout_secs", self.handshake_timeout_secs)?;
        let rate = self.client_messages_per_sec;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ConfigError::new(
                "client_messages_per_sec",
                format!("must be a positive number, got {rate}"),
            ));
        }
        // The same slow-sender bound for the rest of a started frame.
        t.frame_timeout = t.handshake_timeout;
        t.allowed_origins = self.allowed_origins.clone();
        t.max_subscriptions = self.max_subscriptions;
        t.client_messages_per_sec = rate;
        t.client_message_burst = self.client_message_burst.max(1);
        t.permessage_deflate = self.permessage_deflate;
        t.deflate_threshold = self.deflate_threshold_bytes;
        Ok(())
    }
}

/// The `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// How long sockets get to close, in seconds.
    pub grace_secs: f64,
    /// Not ready (and refusing new sockets) this long before closing any,
    /// in seconds.
    pub readiness_delay_secs: f64,
    /// Sockets are closed (1012) spread over this window, in seconds;
    /// shorter than `grace_secs`.
    pub drain_spread_secs: f64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        let t = TransportConfig::default();
        Self {
            grace_secs: t.shutdown_grace.as_secs_f64(),
            readiness_delay_secs: t.drain_readiness_delay.as_secs_f64(),
            drain_spread_secs: t.drain_spread.as_secs_f64(),
        }
    }
}

impl ShutdownSettings {
    /// Checks every key and sets the matching fields of `t`.
    pub fn apply(&self, t: &mut TransportConfig) -> Result<(), ConfigError> {
        let grace = positive_secs("grace_secs", self.grace_secs)?;
        let readiness = non_negative_secs("readiness_delay_secs", self.readiness_delay_secs)?;
        let spread = non_negative_secs("drain_spread_secs", self.drain_spread_secs)?;
        if spread >= grace {
            return Err(ConfigError::new(
                "drain_spread_secs",
                format!(
                    "must be shorter than shutdown.grace_secs ({}), or sockets are dropped before their turn",
                    self.grace_secs
                ),
            ));
        }
        t.shutdown_grace = grace;
        t.drain_readiness_delay = readiness;
        t.drain_spread = spread;
        Ok(())
    }
}

/// The `[limits]` section: connection limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Most sockets open at once.
    pub max_connections: usize,
    /// Most sockets from one client address.
    pub max_connections_per_ip: usize,
    /// Most sockets of one user id.
    pub max_connections_per_user: usize,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR
    /// ranges).
    pub trusted_proxies: Vec<String>,
    /// Most publications one recovery of one channel replays (beyond it:
    /// `recovered: false`).
    pub max_replay: u64,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            max_connections_per_user: l.max_connections_per_user,
            trusted_proxies: Vec::new(),
            max_replay: TransportConfig::default().max_replay,
        }
    }
}

impl LimitsSettings {
    /// The checked [`Limits`].
    pub fn to_limits(&self) -> Result<Limits, ConfigError> {
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_connections_per_user", self.max_connections_per_user),
        ] {
            if v == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .map_err(|e| ConfigError::new("trusted_proxies", e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections_per_user: self.max_connections_per_user,
            trusted_proxies,
        })
    }
}

impl TransportConfig {
    /// The transport configuration from its three sections, every key
    /// checked; an error names the key under its section as the `tidings`
    /// binary's file does (`websocket.ping_interval_secs`,
    /// `shutdown.grace_secs`, `limits.trusted_proxies`). Fields no section
    /// sets keep their defaults.
    pub fn from_settings(
        websocket: &WebSocketSettings,
        shutdown: &ShutdownSettings,
        limits: &LimitsSettings,
    ) -> Result<Self, ConfigError> {
        let mut t = TransportConfig::default();
        websocket.apply(&mut t).map_err(|e| e.within("websocket"))?;
        shutdown.apply(&mut t).map_err(|e| e.within("shutdown"))?;
        t.limits = limits.to_limits().map_err(|e| e.within("limits"))?;
        if limits.max_replay == 0 {
            return Err(ConfigError::new("max_replay", "must be at least 1").within("limits"));
        }
        t.max_replay = limits.max_replay;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn transport(ws: &str, shutdown: &str, limits: &str) -> Result<TransportConfig, ConfigError> {
        TransportConfig::from_settings(
            &toml::from_str(ws).unwrap(),
            &toml::from_str(shutdown).unwrap(),
            &toml::from_str(limits).unwrap(),
        )
    }

    #[test]
    fn empty_sections_give_the_transport_defaults() {
        let t = transport("", "", "").unwrap();
        let d = TransportConfig::default();
        assert_eq!(
            (
                t.ws_path.as_str(),
                t.ping_interval,
                t.outbound_queue,
                t.drain_spread
            ),
            (
                d.ws_path.as_str(),
                d.ping_interval,
                d.outbound_queue,
                d.drain_spread
            )
        );
        assert!(t.validate().is_ok());
    }

    #[test]
    fn keys_are_read() {
        let t = transport(
            "path = \"/socket\"\nping_interval_secs = 2.5\nslow_consumer = \"drop\"",
            "grace_secs = 3\ndrain_spread_secs = 1",
            "trusted_proxies = [\"10.0.0.0/8\"]",
        )
        .unwrap();
        assert_eq!(t.ws_path, "/socket");
        assert_eq!(t.ping_interval, Duration::from_millis(2500));
        assert_eq!(t.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(t.shutdown_grace, Duration::from_secs(3));
        assert_eq!(t.limits.trusted_proxies.len(), 1);
        assert!(!t.permessage_deflate);
        let t = transport(
            "permessage_deflate = true\ndeflate_threshold_bytes = 200",
            "",
            "",
        )
        .unwrap();
        assert!(t.permessage_deflate);
        assert_eq!(t.deflate_threshold, 200);
    }

    #[test]
    fn errors_name_the_key_under_its_section() {
        let key = |ws: &str, sd: &str, l: &str| transport(ws, sd, l).unwrap_err().key().to_owned();
        assert_eq!(key("path = \"ws\"", "", ""), "websocket.path");
        assert_eq!(
            key("pong_timeout_secs = 0", "", ""),
            "websocket.pong_timeout_secs"
        );
        assert_eq!(
            key("client_messages_per_sec = -1", "", ""),
            "websocket.client_messages_per_sec"
        );
        assert_eq!(key("", "grace_secs = -1", ""), "shutdown.grace_secs");
        assert_eq!(
            key("", "grace_secs = 2\ndrain_spread_secs = 2", ""),
            "shutdown.drain_spread_secs"
        );
        assert_eq!(key("", "", "max_connections = 0"), "limits.max_connections");
        assert_eq!(
            key("", "", "trusted_proxies = [\"nope\"]"),
            "limits.trusted_proxies"
        );
        let unknown = toml::from_str::<WebSocketSettings>("ping_secs = 1").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `ping_secs`"),
            "{unknown}"
        );
    }
}
