//! A socket's requests: subscribe, unsubscribe, publish, ping and RPC
//! frames, once parsed and past the rate limit. RPC calls run in their own
//! tasks; their answers come back through [`Requests::try_rpc`].

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use serde_json::value::RawValue;
use tidings_bridge::{Subscriber, WriteGate};
use tidings_core::{
    protocol::{self, ClientFrame, ErrorCode, Request, SenderEnvelope},
    Identity, Message, Topic,
};
use tidings_routing::Denied;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    context::Context,
    recovery::{Followers, From},
    rpc::{RpcCall, RpcError},
};

/// A socket's request state: who it is, what it is subscribed to, its RPC
/// calls in flight.
pub(crate) struct Requests {
    gw: Arc<Context>,
    identity: Arc<Identity>,
    /// What RPC calls forward (empty unless RPC is on).
    credentials: Arc<http::HeaderMap>,
    peer: std::net::SocketAddr,
    sub: Subscriber,
    /// RPC calls in flight and their answers on the way back; made on the
    /// first call (most sockets make none).
    rpc: Option<Box<RpcState>>,
    /// The socket's write gate: held while a subscription is made, so that
    /// nothing of the channel overtakes its `subscribed`; and how the
    /// session is woken when an RPC answer is back (it waits on its
    /// mailbox).
    gate: WriteGate,
    /// Where the socket is on each channel with history it follows.
    pub(crate) followers: Followers,
    /// The connection's id as in `welcome` (what `exclude` names).
    pub(crate) conn: Arc<str>,
}

/// A socket's RPC calls: how many are in flight, and their answers.
struct RpcState {
    in_flight: Arc<AtomicUsize>,
    results: (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>),
}

impl Requests {
    /// The request state of a socket subscribed through `sub`.
    pub(crate) fn new(
        gw: Arc<Context>,
        identity: Arc<Identity>,
        credentials: Arc<http::HeaderMap>,
        peer: std::net::SocketAddr,
        sub: Subscriber,
        gate: WriteGate,
        conn: Arc<str>,
    ) -> Self {
        Self {
            rpc: None,
            gate,
            followers: Followers::default(),
            conn,
            gw,
            identity,
            credentials,
            peer,
            sub,
        }
    }

    /// An RPC answer that is back, if any (the session is woken through
    /// its mailbox when one comes).
    pub(crate) fn try_rpc(&mut self) -> Option<Bytes> {
        self.rpc.as_mut()?.results.1.try_recv().ok()
    }

