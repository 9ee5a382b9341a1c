//! The Socket.IO adapter's tunables and its `[socketio]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::{
    config::{positive_secs, ConfigError},
    ChannelPattern,
};

/// The Socket.IO adapter's tunables. [`Default`] gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Path prefix of the endpoint. Default `/socket.io/`.
    pub path: String,
    /// The event live messages arrive as, unless `events` names another
    /// for their channel. Default `notification`.
    pub event: String,
    /// Other event names by channel: the first pattern (a channel name or
    /// a Redis glob) matching a message's channel gives its event.
    /// Default: none.
    pub events: Vec<(ChannelPattern, String)>,
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

impl SocketIoConfig {
    /// The event messages of `channel` arrive as.
    pub fn event_for(&self, channel: &str) -> &str {
        self.events
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map_or(&self.event, |(_, e)| e)
    }
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            path: "/socket.io/".into(),
            event: "notification".into(),
            events: Vec::new(),
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
    /// Other event names by channel (`[[socketio.events]]`).
    pub events: Vec<EventSetting>,
    /// Engine.IO `pingInterval`, in seconds.
    pub ping_interval_secs: f64,
    /// Engine.IO `pingTimeout`, in seconds.
    pub ping_timeout_secs: f64,
    /// Engine.IO `maxPayload`, in bytes.
    pub max_payload: usize,
}

/// One `[[socketio.events]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSetting {
    /// A channel name or glob pattern (`/app/room/*`).
    pub channel: String,
    /// The event its messages arrive as.
    pub event: String,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        let c = SocketIoConfig::default();
        Self {
            enabled: false,
            path: c.path,
            event: c.event,
            events: Vec::new(),
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
        let event_ok = |e: &str| !e.is_empty() && e.len() <= 128;
        if !event_ok(&self.event) {
            return Err(ConfigError::new("event", "must be 1 to 128 characters"));
        }
        let mut events = Vec::with_capacity(self.events.len());
        for (i, e) in self.events.iter().enumerate() {
            let pattern = ChannelPattern::new(&e.channel)
                .map_err(|why| ConfigError::new(format!("events[{i}].channel"), why.to_string()))?;
            if !event_ok(&e.event) {
                return Err(ConfigError::new(
                    format!("events[{i}].event"),
                    "must be 1 to 128 characters",
                ));
            }
            events.push((pattern, e.event.clone()));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_payload) {
            return Err(ConfigError::new(
                "max_payload",
                "must be between 1024 and 67108864",
            ));
        }
        c.path = self.path.clone();
        c.event = self.event.clone();
        c.events = events;
        c.ping_interval = positive_secs("ping_interval_secs", self.ping_interval_secs)?;
        c.ping_timeout = positive_secs("ping_timeout_secs", self.ping_timeout_secs)?;
        c.max_payload = self.max_payload;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_by_channel() {
        let s = SocketIoSettings {
            events: vec![
                EventSetting {
                    channel: "/app/room/*".into(),
                    event: "chat".into(),
                },
                EventSetting {
                    channel: "/app/broadcast".into(),
                    event: "news".into(),
                },
            ],
            ..SocketIoSettings::default()
        };
        let mut c = SocketIoConfig::default();
        s.apply(&mut c).unwrap();
        assert_eq!(c.event_for("/app/room/7"), "chat");
        assert_eq!(c.event_for("/app/broadcast"), "news");
        assert_eq!(c.event_for("/app/user/1/notifications"), "notification");
        let bad = SocketIoSettings {
            events: vec![EventSetting {
                channel: "".into(),
                event: "x".into(),
            }],
            ..SocketIoSettings::default()
        };
        assert_eq!(bad.apply(&mut c).unwrap_err().key(), "events[0].channel");
    }
}
