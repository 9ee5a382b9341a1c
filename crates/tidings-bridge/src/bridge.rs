//! The bridge: one broker subscription per topic per process, shared by
//! every local socket that needs it.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tidings_core::{ChannelName, Message};
use tidings_history::{History, HistoryOptions, StreamPosition};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Duration, Instant},
};

use crate::{
    broker::{BoxFuture, Broker, BrokerError, ConnectionEvent, Inbound, Topic},
    history::HistoryHook,
    hub::Hub,
    local::LocalBroker,
    mailbox::Mailbox,
    positions::Begin,
};

/// Requests to the subscription manager task.
pub(crate) enum Control {
    /// A socket joined `topic`; answer once the broker delivers it.
    Ensure(Topic, oneshot::Sender<Result<(), BrokerError>>),
    /// A socket left `topic`, possibly the last one.
    Release(Topic),
    /// The broker connection dropped.
    Lost,
    /// The broker connection is back.
    Restored,
    /// The broker asks for a self-check now.
    Recheck,
}

/// Most control requests handled in one batch (one broker round trip).
const BATCH: usize = 512;

struct Inner {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    control: mpsc::UnboundedSender<Control>,
    next_id: AtomicU64,
    degraded: Arc<AtomicBool>,
    history: parking_lot::RwLock<Option<Arc<HistoryHook>>>,
}

/// The bridge between local sockets and a [`Broker`]. Cheap to clone.
///
/// It keeps reference counts of local interest per topic in its [`Hub`] and
/// makes the broker subscribe when the first socket joins a topic and
/// unsubscribe when the last one leaves. All broker subscription changes go
/// through one task, in order, so concurrent joins and leaves cannot race:
/// the task compares what the hub wants with what the broker has, in
/// batches, and fixes the difference.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("broker", &self.inner.broker.name())
            .field("hub", &self.inner.hub)
            .finish()
    }
}

impl Bridge {
    /// A bridge over the in-process broker: no setup, one process.
    ///
    /// Must be called within a Tokio runtime.
    pub fn in_process() -> Self {
        Self::new(LocalBroker::new)
    }

    /// A bridge over the broker `make` builds from the [`Inbound`] handle it
    /// must deliver received messages through.
    ///
    /// Must be called within a Tokio runtime: it spawns the subscription
    /// manager task.
    pub fn new<B: Broker>(make: impl FnOnce(Inbound) -> B) -> Self {
        match Self::try_new(|inbound| Ok::<_, std::convert::Infallible>(make(inbound))) {
            Ok(bridge) => bridge,
            Err(never) => match never {},
        }
    }

    /// Like [`Bridge::new`], for a broker whose construction can fail (for
    /// example on an invalid Redis URL).
    pub fn try_new<B: Broker, E>(make: impl FnOnce(Inbound) -> Result<B, E>) -> Result<Self, E> {
        Self::try_with_self_check(Some(DEFAULT_SELF_CHECK), make)
    }

