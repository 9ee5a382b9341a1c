//! The gateway's [`SessionHooks`]: every session is registered in the
//! [`Registry`] (so control commands and surveys reach it), kept in the
//! presence sets of its channels with presence, and reported to the
//! webhooks. Nothing is written anywhere for a session that is in no
//! presence set.

use std::{any::Any, collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tidings_bridge::Bridge;
use tidings_core::{protocol::close, ChannelName, Message};
use tidings_routing::PresenceMode;
use tidings_session::{ControlHandle, ControlRequest, SessionHooks, SessionInfo};

use crate::{
    presence::{PresenceChange, PresenceEntry, PresenceEvent, PresenceKey},
    presence_tracker::{PresenceSink, PresenceTracker},
    registry::{Connection, ConnectionInfo, Registration, Registry},
    webhook::{now_ms, WebhookEvent, Webhooks},
};

/// A random gateway id: 12 hex digits.
pub fn random_gateway_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    crate::hmac::hex(&bytes)
}

/// Which channels have presence (the routing rules' `presence` option).
pub type PresenceLookup = Arc<dyn Fn(&ChannelName) -> Option<PresenceMode> + Send + Sync>;

/// The hooks of one gateway.
pub struct ControlHooks {
    gateway: Arc<str>,
    registry: Arc<Registry>,
    webhooks: Option<Arc<Webhooks>>,
    channels: Option<(Arc<PresenceTracker>, PresenceLookup)>,
    occupancy: Option<Arc<PresenceTracker>>,
    shared: Arc<Shared>,
    /// What the sessions' guards need of the above, shared by all.
    guard_hooks: Arc<GuardHooks>,
}

/// What the hooks and the sessions' guards share.
#[derive(Default)]
struct Shared {
    /// Session id -> the channels it is in presence or occupancy of; only
    /// sessions that are in some (most are in none: nothing is kept for
    /// them here).
    sessions: Mutex<HashMap<u64, SessionState>>,
    /// Channel -> this gateway's subscribers (for occupancy).
    local: Mutex<HashMap<ChannelName, usize>>,
}

/// A session's presence and occupancy, made on its first such channel.
struct SessionState {
    entry: PresenceEntry,
    presence: Vec<ChannelName>,
    occupying: Vec<ChannelName>,
}

impl std::fmt::Debug for ControlHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHooks")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl ControlHooks {
    /// Hooks of the gateway `gateway` (its id, unique among the gateways on
    /// one Redis): sessions go into `registry` (where control commands and
    /// [`Surveys`](crate::Surveys) find them), and to `webhooks` when
    /// given.
    pub fn new(gateway: String, registry: Arc<Registry>, webhooks: Option<Arc<Webhooks>>) -> Self {
        let gateway: Arc<str> = gateway.into();
        let shared = Arc::<Shared>::default();
        Self {
            guard_hooks: Arc::new(GuardHooks {
                gateway: gateway.clone(),
                channels: None,
                occupancy: None,
                shared: shared.clone(),
            }),
            gateway,
            registry,
            webhooks,
            channels: None,
            occupancy: None,
            shared,
        }
    }

    /// Makes the guards' view follow a change of the trackers.
    fn with_guard_hooks(mut self) -> Self {
        self.guard_hooks = Arc::new(GuardHooks {
            gateway: self.gateway.clone(),
            channels: self.channels.as_ref().map(|(t, _)| t.clone()),
            occupancy: self.occupancy.clone(),
            shared: self.shared.clone(),
        });
        self
    }

    /// Keeps presence on the channels `lookup` names (the routing rules'
    /// `presence` option) in `tracker`, whose sink should be
    /// [`presence_publisher`].
    pub fn with_channel_presence(
        mut self,
        tracker: Arc<PresenceTracker>,
        lookup: PresenceLookup,
    ) -> Self {
        self.channels = Some((tracker, lookup));
        self.with_guard_hooks()
    }

    /// Tracks which gateways have subscribers on each channel in `tracker`
    /// (whose sink should be [`occupancy_webhooks`]), for the channel
    /// occupied and vacated webhooks.
    pub fn with_occupancy(mut self, tracker: Arc<PresenceTracker>) -> Self {
        self.occupancy = Some(tracker);
        self.with_guard_hooks()
    }

    /// The gateway's id.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Session `session`'s entry in presence sets.
    fn entry(&self, session: &SessionInfo, since_ms: u64) -> PresenceEntry {
        let attributes = &session.identity.attributes;
        PresenceEntry {
            conn: session.conn.to_string(),
            user: session.identity.user.clone(),
            gateway: self.gateway.to_string(),
            info: if attributes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::to_value(attributes).unwrap_or_default()
            },
            since_ms,
        }
    }
}

