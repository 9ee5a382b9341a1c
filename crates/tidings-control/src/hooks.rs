//! The gateway's [`SessionHooks`]: every session is registered in the
//! [`Registry`] (so control commands reach it), listed in its user's
//! presence set (so `GET /api/connections` sees every gateway), and
//! reported to the webhooks.

use std::{any::Any, sync::Arc};

use tidings_core::{protocol::close, ChannelName};
use tidings_session::{ControlHandle, ControlRequest, SessionHooks, SessionInfo};

use crate::{
    presence::{PresenceEntry, PresenceKey, PresenceTracker},
    registry::{Connection, ConnectionInfo, Registration, Registry},
    webhook::{now_ms, WebhookEvent, Webhooks},
};

/// A random gateway id: 12 hex digits.
pub fn random_gateway_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    crate::hmac::hex(&bytes)
}

/// The hooks of one gateway.
pub struct ControlHooks {
    gateway: String,
    registry: Arc<Registry>,
    connections: Option<Arc<PresenceTracker>>,
    webhooks: Option<Arc<Webhooks>>,
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
    /// one Redis): sessions go into `registry`, into their user's presence
    /// set through `connections` when given, and to `webhooks` when given.
    pub fn new(
        gateway: String,
        registry: Arc<Registry>,
        connections: Option<Arc<PresenceTracker>>,
        webhooks: Option<Arc<Webhooks>>,
    ) -> Self {
        Self {
            gateway,
            registry,
            connections,
            webhooks,
        }
    }

    /// The connection id of session `id`: `<gateway>-<id>`.
    pub fn conn_id(&self, id: u64) -> String {
        format!("{}-{id}", self.gateway)
    }

    /// The gateway's id.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }
}

/// A session as the registry sees it.
struct SessionConnection {
    handle: ControlHandle,
    info: ConnectionInfo,
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
        self.info.clone()
    }
}

/// What a session keeps while it lives: its registration, and its entry
/// in its user's presence set (removed when dropped).
struct Guard {
    _registration: Registration,
    presence: Option<(Arc<PresenceTracker>, PresenceKey, String)>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((tracker, key, conn)) = self.presence.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                tracker.leave_now(key, conn);
            }
        }
    }
}

impl SessionHooks for ControlHooks {
    fn opened(&self, session: &SessionInfo, handle: ControlHandle) -> Box<dyn Any + Send + Sync> {
        let conn = self.conn_id(session.id);
        let user = session.identity.user.clone();
        let since_ms = now_ms();
        let info = ConnectionInfo {
            conn: conn.clone(),
            user: user.clone(),
            gateway: self.gateway.clone(),
            since_ms,
        };
        let registration = self.registry.register(
            &conn,
            user.as_deref(),
            Arc::new(SessionConnection { handle, info }),
        );
        let presence = match (&self.connections, &user) {
            (Some(tracker), Some(u)) => {
                let key = PresenceKey::user(u);
                let entry = PresenceEntry {
                    conn: conn.clone(),
                    user: Some(u.clone()),
                    gateway: self.gateway.clone(),
                    info: serde_json::Value::Null,
                    since_ms,
                };
                tracker.join_now(key.clone(), entry);
                Some((tracker.clone(), key, conn.clone()))
            }
            _ => None,
        };
        if let Some(hooks) = &self.webhooks {
            hooks.send(WebhookEvent::Connect {
                conn,
                user,
                gateway: self.gateway.clone(),
                time_ms: since_ms,
            });
        }
        Box::new(Guard {
            _registration: registration,
            presence,
        })
    }

    fn closed(&self, session: &SessionInfo, code: u16, reason: &str) {
        if let Some(hooks) = &self.webhooks {
            hooks.send(WebhookEvent::Disconnect {
                conn: self.conn_id(session.id),
                user: session.identity.user.clone(),
                gateway: self.gateway.clone(),
                code,
                reason: reason.to_owned(),
                time_ms: now_ms(),
            });
        }
    }
}
