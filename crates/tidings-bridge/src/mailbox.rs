//! A socket's bounded outbound queue.
//!
//! Fan-out never blocks on a socket and never lets a queue grow without
//! bound: it offers each item with `try_send`, and when the queue is full
//! the socket's [`SlowConsumerPolicy`] decides what happens.
//!
//! A socket whose session registered a [`DirectWrite`] is written by the
//! hub's fan-out runners rather than by its own task: an offer that finds
//! the queue empty and the session not writing queues the item and marks
//! the socket *scheduled* instead of waking its task; the runner of the
//! socket's shard then writes what is queued with non-blocking system calls.
//! Whatever cannot be written at once (the socket would block, the end of a
//! partly written frame) stays queued and the session is woken to write it,
//! as before. The queue stays the one order of everything a socket is sent,
//! bounded as before, with the same slow-consumer policy. The session's
//! [`WriteGate`] keeps the two writers from interleaving: the session holds
//! the socket from the moment it takes an item (or starts a write of its
//! own) until its write is flushed, and writes the unwritten end of a frame
//! before anything of its own.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use bytes::{Buf, Bytes};
use tidings_core::{ChannelName, ChannelPattern, Delivery};
use tokio::sync::Notify;

/// A socket the fan-out may write to directly, without waking its task.
///
/// Implemented by the transport for its sockets; the transport frames the
/// payload (the bridge knows nothing of WebSocket framing).
pub trait DirectWrite: Send + Sync {
    /// Writes one text frame carrying `payload` if the socket takes it now.
    /// Never waits.
    fn try_write_text(&self, payload: &Bytes) -> Direct;

    /// Writes `delivery` if the socket takes it now. Never waits. Default:
    /// its protocol v1 frame as a text frame; a transport whose socket
    /// negotiated another form of it (compressed, ...) writes that.
    fn try_write_delivery(&self, delivery: &Delivery) -> Direct {
        self.try_write_text(delivery.frame())
    }

    /// Whether `delivery` may be written as it is, without its session
    /// seeing it first. `false` leaves it, and what follows it, to the
    /// session. Default: every delivery.
    fn takes(&self, delivery: &Delivery) -> bool {
        let _ = delivery;
        true
    }
}

/// What became of a [`DirectWrite::try_write_text`].
#[derive(Debug)]
pub enum Direct {
    /// The whole frame was handed to the kernel.
    Written,
    /// Nothing was written (the socket would block, or failed: the session
    /// will find out on its own write).
    NotWritten,
    /// The start of the frame was written; these bytes are its end, to be
    /// written before anything else.
    Partial(Bytes),
}

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
    /// The end of a frame the fan-out started to write directly: raw bytes,
    /// no frame header, to be written before anything else.
    Rest(Bytes),
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
    /// Set while a fan-out runner is due to write what is queued (the
    /// session was not woken).
    scheduled: bool,
    /// Set while the session owns the socket's write side (it took an item
    /// or is writing a frame of its own): no direct writes then.
    busy: bool,
    /// Where the fan-out may write directly (set by the session).
    direct: Option<std::sync::Arc<dyn DirectWrite>>,
}

