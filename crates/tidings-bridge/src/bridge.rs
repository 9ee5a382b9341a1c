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

use tidings_core::Message;
use tokio::sync::{mpsc, oneshot};

use crate::{
    broker::{Broker, BrokerError, Inbound, Topic},
    hub::Hub,
    local::LocalBroker,
    mailbox::Mailbox,
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
}

/// Most control requests handled in one batch (one broker round trip).
const BATCH: usize = 512;

struct Inner {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    control: mpsc::UnboundedSender<Control>,
    next_id: AtomicU64,
    degraded: Arc<AtomicBool>,
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
        let hub = Arc::new(Hub::new());
        let (control, rx) = mpsc::unbounded_channel();
        let broker: Arc<dyn Broker> = Arc::new(make(Inbound {
            hub: hub.clone(),
            control: control.clone(),
        })?);
        let degraded = Arc::new(AtomicBool::new(false));
        tokio::spawn(manage(
            hub.clone(),
            broker.clone(),
            rx,
            control.downgrade(),
            degraded.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                broker,
                control,
                next_id: AtomicU64::new(1),
                degraded,
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
        self.inner.broker.is_ready() && !self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Publishes `message` through the broker, so every gateway instance
    /// delivers it.
    pub async fn publish(&self, message: Message) -> Result<(), BrokerError> {
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
        inner.hub.add(&topic, self.id, &self.mailbox);
        self.topics.push(topic.clone());
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

/// The subscription manager: the only place broker subscriptions change.
async fn manage(
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<Control>,
    retry: mpsc::WeakUnboundedSender<Control>,
    degraded: Arc<AtomicBool>,
) {
    // Topics the broker is subscribed to, as far as this task knows.
    let mut active: HashSet<Topic> = HashSet::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut lost = false;
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut touched: Vec<Topic> = Vec::new();
        let mut waiters: HashMap<Topic, Vec<oneshot::Sender<Result<(), BrokerError>>>> =
            HashMap::new();
        let mut restored = false;
        for control in batch.drain(..) {
            match control {
                Control::Ensure(topic, reply) => {
                    touched.push(topic.clone());
                    waiters.entry(topic).or_default().push(reply);
                }
                Control::Release(topic) => touched.push(topic),
                Control::Lost => {
                    if !lost {
                        tracing::warn!(
                            broker = broker.name(),
                            "broker connection lost; sockets stay connected"
                        );
                    }
                    lost = true;
                }
                Control::Restored => restored = true,
            }
        }
        if restored {
            // Whatever the broker kept, make it hold exactly what sockets
            // need now, then tell those sockets what they may have missed.
            let wanted = hub.topics();
            let mut failed = false;
            for chunk in wanted.chunks(CHUNK) {
                if let Err(e) = broker.subscribe(chunk).await {
                    tracing::warn!(topics = chunk.len(), error = %e, "re-subscribing after reconnect failed");
                    failed = true;
                }
            }
            active = wanted.iter().cloned().collect();
            degraded.store(failed, Ordering::Relaxed);
            if failed {
                // Try again shortly rather than wait for the next reconnect;
                // meanwhile `/readyz` says not ready.
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if let Some(tx) = retry.upgrade() {
                        let _ = tx.send(Control::Restored);
                    }
                });
            }
            // The gap notice goes out once subscriptions are really back
            // (after a failed attempt, the retry sends it).
            if lost && !failed {
                hub.stats().record_reconnect();
                let told = hub.notify_gap(&wanted, "broker_reconnected");
                tracing::info!(
                    broker = broker.name(),
                    topics = wanted.len(),
                    sockets = told,
                    "broker connection restored; subscriptions restored"
                );
                lost = false;
            }
        }
        touched.sort();
        touched.dedup();
        // Compare what sockets want with what the broker has, and fix the
        // difference in one call each way.
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        for topic in touched {
            let want = hub.has_interest(&topic);
            let have = active.contains(&topic);
            if want && !have {
                to_subscribe.push(topic);
            } else {
                if !want && have {
                    active.remove(&topic);
                    to_unsubscribe.push(topic.clone());
                }
                for reply in waiters.remove(&topic).into_iter().flatten() {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        for chunk in to_unsubscribe.chunks(CHUNK) {
            if let Err(e) = broker.unsubscribe(chunk).await {
                tracing::debug!(topics = chunk.len(), error = %e, "unsubscribe failed; the broker drops it on reconnect");
            }
        }
        for chunk in to_subscribe.chunks(CHUNK) {
            let result = if broker.is_ready() {
                broker.subscribe(chunk).await
            } else {
                Err(BrokerError::Unavailable(format!(
                    "{} broker is not connected",
                    broker.name()
                )))
            };
            if result.is_err() {
                // These sockets stay registered (joins on connect) and will
                // be subscribed on the next `Restored`: they must get a gap
                // notice then, even if the broker was never connected.
                lost = true;
            }
            for topic in chunk {
                if result.is_ok() {
                    active.insert(topic.clone());
                }
                for reply in waiters.remove(topic).into_iter().flatten() {
                    let _ = reply.send(result.clone());
                }
            }
        }
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
        Self::try_new(|inbound| crate::RedisBroker::new(config, inbound))
    }
}