    /// Starts an RPC call in its own task; its answer comes back to the
    /// session when it comes, so deliveries never wait for the backend.
    fn rpc(
        &mut self,
        id: Option<Box<RawValue>>,
        method: String,
        path: String,
        data: Option<Box<RawValue>>,
    ) -> Option<Bytes> {
        let Some(handler) = self.gw.rpc.clone() else {
            return Some(protocol::encode_error(
                ErrorCode::RpcDisabled,
                "rpc is not enabled on this gateway",
                id.as_deref(),
            ));
        };
        let limit = handler.max_in_flight();
        let rpc = self.rpc.get_or_insert_with(|| {
            Box::new(RpcState {
                in_flight: Arc::new(AtomicUsize::new(0)),
                results: mpsc::channel(limit),
            })
        });
        if rpc.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            rpc.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Some(protocol::encode_error(
                ErrorCode::TooManyRequests,
                &format!("at most {limit} rpc calls in flight per socket"),
                id.as_deref(),
            ));
        }
        let in_flight = rpc.in_flight.clone();
        let results = rpc.results.0.clone();
        let identity = self.identity.clone();
        let credentials = self.credentials.clone();
        let peer = self.peer;
        let stats = self.gw.stats.clone();
        let wake = self.gate.waker();
        tokio::spawn(
            async move {
                let call = RpcCall {
                    method: &method,
                    path: &path,
                    body: data.map(|d| Bytes::from(String::from(Box::<str>::from(d)))),
                    identity: &identity,
                    credentials: &credentials,
                    peer,
                };
                let result = handler.call(call).await;
                stats.rpc(result.is_ok());
                let reply = match result {
                    Ok(r) => protocol::encode_rpc_result(id.as_deref(), r.status, &r.body),
                    Err(e) => {
                        let code = match e {
                            RpcError::Forbidden(_) => ErrorCode::Forbidden,
                            RpcError::Timeout(_) => ErrorCode::RpcTimeout,
                            RpcError::Unavailable => ErrorCode::RpcUnavailable,
                        };
                        protocol::encode_error(code, &e.to_string(), id.as_deref())
                    }
                };
                in_flight.fetch_sub(1, Ordering::AcqRel);
                if results.send(reply).await.is_ok() {
                    wake.wake();
                }
            }
            .in_current_span(),
        );
        None
    }

    /// Tells the gateway's hooks the session subscribed to (`true`) or
    /// unsubscribed from (`false`) `channel`.
    pub(crate) fn notify(&self, channel: &tidings_core::ChannelName, subscribed: bool) {
        if let Some(hooks) = &self.gw.hooks {
            let info = crate::control::SessionInfo {
                id: self.sub.id(),
                conn: self.conn.clone(),
                identity: self.identity.clone(),
            };
            if subscribed {
                hooks.subscribed(&info, channel);
            } else {
                hooks.unsubscribed(&info, channel);
            }
        }
    }

    /// The subscriptions (for joins on connect).
    pub(crate) fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.sub
    }

    /// Answers one parsed client frame: appends the reply (none for an RPC
    /// call, answered later; a subscription's replay after its reply).
    pub(crate) async fn request(&mut self, frame: ClientFrame, out: &mut Vec<Bytes>) {
        match frame.request {
            Request::Rpc { method, path, data } => {
                if let Some(refusal) = self.rpc(frame.id, method, path, data) {
                    out.push(refusal);
                }
            }
            Request::Subscribe {
                channel,
                since,
                last,
            } => {
                self.subscribe(frame.id.as_deref(), &channel, since, last, out)
                    .await;
            }
            _ => {
                let reply = self.reply(frame).await;
                out.push(reply);
            }
        }
    }

    /// `subscribe`: the routing check, the live subscription, then (for a
    /// channel with history) the replay from the client's position, so
    /// that the reply is followed by what was missed and then the live
    /// stream, with no duplicate and no hole at the seam.
    async fn subscribe(
        &mut self,
        id: Option<&RawValue>,
        channel: &str,
        since: Option<(u64, String)>,
        last: bool,
        out: &mut Vec<Bytes>,
    ) {
        let gw = self.gw.clone();
        let name = match gw.router.may_subscribe(&self.identity, channel) {
            Ok(name) => name,
            Err(d) => return out.push(denied(d, "subscribe to", id)),
        };
        let from = match since {
            Some((offset, epoch)) => {
                let position = tidings_history::StreamPosition::new(offset, epoch);
                if let Err(e) = position.validate() {
                    return out.push(protocol::encode_error(
                        ErrorCode::BadRequest,
                        &e.to_string(),
                        id,
                    ));
                }
                From::Position(position)
            }
            None if last => From::Last,
            None => From::Now,
        };
        let topic = Topic::Channel(name.clone());
        if !self.sub.contains(&topic) && self.sub.len() >= gw.config.max_subscriptions {
            return out.push(protocol::encode_error(
                ErrorCode::TooManySubscriptions,
                &format!(
                    "at most {} subscriptions per socket",
                    gw.config.max_subscriptions
                ),
                id,
            ));
        }
        let fresh = !self.sub.contains(&topic);
        // Whatever the result, a frame follows: until it is written, the
        // fan-out writes nothing of the channel ahead of it.
        self.gate.hold();
        if let Err(e) = self.sub.subscribe(topic).await {
            return out.push(broker_error(&e, id));
        }
        if fresh {
            self.notify(&name, true);
        }
        // Live first (above), then the history: whatever is published in
        // between is in both, and the follower drops the second copy.
        let at = out.len();
        let mut replay = Vec::new();
        let report = self.followers.start(&gw, &name, from, &mut replay).await;
        out.insert(
            at,
            protocol::encode_subscribed(
                channel,
                report.as_ref().map(|r| r.as_protocol()).as_ref(),
                id,
            ),
        );
        out.extend(replay);
    }

    /// A subscription the backend asked for (the control API): no routing
    /// check, no subscription limit. The `subscribed` frame (without `id`)
    /// for the client, or `None` when it already was (or the broker failed:
    /// logged, nothing to tell the client).
    pub(crate) async fn server_subscribe(
        &mut self,
        channel: tidings_core::ChannelName,
    ) -> Option<Bytes> {
        let topic = Topic::Channel(channel.clone());
        if self.sub.contains(&topic) {
            return None;
        }
        // `subscribed` follows: nothing of the channel goes ahead of it.
        self.gate.hold();
        if let Err(e) = self.sub.join(topic).await {
            tracing::warn!(channel = %channel, error = %e, "server-side subscription is pending until the broker is back");
        }
        self.notify(&channel, true);
        Some(protocol::encode_subscribed(channel.as_str(), None, None))
    }

    /// An unsubscription the backend asked for: the `unsubscribed` frame
    /// for the client, or `None` when it was not subscribed.
    pub(crate) fn server_unsubscribe(
        &mut self,
        channel: &tidings_core::ChannelName,
    ) -> Option<Bytes> {
        self.followers.forget(channel);
        let was = self.sub.unsubscribe(&Topic::Channel(channel.clone()));
        if was {
            self.notify(channel, false);
        }
        was.then(|| protocol::encode_ack("unsubscribed", channel.as_str(), None))
    }

    async fn reply(&mut self, frame: ClientFrame) -> Bytes {
        let id = frame.id.as_deref();
        let gw = &self.gw;
        let denied = |d: Denied, what: &str| denied(d, what, id);
        match frame.request {
            Request::Unsubscribe { channel } => match tidings_core::ChannelName::new(&channel) {
                Ok(name) => {
                    self.followers.forget(&name);
                    if self.sub.unsubscribe(&Topic::Channel(name.clone())) {
                        self.notify(&name, false);
                    }
                    protocol::encode_ack("unsubscribed", &channel, id)
                }
                Err(e) => protocol::encode_error(ErrorCode::InvalidChannel, &e.to_string(), id),
            },
            Request::Publish {
                channel,
                data,
                echo,
            } => {
                let name = match gw.router.may_publish(&self.identity, &channel) {
                    Ok(name) => name,
                    Err(d) => return denied(d, "publish on"),
                };
                // Stamped with the sender; the client cannot forge it.
                let from = self.identity.user.as_deref();
                let payload = if echo {
                    SenderEnvelope::wrap(from, &data)
                } else {
                    SenderEnvelope::wrap_excluding(from, &self.conn, &data)
                };
                match gw.bridge.publish(Message::new(name, payload)).await {
                    Ok(()) => protocol::encode_ack("published", &channel, id),
                    Err(e) => broker_error(&e, id),
                }
            }
            Request::Ping => protocol::encode_pong(id),
            Request::Rpc { .. } | Request::Subscribe { .. } => {
                protocol::encode_error(ErrorCode::Internal, "answered apart", id)
            }
        }
    }
}

/// The error frame for a routing refusal.
fn denied(d: Denied, what: &str, id: Option<&RawValue>) -> Bytes {
    match d {
        Denied::InvalidChannel(e) => {
            protocol::encode_error(ErrorCode::InvalidChannel, &e.to_string(), id)
        }
        Denied::NotAllowed => protocol::encode_error(
            ErrorCode::Forbidden,
            &format!("not allowed to {what} this channel"),
            id,
        ),
    }
}

/// The error frame for a broker failure: a refusal (an ACL) is final,
/// anything else is worth a retry.
fn broker_error(e: &tidings_bridge::BrokerError, id: Option<&RawValue>) -> Bytes {
    let code = match e {
        tidings_bridge::BrokerError::Refused(_) => ErrorCode::Forbidden,
        _ => ErrorCode::BrokerUnavailable,
    };
    protocol::encode_error(code, &e.to_string(), id)
}
