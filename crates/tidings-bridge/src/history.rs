//! Channel history on the publish path: publications on channels with a
//! history go through [`History::publish`] (which assigns the offset and
//! delivers live in one step) and come back with their position.

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

use crate::{Bridge, BrokerError};

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

impl Bridge {
    /// Publishes through `history` on every channel `lookup` gives options
    /// for: [`Bridge::publish_with_position`] then assigns each publication
    /// its offset and delivers it live in one atomic step (for Redis, the
    /// `tidings_publish` function, which publishes the live envelope on the
    /// channel itself; the envelope is opened once per message by the
    /// [`Hub`](crate::Hub), so sockets get the `offset` and `epoch` and
    /// never the envelope). Other channels publish as before. The history
    /// counts as ready; see [`Bridge::set_history_ready`].
    pub fn with_history(
        self,
        history: Arc<dyn History>,
        lookup: impl Fn(&ChannelName) -> Option<HistoryOptions> + Send + Sync + 'static,
    ) -> Self {
        *self.history_slot().write() = Some(Arc::new(HistoryHook {
            history,
            lookup: Arc::new(lookup),
            ready: AtomicBool::new(true),
        }));
        self
    }

    /// [`Bridge::with_history`] with a [`MemoryHistory`] whose live
    /// publications go straight to this process's sockets: for the
    /// in-process broker (with another broker they would not reach other
    /// gateway instances).
    pub fn with_memory_history(
        self,
        lookup: impl Fn(&ChannelName) -> Option<HistoryOptions> + Send + Sync + 'static,
    ) -> Self {
        let hub = self.hub_arc();
        let sink: LiveSink = Arc::new(move |channel: &ChannelName, envelope| {
            hub.dispatch_all(&Message::new(channel.clone(), envelope));
        });
        let history = Arc::new(MemoryHistory::new().with_live(sink));
        self.with_history(history, lookup)
    }

    /// The history store, if any.
    pub fn history(&self) -> Option<Arc<dyn History>> {
        self.history_hook().map(|h| h.history.clone())
    }

    /// The history options of `channel`: `None` when the bridge has no
    /// history or the channel keeps none.
    pub fn history_options(&self, channel: &ChannelName) -> Option<HistoryOptions> {
        self.history_hook().and_then(|h| (h.lookup)(channel))
    }

    /// Marks the history ready or not (for Redis: not until its function
    /// library is installed). While it is not, [`Bridge::is_ready`] is
    /// false (publishes are still attempted). No effect without a history.
    pub fn set_history_ready(&self, ready: bool) {
        if let Some(h) = self.history_hook() {
            h.ready.store(ready, Ordering::Relaxed);
        }
    }

    /// Whether the history is ready (true without a history).
    pub fn history_ready(&self) -> bool {
        self.history_hook()
            .is_none_or(|h| h.ready.load(Ordering::Relaxed))
    }

    fn history_hook(&self) -> Option<Arc<HistoryHook>> {
        self.history_slot().read().clone()
    }

    /// Publishes `message` so every gateway instance delivers it, and
    /// answers its position when its channel has a history (`None`: it was
    /// published plainly, without an offset).
    pub async fn publish_with_position(
        &self,
        message: Message,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        if let Some(hook) = self.history_hook() {
            if let Some(opts) = (hook.lookup)(&message.channel) {
                return hook
                    .history
                    .publish(&message.channel, message.payload, &opts)
                    .await
                    .map(Some)
                    .map_err(broker_error);
            }
        }
        self.publish_plain(message).await.map(|()| None)
    }
}
