//! Presence: who is on a channel, across gateways.
//!
//! A *presence set* is named by a [`PresenceKey`]: a channel's subscribers
//! (with the rule option `presence = true`), the gateways with subscribers
//! on a channel (occupancy), or the live gateways (which a survey of a
//! user's connections asks: [`Surveys`](crate::Surveys)). Each gateway adds the entries of its own
//! connections, refreshes them every [`PresenceConfig::refresh`], and
//! removes them when the connection leaves. An entry lives
//! [`PresenceConfig::ttl`] after its last refresh: the entries of a gateway
//! that died without saying goodbye are gone at most `ttl` after its last
//! refresh, and their users are reported as having left.
//!
//! Two stores with the same answers: [`RedisPresence`](crate::RedisPresence)
//! (one Lua script per change, shared by every gateway on one Redis) and
//! [`MemoryPresence`](crate::MemoryPresence) (one gateway, no Redis).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use tidings_core::ChannelName;

use crate::BoxFuture;

/// The longest user id presence accepts, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// The longest connection id presence accepts, in bytes.
pub const MAX_CONN_LEN: usize = 128;

/// How long entries live and how often gateways refresh them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// How long an entry lives after its last refresh. Default 30 s.
    pub ttl: Duration,
    /// How often a gateway refreshes its entries. Default 10 s; must be
    /// shorter than `ttl` (a third of it leaves room for two missed
    /// refreshes).
    pub refresh: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            refresh: Duration::from_secs(10),
        }
    }
}

impl PresenceConfig {
    /// Checks that `refresh` is shorter than `ttl` and both are at least
    /// 100 ms.
    pub fn validate(&self) -> Result<(), PresenceError> {
        if self.ttl < Duration::from_millis(100) || self.refresh < Duration::from_millis(100) {
            return Err(PresenceError::Invalid(
                "ttl and refresh must be at least 100 ms",
            ));
        }
        if self.refresh >= self.ttl {
            return Err(PresenceError::Invalid("refresh must be shorter than ttl"));
        }
        Ok(())
    }
}

/// The name of a presence set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceKey(String);

impl PresenceKey {
    /// The subscribers of `channel`: `ch:<channel>`.
    pub fn channel(channel: &ChannelName) -> Self {
        Self(format!("ch:{}", channel.as_str()))
    }

    /// The gateways with subscribers on `channel` (for the channel
    /// occupied and vacated webhooks): `occ:<channel>`.
    pub fn occupancy(channel: &ChannelName) -> Self {
        Self(format!("occ:{}", channel.as_str()))
    }

    /// Every subscription of `channel`, one entry per connection (the
    /// Pusher adapter's counts and occupancy): `sub:<channel>`.
    pub fn subscriptions(channel: &ChannelName) -> Self {
        Self(format!("sub:{}", channel.as_str()))
    }

    /// The live gateways, one entry each (their id as the connection id),
    /// which surveys ask: `gw`.
    pub fn gateways() -> Self {
        Self("gw".to_owned())
    }

    /// The key as stored (`ch:/app/room/1`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel, if this is a channel's set.
    pub fn as_channel(&self) -> Option<&str> {
        self.0.strip_prefix("ch:")
    }

    /// The channel, if this is a channel's occupancy set.
    pub fn as_occupancy(&self) -> Option<&str> {
        self.0.strip_prefix("occ:")
    }

    /// The channel, if this is a channel's subscriptions set.
    pub fn as_subscriptions(&self) -> Option<&str> {
        self.0.strip_prefix("sub:")
    }
}

impl fmt::Display for PresenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection in a presence set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The connection's id (unique across gateways: the gateway's id and a
    /// number).
    pub conn: String,
    /// The user, `None` for an anonymous visitor.
    #[serde(default)]
    pub user: Option<String>,
    /// The gateway holding the connection.
    #[serde(default)]
    pub gateway: String,
    /// The user's public info, from the identity (`null` when none).
    #[serde(default)]
    pub info: serde_json::Value,
    /// When the connection joined, in ms since the Unix epoch.
    #[serde(default)]
    pub since_ms: u64,
}

