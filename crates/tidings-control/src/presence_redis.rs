//! The Redis presence store: three keys per set, one Lua script per call.

use std::{fmt, time::Duration};

use fred::{
    clients::Pool,
    error::{Error as FredError, ErrorKind},
    interfaces::ClientLike,
    types::{ClusterHash, CustomCommand, Value},
};
use parking_lot::Mutex;

use crate::presence::{
    Presence, PresenceChange, PresenceEntry, PresenceError, PresenceEvent, PresenceKey,
    PresenceStats,
};
use crate::BoxFuture;

/// The key prefix unless told otherwise.
pub const DEFAULT_PRESENCE_PREFIX: &str = "tidings:presence:";

/// The Lua script every call runs (`EVALSHA`, falling back to `EVAL`).
pub const PRESENCE_SCRIPT: &str = include_str!("presence.lua");

/// Presence sets in Redis (any version with Lua `TIME`: 5.0 or later;
/// Cluster works: a set's three keys share one hash tag).
///
/// A set `<key>` is `<prefix>{<key>}:c` (hash: connection -> entry),
/// `<prefix>{<key>}:e` (sorted set: connection -> expiry, server clock) and
/// `<prefix>{<key>}:u` (hash: user -> live connections). Counting is
/// `ZCOUNT` and `HLEN`: flat, whatever the set's size.
pub struct RedisPresence {
    pool: Pool,
    prefix: String,
    sha: Mutex<Option<String>>,
    events: Option<EventChannels>,
}

/// Which channels' presence sets publish their join and leave events from
/// the store (see [`RedisPresence::with_events`]).
pub type EventChannels = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Sets under [`DEFAULT_PRESENCE_PREFIX`], through `pool`.
    pub fn new(pool: Pool) -> Self {
        Self::with_prefix(pool, DEFAULT_PRESENCE_PREFIX)
    }

    /// Sets under `prefix` (every gateway on one Redis must use the same).
    pub fn with_prefix(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            sha: Mutex::new(None),
            events: None,
        }
    }

    /// Publishes the join and leave events of the channels `publish` names
    /// (by their name) on the channels themselves, from the script that
    /// changes the set, atomically with the change: a gateway that dies
    /// right after a call loses none, and entries that expired are
    /// announced by whichever call drops them. The changes it returns say
    /// so ([`PresenceChange::published`]), and the gateway's sink does not
    /// publish them again. For classic pub/sub channels only: a script
    /// cannot publish to a sharded channel of another slot.
    pub fn with_events(mut self, publish: EventChannels) -> Self {
        self.events = Some(publish);
        self
    }

    /// The channel `key`'s events are published on by the script, if any.
    fn events_channel<'k>(&self, key: &'k PresenceKey) -> Option<&'k str> {
        let channel = key.as_channel()?;
        self.events.as_ref().filter(|f| f(channel)).map(|_| channel)
    }

    /// The three keys of `key`'s set.
    pub fn keys(&self, key: &PresenceKey) -> [String; 3] {
        let base = format!("{}{{{}}}", self.prefix, key.as_str());
        [
            format!("{base}:c"),
            format!("{base}:e"),
            format!("{base}:u"),
        ]
    }

    async fn sha(&self) -> Result<String, PresenceError> {
        if let Some(sha) = self.sha.lock().clone() {
            return Ok(sha);
        }
        let cmd = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
        let args = vec![
            Value::from_static_str("LOAD"),
            Value::from_static_str(PRESENCE_SCRIPT),
        ];
        let reply: Value = self.pool.custom(cmd, args).await.map_err(map_error)?;
        let sha = reply
            .as_string()
            .ok_or_else(|| PresenceError::Protocol(format!("SCRIPT LOAD: {reply:?}")))?;
        *self.sha.lock() = Some(sha.clone());
        Ok(sha)
    }

    async fn run(
        &self,
        key: &PresenceKey,
        op: &'static str,
        ttl: Duration,
        rest: Vec<Value>,
    ) -> Result<Vec<Value>, PresenceError> {
        let sha = self.sha().await?;
        let keys = self.keys(key);
        let events = self.events_channel(key).unwrap_or("");
        let slot = fred::util::redis_keyslot(keys[0].as_bytes());
        let call = |head: Value, verb: &'static str| {
            let mut args = Vec::with_capacity(rest.len() + 8);
            args.push(head);
            args.push(Value::Integer(3));
            args.extend(keys.iter().map(|k| Value::String(k.as_str().into())));
            args.push(Value::from_static_str(op));
            args.push(Value::Integer(ttl.as_millis().max(1) as i64));
            args.push(Value::String(events.into()));
            args.extend(rest.iter().cloned());
            // Routed by the set's slot (its three keys share one hash tag).
            // It must be a `Custom` slot: fred reads no other hash policy
            // from a custom command, and would hash the first string
            // argument (the script's SHA): on a Redis Cluster, a node that
            // does not own the slot answers `MOVED`, and fred follows
            // every `MOVED` by reading the slot map again over a fresh
            // connection (one connection per call).
            let cmd = CustomCommand::new_static(verb, ClusterHash::Custom(slot), false);
            self.pool.custom::<Value, Value>(cmd, args)
        };
        let reply = match call(Value::String(sha.as_str().into()), "EVALSHA").await {
            Err(e) if e.details().contains("NOSCRIPT") => {
                call(Value::from_static_str(PRESENCE_SCRIPT), "EVAL").await
            }
            other => other,
        }
        .map_err(map_error)?;
        match reply {
            Value::Array(v) if v.len() >= 2 => Ok(v),
            other => Err(PresenceError::Protocol(format!("{op}: {other:?}"))),
        }
    }
}

