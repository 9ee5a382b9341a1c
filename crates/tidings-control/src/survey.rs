//! A user's connections on every gateway, by asking them: a *survey*.
//!
//! Nothing is written to Redis per connection. Each gateway keeps one
//! entry in the set of live gateways ([`PresenceKey::gateways`], refreshed
//! with its other presence entries), and answers surveys from its own
//! [`Registry`]:
//!
//! 1. the asking gateway reads the live gateways, then publishes
//!    `{"op":"survey","id":"<id>","from":"gw1","user":"42"}` on the control
//!    channel, to which every gateway is subscribed already
//!    ([`ControlChannel::start_with_surveys`](crate::ControlChannel::start_with_surveys));
//! 2. each gateway publishes its connections of that user on the same
//!    channel, addressed to the asker:
//!    `{"op":"survey_reply","to":"gw1","id":"<id>","gateway":"gw2","connections":[...]}`
//!    (the others ignore it);
//! 3. the asker answers once every live gateway has, or after the timeout
//!    with the ones that did not named ([`SurveyAnswer::missing`]).
//!
//! The control channel carries both, so nothing new is subscribed and a
//! Redis ACL that allows the gateways `&tidings:control` covers surveys
//! too. Surveys are rare (an API call each), so every gateway seeing every
//! answer costs nothing that matters.
//!
//! A socket that closes is gone from the next answer; a gateway killed
//! without a goodbye answers no more at once (its sockets are gone with
//! it), and is named missing until its entry in the live set expires.
//! Centrifugo's node surveys work the same way.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tidings_bridge::{Bridge, BrokerError};
use tidings_core::{ChannelName, Message};
use tokio::sync::oneshot;

use crate::{
    presence::{PresenceEntry, PresenceError, PresenceKey},
    presence_tracker::PresenceTracker,
    registry::{ConnectionInfo, Registry},
    webhook::now_ms,
};

/// How long a survey waits for the gateways by default.
pub const DEFAULT_SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

/// The `op` of a survey request on the control channel.
pub(crate) const SURVEY_OP: &str = "survey";
/// The `op` of a gateway's answer on the control channel.
pub(crate) const REPLY_OP: &str = "survey_reply";

/// A survey request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
    id: String,
    from: String,
    user: String,
}

/// One gateway's answer, addressed to the asker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    op: String,
    to: String,
    id: String,
    gateway: String,
    connections: Vec<ConnectionInfo>,
}

/// What a survey found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurveyAnswer {
    /// The connections, sorted by id.
    pub connections: Vec<ConnectionInfo>,
    /// The gateways that answered, sorted.
    pub answered: Vec<String>,
    /// The live gateways that did not answer in time, sorted: the list may
    /// lack their connections (a gateway killed without a goodbye stays
    /// here until its entry in the live set expires).
    pub missing: Vec<String>,
}

