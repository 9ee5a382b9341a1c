//! The Redis Cluster broker: one subscription connection per master node,
//! following the cluster's slot map.
//!
//! - **Classic** channels and patterns (`SUBSCRIBE`/`PSUBSCRIBE`) are held
//!   on one node, the *home* node: a Redis Cluster forwards every `PUBLISH`
//!   to every node, so any node hears them all. When the home node goes
//!   away, another master becomes home and everything is subscribed again
//!   there (sockets get a `gap` notice).
//! - **Sharded** channels (`SSUBSCRIBE`) are held on the master that owns
//!   their slot, through that node's own connection, one command per
//!   channel (see [`RedisBroker`]).
//! - Publishing goes through a cluster-aware pool: `PUBLISH` to any node,
//!   `SPUBLISH` to the slot's owner (fred follows `MOVED`).
//!
//! A watcher reads `CLUSTER SLOTS` every `topology_check_interval`. When a
//! slot of a subscribed sharded channel has a new owner (a reshard, a
//! replica promoted), the channel is reported by [`Broker::missing`] and the
//! bridge subscribes it again (now on the new owner) and sends its sockets a
//! `gap` notice: Redis drops sharded subscriptions of a slot that moves
//! away with a `sunsubscribe` push, which fred does not pass on, so the
//! slot map is what tells. Each node's `CLIENT LIST` count (`ssub=`) is
//! compared at every self-check too.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, PubsubInterface},
    types::{config::Server, ClusterHash, ConnectHandle, CustomCommand, Value},
};
use parking_lot::{Mutex, RwLock};
use tidings_core::ChannelName;

use crate::{
    broker::{BoxFuture, Broker, BrokerError, ConnectionEvent, Inbound, Topic},
    redis::{builder, node_config, redact_url, to_broker_error, RedisBroker},
    RedisConfig, RedisSetupError,
};

/// A node, as `host:port`.
type NodeKey = String;

/// The number of hash slots.
const SLOTS: usize = 16_384;

/// What the watcher knows of the cluster.
#[derive(Default)]
struct Topology {
    /// The master owning each slot (empty: none known).
    slots: Vec<NodeKey>,
    /// One broker (subscription connection + command connection) per
    /// master.
    nodes: HashMap<NodeKey, Arc<RedisBroker>>,
    /// The node holding the classic subscriptions.
    home: Option<NodeKey>,
    /// Checks in a row the home node has been down while another was up.
    home_down: u32,
}

struct Shared {
    config: RedisConfig,
    inbound: Inbound,
    pool: Pool,
    topology: RwLock<Topology>,
    /// Where each sharded channel is subscribed.
    assigned: Mutex<HashMap<ChannelName, NodeKey>>,
    /// Sharded channels known to be gone from their node (slot moved,
    /// node reconnected): named by the next [`Broker::missing`].
    lost: Mutex<HashSet<ChannelName>>,
    url: String,
    closed: AtomicBool,
}

/// The Redis Cluster implementation of [`Broker`] (`redis.mode =
/// "cluster"`).
pub struct ClusterBroker {
    shared: Arc<Shared>,
    connections: Mutex<Vec<ConnectHandle>>,
    watcher: tokio::task::AbortHandle,
}

impl fmt::Debug for ClusterBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = self.shared.topology.read();
        f.debug_struct("ClusterBroker")
            .field("url", &self.shared.url)
            .field("nodes", &topology.nodes.keys().collect::<Vec<_>>())
            .field("home", &topology.home)
            .finish_non_exhaustive()
    }
}

/// The slot of `channel` (its hash tag's, if it has one), as Redis
/// computes it for `SSUBSCRIBE` and `SPUBLISH`.
pub fn slot_of(channel: &str) -> u16 {
    fred::util::redis_keyslot(channel.as_bytes())
}

