//! This gateway's connections by user and by id, and the seam through which
//! control commands reach them.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tidings_core::small::SmallMap;
use tidings_core::ChannelName;

use crate::command::{Command, Target};

/// What the session side does for a control command, on one connection.
///
/// Every method must return at once (hand the request to the connection's
/// task, for example through a bounded channel); the registry calls them
/// while it applies a command to many connections.
pub trait Connection: Send + Sync + 'static {
    /// Close the socket with `code` and `reason`.
    fn disconnect(&self, code: u16, reason: &str);
    /// Subscribe to `channel`, whatever the routing rules say.
    fn subscribe(&self, channel: &ChannelName);
    /// Unsubscribe from `channel`.
    fn unsubscribe(&self, channel: &ChannelName);
    /// Resolve the identity again and follow it (see [`Command::Refresh`]).
    fn refresh(&self);
    /// What the connection looks like, for `GET /api/connections`.
    fn describe(&self) -> ConnectionInfo;
}

/// A connection as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection id.
    pub conn: String,
    /// The user, `null` for an anonymous visitor.
    pub user: Option<String>,
    /// The gateway holding it.
    pub gateway: String,
    /// When it connected, in ms since the Unix epoch.
    pub since_ms: u64,
}

const SHARDS: usize = 16;

/// One user's connections on this gateway, by connection id.
type UserConnections = SmallMap<Arc<str>, Arc<dyn Connection>>;

#[derive(Default)]
struct Shard {
    /// user -> connection id -> handle (anonymous connections are under
    /// ""). Small per user: most have one connection.
    by_user: HashMap<Arc<str>, UserConnections>,
}

/// This gateway's connections: a sharded map user -> connections, and
/// connection id -> user, so that a command finds its targets without
/// looking at every socket.
pub struct Registry {
    shards: Box<[Mutex<Shard>; SHARDS]>,
    /// The ids are shared with the shards and the registrations: one
    /// allocation each per connection.
    by_conn: Mutex<HashMap<Arc<str>, Arc<str>>>,
    hasher: RandomState,
    forget: Mutex<Option<Forget>>,
}

/// Called with a user id whose cached identity must be forgotten.
pub type Forget = Arc<dyn Fn(&str) + Send + Sync>;

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| Mutex::new(Shard::default()))),
            by_conn: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            forget: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.len())
            .finish()
    }
}