    /// Like [`Bridge::try_new`], with the interval of the self-check that
    /// compares the subscriptions sockets need with what the broker holds
    /// (see [`Broker::missing`]); `None` checks only after reconnects.
    pub fn try_with_self_check<B: Broker, E>(
        self_check: Option<Duration>,
        make: impl FnOnce(Inbound) -> Result<B, E>,
    ) -> Result<Self, E> {
        let hub = Arc::new(Hub::for_runtime());
        let (control, rx) = mpsc::unbounded_channel();
        let events = control.clone();
        let broker: Arc<dyn Broker> = Arc::new(make(Inbound {
            hub: hub.clone(),
            events: Arc::new(move |event| {
                let _ = events.send(match event {
                    ConnectionEvent::Lost => Control::Lost,
                    ConnectionEvent::Restored => Control::Restored,
                    ConnectionEvent::Recheck => Control::Recheck,
                });
            }),
        })?);
        let degraded = Arc::new(AtomicBool::new(false));
        let self_check = self_check.filter(|d| !d.is_zero());
        let manager = Manager {
            hub: hub.clone(),
            broker: broker.clone(),
            degraded: degraded.clone(),
            active: HashSet::new(),
            pending: HashSet::new(),
            refused: HashSet::new(),
            owed_gap: HashSet::new(),
            lost: false,
            backoff: RETRY_MIN,
            retry_at: None,
            check_every: self_check,
            check_at: self_check.map(|every| Instant::now() + every),
        };
        tokio::spawn(manage(manager, rx));
        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                broker,
                control,
                next_id: AtomicU64::new(1),
                degraded,
                history: parking_lot::RwLock::new(None),
            }),
        })
    }

    /// The local subscriber registry (for metrics and tests).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The broker's short name (`"in-process"`, `"redis"`).
    pub fn broker_name(&self) -> &'static str {
        self.inner.broker.name()
    }

    /// Whether the broker can take publishes and subscriptions now.
    pub fn is_ready(&self) -> bool {
        self.inner.broker.is_ready()
            && !self.inner.degraded.load(Ordering::Relaxed)
            && self.history_ready()
    }

    /// Publishes `message` so every gateway instance delivers it: through
    /// the history when its channel has one (see [`Bridge::with_history`]),
    /// else through the broker. [`Bridge::publish_with_position`] also
    /// answers the position.
    pub async fn publish(&self, message: Message) -> Result<(), BrokerError> {
        self.publish_with_position(message).await.map(drop)
    }

    /// Publishes `message` through the broker, without history.
    pub(crate) async fn publish_plain(&self, message: Message) -> Result<(), BrokerError> {
        if !self.inner.broker.is_ready() {
            return Err(BrokerError::Unavailable(format!(
                "{} broker is not connected",
                self.broker_name()
            )));
        }
        self.inner
            .broker
            .publish(&message.channel, message.payload)
            .await
    }

    /// Closes the broker's connections cleanly (for Redis: `QUIT` on each,
    /// resolving once the server has closed them). Call it last at
    /// shutdown, once the sockets are gone: publishes and subscriptions
    /// fail afterwards.
    pub async fn close(&self) {
        self.inner.broker.close().await;
    }

    /// A subscription handle for one socket, delivering into `mailbox`.
    /// Dropping the handle leaves every topic it joined.
    pub fn subscriber(&self, mailbox: Mailbox) -> Subscriber {
        self.subscriber_with_id(self.next_connection_id(), mailbox)
    }

    /// A fresh connection id, unique in this bridge (for
    /// [`Bridge::subscriber_with_id`]).
    pub fn next_connection_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Like [`Bridge::subscriber`], with an id from
    /// [`Bridge::next_connection_id`] (so that logs can name the connection
    /// before it subscribes).
    pub fn subscriber_with_id(&self, id: u64, mailbox: Mailbox) -> Subscriber {
        Subscriber {
            bridge: self.clone(),
            id,
            mailbox,
            topics: Vec::new(),
        }
    }
}

/// One socket's subscriptions. Dropping it leaves every topic.
pub struct Subscriber {
    bridge: Bridge,
    id: u64,
    mailbox: Mailbox,
    /// A few topics per socket (bounded by the subscription limit): a
    /// vector is smaller than a set and as fast at this size.
    topics: Vec<Topic>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("topics", &self.topics)
            .finish()
    }
}

