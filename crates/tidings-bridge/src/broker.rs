//! The broker seam: what a pub/sub backend must do for the bridge.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

pub use tidings_core::Topic;

use bytes::Bytes;
use tidings_core::{ChannelName, ChannelPattern, Message};

use crate::hub::Hub;

/// How often the bridge runs the self-check by default (see
/// [`Broker::missing`]).
pub const DEFAULT_SELF_CHECK: Duration = Duration::from_secs(30);

/// A change in the broker's connection, as a broker reports it through
/// [`Inbound`]. The bridge's subscription manager acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionEvent {
    /// The connection dropped.
    Lost,
    /// The connection is back.
    Restored,
    /// Something changed behind the bridge's back (a Redis Cluster slot
    /// moved, a node came back): run the self-check now.
    Recheck,
}

/// Where [`Inbound`] sends [`ConnectionEvent`]s (the bridge hands them to its
/// subscription manager).
pub(crate) type ConnectionEvents = Arc<dyn Fn(ConnectionEvent) + Send + Sync>;

/// A boxed, sendable future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the broker could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker is not reachable right now (for example Redis is down or
    /// reconnecting). Retry later; the API answers 503.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker took too long to answer.
    #[error("broker timed out")]
    Timeout,
    /// The broker refused the request (for example a Redis ACL that does
    /// not allow the channel).
    #[error("broker refused: {0}")]
    Refused(String),
    /// The bridge has shut down.
    #[error("bridge is shut down")]
    Closed,
}

impl BrokerError {
    /// Whether retrying later may succeed (everything but [`BrokerError::Closed`]).
    pub fn is_transient(&self) -> bool {
        !matches!(self, BrokerError::Closed)
    }
}

/// A pub/sub backend.
///
/// The bridge calls [`subscribe`](Broker::subscribe) the first time a local
/// socket needs a topic and [`unsubscribe`](Broker::unsubscribe) when the
/// last one has left, from a single task, so an implementation sees each
/// topic's calls in order and never concurrently. Both take a batch of
/// topics (joins and leaves that arrive together are sent in one round
/// trip). Messages the backend receives go to the [`Inbound`] handle it was
/// built with.
///
/// An implementation must restore its subscriptions itself if its connection
/// drops, and report the outage and the recovery through
/// [`Inbound::connection_lost`] and [`Inbound::connection_restored`] so that
/// sockets can be told they may have missed messages.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `channel` to every subscriber of every gateway
    /// instance. Resolves once the broker has accepted it.
    fn publish(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Starts receiving every topic in `topics` (never empty). Resolves once
    /// messages published from now on will be received.
    fn subscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops receiving every topic in `topics` (never empty).
    fn unsubscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Whether the broker can take publishes and subscriptions right now
    /// (what `/readyz` reports).
    fn is_ready(&self) -> bool;

    /// Whether subscriptions can be made right now, whatever the state of
    /// publishing (Redis: the subscription connection is up, even while the
    /// publish pool is not). The bridge subscribes only when this holds, and
    /// retries what it could not subscribe until it does. Default:
    /// [`Broker::is_ready`].
    fn can_subscribe(&self) -> bool {
        self.is_ready()
    }

    /// The self-check: which of `held` (the topics the bridge believes the
    /// broker is subscribed to, never empty) the broker does *not* hold
    /// right now, as far as it can tell cheaply (it may name more topics
    /// than are missing, never fewer it knows of). The bridge subscribes
    /// them again, counts them as repairs and sends their sockets a `gap`
    /// notice. Default: nothing missing (a broker that cannot lose a
    /// subscription behind the bridge's back).
    fn missing<'a>(&'a self, held: &'a [Topic]) -> BoxFuture<'a, Result<Vec<Topic>, BrokerError>> {
        let _ = held;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A short name for logs and metrics (`"in-process"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// Closes the broker's connections cleanly, at shutdown: resolves once
    /// they are closed (the Redis broker sends `QUIT` on each and waits
    /// until the server has closed them). Publishes and subscriptions fail
    /// afterwards. The default does nothing, for brokers with nothing to
    /// close.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The handle a [`Broker`] delivers received messages and connection events
/// through. Cheap to clone.
#[derive(Clone)]
pub struct Inbound {
    pub(crate) hub: Arc<Hub>,
    pub(crate) events: ConnectionEvents,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    /// Delivers a message received through the exact subscription to its channel.
    pub fn message(&self, message: &Message) {
        self.hub.dispatch_channel(message);
    }

    /// Delivers a message received through the pattern subscription `pattern`.
    pub fn pattern_message(&self, pattern: &ChannelPattern, message: &Message) {
        self.hub.dispatch_pattern(pattern, message);
    }

    /// Delivers a message to every local subscriber whose exact channel or
    /// pattern matches, as a broker without server-side pattern matching
    /// must (the in-process broker does).
    pub fn message_everywhere(&self, message: &Message) {
        self.hub.dispatch_all(message);
    }

    /// Counts a message the broker received but could not hand over (for
    /// example a payload on a channel name the gateway cannot represent).
    pub fn discarded(&self, reason: &'static str) {
        self.hub.stats().record_discard(reason, 1);
    }

    /// Reports that `count` received messages were lost before they could be
    /// routed (for example the client library's buffer overflowed). They are
    /// counted, and every socket gets a `gap` notice for all its topics, since
    /// any of them may have been affected.
    pub fn lost(&self, reason: &'static str, count: u64) {
        self.hub.stats().record_discard(reason, count);
        let topics = self.hub.topics();
        self.hub.notify_gap(&topics, reason);
    }

    /// Reports that the connection to the broker dropped: messages published
    /// from now on may be missed.
    pub fn connection_lost(&self) {
        self.hub.positions().forget_all();
        (self.events)(ConnectionEvent::Lost);
    }

    /// Reports that the connection is back. The bridge re-subscribes every
    /// topic that has local subscribers and sends the affected sockets a
    /// `gap` notice.
    pub fn connection_restored(&self) {
        self.hub.positions().forget_all();
        (self.events)(ConnectionEvent::Restored);
    }

    /// Asks the bridge to run its self-check now (see [`Broker::missing`]):
    /// for a broker that learns some subscriptions may be gone (a Redis
    /// Cluster slot that moved to another node). The topics `missing`
    /// names are subscribed again and their sockets get a `gap` notice.
    pub fn recheck(&self) {
        self.hub.positions().forget_all();
        (self.events)(ConnectionEvent::Recheck);
    }

    /// A handle on the same hub whose connection events go to `events`
    /// instead (for a broker made of several connections, such as the
    /// Redis Cluster broker's one per node).
    #[cfg(feature = "redis")]
    pub(crate) fn with_events(&self, events: ConnectionEvents) -> Self {
        Self {
            hub: self.hub.clone(),
            events,
        }
    }
}
