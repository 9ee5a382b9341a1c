//! A gateway's side of presence: its own entries, refreshed on a timer.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tidings_core::small::SmallMap;
use tokio::task::JoinHandle;

use crate::presence::{
    Presence, PresenceChange, PresenceConfig, PresenceEntry, PresenceError, PresenceKey,
    PresenceStats,
};
use crate::BoxFuture;

/// Where a [`PresenceTracker`] reports joins and leaves (the gateway
/// publishes them to the channel's subscribers, and sends webhooks).
pub trait PresenceSink: Send + Sync + 'static {
    /// `key`'s set changed. Called from the tracker's calls and its refresh
    /// task; must not block.
    fn changed(&self, key: &PresenceKey, change: PresenceChange);
}

impl<F: Fn(&PresenceKey, PresenceChange) + Send + Sync + 'static> PresenceSink for F {
    fn changed(&self, key: &PresenceKey, change: PresenceChange) {
        self(key, change)
    }
}

/// Entries of one set per refresh call. Small for the reason given at
/// [`ENTRIES_PER_GROUP`]: a 10,000-socket channel refreshed 500 at a time
/// held Redis about 4 ms per call, 64 at a time under 1 ms, for about 40 %
/// more Redis time in all (`cargo bench -p tidings-control --bench
/// presence`).
const REFRESH_BATCH: usize = 64;
/// Calls for sets that lose entries (a set's leaves, then its joins) in
/// flight at once: a few, for the reason given at [`ENTRIES_PER_GROUP`]
/// (at 64, a storm of disconnections held Redis for milliseconds at a time).
const CHANGES_IN_FLIGHT: usize = 8;
/// At most this many entries in one call for many sets
/// ([`Presence::add_many`]), and that many such calls in flight at once.
///
/// Small on purpose: Redis runs a script whole, and the calls one
/// connection has in flight back to back, so every other client (the
/// application's `PUBLISH`es among them) waits for up to
/// `GROUPS_IN_FLIGHT × ENTRIES_PER_GROUP` entries' work, about 25 µs each
/// on Redis 7.0 (`INFO commandstats`): here under 1 ms. At 100 entries and
/// 8 in flight, a refresh's calls took 1–6 ms each (`SLOWLOG`) and the
/// p99 of per-user publications grew with them.
/// A refresh of many small sets (channels with a subscriber or two on this
/// gateway) still makes one call per 16 entries instead of one per set,
/// and holds a few dozen entries' arguments at a time.
const ENTRIES_PER_GROUP: usize = 16;
const GROUPS_IN_FLIGHT: usize = 2;