impl PresenceEntry {
    /// Checks the ids: a connection id of 1 to [`MAX_CONN_LEN`] bytes, a
    /// user id of 1 to [`MAX_USER_LEN`] bytes, neither with control
    /// characters.
    pub fn validate(&self) -> Result<(), PresenceError> {
        check_conn(&self.conn)?;
        if let Some(user) = &self.user {
            if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
                return Err(PresenceError::Invalid(
                    "a user id must be 1 to 256 bytes without control characters",
                ));
            }
        }
        Ok(())
    }

    /// The stored form: `<user>\n<entry JSON>` (the user first, so that the
    /// Redis script can count users without decoding JSON).
    pub(crate) fn encode(&self) -> String {
        let json = serde_json::to_string(self).expect("an entry serializes");
        format!("{}\n{json}", self.user.as_deref().unwrap_or(""))
    }

    /// The entry from its stored form.
    pub(crate) fn decode(stored: &[u8]) -> Result<Self, PresenceError> {
        let nl = stored
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PresenceError::Protocol("a presence entry without its user".into()))?;
        serde_json::from_slice(&stored[nl + 1..])
            .map_err(|e| PresenceError::Protocol(format!("a presence entry: {e}")))
    }
}

pub(crate) fn check_conn(conn: &str) -> Result<(), PresenceError> {
    if conn.is_empty() || conn.len() > MAX_CONN_LEN || conn.chars().any(char::is_control) {
        return Err(PresenceError::Invalid(
            "a connection id must be 1 to 128 bytes without control characters",
        ));
    }
    Ok(())
}

/// What changed in a presence set through one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceChange {
    /// Entries whose user was not present before (a user's first
    /// connection): a `join` each.
    pub joined: Vec<PresenceEntry>,
    /// Users whose last connection left or expired: a `leave` each.
    pub left: Vec<String>,
    /// Whether the store itself published the events of this change on the
    /// channel (see `RedisPresence::with_events`): the gateway must not
    /// publish them again.
    pub published: bool,
}

impl PresenceChange {
    /// Whether nothing joined or left.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

/// Counts of a presence set, at a cost that does not grow with its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PresenceStats {
    /// Live connections (anonymous ones included).
    pub connections: u64,
    /// Distinct users with at least one live connection.
    pub users: u64,
}

/// Why a presence call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// An id or a setting is out of range.
    #[error("invalid presence input: {0}")]
    Invalid(&'static str),
    /// The store is not reachable right now.
    #[error("presence unavailable: {0}")]
    Unavailable(String),
    /// The store took too long to answer.
    #[error("presence timed out")]
    Timeout,
    /// The store answered something this crate does not understand.
    #[error("unexpected answer from the presence store: {0}")]
    Protocol(String),
}

impl PresenceError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout)
    }
}

/// A presence store.
///
/// Every call first drops entries whose time to live has passed, and
/// reports the users that left through that in its [`PresenceChange`]. Both
/// implementations give the same answers to the same calls (one test suite
/// runs against both).
pub trait Presence: Send + Sync + 'static {
    /// Adds `entries` to `key`'s set, or refreshes them (their expiry is
    /// now + `ttl`; an existing entry's stored info is replaced). Their ids
    /// must pass [`PresenceEntry::validate`]; a connection id must keep
    /// its user for as long as it is in the set.
    fn add<'a>(
        &'a self,
        key: &'a PresenceKey,
        entries: &'a [PresenceEntry],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>>;

    /// [`Presence::add`] to many sets: the change of each, in order. The
    /// Redis store does it in one script call where it can (one server,
    /// sets whose events it does not publish: the users' connection
    /// lists); by default, one `add` per set, all at once.
    fn add_many<'a>(
        &'a self,
        sets: &'a [(PresenceKey, Vec<PresenceEntry>)],
        ttl: Duration,
    ) -> BoxFuture<'a, Vec<Result<PresenceChange, PresenceError>>> {
        Box::pin(futures_util::future::join_all(
            sets.iter()
                .map(|(key, entries)| self.add(key, entries, ttl)),
        ))
    }

    /// Removes the connections `conns` from `key`'s set (unknown ones are
    /// ignored).
    fn remove<'a>(
        &'a self,
        key: &'a PresenceKey,
        conns: &'a [String],
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>>;

    /// Every live entry of `key`'s set (in no particular order), and the
    /// users that left by expiry.
    fn list<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(Vec<PresenceEntry>, PresenceChange), PresenceError>>;

    /// The counts of `key`'s set without listing it, and the users that
    /// left by expiry.
    fn stats<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(PresenceStats, PresenceChange), PresenceError>>;

    /// A short name for logs (`"in-memory"`, `"redis"`).
    fn name(&self) -> &'static str;
}

