//! The local subscriber registry and the fan-out loop.

use std::{
    borrow::{Borrow, Cow},
    collections::{hash_map::Entry, HashMap},
    hash::Hash,
    sync::Arc,
};

use indexmap::IndexMap;
use parking_lot::RwLock;
use tidings_core::{ChannelName, ChannelPattern, Delivery, Message, Topic};
use tidings_history::{LivePublication, StreamPosition, LIVE_PREFIX};

/// A position as [`Delivery::at_position`] takes it.
fn at(position: &Option<StreamPosition>) -> Option<(u64, &str)> {
    position.as_ref().map(|p| (p.offset, p.epoch.as_str()))
}

use crate::{
    mailbox::{GapNotice, Mailbox, Offer, Outbound, Target},
    positions::Positions,
    stats::BridgeStats,
};

/// The sockets of one topic, keyed by connection id. Most topics have one
/// socket (a user's own channel): it is kept inline, which spares every
/// such socket a map of its own. Two or more go in dense storage, so the
/// fan-out loop walks a contiguous array.
enum Subscribers {
    One(u64, Mailbox),
    Many(Box<Many>),
}

/// Two or more sockets, and whether the broker is known to hold the
/// topic's subscription (the bridge's task says so once it has made it): a
/// socket joining a held topic has nothing to wait for. Kept here only,
/// so that a topic with one socket costs nothing more (its next socket
/// asks the bridge's task, which marks it held).
struct Many {
    map: IndexMap<u64, Mailbox>,
    held: bool,
}

impl Subscribers {
    fn insert(&mut self, conn: u64, mailbox: Mailbox) {
        match self {
            Self::One(c, m) if *c == conn => *m = mailbox,
            Self::One(c, m) => {
                let mut map = IndexMap::with_capacity(2);
                map.insert(*c, m.clone());
                map.insert(conn, mailbox);
                *self = Self::Many(Box::new(Many { map, held: false }));
            }
            Self::Many(many) => {
                many.map.insert(conn, mailbox);
            }
        }
    }