impl std::fmt::Debug for dyn DirectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectWrite")
    }
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
    /// Offers `item` without waiting and wakes the socket's task if it
    /// must write. Never blocks (one uncontended lock).
    pub fn offer(&self, item: Outbound) -> Offer {
        let (offer, scheduled) = offer(&self.shared, self.policy, item, false);
        debug_assert!(!scheduled);
        offer
    }

    /// Offers `item` for the fan-out: `true` with [`Offer::Queued`] when
    /// the socket's task was not woken and the caller must have a runner
    /// [`Target::write_queued`].
    pub(crate) fn offer_for_runner(&self, item: Outbound) -> (Offer, bool) {
        offer(&self.shared, self.policy, item, true)
    }

    /// A handle on this socket for a fan-out runner (does not keep the queue
    /// open: the hub's [`Mailbox`] does).
    pub(crate) fn target(&self) -> Target {
        Target {
            shared: self.shared.clone(),
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

/// A socket scheduled for a fan-out runner (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    shared: Arc<Shared>,
}

impl Target {
    /// Writes what is queued, directly, as far as the socket takes it
    /// without blocking; wakes the socket's task for whatever is left.
    pub(crate) fn write_queued(&self) {
        let mut q = self.shared.queue.lock();
        q.scheduled = false;
        if q.closed {
            return;
        }
        let Queue {
            items,
            busy,
            direct,
            ..
        } = &mut *q;
        if let (Some(direct), false) = (direct.as_ref(), *busy) {
            // The lock is held across the writes: neither the session nor
            // anyone else can write in between.
            while let Some(front) = items.front_mut() {
                let written = match front {
                    Outbound::Deliver(d) if direct.takes(d) => direct.try_write_delivery(d),
                    Outbound::Notice(b) => direct.try_write_text(b),
                    _ => break,
                };
                match written {
                    Direct::Written => {
                        items.pop_front();
                    }
                    Direct::Partial(rest) => {
                        *front = Outbound::Rest(rest);
                        break;
                    }
                    Direct::NotWritten => break,
                }
            }
            if items.is_empty() && items.capacity() > KEEP_SLOTS {
                *items = std::collections::VecDeque::new();
            }
        }
        let left = !q.items.is_empty();
        drop(q);
        if left {
            self.shared.wake.notify_one();
        }
    }
}

fn offer(
    shared: &Shared,
    policy: SlowConsumerPolicy,
    item: Outbound,
    runner: bool,
) -> (Offer, bool) {
    {
        let mut q = shared.queue.lock();
        if q.closed {
            return (Offer::Closed, false);
        }
        if q.items.len() < shared.capacity {
            let was_empty = q.items.is_empty();
            q.items.push_back(item);
            if !was_empty {
                // Whoever was told of the first item writes this one too.
                return (Offer::Queued, false);
            }
            if runner && q.direct.is_some() && !q.busy && !q.scheduled {
                q.scheduled = true;
                return (Offer::Queued, true);
            }
            drop(q);
            shared.wake.notify_one();
            return (Offer::Queued, false);
        }
    }
    let offer = match policy {
        SlowConsumerPolicy::Drop => {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            shared.wake.notify_one();
            Offer::Dropped
        }
        SlowConsumerPolicy::Close => {
            if shared.overflowed.swap(true, Ordering::Relaxed) {
                // Already told; the socket is on its way out.
                Offer::Closed
            } else {
                shared.wake.notify_one();
                Offer::Overflowed
            }
        }
    };
    (offer, false)
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
        q.direct = None;
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
            if let Some(next) = self.next_or_woken().await {
                return next;
            }
        }
    }

    /// [`MailboxReceiver::next`], or `None` when a [`MailboxWaker`] woke
    /// the receiver with nothing to do here: a session waiting on several
    /// sources (its mailbox, RPC answers, the backend's requests) waits on
    /// this one alone, and its other sources wake it through a waker. One
    /// wait, one future: an idle socket keeps nothing else. Cancel-safe.
    pub async fn next_or_woken(&mut self) -> Option<Next> {
        if let Some(next) = self.ready() {
            return Some(next);
        }
        self.shared.wake.notified().await;
        // A wake-up stored before this wait began (a permit) or given while
        // it waited: either way, look again.
        self.ready()
    }

    /// What there is to do now, if anything.
    fn ready(&mut self) -> Option<Next> {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return Some(Next::Overflowed);
        }
        {
            let mut q = self.shared.queue.lock();
            if let Some(item) = q.items.pop_front() {
                if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
                    q.items = std::collections::VecDeque::new();
                }
                // The session writes it: no direct write may overtake.
                q.busy = true;
                return Some(Next::Item(item));
            }
            if q.senders == 0 {
                return Some(Next::Closed);
            }
        }
        let dropped = self.shared.dropped.swap(0, Ordering::Relaxed);
        (dropped > 0).then_some(Next::Dropped(dropped))
    }

    /// A handle that wakes [`MailboxReceiver::next_or_woken`] (with `None`
    /// when nothing is queued): for the session's other sources.
    pub fn waker(&self) -> MailboxWaker {
        MailboxWaker {
            shared: self.shared.clone(),
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
        if item.is_some() {
            q.busy = true;
        }
        item
    }

    /// Lets the fan-out's runners write queued items to the socket directly
    /// through `direct` while the session is not writing.
    /// The session must then do every write of its own between
    /// [`WriteGate::begin`] and [`WriteGate::end`] (see [`MailboxReceiver::gate`]).
    pub fn write_directly(&self, direct: Arc<dyn DirectWrite>) {
        self.shared.queue.lock().direct = Some(direct);
    }

    /// The gate the session's writes go through once
    /// [`MailboxReceiver::write_directly`] is on.
    pub fn gate(&self) -> WriteGate {
        WriteGate {
            shared: self.shared.clone(),
        }
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

/// Wakes a session waiting in [`MailboxReceiver::next_or_woken`]: how
/// its sources other than the mailbox (RPC answers, the backend's
/// requests) tell it to look. A wake-up given while it is not waiting is
/// kept for its next wait: none is lost. Cheap: one pointer.
#[derive(Debug, Clone)]
pub struct MailboxWaker {
    shared: Arc<Shared>,
}

impl MailboxWaker {
    /// Wakes the receiver (or its next wait).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

/// The session's side of the socket's write ownership (see the module
/// docs). Cheap: one pointer.
#[derive(Debug, Clone)]
pub struct WriteGate {
    shared: Arc<Shared>,
}

impl WriteGate {
    /// The session starts a write: from now until [`WriteGate::end`] the
    /// fan-out writes nothing directly. Returns the unwritten end of a
    /// direct frame if one is waiting: the session must write it first and
    /// report what it wrote with [`WriteGate::wrote_rest`].
    pub fn begin(&self) -> Option<Bytes> {
        let mut q = self.shared.queue.lock();
        q.busy = true;
        match q.items.front() {
            Some(Outbound::Rest(rest)) => Some(rest.clone()),
            _ => None,
        }
    }

    /// The session is about to produce frames that must reach the socket
    /// before any delivery the fan-out could write directly (a
    /// subscription's `subscribed`, taken before the broker confirms it, so
    /// that no message of the channel overtakes it): from now until the end
    /// of the session's next write ([`WriteGate::end`]) the fan-out queues
    /// instead of writing.
    pub fn hold(&self) {
        self.shared.queue.lock().busy = true;
    }

    /// Wakes the session (see [`MailboxWaker`]).
    pub fn waker(&self) -> MailboxWaker {
        MailboxWaker {
            shared: self.shared.clone(),
        }
    }

    /// `n` bytes of the rest [`WriteGate::begin`] returned were written.
    pub fn wrote_rest(&self, n: usize) {
        let mut q = self.shared.queue.lock();
        if let Some(Outbound::Rest(rest)) = q.items.front_mut() {
            if n >= rest.len() {
                q.items.pop_front();
            } else {
                rest.advance(n);
            }
        }
    }

    /// The session's write is complete (flushed): direct writes may go on
    /// once the queue is empty.
    pub fn end(&self) {
        self.shared.queue.lock().busy = false;
    }

    /// The session is closing the socket: nothing more is written to it
    /// directly, and offers from now on find the socket gone.
    pub fn close(&self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        q.direct = None;
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
            scheduled: false,
            busy: false,
            direct: None,
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

    /// A socket that takes `room` bytes, then would block.
    #[derive(Default)]
    struct Sock {
        room: parking_lot::Mutex<usize>,
        wire: parking_lot::Mutex<Vec<u8>>,
    }

    impl DirectWrite for Sock {
        fn try_write_text(&self, payload: &Bytes) -> Direct {
            let mut frame = vec![0x81, payload.len() as u8];
            frame.extend_from_slice(payload);
            let mut room = self.room.lock();
            let n = frame.len().min(*room);
            *room -= n;
            self.wire.lock().extend_from_slice(&frame[..n]);
            match n {
                0 => Direct::NotWritten,
                n if n == frame.len() => Direct::Written,
                n => Direct::Partial(Bytes::copy_from_slice(&frame[n..])),
            }
        }
    }

    fn deliver(s: &str) -> Outbound {
        let m = tidings_core::Message::new(
            tidings_core::ChannelName::new("/c").unwrap(),
            Bytes::copy_from_slice(s.as_bytes()),
        );
        Outbound::Deliver(Delivery::new(&m))
    }

    /// Offers as the fan-out does: runs the runner's part when asked to.
    fn fan_out(mb: &Mailbox, item: Outbound) -> Offer {
        let (offer, scheduled) = mb.offer_for_runner(item);
        if scheduled {
            mb.target().write_queued();
        }
        offer
    }

    #[tokio::test]
    async fn runners_write_only_while_the_session_is_not_writing() {
        let (mb, mut rx) = mailbox(8, SlowConsumerPolicy::Close);
        let sock = Arc::new(Sock::default());
        *sock.room.lock() = 1 << 20;
        // No direct writer yet: queued for the session.
        assert_eq!(fan_out(&mb, deliver("0")), Offer::Queued);
        assert!(matches!(rx.next().await, Next::Item(Outbound::Deliver(_))));
        let gate = rx.gate();
        gate.end();
        rx.write_directly(sock.clone());
        // Idle: written by the runner, nothing left queued.
        assert_eq!(fan_out(&mb, deliver("1")), Offer::Queued);
        assert_eq!(rx.len(), 0);
        let direct_len = sock.wire.lock().len();
        assert!(direct_len > 0);
        // The session writes: offers queue for it.
        assert_eq!(gate.begin().map(|b| b.len()), None);
        assert_eq!(fan_out(&mb, deliver("2")), Offer::Queued);
        gate.end();
        // Something is queued: behind it.
        assert_eq!(fan_out(&mb, deliver("3")), Offer::Queued);
        assert_eq!(rx.len(), 2);
        assert_eq!(sock.wire.lock().len(), direct_len);
        // Taking an item holds the socket until the session's write ends.
        assert!(matches!(rx.next().await, Next::Item(Outbound::Deliver(_))));
        assert!(rx.try_next().is_some());
        assert_eq!(fan_out(&mb, deliver("4")), Offer::Queued);
        assert_eq!(rx.len(), 1);
        gate.end();
        assert!(rx.try_next().is_some());
        gate.end();
        assert_eq!(fan_out(&mb, deliver("5")), Offer::Queued);
        assert_eq!(rx.len(), 0);
        // Two offers before the runner comes: both written in its one visit.
        let (_, scheduled) = mb.offer_for_runner(deliver("6"));
        assert!(scheduled);
        let (_, again) = mb.offer_for_runner(deliver("7"));
        assert!(!again);
        mb.target().write_queued();
        assert_eq!(rx.len(), 0);
        // Closing: nothing more is written or queued.
        gate.close();
        assert_eq!(fan_out(&mb, deliver("8")), Offer::Closed);
    }

    #[tokio::test]
    async fn a_hold_queues_the_fan_out_until_the_sessions_next_write_ends() {
        let (mb, mut rx) = mailbox(8, SlowConsumerPolicy::Close);
        let sock = Arc::new(Sock::default());
        *sock.room.lock() = 1 << 20;
        rx.write_directly(sock.clone());
        let gate = rx.gate();
        // A subscription is on its way: the fan-out queues, and the
        // session is woken for what it queued.
        gate.hold();
        assert_eq!(fan_out(&mb, deliver("1")), Offer::Queued);
        assert_eq!(rx.len(), 1);
        assert!(sock.wire.lock().is_empty());
        // The session's reply is written, then its write ends: what was
        // queued stays the session's, and later offers go behind it.
        assert!(gate.begin().is_none());
        gate.end();
        assert_eq!(fan_out(&mb, deliver("2")), Offer::Queued);
        assert_eq!(rx.len(), 2);
        assert!(sock.wire.lock().is_empty());
        assert!(matches!(rx.next().await, Next::Item(Outbound::Deliver(_))));
        assert!(rx.try_next().is_some());
        gate.end();
        // Idle again: written directly.
        assert_eq!(fan_out(&mb, deliver("3")), Offer::Queued);
        assert_eq!(rx.len(), 0);
        assert!(!sock.wire.lock().is_empty());
    }

    #[tokio::test]
    async fn a_partial_write_leaves_its_rest_first_in_line_for_the_session() {
        let (mb, mut rx) = mailbox(8, SlowConsumerPolicy::Close);
        let sock = Arc::new(Sock::default());
        *sock.room.lock() = 3;
        rx.write_directly(sock.clone());
        let gate = rx.gate();
        assert_eq!(fan_out(&mb, deliver("abcdef")), Offer::Queued);
        // Later deliveries queue behind the rest.
        assert_eq!(fan_out(&mb, deliver("x")), Offer::Queued);
        assert_eq!(rx.len(), 2);
        // A write of the session's own gets the rest first, in two goes.
        let rest = gate.begin().expect("the rest of the frame");
        gate.wrote_rest(2);
        let rest2 = gate.begin().expect("what is left of it");
        assert_eq!(&rest[2..], &rest2[..]);
        gate.wrote_rest(rest2.len());
        assert!(gate.begin().is_none());
        gate.end();
        assert!(matches!(rx.next().await, Next::Item(Outbound::Deliver(_))));
        // Or the session takes the rest itself, as a raw item.
        *sock.room.lock() = 3;
        gate.end();
        assert_eq!(fan_out(&mb, deliver("ghijkl")), Offer::Queued);
        assert!(matches!(rx.next().await, Next::Item(Outbound::Rest(r)) if !r.is_empty()));
    }

    /// A socket that leaves deliveries containing "session" to the session.
    struct Picky(Sock);

    impl DirectWrite for Picky {
        fn try_write_text(&self, payload: &Bytes) -> Direct {
            self.0.try_write_text(payload)
        }
        fn takes(&self, delivery: &Delivery) -> bool {
            !delivery.frame().windows(7).any(|w| w == b"session")
        }
    }

    #[tokio::test]
    async fn a_delivery_the_writer_does_not_take_goes_to_the_session_with_what_follows() {
        let (mb, mut rx) = mailbox(8, SlowConsumerPolicy::Close);
        let sock = Arc::new(Picky(Sock::default()));
        *sock.0.room.lock() = 1 << 20;
        rx.write_directly(sock.clone());
        assert_eq!(fan_out(&mb, deliver("a")), Offer::Queued);
        assert_eq!(rx.len(), 0);
        let (_, scheduled) = mb.offer_for_runner(deliver("session"));
        assert!(scheduled);
        mb.offer_for_runner(deliver("b"));
        mb.target().write_queued();
        assert_eq!(rx.len(), 2);
        assert!(
            matches!(rx.next().await, Next::Item(Outbound::Deliver(d)) if d.frame().windows(7).any(|w| w == b"session"))
        );
        assert!(matches!(rx.try_next(), Some(Outbound::Deliver(_))));
    }

    #[tokio::test]
    async fn closed_when_senders_gone() {
        let (mb, mut rx) = mailbox(1, SlowConsumerPolicy::Close);
        drop(mb);
        assert!(matches!(rx.next().await, Next::Closed));
    }
}