/// Sets per `add_sets` script call (bounds one call's time on the server).
const ADD_SETS_PER_CALL: usize = 128;

impl RedisPresence {
    /// One `add_sets` call for `sets` (one server, no events): the change
    /// of each set, in order, or the call's error for each.
    async fn add_sets(
        &self,
        sets: &[(PresenceKey, Vec<PresenceEntry>)],
        ttl: Duration,
    ) -> Vec<Result<PresenceChange, PresenceError>> {
        let all_failed = |e: PresenceError| sets.iter().map(|_| Err(e.clone())).collect();
        if let Some(e) = sets
            .iter()
            .flat_map(|(_, entries)| entries)
            .find_map(|e| e.validate().err())
        {
            return all_failed(e);
        }
        let sha = match self.sha().await {
            Ok(sha) => sha,
            Err(e) => return all_failed(e),
        };
        let mut keys = Vec::with_capacity(sets.len() * 3);
        let mut rest = Vec::new();
        for (key, entries) in sets {
            keys.extend(self.keys(key));
            rest.push(Value::Integer(entries.len() as i64));
            for e in entries {
                rest.push(Value::String(e.conn.as_str().into()));
                rest.push(Value::String(e.encode().into()));
                rest.push(Value::from_static_str(""));
            }
        }
        let call = |head: Value, verb: &'static str| {
            let mut args = Vec::with_capacity(keys.len() + rest.len() + 5);
            args.push(head);
            args.push(Value::Integer(keys.len() as i64));
            args.extend(keys.iter().map(|k| Value::String(k.as_str().into())));
            args.push(Value::from_static_str("add_sets"));
            args.push(Value::Integer(ttl.as_millis().max(1) as i64));
            args.push(Value::from_static_str(""));
            args.extend(rest.iter().cloned());
            let cmd = CustomCommand::new_static(verb, ClusterHash::FirstKey, false);
            self.pool.custom::<Value, Value>(cmd, args)
        };
        let reply = match call(Value::String(sha.as_str().into()), "EVALSHA").await {
            Err(e) if e.details().contains("NOSCRIPT") => {
                call(Value::from_static_str(PRESENCE_SCRIPT), "EVAL").await
            }
            other => other,
        };
        let replies = match reply.map_err(map_error) {
            Ok(Value::Array(replies)) if replies.len() == sets.len() => replies,
            Ok(other) => {
                return all_failed(PresenceError::Protocol(format!("add_sets: {other:?}")))
            }
            Err(e) => return all_failed(e),
        };
        replies
            .into_iter()
            .zip(sets)
            .map(|(reply, (_, entries))| match reply {
                Value::Array(mut v) if v.len() == 2 => change_of(&mut v, entries, false),
                other => Err(PresenceError::Protocol(format!("add_sets: {other:?}"))),
            })
            .collect()
    }
}

fn map_error(e: FredError) -> PresenceError {
    match e.kind() {
        ErrorKind::Timeout => PresenceError::Timeout,
        ErrorKind::Parse | ErrorKind::Protocol => PresenceError::Protocol(e.details().to_owned()),
        _ => PresenceError::Unavailable(e.details().to_owned()),
    }
}