impl ClusterBroker {
    /// Builds the publish pool and starts the topology watcher, which makes
    /// one connection per master once it has read the slot map. Must be
    /// called within a Tokio runtime.
    pub fn new(config: RedisConfig, inbound: Inbound) -> Result<Self, RedisSetupError> {
        let pool = builder(&config, false)?
            .build_pool(config.pool_size.max(1))
            .map_err(|e| RedisSetupError::Client(e.details().to_string()))?;
        let connections = vec![pool.connect()];
        let shared = Arc::new(Shared {
            url: redact_url(&config.url),
            config,
            inbound,
            pool,
            topology: RwLock::new(Topology::default()),
            assigned: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
        });
        let watcher = tokio::spawn(watch_topology(shared.clone())).abort_handle();
        Ok(Self {
            shared,
            connections: Mutex::new(connections),
            watcher,
        })
    }
}

impl Shared {
    fn is_sharded(&self, channel: &ChannelName) -> bool {
        self.config.is_sharded(channel)
    }

    fn home(&self) -> Option<Arc<RedisBroker>> {
        let t = self.topology.read();
        t.home.as_ref().and_then(|h| t.nodes.get(h)).cloned()
    }

    fn owner(&self, channel: &ChannelName) -> Option<NodeKey> {
        let t = self.topology.read();
        t.slots
            .get(slot_of(channel.as_str()) as usize)
            .filter(|n| !n.is_empty())
            .cloned()
    }