/// A session as the registry sees it: what it takes to describe it is
/// kept once (its id, identity and start) and spelled out on demand.
struct SessionConnection {
    handle: ControlHandle,
    session: SessionInfo,
    gateway: Arc<str>,
    since_ms: u64,
}

impl Connection for SessionConnection {
    fn disconnect(&self, code: u16, reason: &str) {
        self.handle.send(ControlRequest::Disconnect {
            code,
            reason: reason.to_owned(),
        });
    }
    fn subscribe(&self, channel: &ChannelName) {
        self.handle.send(ControlRequest::Subscribe(channel.clone()));
    }
    fn unsubscribe(&self, channel: &ChannelName) {
        self.handle
            .send(ControlRequest::Unsubscribe(channel.clone()));
    }
    fn refresh(&self) {
        // The identity is resolved afresh when the client reconnects (its
        // cached answer was forgotten before this was called).
        self.handle.send(ControlRequest::Disconnect {
            code: close::IDENTITY_CHANGED,
            reason: "identity changed, reconnect".to_owned(),
        });
    }
    fn describe(&self) -> ConnectionInfo {
        ConnectionInfo {
            conn: self.session.conn.to_string(),
            user: self.session.identity.user.clone(),
            gateway: self.gateway.to_string(),
            since_ms: self.since_ms,
        }
    }
}

/// What a session keeps while it lives: its registration, and its entries
/// in presence sets (removed when dropped). Small: the connection id and
/// presence key are spelled out again at the end rather than kept.
struct Guard {
    _registration: Registration,
    session: SessionInfo,
    hooks: Arc<GuardHooks>,
}

/// What every guard of one gateway shares.
struct GuardHooks {
    gateway: Arc<str>,
    channels: Option<Arc<PresenceTracker>>,
    occupancy: Option<Arc<PresenceTracker>>,
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let hooks = &*self.hooks;
        let Some(state) = hooks.shared.sessions.lock().remove(&self.session.id) else {
            return;
        };
        if let Some(tracker) = &hooks.channels {
            for channel in state.presence {
                tracker.leave_now(PresenceKey::channel(&channel), state.entry.conn.clone());
            }
        }
        if let Some(tracker) = &hooks.occupancy {
            for channel in state.occupying {
                vacate(&hooks.shared, tracker, &hooks.gateway, &channel);
            }
        }
    }
}

/// This gateway's entry in `channel`'s occupancy set.
fn occupancy_entry(gateway: &str) -> PresenceEntry {
    PresenceEntry {
        conn: gateway.to_owned(),
        user: Some("*".to_owned()),
        gateway: gateway.to_owned(),
        info: serde_json::Value::Null,
        since_ms: 0,
    }
}

/// One local subscriber less on `channel`; the gateway leaves its
/// occupancy set with the last.
fn vacate(shared: &Shared, tracker: &Arc<PresenceTracker>, gateway: &str, channel: &ChannelName) {
    let last = {
        let mut local = shared.local.lock();
        match local.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                local.remove(channel);
                true
            }
            None => false,
        }
    };
    if last {
        tracker.leave_now(PresenceKey::occupancy(channel), gateway.to_owned());
    }
}

/// A sink publishing the `join` and `leave` events of channels with
/// presence `"full"` on the channels themselves (so every gateway's
/// subscribers get them), through `bridge`.
pub fn presence_publisher(bridge: Bridge, lookup: PresenceLookup) -> Arc<dyn PresenceSink> {
    Arc::new(move |key: &PresenceKey, change: PresenceChange| {
        let Some(channel) = key.as_channel().and_then(|c| ChannelName::new(c).ok()) else {
            return;
        };
        if change.published || lookup(&channel) != Some(PresenceMode::Full) {
            return;
        }
        let bridge = bridge.clone();
        tokio::spawn(async move {
            for event in PresenceEvent::of(&change) {
                let message = Message::new(channel.clone(), event.payload());
                if let Err(e) = bridge.publish(message).await {
                    tracing::debug!(target: "tidings::presence", channel = %channel, error = %e, "presence event not published");
                }
            }
        });
    })
}