/// A `join` or `leave` on a channel with presence, as subscribers receive
/// it.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// A user's first connection subscribed.
    Join(PresenceEntry),
    /// A user's last connection left (or its gateway stopped refreshing).
    Leave {
        /// The user.
        user: String,
    },
}

impl PresenceEvent {
    /// The payload a gateway publishes on the channel: a presence envelope
    /// (`tidings_core::protocol::encode_presence_envelope`) that every
    /// gateway turns into the frame subscribers receive,
    /// `{"type":"join","channel":"/app/room/1","user":"42","info":{...}}` or
    /// `{"type":"leave","channel":"/app/room/1","user":"42"}`.
    pub fn payload(&self) -> bytes::Bytes {
        use tidings_core::protocol::encode_presence_envelope;
        match self {
            Self::Join(entry) => {
                let info = serde_json::value::to_raw_value(&entry.info).ok();
                encode_presence_envelope(
                    "join",
                    entry.user.as_deref().unwrap_or(""),
                    info.as_deref(),
                )
            }
            Self::Leave { user } => encode_presence_envelope("leave", user, None),
        }
    }

    /// The events of a change.
    pub fn of(change: &PresenceChange) -> Vec<PresenceEvent> {
        change
            .joined
            .iter()
            .cloned()
            .map(PresenceEvent::Join)
            .chain(
                change
                    .left
                    .iter()
                    .map(|u| PresenceEvent::Leave { user: u.clone() }),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_stored_form() {
        let e = PresenceEntry {
            conn: "gw1-7".into(),
            user: Some("42".into()),
            gateway: "gw1".into(),
            info: serde_json::json!({"name": "Anna\nB"}),
            since_ms: 5,
        };
        let stored = e.encode();
        assert!(stored.starts_with("42\n{"));
        assert_eq!(PresenceEntry::decode(stored.as_bytes()).unwrap(), e);
        let anon = PresenceEntry {
            user: None,
            ..e.clone()
        };
        assert!(anon.encode().starts_with("\n{"));
        assert_eq!(
            PresenceEntry::decode(anon.encode().as_bytes()).unwrap(),
            anon
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused() {
        let mut e = PresenceEntry {
            conn: "c".into(),
            user: Some("a\nb".into()),
            gateway: String::new(),
            info: serde_json::Value::Null,
            since_ms: 0,
        };
        assert!(e.validate().is_err());
        e.user = Some(String::new());
        assert!(e.validate().is_err());
        e.user = Some("a".into());
        assert!(e.validate().is_ok());
        e.conn = String::new();
        assert!(e.validate().is_err());
    }

    #[test]
    fn config_wants_refresh_below_ttl() {
        assert!(PresenceConfig::default().validate().is_ok());
        let bad = PresenceConfig {
            ttl: Duration::from_secs(1),
            refresh: Duration::from_secs(1),
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn events_reach_subscribers_as_frames() {
        let ch = ChannelName::new("/app/room/1").unwrap();
        let leave = PresenceEvent::Leave { user: "42".into() };
        let frame = tidings_core::protocol::encode_message(&ch, None, &leave.payload());
        assert_eq!(
            &frame[..],
            br#"{"type":"leave","channel":"/app/room/1","user":"42"}"#
        );
    }
}
