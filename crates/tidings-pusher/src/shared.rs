//! What every connection and API request of the endpoint shares.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tidings_admission::Admission;
use tidings_control::{ControlChannel, PresenceTracker, Registry};
use tidings_core::ChannelName;
use tidings_session::Context;

use crate::{config::PusherConfig, hooks::Hooks};

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
    /// Presence channels' members and every channel's subscriptions, in
    /// the gateway's presence store (Redis: across gateways) or in this
    /// process.
    pub(crate) tracker: Arc<PresenceTracker>,
    /// The apps' webhooks.
    pub(crate) hooks: Arc<Hooks>,
    /// This gateway's signed-in connections, by `{app}:{user}`.
    pub(crate) users: Arc<Registry>,
    /// The channel carrying `terminate_connections` to every gateway,
    /// when started.
    pub(crate) control: Option<Arc<ControlChannel>>,
}

/// The registry's user of `user` of app `app`.
pub(crate) fn user_key(app: &str, user: &str) -> String {
    format!("{app}:{user}")
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
}