/// `sets` in groups of at most [`ENTRIES_PER_GROUP`] entries (a set larger
/// than that alone in its group), for [`Presence::add_many`].
fn groups(
    sets: Vec<(PresenceKey, Vec<PresenceEntry>)>,
) -> Vec<Vec<(PresenceKey, Vec<PresenceEntry>)>> {
    let mut groups = Vec::new();
    let (mut group, mut entries) = (Vec::new(), 0);
    for set in sets {
        if !group.is_empty() && entries + set.1.len() > ENTRIES_PER_GROUP {
            groups.push(std::mem::take(&mut group));
            entries = 0;
        }
        entries += set.1.len();
        group.push(set);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// This gateway's presence entries: added on join, removed on leave, and
/// refreshed every [`PresenceConfig::refresh`] by [`PresenceTracker::spawn_refresher`].
pub struct PresenceTracker {
    store: Arc<dyn Presence>,
    config: PresenceConfig,
    sink: Arc<dyn PresenceSink>,
    /// Set -> this gateway's entries in it.
    local: Mutex<HashMap<PresenceKey, SmallMap<String, PresenceEntry>>>,
    /// Joins and leaves not yet sent to the store, in order, and whether a
    /// task is sending them (see [`PresenceTracker::join_now`]).
    pending: Mutex<(Vec<Pending>, bool)>,
}

/// A join or a leave waiting for the store.
enum Pending {
    Join(PresenceKey, PresenceEntry),
    Leave(PresenceKey, String),
}

/// One set's part of a batch of pending changes: what joins, what leaves.
#[derive(Default)]
struct SetChanges {
    join: Vec<PresenceEntry>,
    leave: Vec<String>,
}

impl std::fmt::Debug for PresenceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTracker")
            .field("store", &self.store.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PresenceTracker {
    /// A tracker over `store`, reporting changes to `sink`.
    pub fn new(
        store: Arc<dyn Presence>,
        config: PresenceConfig,
        sink: Arc<dyn PresenceSink>,
    ) -> Result<Arc<Self>, PresenceError> {
        config.validate()?;
        Ok(Arc::new(Self {
            store,
            config,
            sink,
            local: Mutex::new(HashMap::new()),
            pending: Mutex::new((Vec::new(), false)),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Presence> {
        &self.store
    }

    /// The timings.
    pub fn config(&self) -> PresenceConfig {
        self.config
    }

    fn report(&self, key: &PresenceKey, change: PresenceChange) {
        if !change.is_empty() {
            self.sink.changed(key, change);
        }
    }

    /// Adds this gateway's `entry` to `key`'s set.
    pub async fn join(&self, key: &PresenceKey, entry: PresenceEntry) -> Result<(), PresenceError> {
        entry.validate()?;
        self.local
            .lock()
            .entry(key.clone())
            .or_default()
            .insert(entry.conn.clone(), entry.clone());
        let change = self
            .store
            .add(key, std::slice::from_ref(&entry), self.config.ttl)
            .await?;
        self.report(key, change);
        Ok(())
    }

    /// Removes the connection `conn` from `key`'s set.
    pub async fn leave(&self, key: &PresenceKey, conn: &str) -> Result<(), PresenceError> {
        {
            let mut local = self.local.lock();
            if let Some(set) = local.get_mut(key) {
                set.remove(conn);
                if set.is_empty() {
                    local.remove(key);
                }
            }
        }
        let change = self.store.remove(key, &[conn.to_owned()]).await?;
        self.report(key, change);
        Ok(())
    }

    /// [`PresenceTracker::join`] from a path that must not wait: the entry
    /// is this gateway's at once; the store is told by a task.
    ///
    /// Joins and leaves from these two calls reach the store in the order
    /// they were made (a leave right after a join never lands first), in
    /// batches: whatever accumulated while a batch was being sent goes in
    /// the next, with one call per set and many calls in flight at once.
    /// A storm of connections costs one task and a few pipelined writes
    /// rather than a task and a round trip each.
    pub fn join_now(self: &Arc<Self>, key: PresenceKey, entry: PresenceEntry) {
        if entry.validate().is_err() {
            return;
        }
        self.local
            .lock()
            .entry(key.clone())
            .or_default()
            .insert(entry.conn.clone(), entry.clone());
        self.queue(Pending::Join(key, entry));
    }

    /// [`PresenceTracker::leave`] from a path that must not wait (see
    /// [`PresenceTracker::join_now`]).
    pub fn leave_now(self: &Arc<Self>, key: PresenceKey, conn: String) {
        {
            let mut local = self.local.lock();
            if let Some(set) = local.get_mut(&key) {
                set.remove(&conn);
                if set.is_empty() {
                    local.remove(&key);
                }
            }
        }
        self.queue(Pending::Leave(key, conn));
    }

    /// Queues a change for the store; starts the task that sends them if
    /// none is running.
    fn queue(self: &Arc<Self>, change: Pending) {
        {
            let mut pending = self.pending.lock();
            pending.0.push(change);
            if pending.1 {
                return;
            }
            pending.1 = true;
        }
        let this = self.clone();
        tokio::spawn(async move { this.send_pending().await });
    }

    /// Sends the queued changes, batch after batch, until none is left.
    async fn send_pending(&self) {
        loop {
            let batch = {
                let mut pending = self.pending.lock();
                if pending.0.is_empty() {
                    pending.1 = false;
                    return;
                }
                std::mem::take(&mut pending.0)
            };
            // Per set, in order: a connection's last change wins (a join
            // then a leave in one batch is a leave).
            let mut sets: HashMap<PresenceKey, SetChanges> = HashMap::new();
            for change in batch {
                match change {
                    Pending::Join(key, entry) => {
                        let set = sets.entry(key).or_default();
                        set.leave.retain(|c| *c != entry.conn);
                        set.join.retain(|e| e.conn != entry.conn);
                        set.join.push(entry);
                    }
                    Pending::Leave(key, conn) => {
                        let set = sets.entry(key).or_default();
                        set.join.retain(|e| e.conn != conn);
                        if !set.leave.contains(&conn) {
                            set.leave.push(conn);
                        }
                    }
                }
            }
            // Sets that only gain entries (a storm of connections) go many
            // to a call; a set that also loses some, in its own calls, the
            // leaves first.
            let (gaining, changing): (Vec<_>, Vec<_>) =
                sets.into_iter().partition(|(_, c)| c.leave.is_empty());
            let gaining: Vec<(PresenceKey, Vec<PresenceEntry>)> =
                gaining.into_iter().map(|(k, c)| (k, c.join)).collect();
            futures_util::join!(self.gain(gaining), self.change(changing));
        }
    }

    /// Adds entries to sets, many sets to a call.
    async fn gain(&self, sets: Vec<(PresenceKey, Vec<PresenceEntry>)>) {
        let calls: Vec<BoxFuture<'_, ()>> = groups(sets)
            .into_iter()
            .map(|group| -> BoxFuture<'_, ()> {
                Box::pin(async move {
                    let results = self.store.add_many(&group, self.config.ttl).await;
                    for ((key, _), result) in group.iter().zip(results) {
                        match result {
                            Ok(change) => self.report(key, change),
                            Err(e) => {
                                tracing::debug!(target: "tidings::presence", set = %key, error = %e, "presence join failed; the next refresh retries")
                            }
                        }
                    }
                })
            })
            .collect();
        futures_util::stream::iter(calls)
            .for_each_concurrent(GROUPS_IN_FLIGHT, |call| call)
            .await;
    }

    /// Sets that lose entries (and may gain some): the leaves first.
    async fn change(&self, sets: Vec<(PresenceKey, SetChanges)>) {
        let calls: Vec<BoxFuture<'_, ()>> = sets
            .into_iter()
            .map(|(key, changes)| -> BoxFuture<'_, ()> {
                Box::pin(async move {
                    if !changes.leave.is_empty() {
                        if let Ok(change) = self.store.remove(&key, &changes.leave).await {
                            self.report(&key, change);
                        }
                    }
                    if !changes.join.is_empty() {
                        match self.store.add(&key, &changes.join, self.config.ttl).await {
                            Ok(change) => self.report(&key, change),
                            Err(e) => {
                                tracing::debug!(target: "tidings::presence", set = %key, error = %e, "presence join failed; the next refresh retries")
                            }
                        }
                    }
                })
            })
            .collect();
        futures_util::stream::iter(calls)
            .for_each_concurrent(CHANGES_IN_FLIGHT, |call| call)
            .await;
    }

    /// Every entry of `key`'s set, all gateways.
    pub async fn list(&self, key: &PresenceKey) -> Result<Vec<PresenceEntry>, PresenceError> {
        let (entries, change) = self.store.list(key).await?;
        self.report(key, change);
        Ok(entries)
    }

    /// The counts of `key`'s set, all gateways, at a flat cost.
    pub async fn stats(&self, key: &PresenceKey) -> Result<PresenceStats, PresenceError> {
        let (stats, change) = self.store.stats(key).await?;
        self.report(key, change);
        Ok(stats)
    }

    /// The sets this gateway has entries in, with how many.
    pub fn local_sets(&self) -> Vec<(PresenceKey, usize)> {
        self.local
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// Refreshes every entry of this gateway (a script call per
    /// [`REFRESH_BATCH`] entries of a large set, small sets many to a
    /// call). Returns how many calls failed.
    pub async fn refresh_all(&self) -> usize {
        let local: Vec<(PresenceKey, Vec<PresenceEntry>)> = self
            .local
            .lock()
            .iter()
            .map(|(k, set)| (k.clone(), set.values().cloned().collect()))
            .collect();
        self.refresh_sets(local).await
    }

    /// Refreshes `sets`; returns how many calls failed.
    async fn refresh_sets(&self, sets: Vec<(PresenceKey, Vec<PresenceEntry>)>) -> usize {
        // Sets split into batches by moving their entries (a small set is
        // one batch, nothing copied).
        let mut batches: Vec<(PresenceKey, Vec<PresenceEntry>)> = Vec::with_capacity(sets.len());
        for (key, mut all) in sets {
            while all.len() > REFRESH_BATCH {
                let rest = all.split_off(REFRESH_BATCH);
                batches.push((key.clone(), std::mem::replace(&mut all, rest)));
            }
            batches.push((key, all));
        }
        // Many small sets per call where the store can, a few calls in
        // flight.
        let outcomes: Vec<usize> = futures_util::stream::iter(groups(batches))
            .map(|group| async move {
                let results = self.store.add_many(&group, self.config.ttl).await;
                let mut failed = 0;
                for ((key, _), result) in group.iter().zip(results) {
                    match result {
                        Ok(change) => self.report(key, change),
                        Err(e) => {
                            failed += 1;
                            tracing::debug!(target: "tidings::presence", set = %key, error = %e, "presence refresh failed");
                        }
                    }
                }
                failed
            })
            .buffer_unordered(GROUPS_IN_FLIGHT)
            .collect()
            .await;
        outcomes.iter().sum()
    }

    /// Removes every entry of this gateway (at a graceful shutdown, so that
    /// its users leave at once instead of after the time to live).
    pub async fn leave_all(&self) {
        let all: Vec<(PresenceKey, Vec<String>)> = self
            .local
            .lock()
            .drain()
            .map(|(k, set)| (k, set.into_keys()))
            .collect();
        for (key, conns) in all {
            if let Ok(change) = self.store.remove(&key, &conns).await {
                self.report(&key, change);
            }
        }
    }

    /// Starts the refresh task: every [`PresenceConfig::refresh`] until the
    /// tracker is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.config.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tracker) = weak.upgrade() else {
                    return;
                };
                tracker.refresh_all().await;
            }
        })
    }
}