fn strings(v: Value) -> Result<Vec<String>, PresenceError> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| {
                i.into_string()
                    .ok_or_else(|| PresenceError::Protocol("a non-string id".into()))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(PresenceError::Protocol(format!("ids: {other:?}"))),
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::String(s) => Some(s.as_bytes()),
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// The `{joined, left}` head of a reply; `joined` connection ids are
/// mapped back to their entries from `added`.
fn change_of(
    reply: &mut Vec<Value>,
    added: &[PresenceEntry],
    published: bool,
) -> Result<PresenceChange, PresenceError> {
    let mut rest = reply.split_off(2);
    std::mem::swap(reply, &mut rest);
    let left = strings(rest.pop().expect("two"))?;
    let joined_ids = strings(rest.pop().expect("one"))?;
    let joined = joined_ids
        .iter()
        .filter_map(|id| added.iter().find(|e| &e.conn == id).cloned())
        .collect();
    Ok(PresenceChange {
        joined,
        left,
        published,
    })
}

impl Presence for RedisPresence {
    fn add<'a>(
        &'a self,
        key: &'a PresenceKey,
        entries: &'a [PresenceEntry],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>> {
        Box::pin(async move {
            let events = self.events_channel(key).is_some();
            let mut args = Vec::with_capacity(entries.len() * 3);
            for e in entries {
                e.validate()?;
                args.push(Value::String(e.conn.as_str().into()));
                args.push(Value::String(e.encode().into()));
                // The event the script publishes if this is the user's
                // first connection.
                args.push(if events {
                    Value::Bytes(PresenceEvent::Join(e.clone()).payload())
                } else {
                    Value::from_static_str("")
                });
            }
            let mut reply = self.run(key, "add", ttl, args).await?;
            change_of(&mut reply, entries, events)
        })
    }

    fn add_many<'a>(
        &'a self,
        sets: &'a [(PresenceKey, Vec<PresenceEntry>)],
        ttl: Duration,
    ) -> BoxFuture<'a, Vec<Result<PresenceChange, PresenceError>>> {
        Box::pin(async move {
            // On a Cluster each set is its own slot; and a set whose events
            // the script publishes needs its own call.
            if self.pool.is_clustered()
                || sets.iter().any(|(k, _)| self.events_channel(k).is_some())
            {
                let each = sets
                    .iter()
                    .map(|(key, entries)| self.add(key, entries, ttl));
                return futures_util::future::join_all(each).await;
            }
            let calls = sets
                .chunks(ADD_SETS_PER_CALL)
                .map(|chunk| self.add_sets(chunk, ttl));
            futures_util::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn remove<'a>(
        &'a self,
        key: &'a PresenceKey,
        conns: &'a [String],
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>> {
        Box::pin(async move {
            let args = conns
                .iter()
                .map(|c| Value::String(c.as_str().into()))
                .collect();
            let mut reply = self
                .run(key, "remove", Duration::from_millis(1), args)
                .await?;
            change_of(&mut reply, &[], self.events_channel(key).is_some())
        })
    }

    fn list<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(Vec<PresenceEntry>, PresenceChange), PresenceError>> {
        Box::pin(async move {
            let mut reply = self
                .run(key, "list", Duration::from_millis(1), Vec::new())
                .await?;
            let change = change_of(&mut reply, &[], self.events_channel(key).is_some())?;
            let mut entries = Vec::with_capacity(reply.len() / 2);
            for pair in reply.chunks(2) {
                let value = pair
                    .get(1)
                    .and_then(bytes)
                    .ok_or_else(|| PresenceError::Protocol("list: odd reply".into()))?;
                entries.push(PresenceEntry::decode(value)?);
            }
            Ok((entries, change))
        })
    }

    fn stats<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(PresenceStats, PresenceChange), PresenceError>> {
        Box::pin(async move {
            let mut reply = self
                .run(key, "stats", Duration::from_millis(1), Vec::new())
                .await?;
            let change = change_of(&mut reply, &[], self.events_channel(key).is_some())?;
            let n = |v: Option<&Value>| match v {
                Some(Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
                other => Err(PresenceError::Protocol(format!("stats: {other:?}"))),
            };
            Ok((
                PresenceStats {
                    connections: n(reply.first())?,
                    users: n(reply.get(1))?,
                },
                change,
            ))
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