impl Subscriber {
    /// The connection id the hub knows this socket by.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topics this socket has joined.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter()
    }

    /// How many topics this socket has joined.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether this socket has joined no topic.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Whether this socket has joined `topic`.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.topics.contains(topic)
    }

    /// Joins `topic` and waits until the broker delivers it. On error the
    /// socket is *not* left subscribed.
    pub async fn subscribe(&mut self, topic: Topic) -> Result<(), BrokerError> {
        let result = self.join(topic.clone()).await;
        if result.is_err() {
            self.unsubscribe(&topic);
        }
        result
    }

    /// Joins `topic` and waits until the broker delivers it. On error the
    /// socket *stays* registered: when the broker comes back the topic is
    /// subscribed and the socket gets a `gap` notice. Used for the channels a
    /// socket joins on connect.
    pub async fn join(&mut self, topic: Topic) -> Result<(), BrokerError> {
        if self.topics.contains(&topic) {
            return Ok(());
        }
        let inner = &self.bridge.inner;
        let held = inner.hub.add(&topic, self.id, &self.mailbox);
        // Exact growth: most sockets hold one or two topics for their life,
        // and joins are rare next to deliveries.
        self.topics.reserve_exact(1);
        self.topics.push(topic.clone());
        if held {
            // The broker holds it: what the bridge's task would answer,
            // without waiting for it (a storm of sockets joining a few
            // shared channels does not queue behind its subscriptions).
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        inner
            .control
            .send(Control::Ensure(topic, tx))
            .map_err(|_| BrokerError::Closed)?;
        rx.await.unwrap_or(Err(BrokerError::Closed))
    }

    /// Leaves `topic`. Returns whether the socket had joined it.
    pub fn unsubscribe(&mut self, topic: &Topic) -> bool {
        let Some(at) = self.topics.iter().position(|t| t == topic) else {
            return false;
        };
        self.topics.swap_remove(at);
        self.release(topic);
        true
    }

    fn release(&self, topic: &Topic) {
        let inner = &self.bridge.inner;
        if inner.hub.remove(topic, self.id) {
            let _ = inner.control.send(Control::Release(topic.clone()));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for topic in &self.topics {
            self.release(topic);
        }
    }
}

/// Most topics sent to the broker in one subscribe call (one command).
const CHUNK: usize = 1024;

/// First delay before subscriptions that failed are tried again; it doubles
/// up to [`RETRY_MAX`] while they keep failing.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between two attempts at failed subscriptions.
const RETRY_MAX: Duration = Duration::from_secs(5);

pub use crate::broker::DEFAULT_SELF_CHECK;

/// Subscribes `topics`, and when the broker refuses the batch, finds the
/// refused ones by halving it: a refusal hits only the topics refused.
fn subscribe_each<'a>(
    broker: &'a dyn Broker,
    topics: &'a [Topic],
) -> BoxFuture<'a, Vec<(Topic, Result<(), BrokerError>)>> {
    Box::pin(async move {
        match broker.subscribe(topics).await {
            Ok(()) => topics.iter().map(|t| (t.clone(), Ok(()))).collect(),
            Err(BrokerError::Refused(_)) if topics.len() > 1 => {
                let (a, b) = topics.split_at(topics.len() / 2);
                let mut out = subscribe_each(broker, a).await;
                out.extend(subscribe_each(broker, b).await);
                out
            }
            Err(e) => topics.iter().map(|t| (t.clone(), Err(e.clone()))).collect(),
        }
    })
}

/// What the subscription manager knows, and its one way of changing it.
///
/// Every topic some local socket needs is in exactly one of `active`,
/// `pending` and `refused`, so that no accepted subscription can be
/// forgotten: `pending` ones are retried with backoff until the broker takes
/// them, whatever the order of connection events.
struct Manager {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    degraded: Arc<AtomicBool>,
    /// Topics the broker is subscribed to, as far as this task knows.
    active: HashSet<Topic>,
    /// Topics sockets need that the broker could not take yet (not
    /// connected, a timeout, a lost connection): retried with backoff.
    pending: HashSet<Topic>,
    /// Topics sockets need that the broker refused (a Redis ACL): final, not
    /// retried with backoff (nor counted against readiness), only tried
    /// again after a reconnect, at each self-check, or when a socket asks.
    refused: HashSet<Topic>,
    /// Topics whose sockets may have missed messages and get a `gap` notice
    /// once the topic is subscribed.
    owed_gap: HashSet<Topic>,
    /// The connection dropped and no `Restored` has come yet.
    lost: bool,
    /// Delay before the next attempt at `pending`.
    backoff: Duration,
    /// When `pending` is tried next.
    retry_at: Option<Instant>,
    /// Self-check interval (`None`: only after reconnects).
    check_every: Option<Duration>,
    /// When the self-check runs next.
    check_at: Option<Instant>,
}

type Waiters = HashMap<Topic, Vec<oneshot::Sender<Result<(), BrokerError>>>>;

impl Manager {
    fn unavailable(&self) -> BrokerError {
        BrokerError::Unavailable(format!("{} broker is not connected", self.broker.name()))
    }

