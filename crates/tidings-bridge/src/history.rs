//! Channel history on the publish path: publications on channels with a
//! history go through [`History::publish`] (which assigns the offset and
//! delivers live in one step) and come back with their position. The
//! [`Bridge`](crate::Bridge) holds one [`HistoryHook`]; its methods
//! (`with_history`, `publish_with_position`, ...) delegate here.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tidings_core::{ChannelName, Message};
use tidings_history::{
    History, HistoryError, HistoryOptions, LiveSink, MemoryHistory, StreamPosition,
};

use crate::{hub::Hub, BrokerError};

/// Which channels have a history, and with which options (for the
/// gateway: the routing rules' `history` option).
pub type HistoryLookup = Arc<dyn Fn(&ChannelName) -> Option<HistoryOptions> + Send + Sync>;

/// A bridge's history: the store, which channels use it, and whether it is
/// ready (for Redis: its function library is installed).
pub(crate) struct HistoryHook {
    history: Arc<dyn History>,
    lookup: HistoryLookup,
    ready: AtomicBool,
}

impl fmt::Debug for HistoryHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryHook")
            .field("history", &self.history.name())
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

fn broker_error(e: HistoryError) -> BrokerError {
    match e {
        HistoryError::Unavailable(why) => BrokerError::Unavailable(format!("history: {why}")),
        HistoryError::Timeout => BrokerError::Timeout,
        HistoryError::Refused(why) => BrokerError::Refused(format!("history: {why}")),
        other => BrokerError::Unavailable(format!("history: {other}")),
    }
}

impl HistoryHook {
    /// A hook publishing through `history` on the channels `lookup` names.
    pub(crate) fn new(history: Arc<dyn History>, lookup: HistoryLookup) -> Self {
        Self {
            history,
            lookup,
            ready: AtomicBool::new(true),
        }
    }

    /// A hook over a [`MemoryHistory`] whose live publications go straight
    /// to `hub`'s sockets (for the in-process broker).
    pub(crate) fn memory(hub: Arc<Hub>, lookup: HistoryLookup) -> Self {
        let sink: LiveSink = Arc::new(move |channel: &ChannelName, envelope| {
            hub.dispatch_all(&Message::new(channel.clone(), envelope));
        });
        Self::new(Arc::new(MemoryHistory::new().with_live(sink)), lookup)
    }

    /// The history store.
    pub(crate) fn history(&self) -> Arc<dyn History> {
        self.history.clone()
    }

    /// The history options of `channel` (`None`: it keeps no history).
    pub(crate) fn options(&self, channel: &ChannelName) -> Option<HistoryOptions> {
        (self.lookup)(channel)
    }

    /// Marks the store ready or not.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the store is ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Publishes `message` through the history with `opts`: its position.
    pub(crate) async fn publish(
        &self,
        message: Message,
        opts: &HistoryOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.history
            .publish(&message.channel, message.payload, opts)
            .await
            .map_err(broker_error)
    }
}