/// A sink turning occupancy changes into the channel occupied and vacated
/// webhooks.
pub fn occupancy_webhooks(webhooks: Arc<Webhooks>) -> Arc<dyn PresenceSink> {
    Arc::new(move |key: &PresenceKey, change: PresenceChange| {
        let Some(channel) = key.as_occupancy() else {
            return;
        };
        if !change.joined.is_empty() {
            webhooks.send(WebhookEvent::ChannelOccupied {
                channel: channel.to_owned(),
                time_ms: now_ms(),
            });
        }
        if !change.left.is_empty() {
            webhooks.send(WebhookEvent::ChannelVacated {
                channel: channel.to_owned(),
                time_ms: now_ms(),
            });
        }
    })
}

impl SessionHooks for ControlHooks {
    fn opened(&self, session: &SessionInfo, handle: ControlHandle) -> Box<dyn Any + Send + Sync> {
        let user = session.identity.user.as_deref();
        let since_ms = now_ms();
        let registration = self.registry.register(
            session.conn.clone(),
            user,
            Arc::new(SessionConnection {
                handle,
                session: session.clone(),
                gateway: self.gateway.clone(),
                since_ms,
            }),
        );
        if let Some(hooks) = &self.webhooks {
            hooks.send(WebhookEvent::Connect {
                conn: session.conn.to_string(),
                user: user.map(str::to_owned),
                gateway: self.gateway.to_string(),
                time_ms: since_ms,
            });
        }
        Box::new(Guard {
            _registration: registration,
            session: session.clone(),
            hooks: self.guard_hooks.clone(),
        })
    }

    fn subscribed(&self, session: &SessionInfo, channel: &ChannelName) {
        let presence = match &self.channels {
            Some((tracker, lookup)) if lookup(channel).is_some() => Some(tracker),
            _ => None,
        };
        if presence.is_none() && self.occupancy.is_none() {
            return;
        }
        let mut sessions = self.shared.sessions.lock();
        let state = sessions.entry(session.id).or_insert_with(|| SessionState {
            entry: self.entry(session, now_ms()),
            presence: Vec::new(),
            occupying: Vec::new(),
        });
        if let Some(tracker) = presence {
            if !state.presence.contains(channel) {
                state.presence.push(channel.clone());
                tracker.join_now(PresenceKey::channel(channel), state.entry.clone());
            }
        }
        if let Some(tracker) = &self.occupancy {
            if !state.occupying.contains(channel) {
                state.occupying.push(channel.clone());
                let first = {
                    let mut local = self.shared.local.lock();
                    let n = local.entry(channel.clone()).or_insert(0);
                    *n += 1;
                    *n == 1
                };
                if first {
                    tracker.join_now(
                        PresenceKey::occupancy(channel),
                        occupancy_entry(&self.gateway),
                    );
                }
            }
        }
    }

    fn unsubscribed(&self, session: &SessionInfo, channel: &ChannelName) {
        let mut sessions = self.shared.sessions.lock();
        let Some(state) = sessions.get_mut(&session.id) else {
            return;
        };
        if let Some((tracker, _)) = &self.channels {
            if let Some(i) = state.presence.iter().position(|c| c == channel) {
                state.presence.swap_remove(i);
                tracker.leave_now(PresenceKey::channel(channel), state.entry.conn.clone());
            }
        }
        if let Some(tracker) = &self.occupancy {
            if let Some(i) = state.occupying.iter().position(|c| c == channel) {
                state.occupying.swap_remove(i);
                vacate(&self.shared, tracker, &self.gateway, channel);
            }
        }
    }

    fn closed(&self, session: &SessionInfo, code: u16, reason: &str) {
        if let Some(hooks) = &self.webhooks {
            hooks.send(WebhookEvent::Disconnect {
                conn: session.conn.to_string(),
                user: session.identity.user.clone(),
                gateway: self.gateway.to_string(),
                code,
                reason: reason.to_owned(),
                time_ms: now_ms(),
            });
        }
    }
}