    /// A broker for the node `key`, connecting; its connection events
    /// come back here.
    fn node_broker(self: &Arc<Self>, key: &NodeKey) -> Option<Arc<RedisBroker>> {
        let (host, port) = key.rsplit_once(':')?;
        let server = Server::new(host, port.parse().ok()?);
        let fred = node_config(&self.config, &server).ok()?;
        let weak = Arc::downgrade(self);
        let node = key.clone();
        let events = Arc::new(move |event: ConnectionEvent| {
            if let Some(shared) = weak.upgrade() {
                shared.node_event(&node, event);
            }
        });
        match RedisBroker::with_fred(&self.config, fred, 1, self.inbound.with_events(events)) {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                tracing::error!(node = %key, error = %e, "cannot set up a Redis Cluster node connection");
                None
            }
        }
    }

    /// A node's connection dropped or came back.
    fn node_event(&self, node: &NodeKey, event: ConnectionEvent) {
        let is_home = self.topology.read().home.as_ref() == Some(node);
        if is_home {
            // The home connection carries the classic subscriptions: the
            // bridge restores them all, as with one server.
            match event {
                ConnectionEvent::Lost => self.inbound.connection_lost(),
                ConnectionEvent::Restored => self.inbound.connection_restored(),
                ConnectionEvent::Recheck => self.inbound.recheck(),
            }
        }
        if event == ConnectionEvent::Restored {
            // A new connection holds nothing: its sharded channels are gone.
            let gone: Vec<ChannelName> = self
                .assigned
                .lock()
                .iter()
                .filter(|(_, n)| *n == node)
                .map(|(c, _)| c.clone())
                .collect();
            if !gone.is_empty() {
                self.lost.lock().extend(gone);
                self.inbound.recheck();
            }
        }
    }

    /// Reads `CLUSTER SLOTS` and follows what changed.
    async fn refresh(self: &Arc<Self>) -> Result<(), BrokerError> {
        let cmd = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
        let reply: Value = self
            .pool
            .next()
            .custom(cmd, vec![Value::from_static_str("SLOTS")])
            .await
            .map_err(to_broker_error)?;
        let Some(slots) = parse_slots(reply) else {
            return Err(BrokerError::Unavailable(
                "unexpected CLUSTER SLOTS reply".into(),
            ));
        };
        self.apply(slots);
        Ok(())
    }

    /// Follows a new slot map: connections to new masters, none to old
    /// ones, sharded channels whose slot moved reported missing, and a new
    /// home node when the old one is gone.
    fn apply(self: &Arc<Self>, slots: Vec<NodeKey>) {
        let masters: BTreeSet<NodeKey> = slots.iter().filter(|n| !n.is_empty()).cloned().collect();
        let mut recheck = false;
        let mut rehome = false;
        let mut closing = Vec::new();
        {
            let mut t = self.topology.write();
            let changed = t.slots != slots;
            if changed {
                // Sharded channels whose owner changed.
                let mut moved = Vec::new();
                for (channel, node) in self.assigned.lock().iter() {
                    let owner = &slots[slot_of(channel.as_str()) as usize];
                    if owner != node {
                        moved.push(channel.clone());
                    }
                }
                if !moved.is_empty() {
                    tracing::info!(
                        channels = moved.len(),
                        "Redis Cluster: slots of subscribed sharded channels moved; subscribing them on their new owner"
                    );
                    self.lost.lock().extend(moved);
                    recheck = true;
                }
                t.slots = slots;
            }
            for m in &masters {
                if !t.nodes.contains_key(m) {
                    if let Some(b) = self.node_broker(m) {
                        tracing::info!(node = %m, "Redis Cluster: connecting to master");
                        t.nodes.insert(m.clone(), b);
                    }
                }
            }
            let old: Vec<NodeKey> = t
                .nodes
                .keys()
                .filter(|k| !masters.contains(*k))
                .cloned()
                .collect();
            for k in old {
                if t.home.as_ref() == Some(&k) {
                    continue; // replaced below, then closed
                }
                if let Some(b) = t.nodes.remove(&k) {
                    tracing::info!(node = %k, "Redis Cluster: no longer a master; closing its connection");
                    closing.push(b);
                }
            }
            // The home node: kept while it is a master and up (or nothing
            // else is up either).
            let home_ok = t
                .home
                .as_ref()
                .is_some_and(|h| masters.contains(h) && t.nodes.contains_key(h));
            let home_up = t
                .home
                .as_ref()
                .and_then(|h| t.nodes.get(h))
                .is_some_and(|b| b.is_connected());
            let other_up = t
                .nodes
                .iter()
                .any(|(k, b)| Some(k) != t.home.as_ref() && b.is_connected());
            t.home_down = if home_ok && !home_up && other_up {
                t.home_down + 1
            } else {
                0
            };
            if !home_ok || t.home_down >= 2 {
                let next = t
                    .nodes
                    .iter()
                    .filter(|(k, _)| Some(*k) != t.home.as_ref())
                    .find(|(_, b)| b.is_connected())
                    .or_else(|| t.nodes.iter().find(|(k, _)| Some(*k) != t.home.as_ref()))
                    .map(|(k, _)| k.clone());
                if let Some(next) = next {
                    let previous = t.home.replace(next.clone());
                    t.home_down = 0;
                    rehome = previous.is_some();
                    tracing::info!(node = %next, previous = ?previous, "Redis Cluster: classic subscriptions now held on this node");
                    if let Some(p) = previous {
                        if !masters.contains(&p) {
                            if let Some(b) = t.nodes.remove(&p) {
                                closing.push(b);
                            }
                        }
                    }
                }
            }
        }
        for b in closing {
            tokio::spawn(async move { b.close().await });
        }
        if rehome {
            // The classic subscriptions move: the bridge makes them all
            // again (on the new home once it is up) and tells sockets.
            self.inbound.connection_lost();
            if self.home().is_some_and(|h| h.is_connected()) {
                self.inbound.connection_restored();
            }
        }
        if recheck {
            self.inbound.recheck();
        }
    }
}

/// `CLUSTER SLOTS` as the owner of each slot (`host:port`).
fn parse_slots(reply: Value) -> Option<Vec<NodeKey>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut slots = vec![NodeKey::new(); SLOTS];
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let start = parts.first()?.as_i64()? as usize;
        let end = parts.get(1)?.as_i64()? as usize;
        let Value::Array(master) = parts.get(2)? else {
            return None;
        };
        let host = master.first()?.as_string()?;
        let port = master.get(1)?.as_i64()?;
        let key = format!("{host}:{port}");
        for slot in slots.get_mut(start..=end.min(SLOTS - 1))? {
            slot.clone_from(&key);
        }
    }
    Some(slots)
}