    /// Tries to subscribe `topics` (all needed, none active), answers their
    /// waiters, and files each topic as active, pending or refused.
    async fn subscribe(&mut self, topics: Vec<Topic>, waiters: &mut Waiters) {
        if topics.is_empty() {
            return;
        }
        let results: Vec<(Topic, Result<(), BrokerError>)> = if self.broker.can_subscribe() {
            let mut results = Vec::with_capacity(topics.len());
            for chunk in topics.chunks(CHUNK) {
                results.extend(subscribe_each(&*self.broker, chunk).await);
            }
            results
        } else {
            let e = self.unavailable();
            topics.into_iter().map(|t| (t, Err(e.clone()))).collect()
        };
        let mut now_active = Vec::new();
        for (topic, result) in results {
            self.pending.remove(&topic);
            self.refused.remove(&topic);
            match &result {
                Ok(()) => {
                    self.active.insert(topic.clone());
                    self.hub.set_held(&topic, true);
                    if self.owed_gap.remove(&topic) {
                        now_active.push(topic.clone());
                    }
                }
                Err(BrokerError::Refused(reason)) => {
                    tracing::warn!(%topic, %reason, "the broker refused a subscription");
                    self.refused.insert(topic.clone());
                }
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "subscription pending until the broker takes it");
                    // Sockets that stay registered (joins on connect) may
                    // miss messages until it is done: they get a gap notice.
                    self.pending.insert(topic.clone());
                    self.owed_gap.insert(topic.clone());
                }
            }
            for reply in waiters.remove(&topic).into_iter().flatten() {
                let _ = reply.send(result.clone());
            }
        }
        if !now_active.is_empty() {
            for t in &now_active {
                self.forget_position(t);
            }
            let told = self.hub.notify_gap(&now_active, "broker_reconnected");
            tracing::info!(
                broker = self.broker.name(),
                topics = now_active.len(),
                sockets = told,
                "subscriptions made after a delay; sockets told they may have missed messages"
            );
        }
    }

    /// A channel's kept position may be behind what its (new) broker
    /// subscription delivers: the next subscriber reads the store.
    fn forget_position(&self, topic: &Topic) {
        if let Topic::Channel(c) = topic {
            self.hub.positions().forget(c.as_str());
        }
    }

    /// Handles one batch of control requests.
    async fn handle(&mut self, batch: &mut Vec<Control>) {
        let mut touched: Vec<Topic> = Vec::new();
        let mut waiters: Waiters = HashMap::new();
        let mut restored = false;
        for control in batch.drain(..) {
            match control {
                Control::Ensure(topic, reply) => {
                    touched.push(topic.clone());
                    waiters.entry(topic).or_default().push(reply);
                }
                Control::Release(topic) => touched.push(topic),
                Control::Lost => {
                    if !self.lost {
                        tracing::warn!(
                            broker = self.broker.name(),
                            "broker connection lost; sockets stay connected"
                        );
                    }
                    self.lost = true;
                }
                Control::Restored => restored = true,
                Control::Recheck => self.check_at = Some(Instant::now()),
            }
        }
        if restored {
            // A new connection holds nothing: make it hold exactly what
            // sockets need now, then tell those sockets what they may have
            // missed (after a loss; joins that waited are owed a notice
            // anyway).
            let wanted = self.hub.topics();
            if self.lost {
                self.hub.stats().record_reconnect();
                self.owed_gap.extend(wanted.iter().cloned());
                self.lost = false;
            }
            self.active.clear();
            self.hub.clear_held();
            self.refused.clear();
            self.pending = wanted.into_iter().collect();
            self.backoff = RETRY_MIN;
            self.retry().await;
            // Compare with the broker once all this is done.
            self.check_at = Some(Instant::now());
        }
        touched.sort();
        touched.dedup();
        // Compare what sockets want with what the broker has, and fix the
        // difference in one call each way.
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        for topic in touched {
            let want = self.hub.has_interest(&topic);
            if want && !self.active.contains(&topic) {
                // Just tried after the reconnect: answered below.
                if !(restored && self.pending.contains(&topic)) {
                    to_subscribe.push(topic);
                }
                continue;
            }
            if want {
                // Held already (its sockets left and came back meanwhile,
                // or it was made before they joined).
                self.hub.set_held(&topic, true);
            } else {
                self.owed_gap.remove(&topic);
                self.refused.remove(&topic);
                // A pending topic may have been half done (a timeout):
                // unsubscribing costs nothing and leaves nothing behind.
                if self.active.remove(&topic) | self.pending.remove(&topic) {
                    to_unsubscribe.push(topic.clone());
                }
            }
            for reply in waiters.remove(&topic).into_iter().flatten() {
                let _ = reply.send(Ok(()));
            }
        }
        for chunk in to_unsubscribe.chunks(CHUNK) {
            if let Err(e) = self.broker.unsubscribe(chunk).await {
                tracing::debug!(topics = chunk.len(), error = %e, "unsubscribe failed; the broker drops it on reconnect");
            }
        }
        self.subscribe(to_subscribe, &mut waiters).await;
        // Topics the restore above could not subscribe.
        for (topic, replies) in waiters {
            let result = if self.active.contains(&topic) {
                Ok(())
            } else {
                Err(self.unavailable())
            };
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Tries every pending topic again.
    async fn retry(&mut self) {
        self.retry_at = None;
        let pending: Vec<Topic> = self.pending.iter().cloned().collect();
        let (wanted, gone): (Vec<Topic>, Vec<Topic>) =
            pending.into_iter().partition(|t| self.hub.has_interest(t));
        for t in &gone {
            self.pending.remove(t);
            self.owed_gap.remove(t);
        }
        if !wanted.is_empty() && self.broker.can_subscribe() {
            let before = self.pending.len();
            self.subscribe(wanted, &mut HashMap::new()).await;
            if self.pending.len() < before {
                self.backoff = RETRY_MIN;
            }
        }
    }

    /// The self-check: asks the broker which active topics it does not
    /// hold, and makes them again (counted, and their sockets told). Topics
    /// the broker refused are tried again too.
    async fn self_check(&mut self) {
        self.check_at = self.check_every.map(|every| Instant::now() + every);
        if !self.broker.can_subscribe() {
            return;
        }
        let held: Vec<Topic> = self.active.iter().cloned().collect();
        let mut missing = if held.is_empty() {
            Vec::new()
        } else {
            match self.broker.missing(&held).await {
                Ok(missing) => missing,
                Err(e) => {
                    tracing::debug!(error = %e, "self-check could not ask the broker");
                    return;
                }
            }
        };
        missing.retain(|t| self.active.contains(t));
        if !missing.is_empty() {
            tracing::warn!(
                broker = self.broker.name(),
                topics = missing.len(),
                "self-check: the broker lost subscriptions that sockets need; making them again"
            );
            self.hub
                .stats()
                .record_selfcheck_repairs(missing.len() as u64);
            for t in &missing {
                self.forget_position(t);
                self.active.remove(t);
                self.hub.set_held(t, false);
                self.owed_gap.insert(t.clone());
            }
        }
        // Refused topics are final, but an ACL may have changed since.
        let refused: Vec<Topic> = self
            .refused
            .iter()
            .filter(|t| self.hub.has_interest(t))
            .cloned()
            .collect();
        self.refused.clear();
        for t in &refused {
            self.owed_gap.insert(t.clone());
        }
        missing.extend(refused);
        self.subscribe(missing, &mut HashMap::new()).await;
    }

    fn settle(&mut self) {
        if !self.pending.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        }
        self.degraded
            .store(!self.pending.is_empty(), Ordering::Relaxed);
    }
}