/// Why a survey could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SurveyError {
    /// The live gateways could not be read.
    #[error("the live gateways cannot be read: {0}")]
    Presence(#[from] PresenceError),
    /// The request could not be published.
    #[error("the survey cannot be published: {0}")]
    Broker(#[from] BrokerError),
}

/// A survey in flight: who is expected, what came.
struct Pending {
    expected: HashSet<String>,
    answered: HashSet<String>,
    connections: Vec<ConnectionInfo>,
    done: Option<oneshot::Sender<()>>,
}

/// Counters of the surveys.
#[derive(Debug, Default)]
pub struct SurveyStats {
    /// Surveys this gateway made.
    pub asked: AtomicU64,
    /// Surveys that ended at the timeout, some gateway missing.
    pub incomplete: AtomicU64,
    /// Requests from any gateway this one answered.
    pub answered: AtomicU64,
    /// Survey requests or answers that were malformed.
    pub invalid: AtomicU64,
}

/// One gateway's side of surveys: it answers every gateway's (the control
/// channel hands it the requests) and asks its own
/// ([`Surveys::connections`]).
pub struct Surveys {
    gateway: Arc<str>,
    bridge: Bridge,
    control: ChannelName,
    live: Arc<PresenceTracker>,
    timeout: Duration,
    next: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
    stats: SurveyStats,
}

impl std::fmt::Debug for Surveys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Surveys")
            .field("gateway", &self.gateway)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl Surveys {
    /// Gateway `gateway`'s surveys over the control channel `control`
    /// (pass them to
    /// [`ControlChannel::start_with_surveys`](crate::ControlChannel::start_with_surveys),
    /// which hands them the requests and answers): this gateway joins the
    /// live set through `live` (whose refresher keeps it there:
    /// [`PresenceTracker::spawn_refresher`]; [`PresenceTracker::leave_all`]
    /// at shutdown takes it out), and waits `timeout` at most for the
    /// answers to its own surveys.
    pub fn start(
        bridge: &Bridge,
        control: ChannelName,
        gateway: &str,
        live: Arc<PresenceTracker>,
        timeout: Duration,
    ) -> Arc<Self> {
        // Into the live set by the tracker's task (within milliseconds; a
        // store that is down now gets it from the refresher once back):
        // startup never waits for Redis.
        live.join_now(
            PresenceKey::gateways(),
            PresenceEntry {
                conn: gateway.to_owned(),
                user: None,
                gateway: gateway.to_owned(),
                info: serde_json::Value::Null,
                since_ms: now_ms(),
            },
        );
        Arc::new(Self {
            gateway: gateway.into(),
            bridge: bridge.clone(),
            control,
            live,
            timeout,
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            stats: SurveyStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &SurveyStats {
        &self.stats
    }

    /// `user`'s connections on every live gateway.
    pub async fn connections(&self, user: &str) -> Result<SurveyAnswer, SurveyError> {
        let mut expected: HashSet<String> = self
            .live
            .list(&PresenceKey::gateways())
            .await?
            .into_iter()
            .map(|e| e.conn)
            .collect();
        // This gateway answers too, even before its own entry is stored.
        expected.insert(self.gateway.to_string());
        let id = format!(
            "{}-{}",
            self.gateway,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (done, finished) = oneshot::channel();
        self.pending.lock().insert(
            id.clone(),
            Pending {
                expected,
                answered: HashSet::new(),
                connections: Vec::new(),
                done: Some(done),
            },
        );
        // Taken out of the table however this ends (an error, or the
        // caller giving up on the future).
        let guard = PendingGuard {
            surveys: self,
            id: &id,
        };
        self.stats.asked.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            op: SURVEY_OP.to_owned(),
            id: id.clone(),
            from: self.gateway.to_string(),
            user: user.to_owned(),
        };
        let json = serde_json::to_string(&request).expect("a request serializes");
        self.bridge
            .publish(Message::new(self.control.clone(), json))
            .await?;
        let timed_out = tokio::time::timeout(self.timeout, finished).await.is_err();
        let pending = guard.take().expect("the survey is pending until taken");
        if timed_out {
            self.stats.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        let mut answered: Vec<String> = pending.answered.iter().cloned().collect();
        answered.sort();
        let mut missing: Vec<String> = pending
            .expected
            .difference(&pending.answered)
            .cloned()
            .collect();
        missing.sort();
        let mut connections = pending.connections;
        connections.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(SurveyAnswer {
            connections,
            answered,
            missing,
        })
    }

    /// Takes in a payload of the control channel whose `op` is
    /// [`SURVEY_OP`] or [`REPLY_OP`].
    pub(crate) fn handle(&self, op: &str, payload: &[u8], registry: &Registry) {
        if op == SURVEY_OP {
            self.answer(payload, registry);
        } else {
            self.received(payload);
        }
    }

    /// Answers a request from any gateway (this one too).
    fn answer(&self, payload: &[u8], registry: &Registry) {
        let Ok(request) = serde_json::from_slice::<Request>(payload) else {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "tidings::control", "invalid survey request ignored");
            return;
        };
        let answer = Reply {
            op: REPLY_OP.to_owned(),
            to: request.from,
            id: request.id,
            gateway: self.gateway.to_string(),
            connections: if request.user.is_empty() {
                Vec::new()
            } else {
                registry.describe_user(&request.user)
            },
        };
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        let json = serde_json::to_string(&answer).expect("an answer serializes");
        let (bridge, control) = (self.bridge.clone(), self.control.clone());
        tokio::spawn(async move {
            if let Err(e) = bridge.publish(Message::new(control, json)).await {
                tracing::debug!(target: "tidings::control", error = %e, "survey answer not published");
            }
        });
    }

    /// Takes in a gateway's answer (another gateway's survey's: ignored).
    fn received(&self, payload: &[u8]) {
        let Ok(reply) = serde_json::from_slice::<Reply>(payload) else {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "tidings::control", "invalid survey answer ignored");
            return;
        };
        if *reply.to != *self.gateway {
            return;
        }
        let mut pending = self.pending.lock();
        // Late (the survey ended) or a duplicate: nothing to do.
        let Some(p) = pending.get_mut(&reply.id) else {
            return;
        };
        if !p.answered.insert(reply.gateway) {
            return;
        }
        p.connections.extend(reply.connections);
        if p.expected.is_subset(&p.answered) {
            if let Some(done) = p.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// Removes a survey from the table when dropped.
struct PendingGuard<'a> {
    surveys: &'a Surveys,
    id: &'a str,
}

impl PendingGuard<'_> {
    fn take(self) -> Option<Pending> {
        self.surveys.pending.lock().remove(self.id)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.surveys.pending.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_have_one_wire_form() {
        let r: Request =
            serde_json::from_str(r#"{"op":"survey","id":"a-1","from":"a","user":"42"}"#).unwrap();
        assert_eq!((r.id.as_str(), r.user.as_str()), ("a-1", "42"));
        assert!(serde_json::from_str::<Request>(r#"{"op":"survey","id":"a-1"}"#).is_err());
        let a = Reply {
            op: REPLY_OP.into(),
            to: "a".into(),
            id: "a-1".into(),
            gateway: "b".into(),
            connections: vec![ConnectionInfo {
                conn: "b-7".into(),
                user: Some("42".into()),
                gateway: "b".into(),
                since_ms: 5,
            }],
        };
        let back: Reply = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.connections, a.connections);
    }
}
