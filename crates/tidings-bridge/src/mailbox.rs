//! A socket's bounded outbound queue.
//!
//! Fan-out never blocks on a socket and never lets a queue grow without
//! bound: it offers each item with `try_send`, and when the queue is full
//! the socket's [`SlowConsumerPolicy`] decides what happens.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use tidings_core::{ChannelName, ChannelPattern, Delivery};
use tokio::sync::Notify;

/// What happens to a socket whose outbound queue is full when a message
/// arrives for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close the socket with close code 4001 (`slow consumer`). The client
    /// reconnects and knows it may have missed messages. The default.
    #[default]
    Close,
    /// Drop the message for this socket only, count it, and tell the client
    /// with a `{"type":"dropped","count":N}` notice once its queue has room.
    Drop,
}

impl FromStr for SlowConsumerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "close" => Ok(Self::Close),
            "drop" => Ok(Self::Drop),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (expected \"close\" or \"drop\")"
            )),
        }
    }
}

/// An item in a socket's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A delivered message; the frame is shared with every other recipient.
    Deliver(Arc<Delivery>),
    /// A frame for this socket alone.
    Notice(Bytes),
    /// Messages on these channels and patterns may have been missed (the
    /// broker reconnected, a subscription was repaired): the session fills
    /// the hole from the history where the channel keeps one, and tells the
    /// client with a `gap` notice otherwise.
    Gap(Box<GapNotice>),
}

/// What an [`Outbound::Gap`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice {
    /// The channels, sorted.
    pub channels: Vec<ChannelName>,
    /// The patterns, sorted.
    pub patterns: Vec<ChannelPattern>,
    /// Why (`broker_reconnected`, ...), as the `gap` notice's `reason`.
    pub reason: String,
}

/// The queue itself: allocated only while it holds something, so an idle
/// socket's mailbox costs a few dozen bytes.
#[derive(Debug, Default)]
struct Queue {
    items: std::collections::VecDeque<Outbound>,
    /// Set when the receiver is gone.
    closed: bool,
    /// Live [`Mailbox`] handles; zero means no more items can come.
    senders: usize,
}

#[derive(Debug)]
struct Shared {
    queue: parking_lot::Mutex<Queue>,
    capacity: usize,
    dropped: AtomicU64,
    overflowed: AtomicBool,
    wake: Notify,
}

/// The sending side of a socket's outbound queue, held by the hub.
#[derive(Debug)]
pub struct Mailbox {
    policy: SlowConsumerPolicy,
    shared: Arc<Shared>,
}

impl Clone for Mailbox {
    fn clone(&self) -> Self {
        self.shared.queue.lock().senders += 1;
        Self {
            policy: self.policy,
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let last = {
            let mut q = self.shared.queue.lock();
            q.senders -= 1;
            q.senders == 0
        };
        if last {
            self.shared.wake.notify_one();
        }
    }
}

/// What became of an item offered to a [`Mailbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// The queue was full: dropped for this socket (policy `drop`).
    Dropped,
    /// The queue was full: the socket is being closed (policy `close`).
    Overflowed,
    /// The socket is gone.
    Closed,
}

impl Mailbox {
    /// Offers `item` without waiting. Never blocks (one uncontended lock).
    pub fn offer(&self, item: Outbound) -> Offer {
        {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Offer::Closed;
            }
            if q.items.len() < self.shared.capacity {
                let was_empty = q.items.is_empty();
                q.items.push_back(item);
                drop(q);
                if was_empty {
                    self.shared.wake.notify_one();
                }
                return Offer::Queued;
            }
        }
        match self.policy {
            SlowConsumerPolicy::Drop => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.wake.notify_one();
                Offer::Dropped
            }
            SlowConsumerPolicy::Close => {
                if self.shared.overflowed.swap(true, Ordering::Relaxed) {
                    // Already told; the socket is on its way out.
                    Offer::Closed
                } else {
                    self.shared.wake.notify_one();
                    Offer::Overflowed
                }
            }
        }
    }

    /// Items waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.queue.lock().closed
    }
}