/// A connection's place in the [`Registry`]; dropping it removes the
/// connection.
#[must_use = "the connection is removed from the registry when this is dropped"]
pub struct Registration {
    registry: Arc<Registry>,
    user: Arc<str>,
    conn: Arc<str>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("conn", &self.conn)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.user, &self.conn);
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, user: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    /// Adds the connection `conn` of `user` (`None`: anonymous).
    pub fn register(
        self: &Arc<Self>,
        conn: impl Into<Arc<str>>,
        user: Option<&str>,
        handle: Arc<dyn Connection>,
    ) -> Registration {
        let user = user.unwrap_or("");
        let conn: Arc<str> = conn.into();
        // The user's id is allocated once, for the user's first connection.
        let user: Arc<str> = {
            let mut shard = self.shard(user).lock();
            let user = match shard.by_user.get_key_value(user) {
                Some((key, _)) => key.clone(),
                None => Arc::from(user),
            };
            shard
                .by_user
                .entry(user.clone())
                .or_default()
                .insert(conn.clone(), handle);
            user
        };
        self.by_conn.lock().insert(conn.clone(), user.clone());
        Registration {
            registry: self.clone(),
            user,
            conn,
        }
    }

    fn remove(&self, user: &str, conn: &str) {
        {
            let mut shard = self.shard(user).lock();
            if let Some(conns) = shard.by_user.get_mut(user) {
                conns.remove(conn);
                if conns.is_empty() {
                    shard.by_user.remove(user);
                }
            }
        }
        let mut by_conn = self.by_conn.lock();
        if by_conn.get(conn).is_some_and(|u| &**u == user) {
            by_conn.remove(conn);
        }
    }

    /// The local connections `target` names.
    pub fn find(&self, target: &Target) -> Vec<Arc<dyn Connection>> {
        match target {
            Target::User(user) => self
                .shard(user)
                .lock()
                .by_user
                .get(user.as_str())
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default(),
            Target::Conn(conn) => {
                let Some(user) = self.by_conn.lock().get(conn.as_str()).cloned() else {
                    return Vec::new();
                };
                self.shard(&user)
                    .lock()
                    .by_user
                    .get(&user)
                    .and_then(|c| c.get(conn.as_str()))
                    .cloned()
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Sets what forgets a user's cached identity (the cookie proxy's
    /// cache), called before a `refresh` or a revoking `disconnect` of a
    /// user is applied, so that the user's next connection is resolved
    /// afresh and a revoked session cannot come back from the cache.
    pub fn set_forget(&self, forget: Forget) {
        *self.forget.lock() = Some(forget);
    }

    /// Applies `command` to the local connections it names; returns how
    /// many.
    pub fn apply(&self, command: &Command) -> usize {
        if let Target::User(user) = command.target() {
            let revokes = matches!(
                command,
                Command::Refresh { .. }
                    | Command::Disconnect {
                        code: crate::command::CLOSE_REVOKED,
                        ..
                    }
            );
            let forget = self.forget.lock().clone();
            if let (true, Some(forget)) = (revokes, forget) {
                forget(user);
            }
        }
        let targets = self.find(command.target());
        for c in &targets {
            match command {
                Command::Disconnect { code, reason, .. } => c.disconnect(*code, reason),
                Command::Subscribe { channel, .. } => c.subscribe(channel),
                Command::Unsubscribe { channel, .. } => c.unsubscribe(channel),
                Command::Refresh { .. } => c.refresh(),
            }
        }
        targets.len()
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.by_conn.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many distinct users (anonymous visitors aside) have connections.
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().by_user.keys().filter(|u| !u.is_empty()).count())
            .sum()
    }

    /// Descriptions of the connections in part `part` of the registry (it
    /// has a few dozen parts, `None` past the last): for walking every
    /// connection without holding all their descriptions at once.
    pub fn describe_part(&self, part: usize) -> Option<Vec<ConnectionInfo>> {
        let handles: Vec<Arc<dyn Connection>> = self
            .shards
            .get(part)?
            .lock()
            .by_user
            .values()
            .flat_map(|c| c.values().cloned())
            .collect();
        Some(handles.iter().map(|h| h.describe()).collect())
    }

    /// Descriptions of `user`'s local connections (for a survey:
    /// `GET /api/connections`).
    pub fn describe_user(&self, user: &str) -> Vec<ConnectionInfo> {
        let handles = self.find(&Target::User(user.to_owned()));
        handles.iter().map(|h| h.describe()).collect()
    }

    /// Descriptions of up to `limit` local connections (for the admin
    /// page).
    pub fn describe(&self, limit: usize) -> Vec<ConnectionInfo> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let handles: Vec<Arc<dyn Connection>> = shard
                .lock()
                .by_user
                .values()
                .flat_map(|c| c.values().cloned())
                .take(limit - out.len())
                .collect();
            out.extend(handles.iter().map(|h| h.describe()));
            if out.len() >= limit {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Probe {
        disconnects: AtomicUsize,
        subscribes: AtomicUsize,
    }

    impl Connection for Probe {
        fn disconnect(&self, _: u16, _: &str) {
            self.disconnects.fetch_add(1, Ordering::SeqCst);
        }
        fn subscribe(&self, _: &ChannelName) {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
        }
        fn unsubscribe(&self, _: &ChannelName) {}
        fn refresh(&self) {}
        fn describe(&self) -> ConnectionInfo {
            ConnectionInfo {
                conn: "x".into(),
                user: None,
                gateway: "g".into(),
                since_ms: 0,
            }
        }
    }

    #[test]
    fn commands_reach_the_named_connections_only() {
        let reg = Registry::new();
        let (a1, a2, b) = (
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
        );
        let r1 = reg.register("c1", Some("anna"), a1.clone());
        let _r2 = reg.register("c2", Some("anna"), a2.clone());
        let _r3 = reg.register("c3", Some("bob"), b.clone());
        let _anon = reg.register("c4", None, Arc::new(Probe::default()));
        assert_eq!((reg.len(), reg.users()), (4, 2));

        let cmd = Command::parse(br#"{"op":"disconnect","user":"anna"}"#).unwrap();
        assert_eq!(reg.apply(&cmd), 2);
        assert_eq!(a1.disconnects.load(Ordering::SeqCst), 1);
        assert_eq!(a2.disconnects.load(Ordering::SeqCst), 1);
        assert_eq!(b.disconnects.load(Ordering::SeqCst), 0);

        let cmd = Command::parse(br#"{"op":"subscribe","conn":"c3","channel":"/x"}"#).unwrap();
        assert_eq!(reg.apply(&cmd), 1);
        assert_eq!(b.subscribes.load(Ordering::SeqCst), 1);

        drop(r1);
        assert_eq!(reg.len(), 3);
        let cmd = Command::parse(br#"{"op":"refresh","conn":"c1"}"#).unwrap();
        assert_eq!(reg.apply(&cmd), 0);
        let cmd = Command::parse(br#"{"op":"refresh","user":"nobody"}"#).unwrap();
        assert_eq!(reg.apply(&cmd), 0);
        assert_eq!(reg.describe(10).len(), 3);
        assert_eq!(reg.describe_user("anna").len(), 1);
        assert!(reg.describe_user("nobody").is_empty());
        assert_eq!(reg.describe(2).len(), 2);
    }
}
