//! The Pusher adapter's tunables and its `[pusher]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::{
    config::{positive_secs, ConfigError, Secret},
    ChannelName,
};

/// One Pusher app: what clients (`key`) and server SDKs (`id`, `key`,
/// `secret`) know it by.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id (server SDKs: `appId`), in the HTTP API's paths.
    pub id: String,
    /// The app key (pusher-js: `new Pusher(key)`), in `/app/{key}`.
    pub key: String,
    /// The app secret: signs channel authorizations and API requests.
    pub secret: Secret,
    /// Whether clients may send client events (`client-*`) on private and
    /// presence channels. Default false, as on Pusher.
    #[serde(default)]
    pub client_events: bool,
    /// Where this app's webhooks go, in Pusher's format and signed with
    /// the app's secret (`webhooks = [{ url = "http://...", event_types =
    /// ["channel_occupied"] }]`). Default none.
    #[serde(default)]
    pub webhooks: Vec<AppWebhook>,
}

/// The webhook events an app can ask for.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// One webhook of an app: Pusher's webhook body, POSTed to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppWebhook {
    /// Where to POST (`http://` only; put a TLS proxy in front for more).
    pub url: String,
    /// Which events (of [`WEBHOOK_EVENTS`]); empty: all of them.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl AppWebhook {
    /// Whether this webhook wants events named `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|e| e == name)
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("client_events", &self.client_events)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// The Pusher adapter's tunables. [`Default`] gives the documented
/// defaults (and no app).
#[derive(Debug, Clone)]
pub struct PusherConfig {
    /// The apps.
    pub apps: Vec<App>,
    /// What a Pusher channel's Tidings channel starts with: Pusher channel
    /// `C` of app `I` is the Tidings channel `{prefix}{I}/{C}`. Default
    /// `/pusher/`.
    pub prefix: String,
    /// The event name of a message published without one (anything but a
    /// JSON object with a string `event` and a `data`). Default `message`.
    pub event: String,
    /// How long a connection may be silent before the server pings it
    /// (`activity_timeout` in `pusher:connection_established`). Default
    /// 120 s.
    pub activity_timeout: Duration,
    /// How long the client has to answer the server's ping. Default 30 s.
    pub pong_timeout: Duration,
    /// Client events one connection may send per second. Default 10.
    pub client_events_per_sec: u32,
    /// Largest event data (client event or HTTP API), in bytes. Default
    /// 10,240 (Pusher's limit).
    pub max_event_bytes: usize,
    /// Largest WebSocket message a client may send, in bytes. Default
    /// 65,536.
    pub max_message_bytes: usize,
    /// How far an API request's `auth_timestamp` may be from now. Default
    /// 600 s.
    pub timestamp_window: Duration,
    /// Longest time the client may take to read what is written.
    /// Default 10 s.
    pub write_timeout: Duration,
    /// At shutdown, the window over which connections are closed.
    /// Default 5 s.
    pub drain_spread: Duration,
    /// The pub/sub channel that carries `terminate_connections` to every
    /// gateway. Default `tidings:pusher:control`.
    pub control_channel: String,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            apps: Vec::new(),
            prefix: "/pusher/".into(),
            event: "message".into(),
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            client_events_per_sec: 10,
            max_event_bytes: 10 * 1024,
            max_message_bytes: 64 * 1024,
            timestamp_window: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            drain_spread: Duration::from_secs(5),
            control_channel: "tidings:pusher:control".into(),
        }
    }
}