/// The subscription manager: the only place broker subscriptions change.
async fn manage(mut m: Manager, mut rx: mpsc::UnboundedReceiver<Control>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let retry_at = m.retry_at;
        let check_at = m.check_at;
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                m.handle(&mut batch).await;
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => m.retry().await,
            _ = sleep_until(check_at), if check_at.is_some() => m.self_check().await,
        }
        m.settle();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl Bridge {
    /// A bridge over Redis pub/sub. Connects in the background (and
    /// reconnects with backoff forever); [`Bridge::is_ready`] says when it
    /// is up. Fails only on a configuration that can never work.
    ///
    /// Must be called within a Tokio runtime.
    pub fn redis(config: crate::RedisConfig) -> Result<Self, crate::RedisSetupError> {
        let every = Some(config.self_check_interval);
        if let crate::RedisMode::Cluster { .. } = config.mode {
            return Self::try_with_self_check(every, |inbound| {
                crate::ClusterBroker::new(config, inbound)
            });
        }
        Self::try_with_self_check(every, |inbound| crate::RedisBroker::new(config, inbound))
    }
}

impl Bridge {
    /// Publishes through `history` on every channel `lookup` gives options
    /// for: [`Bridge::publish_with_position`] then assigns each publication
    /// its offset and delivers it live in one atomic step (for Redis, the
    /// `tidings_publish` function, which publishes the live envelope on the
    /// channel itself; the envelope is opened once per message by the
    /// [`Hub`], so sockets get the `offset` and `epoch` and never the
    /// envelope). Other channels publish as before. The history counts as
    /// ready; see [`Bridge::set_history_ready`].
    pub fn with_history(
        self,
        history: Arc<dyn History>,
        lookup: impl Fn(&ChannelName) -> Option<HistoryOptions> + Send + Sync + 'static,
    ) -> Self {
        *self.inner.history.write() = Some(Arc::new(HistoryHook::new(history, Arc::new(lookup))));
        self
    }

