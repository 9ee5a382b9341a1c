//! The seam through which the backend controls sessions (see the
//! `tidings-control` crate): a gateway's [`SessionHooks`] learn of each
//! session as it opens and closes, and get a [`ControlHandle`] to ask it to
//! close, subscribe or unsubscribe. Requests go through a small bounded
//! queue the session reads beside its mailbox, woken through the
//! mailbox's own wake-up: sending never waits, and an idle session waits
//! on one thing only.

use std::{any::Any, collections::VecDeque, sync::Arc};

use parking_lot::Mutex;
use tidings_bridge::MailboxWaker;
use tidings_core::{ChannelName, Identity};

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
#[derive(Debug)]
pub(crate) struct Queue {
    items: Mutex<(VecDeque<ControlRequest>, bool)>,
    /// The session's mailbox wake-up.
    wake: MailboxWaker,
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
        self.queue.wake.wake();
        true
    }

    /// A handle and the receiving end a session reads; a request wakes
    /// the session through `wake`.
    pub(crate) fn pair(wake: MailboxWaker) -> (Self, Receiver) {
        let queue = Arc::new(Queue {
            items: Mutex::default(),
            wake,
        });
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
    /// The next request, if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<ControlRequest> {
        let mut q = self.queue.items.lock();
        let r = q.0.pop_front()?;
        if q.0.is_empty() {
            q.0 = VecDeque::new();
        }
        Some(r)
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
    /// The connection's number, unique in this gateway.
    pub id: u64,
    /// The connection id clients and the backend know it by (`welcome`'s
    /// `connection`: the gateway's prefix and [`SessionInfo::id`]),
    /// formatted once for the session's life.
    pub conn: Arc<str>,
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
        let (_tx, mut mailbox) =
            tidings_bridge::mailbox(4, tidings_bridge::SlowConsumerPolicy::Close);
        let (handle, mut rx) = ControlHandle::pair(mailbox.waker());
        for n in 0..CONTROL_QUEUE {
            assert!(handle.send(sub(n)));
        }
        assert!(!handle.send(sub(99)), "the queue is bounded");
        for n in 0..CONTROL_QUEUE {
            assert_eq!(rx.try_recv(), Some(sub(n)));
        }
        assert_eq!(rx.try_recv(), None);
        // The wake-up stored by the sends is spent.
        assert!(mailbox.next_or_woken().await.is_none());
        // A request sent while the session waits on its mailbox wakes it.
        let h = handle.clone();
        let waiter = tokio::spawn(async move {
            let woken = mailbox.next_or_woken().await;
            (woken.is_none(), rx.try_recv(), rx)
        });
        tokio::task::yield_now().await;
        assert!(h.send(sub(7)));
        let (woken, request, rx) = waiter.await.unwrap();
        assert!(woken, "woken with nothing in the mailbox");
        assert_eq!(request, Some(sub(7)));
        // The receiver is gone: nothing more is accepted.
        drop(rx);
        assert!(!handle.send(sub(8)));
    }
}