/// The receiving side of a socket's outbound queue, read by its session.
#[derive(Debug)]
pub struct MailboxReceiver {
    shared: Arc<Shared>,
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        q.items = std::collections::VecDeque::new();
    }
}

/// What the session should do next.
#[derive(Debug)]
pub enum Next {
    /// Write this item.
    Item(Outbound),
    /// Messages were dropped (policy `drop`); tell the client how many.
    Dropped(u64),
    /// The queue overflowed (policy `close`): close the socket with 4001.
    Overflowed,
    /// Every sender is gone.
    Closed,
}

/// Queues that grew beyond this are given back once drained.
const KEEP_SLOTS: usize = 16;

impl MailboxReceiver {
    /// Waits for the next thing to do. Cancel-safe.
    ///
    /// Overflow is reported before anything else; a `dropped` count is
    /// reported as soon as the queue has drained, so the notice lands right
    /// where the gap is.
    pub async fn next(&mut self) -> Next {
        loop {
            if self.shared.overflowed.load(Ordering::Relaxed) {
                return Next::Overflowed;
            }
            let notified = self.shared.wake.notified();
            {
                let mut q = self.shared.queue.lock();
                if let Some(item) = q.items.pop_front() {
                    if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
                        q.items = std::collections::VecDeque::new();
                    }
                    return Next::Item(item);
                }
                if q.senders == 0 {
                    return Next::Closed;
                }
            }
            let dropped = self.shared.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                return Next::Dropped(dropped);
            }
            notified.await;
        }
    }

    /// Takes the next item if one is queued now (for batching writes).
    pub fn try_next(&mut self) -> Option<Outbound> {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return None;
        }
        let mut q = self.shared.queue.lock();
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
            q.items = std::collections::VecDeque::new();
        }
        item
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A socket's outbound queue holding at most `capacity` items, with
/// `policy` for when it is full. The queue's memory is allocated only while
/// it holds items.
pub fn mailbox(capacity: usize, policy: SlowConsumerPolicy) -> (Mailbox, MailboxReceiver) {
    let shared = Arc::new(Shared {
        queue: parking_lot::Mutex::new(Queue {
            items: std::collections::VecDeque::new(),
            closed: false,
            senders: 1,
        }),
        capacity: capacity.max(1),
        dropped: AtomicU64::new(0),
        overflowed: AtomicBool::new(false),
        wake: Notify::new(),
    });
    (
        Mailbox {
            policy,
            shared: shared.clone(),
        },
        MailboxReceiver { shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(s: &'static str) -> Outbound {
        Outbound::Notice(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn drop_policy_counts_and_reports_after_the_queue() {
        let (mb, mut rx) = mailbox(2, SlowConsumerPolicy::Drop);
        assert_eq!(mb.offer(notice("a")), Offer::Queued);
        assert_eq!(mb.offer(notice("b")), Offer::Queued);
        assert_eq!(mb.offer(notice("c")), Offer::Dropped);
        assert_eq!(mb.offer(notice("d")), Offer::Dropped);
        assert!(matches!(rx.next().await, Next::Item(Outbound::Notice(b)) if b == "a"));
        assert!(matches!(rx.next().await, Next::Item(Outbound::Notice(b)) if b == "b"));
        assert!(matches!(rx.next().await, Next::Dropped(2)));
        assert_eq!(mb.offer(notice("e")), Offer::Queued);
        assert!(matches!(rx.next().await, Next::Item(Outbound::Notice(b)) if b == "e"));
    }

    #[tokio::test]
    async fn close_policy_reports_overflow_first() {
        let (mb, mut rx) = mailbox(1, SlowConsumerPolicy::Close);
        assert_eq!(mb.offer(notice("a")), Offer::Queued);
        assert_eq!(mb.offer(notice("b")), Offer::Overflowed);
        assert_eq!(mb.offer(notice("c")), Offer::Closed);
        assert!(matches!(rx.next().await, Next::Overflowed));
    }

    #[tokio::test]
    async fn closed_when_senders_gone() {
        let (mb, mut rx) = mailbox(1, SlowConsumerPolicy::Close);
        drop(mb);
        assert!(matches!(rx.next().await, Next::Closed));
    }
}
