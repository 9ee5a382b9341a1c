//! The seam through which the backend controls sessions (see the
//! `tidings-control` crate): a gateway's [`SessionHooks`] learn of each
//! session as it opens and closes, and get a [`ControlHandle`] to ask it to
//! close, subscribe or unsubscribe. Requests go through a small bounded
//! queue the session reads beside its mailbox: sending never waits.

use std::{any::Any, sync::Arc};

use tidings_core::{ChannelName, Identity};
use tokio::sync::mpsc;

/// Requests a session may queue before more are dropped.
pub const CONTROL_QUEUE: usize = 16;

/// What the backend asks of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Close with this code and reason (at most 123 bytes).
    Disconnect {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Subscribe to the channel, whatever the routing rules say; the
    /// client gets a `subscribed` frame (without `id`).
    Subscribe(ChannelName),
    /// Unsubscribe from the channel (even one joined on connect); the
    /// client gets an `unsubscribed` frame (without `id`).
    Unsubscribe(ChannelName),
}

/// A handle to ask one session for something. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<ControlRequest>,
}

impl ControlHandle {
    /// Queues `request` for the session; never waits. `false` when its
    /// queue is full or the session has ended.
    pub fn send(&self, request: ControlRequest) -> bool {
        self.tx.try_send(request).is_ok()
    }

    /// A handle and the receiving end a session reads.
    pub(crate) fn pair() -> (Self, mpsc::Receiver<ControlRequest>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        (Self { tx }, rx)
    }
}

/// Who a session is, as hooks see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The connection id, unique in this gateway (as in `welcome`).
    pub id: u64,
    /// The identity the session was opened with.
    pub identity: Arc<Identity>,
}

/// What a gateway plugs into every session: the control registry, presence
/// and webhooks. Every method must return at once.
pub trait SessionHooks: Send + Sync + 'static {
    /// A session opened. What it returns is kept for the session's life
    /// and dropped when it ends (a registration guard).
    fn opened(&self, session: &SessionInfo, handle: ControlHandle) -> Box<dyn Any + Send + Sync>;

    /// The session ended, with this close code and reason.
    fn closed(&self, session: &SessionInfo, code: u16, reason: &str);

    /// The session subscribed to `channel` (joined on connect, on request,
    /// or by the backend). Default: nothing.
    fn subscribed(&self, session: &SessionInfo, channel: &ChannelName) {
        let _ = (session, channel);
    }

    /// The session unsubscribed from `channel` (not called for the
    /// channels it still has when it ends: [`SessionHooks::opened`]'s
    /// guard is dropped then). Default: nothing.
    fn unsubscribed(&self, session: &SessionInfo, channel: &ChannelName) {
        let _ = (session, channel);
    }
}