    /// [`Bridge::with_history`] with a [`MemoryHistory`](tidings_history::MemoryHistory)
    /// whose live publications go straight to this process's sockets: for
    /// the in-process broker (with another broker they would not reach
    /// other gateway instances).
    pub fn with_memory_history(
        self,
        lookup: impl Fn(&ChannelName) -> Option<HistoryOptions> + Send + Sync + 'static,
    ) -> Self {
        let hook = HistoryHook::memory(self.inner.hub.clone(), Arc::new(lookup));
        *self.inner.history.write() = Some(Arc::new(hook));
        self
    }

    /// Turns the history off: from now on every channel publishes plainly,
    /// without offsets, and readiness no longer waits for the history (for
    /// a store that can never work, such as a Redis without Functions).
    pub fn disable_history(&self) {
        *self.inner.history.write() = None;
    }

    /// The history store, if any.
    pub fn history(&self) -> Option<Arc<dyn History>> {
        self.history_hook().map(|h| h.history())
    }

    /// The history options of `channel`: `None` when the bridge has no
    /// history or the channel keeps none.
    pub fn history_options(&self, channel: &ChannelName) -> Option<HistoryOptions> {
        self.history_hook().and_then(|h| h.options(channel))
    }

    /// Marks the history ready or not (for Redis: not until its function
    /// library is installed). While it is not, [`Bridge::is_ready`] is
    /// false (publishes are still attempted). No effect without a history.
    pub fn set_history_ready(&self, ready: bool) {
        if let Some(h) = self.history_hook() {
            h.set_ready(ready);
        }
    }

    /// Whether the history is ready (true without a history).
    pub fn history_ready(&self) -> bool {
        self.history_hook().is_none_or(|h| h.is_ready())
    }

    fn history_hook(&self) -> Option<Arc<HistoryHook>> {
        self.inner.history.read().clone()
    }

    /// `channel`'s current position in the history, for a socket that has
    /// joined it (its [`Subscriber::join`] returned): the point it is
    /// subscribed from, every later publication reaching it live. The same
    /// as [`History::position`], but one read serves every socket that
    /// subscribes while it is on its way, and its answer, moved forward by
    /// each publication dispatched on the channel, serves those that come
    /// soon after (see the `positions` module for why that is exact).
    pub async fn current_position(
        &self,
        channel: &ChannelName,
        opts: &HistoryOptions,
    ) -> Result<StreamPosition, tidings_history::HistoryError> {
        let Some(history) = self.history() else {
            return Err(tidings_history::HistoryError::Unavailable(
                "no history".into(),
            ));
        };
        match self.inner.hub.positions().begin(channel) {
            Begin::Known(position) => Ok(position),
            Begin::Wait(answer) => match answer.await {
                Ok(answer) => answer,
                // The read was abandoned: read alone.
                Err(_) => history.position(channel, opts).await,
            },
            Begin::Read(reading) => {
                let answer = history.position(channel, opts).await;
                reading.finish(answer)
            }
        }
    }

    /// Publishes `message` so every gateway instance delivers it, and
    /// answers its position when its channel has a history (`None`: it was
    /// published plainly, without an offset).
    pub async fn publish_with_position(
        &self,
        message: Message,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        if let Some(hook) = self.history_hook() {
            if let Some(opts) = hook.options(&message.channel) {
                return hook.publish(message, &opts).await.map(Some);
            }
        }
        self.publish_plain(message).await.map(|()| None)
    }
}
