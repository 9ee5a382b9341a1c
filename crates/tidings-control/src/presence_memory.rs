//! The in-memory presence store, for one gateway without Redis.

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::presence::{
    Presence, PresenceChange, PresenceEntry, PresenceError, PresenceKey, PresenceStats,
};
use crate::BoxFuture;

#[derive(Debug)]
struct Set {
    /// connection id -> (entry, expiry)
    conns: HashMap<String, (PresenceEntry, Instant)>,
    /// user -> live connections
    users: HashMap<String, u64>,
    /// The whole set is forgotten (silently) once nothing refreshed it for
    /// a `ttl`, as Redis expires the keys.
    expires: Instant,
}

impl Set {
    /// Drops expired entries; the users that left go to `change`.
    fn sweep(&mut self, now: Instant, change: &mut PresenceChange) {
        let expired: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for conn in expired {
            self.drop_conn(&conn, change);
        }
    }

    fn drop_conn(&mut self, conn: &str, change: &mut PresenceChange) {
        let Some((entry, _)) = self.conns.remove(conn) else {
            return;
        };
        if let Some(user) = entry.user {
            if let Some(n) = self.users.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&user);
                    change.left.push(user);
                }
            }
        }
    }
}

/// Presence sets in this process's memory, with the same semantics as the
/// Redis store (time from the tokio clock, so paused-time tests work).
#[derive(Debug, Default)]
pub struct MemoryPresence {
    sets: Mutex<HashMap<PresenceKey, Set>>,
}

impl MemoryPresence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on `key`'s live set (or `None`), after dropping what expired.
    fn with_set<T>(
        &self,
        key: &PresenceKey,
        create: bool,
        f: impl FnOnce(Option<&mut Set>, Instant, &mut PresenceChange) -> T,
    ) -> (T, PresenceChange) {
        let now = Instant::now();
        let mut change = PresenceChange::default();
        let mut sets = self.sets.lock();
        if sets.get(key).is_some_and(|s| s.expires <= now) {
            sets.remove(key);
        }
        if create && !sets.contains_key(key) {
            sets.insert(
                key.clone(),
                Set {
                    conns: HashMap::new(),
                    users: HashMap::new(),
                    expires: now,
                },
            );
        }
        let set = sets.get_mut(key);
        let out = match set {
            Some(set) => {
                set.sweep(now, &mut change);
                f(Some(set), now, &mut change)
            }
            None => f(None, now, &mut change),
        };
        if sets.get(key).is_some_and(|s| s.conns.is_empty()) {
            sets.remove(key);
        }
        (out, change)
    }
}

impl Presence for MemoryPresence {
    fn add<'a>(
        &'a self,
        key: &'a PresenceKey,
        entries: &'a [PresenceEntry],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>> {
        Box::pin(async move {
            for e in entries {
                e.validate()?;
            }
            let ((), change) = self.with_set(key, !entries.is_empty(), |set, now, change| {
                let Some(set) = set else { return };
                let expires = now + ttl;
                for e in entries {
                    let fresh = set
                        .conns
                        .insert(e.conn.clone(), (e.clone(), expires))
                        .is_none();
                    if fresh {
                        if let Some(user) = &e.user {
                            let n = set.users.entry(user.clone()).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                change.joined.push(e.clone());
                            }
                        }
                    }
                }
                set.expires = set.expires.max(expires);
            });
            Ok(change)
        })
    }

    fn remove<'a>(
        &'a self,
        key: &'a PresenceKey,
        conns: &'a [String],
    ) -> BoxFuture<'a, Result<PresenceChange, PresenceError>> {
        Box::pin(async move {
            let ((), change) = self.with_set(key, false, |set, _, change| {
                if let Some(set) = set {
                    for c in conns {
                        set.drop_conn(c, change);
                    }
                }
            });
            Ok(change)
        })
    }

    fn list<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(Vec<PresenceEntry>, PresenceChange), PresenceError>> {
        Box::pin(async move {
            Ok(self.with_set(key, false, |set, _, _| {
                set.map(|s| s.conns.values().map(|(e, _)| e.clone()).collect())
                    .unwrap_or_default()
            }))
        })
    }

    fn stats<'a>(
        &'a self,
        key: &'a PresenceKey,
    ) -> BoxFuture<'a, Result<(PresenceStats, PresenceChange), PresenceError>> {
        Box::pin(async move {
            Ok(self.with_set(key, false, |set, _, _| {
                set.map(|s| PresenceStats {
                    connections: s.conns.len() as u64,
                    users: s.users.len() as u64,
                })
                .unwrap_or_default()
            }))
        })
    }

    fn name(&self) -> &'static str {
        "in-memory"
    }
}
