//! The seam through which the backend controls sessions (see the
//! `tidings-control` crate): a gateway's [`SessionHooks`] learn of each
//! session as it opens and closes, and get a [`ControlHandle`] to ask it to
//! close, subscribe or unsubscribe. Requests go through a small bounded
//! queue the session reads beside its mailbox: sending never waits.

use std::{any::Any, collections::VecDeque, sync::Arc};

use parking_lot::Mutex;
use tidings_core::{ChannelName, Identity};
use tokio::sync::Notify;

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

/// A session's control queue: allocated only while it holds requests, so
/// an idle socket pays a few dozen bytes for it.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: Mutex<(VecDeque<ControlRequest>, bool)>,
    wake: Notify,
}

/// A handle to ask one session for something. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    queue: Arc<Queue>,
}

impl ControlHandle {
    /// Queues `request` for the session; never waits. `false` when its
    /// queue is full ([`CONTROL_QUEUE`]) or the session has ended.
    pub fn send(&self, request: ControlRequest) -> bool {
        {
            let mut q = self.queue.items.lock();
            if q.1 || q.0.len() >= CONTROL_QUEUE {
                return false;
            }
            q.0.push_back(request);
        }
        self.queue.wake.notify_one();
        true
    }

    /// A handle and the receiving end a session reads.
    pub(crate) fn pair() -> (Self, Receiver) {
        let queue = Arc::new(Queue::default());
        (
            Self {
                queue: queue.clone(),
            },
            Receiver { queue },
        )
    }
}

/// The session's end of its control queue. Dropping it refuses further
/// requests.
#[derive(Debug)]
pub(crate) struct Receiver {
    queue: Arc<Queue>,
}

impl Receiver {
    /// The next request. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> ControlRequest {
        loop {
            let notified = self.queue.wake.notified();
            {
                let mut q = self.queue.items.lock();
                if let Some(r) = q.0.pop_front() {
                    if q.0.is_empty() {
                        q.0 = VecDeque::new();
                    }
                    return r;
                }
            }
            notified.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.queue.items.lock();
        q.1 = true;
        q.0 = VecDeque::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(n: usize) -> ControlRequest {
        ControlRequest::Subscribe(ChannelName::new(&format!("/c/{n}")).unwrap())
    }

    #[tokio::test]
    async fn requests_queue_in_order_up_to_the_bound_and_stop_with_the_session() {
        let (handle, mut rx) = ControlHandle::pair();
        for n in 0..CONTROL_QUEUE {
            assert!(handle.send(sub(n)));
        }
        assert!(!handle.send(sub(99)), "the queue is bounded");
        for n in 0..CONTROL_QUEUE {
            assert_eq!(rx.recv().await, sub(n));
        }
        // A request sent while the session waits wakes it.
        let h = handle.clone();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert!(h.send(sub(7)));
        assert_eq!(waiter.await.unwrap(), sub(7));
        // The receiver is gone with the task: nothing more is accepted.
        assert!(!handle.send(sub(8)));
    }
}