impl PusherConfig {
    /// The app whose key is `key`.
    pub fn app_by_key(&self, key: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app whose id is `id`.
    pub fn app_by_id(&self, id: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// The Tidings channel of Pusher channel `channel` of `app`, if the
    /// name is a valid Pusher channel name.
    ///
    /// ```
    /// let c = tidings_pusher::PusherConfig::default();
    /// assert_eq!(c.tidings_channel("1", "private-orders.7").unwrap().as_str(), "/pusher/1/private-orders.7");
    /// assert!(c.tidings_channel("1", "bad channel").is_none());
    /// ```
    pub fn tidings_channel(&self, app: &str, channel: &str) -> Option<ChannelName> {
        if !valid_channel(channel) {
            return None;
        }
        ChannelName::new(&format!("{}{app}/{channel}", self.prefix)).ok()
    }

    /// The app id and Pusher channel of a Tidings channel, if it is one.
    pub fn pusher_channel<'c>(&self, channel: &'c str) -> Option<(&'c str, &'c str)> {
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let (app, name) = rest.split_once('/')?;
        valid_channel(name).then_some((app, name))
    }
}

/// Whether `name` is a Pusher channel name: 1 to 164 of `A-Z a-z 0-9 _ -
/// = @ , . ;`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 164
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The `[pusher]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherSettings {
    /// Whether the endpoints are served.
    pub enabled: bool,
    /// The apps (`[[pusher.apps]]`).
    pub apps: Vec<App>,
    /// The Tidings channel prefix; starts and ends with `/`.
    pub prefix: String,
    /// The event name of messages published without one.
    pub event: String,
    /// `activity_timeout`, in seconds.
    pub activity_timeout_secs: f64,
    /// How long the client has to answer a ping, in seconds.
    pub pong_timeout_secs: f64,
    /// Client events per second per connection.
    pub client_events_per_sec: u32,
    /// Largest event data, in bytes.
    pub max_event_bytes: usize,
    /// Largest client WebSocket message, in bytes.
    pub max_message_bytes: usize,
    /// The API's `auth_timestamp` window, in seconds.
    pub timestamp_window_secs: f64,
    /// The channel carrying `terminate_connections` to every gateway.
    pub control_channel: String,
}

impl Default for PusherSettings {
    fn default() -> Self {
        let c = PusherConfig::default();
        Self {
            enabled: false,
            apps: Vec::new(),
            prefix: c.prefix,
            event: c.event,
            activity_timeout_secs: c.activity_timeout.as_secs_f64(),
            pong_timeout_secs: c.pong_timeout.as_secs_f64(),
            client_events_per_sec: c.client_events_per_sec,
            max_event_bytes: c.max_event_bytes,
            max_message_bytes: c.max_message_bytes,
            timestamp_window_secs: c.timestamp_window.as_secs_f64(),
            control_channel: c.control_channel,
        }
    }
}

impl PusherSettings {
    /// Checks every key and sets the matching fields of `c`.
    pub fn apply(&self, c: &mut PusherConfig) -> Result<(), ConfigError> {
        if !(self.prefix.starts_with('/') && self.prefix.ends_with('/'))
            || ChannelName::new(&self.prefix).is_err()
        {
            return Err(ConfigError::new(
                "prefix",
                "must be a channel name starting and ending with '/'",
            ));
        }
        if self.event.is_empty() || self.event.len() > 200 {
            return Err(ConfigError::new("event", "must be 1 to 200 characters"));
        }
        if self.apps.is_empty() {
            return Err(ConfigError::new("apps", "give at least one app"));
        }
        let part_ok =
            |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
        for (i, a) in self.apps.iter().enumerate() {
            if !part_ok(&a.id) || a.id.contains('/') {
                return Err(ConfigError::new(
                    format!("apps[{i}].id"),
                    "must be 1 to 128 visible ASCII characters without '/'",
                ));
            }
            if !part_ok(&a.key) || a.key.contains(['/', '?']) {
                return Err(ConfigError::new(
                    format!("apps[{i}].key"),
                    "must be 1 to 128 visible ASCII characters without '/' or '?'",
                ));
            }
            if a.secret.expose().len() < 8 {
                return Err(ConfigError::new(
                    format!("apps[{i}].secret"),
                    "must be at least 8 characters",
                ));
            }
            for (j, w) in a.webhooks.iter().enumerate() {
                let key = || format!("apps[{i}].webhooks[{j}]");
                let url: http::Uri = w
                    .url
                    .parse()
                    .map_err(|_| ConfigError::new(format!("{}.url", key()), "not a URL"))?;
                if url.scheme_str() != Some("http") || url.host().is_none() {
                    return Err(ConfigError::new(
                        format!("{}.url", key()),
                        "must be an http:// URL",
                    ));
                }
                if let Some(e) = w
                    .event_types
                    .iter()
                    .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
                {
                    return Err(ConfigError::new(
                        format!("{}.event_types", key()),
                        format!("unknown event {e:?}; known: {}", WEBHOOK_EVENTS.join(", ")),
                    ));
                }
            }
            let dup = self.apps[..i]
                .iter()
                .any(|b| b.id == a.id || b.key == a.key);
            if dup {
                return Err(ConfigError::new(
                    format!("apps[{i}]"),
                    "id and key must differ from every other app's",
                ));
            }
        }
        if self.client_events_per_sec == 0 {
            return Err(ConfigError::new(
                "client_events_per_sec",
                "must be at least 1",
            ));
        }
        if !(16..=1024 * 1024).contains(&self.max_event_bytes) {
            return Err(ConfigError::new(
                "max_event_bytes",
                "must be between 16 and 1048576",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(ConfigError::new(
                "max_message_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if ChannelName::new(&self.control_channel).is_err() {
            return Err(ConfigError::new(
                "control_channel",
                "must be a channel name",
            ));
        }
        c.control_channel = self.control_channel.clone();
        c.apps = self.apps.clone();
        c.prefix = self.prefix.clone();
        c.event = self.event.clone();
        c.activity_timeout = positive_secs("activity_timeout_secs", self.activity_timeout_secs)?;
        c.pong_timeout = positive_secs("pong_timeout_secs", self.pong_timeout_secs)?;
        c.client_events_per_sec = self.client_events_per_sec;
        c.max_event_bytes = self.max_event_bytes;
        c.max_message_bytes = self.max_message_bytes;
        c.timestamp_window = positive_secs("timestamp_window_secs", self.timestamp_window_secs)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: Secret::new("a-long-secret"),
            client_events: false,
            webhooks: Vec::new(),
        }
    }

    #[test]
    fn settings_are_checked_and_channels_map_both_ways() {
        let mut c = PusherConfig::default();
        let s = PusherSettings {
            apps: vec![app("1", "k1"), app("2", "k2")],
            ..PusherSettings::default()
        };
        s.apply(&mut c).unwrap();
        assert_eq!(c.app_by_key("k2").unwrap().id, "2");
        let t = c.tidings_channel("1", "presence-room.1").unwrap();
        assert_eq!(c.pusher_channel(t.as_str()), Some(("1", "presence-room.1")));
        assert_eq!(c.pusher_channel("/app/broadcast"), None);
        let dup = PusherSettings {
            apps: vec![app("1", "k1"), app("1", "k3")],
            ..PusherSettings::default()
        };
        assert_eq!(dup.apply(&mut c).unwrap_err().key(), "apps[1]");
        let mut hooked = app("3", "k3");
        hooked.webhooks = vec![AppWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            event_types: vec!["member_added".into(), "channel_opened".into()],
        }];
        let bad_hook = PusherSettings {
            apps: vec![hooked.clone()],
            ..PusherSettings::default()
        };
        assert_eq!(
            bad_hook.apply(&mut c).unwrap_err().key(),
            "apps[0].webhooks[0].event_types"
        );
        hooked.webhooks[0].event_types.pop();
        hooked.webhooks[0].url = "https://example.com/hook".into();
        let tls = PusherSettings {
            apps: vec![hooked.clone()],
            ..PusherSettings::default()
        };
        assert_eq!(
            tls.apply(&mut c).unwrap_err().key(),
            "apps[0].webhooks[0].url"
        );
        assert!(hooked.webhooks[0].wants("member_added"));
        assert!(!hooked.webhooks[0].wants("client_event"));
        let none = PusherSettings::default();
        assert_eq!(none.apply(&mut c).unwrap_err().key(), "apps");
        assert!(!valid_channel("a*b"));
        assert!(!valid_channel(&"a".repeat(165)));
        // The secret never shows.
        assert!(!format!("{:?}", app("1", "k")).contains("a-long-secret"));
    }
}
