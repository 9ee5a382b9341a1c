//! What every connection and API request of the endpoint shares.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tidings_admission::Admission;
use tidings_control::PresenceTracker;
use tidings_core::ChannelName;
use tidings_session::Context;

use crate::{config::PusherConfig, presence::Presence};

/// What every connection and API request of the endpoint shares.
pub(crate) struct Inner {
    pub(crate) admission: Admission,
    pub(crate) ctx: Arc<Context>,
    pub(crate) config: Arc<PusherConfig>,
    /// The first part of this gateway's socket ids (random, so that ids
    /// are unique across gateways).
    pub(crate) tag: u32,
    /// Pusher connections on each channel, here.
    pub(crate) occupancy: Mutex<HashMap<ChannelName, usize>>,
    /// Presence channels' members, here (without a tracker).
    pub(crate) presence: Presence,
    /// Presence across gateways, when the gateway has a tracker.
    pub(crate) tracker: Option<Arc<PresenceTracker>>,
}

impl Inner {
    /// A connection joins (`true`) or leaves a channel.
    pub(crate) fn occupy(&self, channel: &ChannelName, join: bool) {
        let mut o = self.occupancy.lock();
        if join {
            *o.entry(channel.clone()).or_default() += 1;
        } else if let Some(n) = o.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                o.remove(channel);
            }
        }
    }

    /// The channels with Pusher connections here, with their counts.
    pub(crate) fn occupied(&self) -> Vec<(ChannelName, usize)> {
        self.occupancy
            .lock()
            .iter()
            .map(|(c, n)| (c.clone(), *n))
            .collect()
    }

    /// How many Pusher connections are on `channel` here.
    pub(crate) fn subscription_count(&self, channel: &ChannelName) -> usize {
        self.occupancy.lock().get(channel).copied().unwrap_or(0)
    }
}