/// Reads the slot map every `topology_check_interval` (sooner while none
/// is known).
async fn watch_topology(shared: Arc<Shared>) {
    let every = shared.config.topology_check_interval;
    let mut failures = 0u32;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        match shared.refresh().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 3 {
                    tracing::warn!(url = %shared.url, error = %e, "Redis Cluster: cannot read the slot map");
                } else {
                    tracing::debug!(url = %shared.url, error = %e, "Redis Cluster: cannot read the slot map");
                }
            }
        }
        let known = !shared.topology.read().slots.is_empty();
        let wait = if known {
            every
        } else {
            every.min(Duration::from_millis(200))
        };
        tokio::time::sleep(wait).await;
    }
}

/// Whether `e` says the node does not own the slot.
fn is_moved(e: &BrokerError) -> bool {
    matches!(e, BrokerError::Unavailable(why) | BrokerError::Refused(why) if why.contains("MOVED") || why.contains("ASK"))
}

impl ClusterBroker {
    async fn subscribe_topics(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let mut classic = Vec::new();
        let mut by_node: HashMap<NodeKey, Vec<Topic>> = HashMap::new();
        let mut first_error = None;
        for t in topics {
            match t {
                Topic::Channel(c) if shared.is_sharded(c) => match shared.owner(c) {
                    Some(owner) => by_node.entry(owner).or_default().push(t.clone()),
                    None => {
                        first_error.get_or_insert(BrokerError::Unavailable(
                            "the Redis Cluster slot map is not known yet".into(),
                        ));
                    }
                },
                _ => classic.push(t.clone()),
            }
        }
        if !classic.is_empty() {
            match shared.home() {
                Some(home) if home.is_connected() => {
                    if let Err(e) = home.subscribe(&classic).await {
                        first_error.get_or_insert(e);
                    }
                }
                _ => {
                    first_error.get_or_insert(BrokerError::Unavailable(
                        "no Redis Cluster node holds the classic subscriptions yet".into(),
                    ));
                }
            }
        }
        for (node, mut group) in by_node {
            // One slot after another, so a node's channels go out in slot
            // order.
            group.sort_by_key(|t| match t {
                Topic::Channel(c) => slot_of(c.as_str()),
                Topic::Pattern(_) => 0,
            });
            let broker = shared.topology.read().nodes.get(&node).cloned();
            let Some(broker) = broker.filter(|b| b.is_connected()) else {
                first_error.get_or_insert(BrokerError::Unavailable(format!(
                    "Redis Cluster node {node} is not connected"
                )));
                continue;
            };
            match broker.subscribe(&group).await {
                Ok(()) => {
                    let mut assigned = shared.assigned.lock();
                    let mut lost = shared.lost.lock();
                    for t in &group {
                        if let Topic::Channel(c) = t {
                            assigned.insert(c.clone(), node.clone());
                            lost.remove(c);
                        }
                    }
                }
                Err(e) => {
                    if is_moved(&e) {
                        // Our slot map is behind: read it again now.
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.refresh().await });
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(BrokerError::Refused(why)) if is_moved(&BrokerError::Refused(why.clone())) => {
                Err(BrokerError::Unavailable(why))
            }
            Some(e) => Err(e),
        }
    }

    async fn unsubscribe_topics(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let mut classic = Vec::new();
        let mut by_node: HashMap<NodeKey, Vec<Topic>> = HashMap::new();
        for t in topics {
            match t {
                Topic::Channel(c) if shared.is_sharded(c) => {
                    let Some(node) = shared.assigned.lock().remove(c) else {
                        continue;
                    };
                    shared.lost.lock().remove(c);
                    // Only where it is still held: a node that lost the
                    // slot has dropped it already (and would answer MOVED).
                    if shared.owner(c).as_ref() == Some(&node) {
                        by_node.entry(node).or_default().push(t.clone());
                    }
                }
                _ => classic.push(t.clone()),
            }
        }
        let mut result = Ok(());
        if !classic.is_empty() {
            if let Some(home) = shared.home().filter(|h| h.is_connected()) {
                result = result.and(home.unsubscribe(&classic).await);
            }
        }
        for (node, group) in by_node {
            let broker = shared.topology.read().nodes.get(&node).cloned();
            if let Some(b) = broker.filter(|b| b.is_connected()) {
                result = result.and(b.unsubscribe(&group).await);
            }
        }
        result
    }

    async fn self_check(&self, held: &[Topic]) -> Result<Vec<Topic>, BrokerError> {
        let shared = &self.shared;
        let mut missing = Vec::new();
        let mut classic = Vec::new();
        let mut by_node: HashMap<NodeKey, Vec<Topic>> = HashMap::new();
        {
            let assigned = shared.assigned.lock();
            let mut lost = shared.lost.lock();
            for t in held {
                match t {
                    Topic::Channel(c) if shared.is_sharded(c) => {
                        let at = assigned.get(c);
                        if lost.remove(c) || at.is_none() || at != shared.owner(c).as_ref() {
                            missing.push(t.clone());
                        } else if let Some(node) = at {
                            by_node.entry(node.clone()).or_default().push(t.clone());
                        }
                    }
                    _ => classic.push(t.clone()),
                }
            }
        }
        if !classic.is_empty() {
            if let Some(home) = shared.home().filter(|h| h.is_connected()) {
                missing.extend(home.missing(&classic).await?);
            }
        }
        for (node, group) in by_node {
            let broker = shared.topology.read().nodes.get(&node).cloned();
            match broker {
                Some(b) if b.is_connected() => missing.extend(b.missing(&group).await?),
                // Its node is down or gone: subscribe them again (they go
                // pending until the slot's owner takes them).
                _ => missing.extend(group),
            }
        }
        Ok(missing)
    }
}

impl Broker for ClusterBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let sharded = self.shared.is_sharded(channel);
        let channel = channel.as_str().to_string();
        Box::pin(async move {
            let client = self.shared.pool.next();
            let sent: Result<i64, _> = if sharded {
                client.spublish(channel, Value::Bytes(payload)).await
            } else {
                client.publish(channel, Value::Bytes(payload)).await
            };
            sent.map(drop).map_err(to_broker_error)
        })
    }

    fn subscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.subscribe_topics(topics))
    }

    fn unsubscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.unsubscribe_topics(topics))
    }

    /// Every master connected, the home node among them, and the publish
    /// pool up.
    fn is_ready(&self) -> bool {
        let t = self.shared.topology.read();
        t.home.is_some()
            && !t.nodes.is_empty()
            && t.nodes.values().all(|b| b.is_connected())
            && self.shared.pool.is_connected()
    }

    fn can_subscribe(&self) -> bool {
        self.shared.home().is_some_and(|h| h.is_connected())
    }

    fn missing<'a>(&'a self, held: &'a [Topic]) -> BoxFuture<'a, Result<Vec<Topic>, BrokerError>> {
        Box::pin(self.self_check(held))
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closed.store(true, Ordering::Release);
            self.watcher.abort();
            let nodes: Vec<Arc<RedisBroker>> = {
                let mut t = self.shared.topology.write();
                t.home = None;
                t.nodes.drain().map(|(_, b)| b).collect()
            };
            for b in &nodes {
                b.close().await;
            }
            let timeout = self.shared.config.command_timeout;
            if tokio::time::timeout(timeout, self.shared.pool.quit())
                .await
                .is_err()
            {
                tracing::debug!("Redis QUIT on the cluster publish pool timed out");
            }
            let connections = std::mem::take(&mut *self.connections.lock());
            for task in connections {
                let abort = task.abort_handle();
                if tokio::time::timeout(timeout, task).await.is_err() {
                    abort.abort();
                }
            }
            tracing::info!(url = %self.shared.url, "Redis Cluster connections closed");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags() {
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::String("127.0.0.1".into()),
                Value::Integer(port),
                Value::String("id".into()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![
                Value::Integer(5461),
                Value::Integer(16383),
                node(7001),
            ]),
        ]);
        let slots = parse_slots(reply).unwrap();
        assert_eq!(slots[0], "127.0.0.1:7000");
        assert_eq!(slots[5460], "127.0.0.1:7000");
        assert_eq!(slots[5461], "127.0.0.1:7001");
        assert_eq!(slots[16383], "127.0.0.1:7001");
        assert!(parse_slots(Value::Integer(1)).is_none());
    }
}