    /// Removes `conn`; `None` when it was not there, else whether the topic
    /// has no socket left (the caller then drops it).
    fn remove(&mut self, conn: u64) -> Option<bool> {
        match self {
            Self::One(c, _) => (*c == conn).then_some(true),
            Self::Many(many) => {
                many.map.swap_remove(&conn)?;
                // Two or more until now: at least one is left.
                if many.map.len() == 1 {
                    let (c, m) = many.map.pop().expect("one left");
                    *self = Self::One(c, m);
                }
                Some(false)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(many) => many.map.len(),
        }
    }

    /// Whether the broker is known to hold the topic (never said of a
    /// topic with one socket).
    fn held(&self) -> bool {
        matches!(self, Self::Many(many) if many.held)
    }

    fn set_held(&mut self, held: bool) {
        if let Self::Many(many) = self {
            many.held = held;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&u64, &Mailbox)> {
        let (one, many) = match self {
            Self::One(c, m) => (Some((c, m)), None),
            Self::Many(many) => (None, Some(many.map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Default)]
struct Topics {
    channels: HashMap<ChannelName, Subscribers>,
    patterns: HashMap<ChannelPattern, Subscribers>,
}

/// Adds `conn`; whether the broker already holds the topic.
fn add_to<K: Hash + Eq + Clone + Borrow<str>>(
    map: &mut HashMap<K, Subscribers>,
    key: &K,
    conn: u64,
    mailbox: &Mailbox,
) -> bool {
    match map.entry(key.clone()) {
        Entry::Occupied(mut e) => {
            e.get_mut().insert(conn, mailbox.clone());
            e.get().held()
        }
        Entry::Vacant(e) => {
            e.insert(Subscribers::One(conn, mailbox.clone()));
            false
        }
    }
}

fn remove_from<K: Hash + Eq + Borrow<str>>(
    map: &mut HashMap<K, Subscribers>,
    key: &str,
    conn: u64,
) -> bool {
    let Some(subs) = map.get_mut(key) else {
        return false;
    };
    if subs.remove(conn) != Some(true) {
        return false;
    }
    map.remove(key);
    true
}

/// Who, in this process, listens to what; and the fan-out loop.
///
/// A message is encoded into a [`Delivery`] once and each subscriber's
/// mailbox receives an `Arc` of it: the per-recipient work of the
/// dispatching task is a pointer copy and a non-blocking queue push.
///
/// The writes are sharded: connection `c` belongs to shard `c % n` (`n`:
/// the runtime's worker threads), and each shard has a runner task. A
/// socket that lets the fan-out write to it (see [`crate::mailbox`]) and
/// whose queue was empty is not woken: the dispatching task hands it to its
/// shard's runner, one list per shard per message, and the runners write
/// the sockets directly, all at once on every worker thread, without any
/// lock of the hub. The dispatching task (the broker's reader) does no
/// system call per socket, so it keeps up with the broker however busy the
/// sockets are; what waits is in the sockets' bounded queues, as before.
pub struct Hub {
    topics: RwLock<Topics>,
    stats: Arc<BridgeStats>,
    shards: Box<[Arc<Shard>]>,
    /// Current positions of channels with history, shared by their
    /// subscribers (see [`crate::positions`]).
    positions: Arc<Positions>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::with_shards(1)
    }
}

/// Runners yield to the other tasks of their worker after this many
/// sockets.
const YIELD_EVERY: usize = 256;

/// One shard's runner: the sockets it is due to write.
#[derive(Default)]
struct Shard {
    ready: parking_lot::Mutex<Ready>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Ready {
    /// Sockets to write. Each at most once (its mailbox's `scheduled`
    /// flag), so this is bounded by the shard's sockets.
    targets: Vec<Target>,
    /// Whether the runner task was started.
    started: bool,
}

/// A shard's runner: writes the sockets handed to it, yielding now and
/// then so the other tasks of its worker (sockets, the broker's reader)
/// are not held up.
async fn run_shard(shard: Arc<Shard>) {
    loop {
        let notified = shard.wake.notified();
        let targets = std::mem::take(&mut shard.ready.lock().targets);
        if targets.is_empty() {
            notified.await;
            continue;
        }
        for (i, target) in targets.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            target.write_queued();
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (channels, patterns) = self.topic_counts();
        f.debug_struct("Hub")
            .field("channels", &channels)
            .field("patterns", &patterns)
            .finish()
    }
}

/// The outbound queues of the sockets subscribed to anything, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Sockets with at least one subscription.
    pub sockets: usize,
    /// Subscriptions (socket, topic) in all.
    pub subscriptions: usize,
    /// Items queued over all those sockets.
    pub queued: usize,
    /// The deepest single queue.
    pub max: usize,
}

impl Hub {
    /// Walks every subscription to measure the sockets' outbound queues
    /// (for metrics scrapes: O(subscriptions), never on the message path).
    pub fn queue_depths(&self) -> QueueDepths {
        let topics = self.topics.read();
        let mut seen = std::collections::HashSet::new();
        let mut depths = QueueDepths::default();
        for subs in topics.channels.values().chain(topics.patterns.values()) {
            depths.subscriptions += subs.len();
            for (conn, mailbox) in subs.iter() {
                if seen.insert(*conn) {
                    let q = mailbox.queued();
                    depths.queued += q;
                    depths.max = depths.max.max(q);
                }
            }
        }
        depths.sockets = seen.len();
        depths
    }

    /// An empty hub with one fan-out shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty hub with `shards` fan-out shards (at least 1), each with a
    /// runner task started on the current tokio runtime when first needed
    /// (outside a runtime, the dispatching thread writes).
    pub fn with_shards(shards: usize) -> Self {
        Self {
            topics: RwLock::new(Topics::default()),
            stats: Arc::new(BridgeStats::default()),
            shards: (0..shards.max(1)).map(|_| Arc::default()).collect(),
            positions: Arc::default(),
        }
    }

    /// An empty hub with one shard per worker thread of the current tokio
    /// runtime (one outside a runtime).
    pub fn for_runtime() -> Self {
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        Self::with_shards(workers)
    }

    /// The number of fan-out shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The hub's counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// Adds connection `conn` to `topic`. Returns `true` when the broker is
    /// known to hold the topic's subscription already (see
    /// [`Hub::set_held`]): the socket has nothing to wait for.
    pub(crate) fn add(&self, topic: &Topic, conn: u64, mailbox: &Mailbox) -> bool {
        let mut topics = self.topics.write();
        match topic {
            Topic::Channel(c) => add_to(&mut topics.channels, c, conn, mailbox),
            Topic::Pattern(p) => add_to(&mut topics.patterns, p, conn, mailbox),
        }
    }

    /// Removes connection `conn` from `topic`. Returns `true` when that was
    /// the last local subscriber (the broker may now be unsubscribed).
    pub(crate) fn remove(&self, topic: &Topic, conn: u64) -> bool {
        let mut topics = self.topics.write();
        match topic {
            Topic::Channel(c) => {
                let last = remove_from(&mut topics.channels, c.as_str(), conn);
                if last {
                    // Unsubscribed from the broker next: what it publishes
                    // no longer moves the kept position forward.
                    self.positions.forget(c.as_str());
                }
                last
            }
            Topic::Pattern(p) => remove_from(&mut topics.patterns, p.as_str(), conn),
        }
    }

    /// Records whether the broker holds `topic`'s subscription (for the
    /// bridge's task, which makes and loses them). No effect on a topic
    /// without local sockets: one made later starts as not held.
    pub(crate) fn set_held(&self, topic: &Topic, held: bool) {
        let mut topics = self.topics.write();
        let entry = match topic {
            Topic::Channel(c) => topics.channels.get_mut(c.as_str()),
            Topic::Pattern(p) => topics.patterns.get_mut(p.as_str()),
        };
        if let Some(entry) = entry {
            entry.set_held(held);
        }
    }

    /// No topic is held any more (the broker connection was made anew).
    pub(crate) fn clear_held(&self) {
        let mut topics = self.topics.write();
        let Topics { channels, patterns } = &mut *topics;
        for entry in channels.values_mut().chain(patterns.values_mut()) {
            entry.set_held(false);
        }
    }

    /// The channels' kept positions.
    pub(crate) fn positions(&self) -> &Arc<Positions> {
        &self.positions
    }

    /// Whether any local socket listens to `topic`.
    pub fn has_interest(&self, topic: &Topic) -> bool {
        let topics = self.topics.read();
        match topic {
            Topic::Channel(c) => topics.channels.contains_key(c.as_str()),
            Topic::Pattern(p) => topics.patterns.contains_key(p.as_str()),
        }
    }

    /// How many local sockets listen to `topic`.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        let topics = self.topics.read();
        match topic {
            Topic::Channel(c) => topics.channels.get(c.as_str()).map_or(0, Subscribers::len),
            Topic::Pattern(p) => topics.patterns.get(p.as_str()).map_or(0, Subscribers::len),
        }
    }

    /// Number of (channels, patterns) with at least one local subscriber.
    pub fn topic_counts(&self) -> (usize, usize) {
        let topics = self.topics.read();
        (topics.channels.len(), topics.patterns.len())
    }

    /// Every topic with at least one local subscriber.
    pub fn topics(&self) -> Vec<Topic> {
        let topics = self.topics.read();
        topics
            .channels
            .keys()
            .cloned()
            .map(Topic::Channel)
            .chain(topics.patterns.keys().cloned().map(Topic::Pattern))
            .collect()
    }

    /// Fans out a message received on its exact channel.
    ///
    /// A payload in the history's live envelope
    /// ([`tidings_history::LivePublication`]) is opened here, once: the
    /// sockets get the publication with its `offset` and `epoch`, never the
    /// envelope. One that starts like an envelope but is malformed is
    /// counted as discarded and delivered to nobody.
    pub(crate) fn dispatch_channel(&self, message: &Message) {
        self.stats.record_in();
        let Some((message, position)) = self.open_live(message) else {
            return;
        };
        self.dispatching(&message, &position);
        let topics = self.topics.read();
        match topics.channels.get(message.channel.as_str()) {
            Some(subs) => self.fan_out(subs, Delivery::at_position(&message, None, at(&position))),
            None => self.stats.record_unrouted(),
        }
    }

    /// Fans out a message received through the pattern subscription
    /// `pattern` (live envelopes opened as in [`Hub::dispatch_channel`]).
    pub(crate) fn dispatch_pattern(&self, pattern: &ChannelPattern, message: &Message) {
        self.stats.record_in();
        let Some((message, position)) = self.open_live(message) else {
            return;
        };
        let topics = self.topics.read();
        match topics.patterns.get(pattern.as_str()) {
            Some(subs) => self.fan_out(
                subs,
                Delivery::at_position(&message, Some(pattern), at(&position)),
            ),
            None => self.stats.record_unrouted(),
        }
    }

    /// A positioned publication moves its channel's kept position forward
    /// before it is fanned out (see [`crate::positions`] for why before).
    fn dispatching(&self, message: &Message, position: &Option<StreamPosition>) {
        if let Some(position) = position {
            self.positions
                .dispatching(message.channel.as_str(), position);
        }
    }

    /// Opens a history live envelope: the publication and its position, or
    /// the message as it is when it is no envelope; `None` (counted as
    /// discarded, reason `malformed_history_envelope`) when it starts like
    /// one but is malformed.
    fn open_live<'m>(
        &self,
        message: &'m Message,
    ) -> Option<(Cow<'m, Message>, Option<StreamPosition>)> {
        if !message.payload.starts_with(LIVE_PREFIX) {
            return Some((Cow::Borrowed(message), None));
        }
        match LivePublication::open(&message.payload) {
            Some((position, data)) => {
                let start = message.payload.len() - data.len();
                let opened = Message::new(message.channel.clone(), message.payload.slice(start..));
                Some((Cow::Owned(opened), Some(position)))
            }
            None => {
                self.stats.record_discard("malformed_history_envelope", 1);
                None
            }
        }
    }

    /// Fans out to the exact channel and to every matching pattern (for
    /// brokers that do no pattern matching of their own). The cost of the
    /// pattern step is one glob match per distinct local pattern.
    pub(crate) fn dispatch_all(&self, message: &Message) {
        self.stats.record_in();
        let Some((message, position)) = self.open_live(message) else {
            return;
        };
        self.dispatching(&message, &position);
        let topics = self.topics.read();
        let mut routed = false;
        if let Some(subs) = topics.channels.get(message.channel.as_str()) {
            self.fan_out(subs, Delivery::at_position(&message, None, at(&position)));
            routed = true;
        }
        for (pattern, subs) in &topics.patterns {
            if pattern.matches(message.channel.as_str()) {
                self.fan_out(
                    subs,
                    Delivery::at_position(&message, Some(pattern), at(&position)),
                );
                routed = true;
            }
        }
        if !routed {
            self.stats.record_unrouted();
        }
    }

    /// One delivery to every socket of `subs` (see [`Hub`] for the
    /// sharding).
    fn fan_out(&self, subs: &Subscribers, delivery: Arc<Delivery>) {
        let n = self.shards.len();
        let mut lists: Vec<Vec<Target>> = Vec::new();
        let (mut delivered, mut dropped, mut closed) = (0u64, 0u64, 0u64);
        for (conn, mailbox) in subs.iter() {
            match mailbox.offer_for_runner(Outbound::Deliver(delivery.clone())) {
                (Offer::Queued, scheduled) => {
                    delivered += 1;
                    if scheduled {
                        if lists.is_empty() {
                            lists = (0..n)
                                .map(|_| Vec::with_capacity(subs.len() / n + 1))
                                .collect();
                        }
                        lists[(*conn % n as u64) as usize].push(mailbox.target());
                    }
                }
                (Offer::Dropped, _) => dropped += 1,
                (Offer::Overflowed, _) => closed += 1,
                (Offer::Closed, _) => {}
            }
        }
        self.stats.record_fanout(delivered, dropped, closed);
        for (shard, targets) in lists.into_iter().enumerate() {
            if !targets.is_empty() {
                self.schedule(shard, targets);
            }
        }
    }

    /// Hands `targets` to shard `shard`'s runner, starting it if needed;
    /// writes them in place outside a tokio runtime.
    fn schedule(&self, shard: usize, mut targets: Vec<Target>) {
        let runner = &self.shards[shard];
        let mut ready = runner.ready.lock();
        if !ready.started {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                drop(ready);
                for target in &targets {
                    target.write_queued();
                }
                return;
            };
            handle.spawn(run_shard(runner.clone()));
            ready.started = true;
        }
        if ready.targets.is_empty() {
            std::mem::swap(&mut ready.targets, &mut targets);
        } else {
            ready.targets.append(&mut targets);
        }
        drop(ready);
        runner.wake.notify_one();
    }

    /// Queues a `gap` notice to every socket listening to any of `topics`,
    /// one notice per socket naming its affected channels and patterns.
    /// Returns how many sockets were told.
    pub(crate) fn notify_gap(&self, topics: &[Topic], reason: &str) -> usize {
        let mut per_conn: HashMap<u64, (Mailbox, Vec<ChannelName>, Vec<ChannelPattern>)> =
            HashMap::new();
        {
            let all = self.topics.read();
            for topic in topics {
                let subs = match topic {
                    Topic::Channel(c) => all.channels.get(c.as_str()),
                    Topic::Pattern(p) => all.patterns.get(p.as_str()),
                };
                for (conn, mb) in subs.into_iter().flat_map(Subscribers::iter) {
                    let e = per_conn
                        .entry(*conn)
                        .or_insert_with(|| (mb.clone(), Vec::new(), Vec::new()));
                    match topic {
                        Topic::Channel(c) => e.1.push(c.clone()),
                        Topic::Pattern(p) => e.2.push(p.clone()),
                    }
                }
            }
        }
        let n = per_conn.len();
        for (_, (mb, mut channels, mut patterns)) in per_conn {
            channels.sort();
            patterns.sort();
            mb.offer(Outbound::Gap(Box::new(GapNotice {
                channels,
                patterns,
                reason: reason.to_owned(),
            })));
        }
        self.stats.record_gap_notices(n as u64);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{mailbox, SlowConsumerPolicy};

    fn ids(subs: &Subscribers) -> Vec<u64> {
        let mut v: Vec<u64> = subs.iter().map(|(c, _)| *c).collect();
        v.sort_unstable();
        v
    }

    /// A topic's sockets: one inline, more in a map, back to one inline as
    /// they leave; the last leaving empties the topic.
    #[test]
    fn subscribers_go_from_one_to_many_and_back() {
        let boxes: Vec<_> = (0..3)
            .map(|_| mailbox(4, SlowConsumerPolicy::Drop))
            .collect();
        let mut subs = Subscribers::One(1, boxes[0].0.clone());
        subs.insert(1, boxes[0].0.clone());
        assert!(
            matches!(subs, Subscribers::One(1, _)),
            "the same socket again stays one"
        );
        subs.insert(2, boxes[1].0.clone());
        subs.insert(3, boxes[2].0.clone());
        assert_eq!((subs.len(), ids(&subs)), (3, vec![1, 2, 3]));
        assert_eq!(subs.remove(9), None, "not there");
        assert_eq!(subs.remove(2), Some(false));
        assert_eq!(subs.remove(1), Some(false));
        assert!(
            matches!(subs, Subscribers::One(3, _)),
            "one left: inline again"
        );
        assert_eq!(subs.remove(1), None);
        assert_eq!(subs.remove(3), Some(true), "the last one leaves");
    }

    #[test]
    fn a_held_topic_is_joined_without_waiting_until_the_broker_loses_it() {
        let hub = Hub::new();
        let topic = Topic::Channel(ChannelName::new("/t").unwrap());
        let boxes: Vec<_> = (0..3)
            .map(|_| crate::mailbox(4, Default::default()))
            .collect();
        assert!(!hub.add(&topic, 1, &boxes[0].0), "a new topic is not held");
        // With one socket nothing is kept: its next socket asks.
        hub.set_held(&topic, true);
        assert!(!hub.add(&topic, 2, &boxes[1].0));
        hub.set_held(&topic, true);
        assert!(hub.add(&topic, 3, &boxes[2].0), "held: nothing to wait for");
        hub.clear_held();
        hub.remove(&topic, 3);
        assert!(
            !hub.add(&topic, 3, &boxes[2].0),
            "the broker connection was made anew"
        );
        hub.set_held(&topic, true);
        for conn in 1..=3 {
            hub.remove(&topic, conn);
        }
        // Gone with its last socket: made again, it starts as not held.
        assert!(!hub.add(&topic, 1, &boxes[0].0));
        assert!(!hub.add(&topic, 2, &boxes[1].0));
    }
}
