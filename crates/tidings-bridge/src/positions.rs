//! The current positions of channels with history, read once per burst of
//! subscriptions and shared.
//!
//! A socket that subscribes to a channel with history is told the channel's
//! current position: the point it is subscribed from (it is owed every
//! publication after it, and a reconnect recovers from it). Asking the store
//! costs a round trip and a script call per subscription; in a storm of
//! connections to the same channels (a user's tabs, a page's shared feed)
//! that is one call per socket for the same answer. Here instead:
//!
//! - a read in flight is shared by every socket that subscribes while it
//!   is on its way;
//! - its answer is kept, and moved forward by every positioned
//!   publication the [`Hub`](crate::Hub) dispatches on the channel, *before*
//!   fanning it out; later subscribers take the kept position as it is;
//! - a kept position is forgotten when the channel loses its last local
//!   subscriber, when the broker connection is lost or restored (the
//!   subscription may have missed publications), and after [`FRESH`].
//!
//! Why a shared answer is exact. A socket's position `P` is right when every
//! publication after `P` reaches it live, i.e. when every publication
//! dispatched before the socket joined is at or before `P` (those after are
//! delivered to it, and its follower drops what is at or before `P`). A read
//! answers `R`, the store's position some time after the read started; what
//! was dispatched before the read started was published before it, so is at
//! or before `R`. Everything dispatched since is in `seen`. A socket that
//! waited for the read (it had joined before the answer came) gets the
//! newest of `R` and `seen`; one that comes later gets the kept position,
//! which every dispatch since has moved forward. Either is at or after all
//! that was dispatched before the socket joined.
//!
//! The cost on the message path is one relaxed load per message when nothing
//! is kept, else one short lock per positioned message (never per socket).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tidings_core::ChannelName;
use tidings_history::{HistoryError, StreamPosition};
use tokio::{sync::oneshot, time::Instant};

/// How long a kept position is used. Past it the next subscriber reads the
/// store again (which also renews the channel's epoch there); kept
/// positions cost memory only for this long after a storm.
pub(crate) const FRESH: Duration = Duration::from_secs(5);

/// At most this many kept positions (≈ 150 bytes each with the map): a
/// storm over more distinct channels keeps the first ones, and the others'
/// later subscribers read the store as without this. Reads in flight are
/// not limited (one per channel being opened).
pub(crate) const MAX_KEPT: usize = 1024;

type Answer = Result<StreamPosition, HistoryError>;

enum Slot {
    /// A read is on its way; what was dispatched since it started, and who
    /// waits for it.
    Reading {
        id: u64,
        seen: Option<StreamPosition>,
        waiters: Vec<oneshot::Sender<Answer>>,
    },
    /// The position as of the last read or dispatch.
    Known {
        position: StreamPosition,
        at: Instant,
    },
}

#[derive(Default)]
struct Inner {
    map: HashMap<ChannelName, Slot>,
    /// How many of `map`'s slots are `Known`.
    kept: usize,
    /// Whether a task is clearing out stale positions.
    sweeping: bool,
}

impl Inner {
    /// Removes `channel`'s slot, keeping the count.
    fn remove(&mut self, channel: &str) -> Option<Slot> {
        let slot = self.map.remove(channel);
        if matches!(slot, Some(Slot::Known { .. })) {
            self.kept -= 1;
        }
        slot
    }
}

/// The kept positions (one per hub).
#[derive(Default)]
pub(crate) struct Positions {
    inner: Mutex<Inner>,
    /// Whether anything is kept: the dispatch path skips the lock otherwise.
    any: AtomicBool,
    next_id: AtomicU64,
}

/// What a subscriber does to learn a channel's position.
pub(crate) enum Begin<'a> {
    /// Take this one.
    Known(StreamPosition),
    /// Wait for the read in flight (`Err`: it was abandoned; read alone).
    Wait(oneshot::Receiver<Answer>),
    /// Read the store, then [`Reading::finish`].
    Read(Reading<'a>),
}

/// A read this subscriber makes for everyone; dropped unfinished (the
/// subscriber went away mid-read), the waiters read for themselves.
pub(crate) struct Reading<'a> {
    positions: &'a Positions,
    channel: ChannelName,
    id: u64,
}

/// The newer of two positions of one epoch; `None` across epochs (which
/// one is newer cannot be told).
fn newest(a: &StreamPosition, b: Option<&StreamPosition>) -> Option<StreamPosition> {
    match b {
        None => Some(a.clone()),
        Some(b) if b.epoch != a.epoch => None,
        Some(b) => Some(if b.offset > a.offset { b } else { a }.clone()),
    }
}

impl Positions {
    /// The start of learning `channel`'s position, for a socket that has
    /// joined it (its subscription is in place).
    pub(crate) fn begin(self: &Arc<Self>, channel: &ChannelName) -> Begin<'_> {
        let mut inner = self.inner.lock();
        match inner.map.get_mut(channel) {
            Some(Slot::Known { position, at }) if at.elapsed() < FRESH => {
                return Begin::Known(position.clone());
            }
            Some(Slot::Reading { waiters, .. }) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                return Begin::Wait(rx);
            }
            _ => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        inner.remove(channel.as_str()); // a stale position
        inner.map.insert(
            channel.clone(),
            Slot::Reading {
                id,
                seen: None,
                waiters: Vec::new(),
            },
        );
        self.any.store(true, Ordering::Release);
        if !inner.sweeping {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                inner.sweeping = true;
                handle.spawn(sweep(Arc::downgrade(self)));
            }
        }
        Begin::Read(Reading {
            positions: self,
            channel: channel.clone(),
            id,
        })
    }

    /// A publication at `position` is about to be fanned out on `channel`.
    pub(crate) fn dispatching(&self, channel: &str, position: &StreamPosition) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        // A new epoch is newer than anything of the old one.
        let newer =
            |old: &StreamPosition| old.epoch != position.epoch || position.offset > old.offset;
        match inner.map.get_mut(channel) {
            Some(Slot::Known {
                position: known, ..
            }) if newer(known) => {
                *known = position.clone();
            }
            Some(Slot::Reading { seen, .. }) if seen.as_ref().is_none_or(newer) => {
                *seen = Some(position.clone());
            }
            _ => {}
        }
    }

    /// Forgets `channel`'s position (its last local subscriber left).
    pub(crate) fn forget(&self, channel: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        inner.remove(channel);
        self.any.store(!inner.map.is_empty(), Ordering::Release);
    }

    /// Forgets every position (the broker's subscriptions may have missed
    /// publications).
    pub(crate) fn forget_all(&self) {
        let mut inner = self.inner.lock();
        inner.map = HashMap::new();
        inner.kept = 0;
        self.any.store(false, Ordering::Release);
    }

    /// How many channels have a kept position or a read in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Drops stale positions; whether any is left.
    fn sweep_once(&self) -> bool {
        let mut inner = self.inner.lock();
        inner
            .map
            .retain(|_, slot| !matches!(slot, Slot::Known { at, .. } if at.elapsed() >= FRESH));
        inner.kept = inner
            .map
            .values()
            .filter(|s| matches!(s, Slot::Known { .. }))
            .count();
        // The table grew with a storm: give it back once it is over.
        if inner.map.capacity() > 4 * inner.map.len() + 64 {
            inner.map.shrink_to_fit();
        }
        let left = !inner.map.is_empty();
        self.any.store(left, Ordering::Release);
        if !left {
            inner.sweeping = false;
        }
        left
    }
}

/// Clears stale positions every [`FRESH`] while any is kept.
async fn sweep(positions: Weak<Positions>) {
    loop {
        tokio::time::sleep(FRESH).await;
        let Some(positions) = positions.upgrade() else {
            return;
        };
        if !positions.sweep_once() {
            return;
        }
    }
}

impl Reading<'_> {
    /// The read's answer: shared with everyone waiting, kept for later
    /// subscribers; gives this subscriber's position.
    pub(crate) fn finish(self, answer: Answer) -> Answer {
        let mut inner = self.positions.inner.lock();
        let Some(Slot::Reading { id, .. }) = inner.map.get(&self.channel) else {
            // Forgotten meanwhile: whoever waited was let go.
            return answer;
        };
        if *id != self.id {
            return answer;
        }
        let Some(Slot::Reading { seen, waiters, .. }) = inner.remove(self.channel.as_str()) else {
            return answer; // matched above
        };
        let shared = match &answer {
            Ok(read) => newest(read, seen.as_ref()),
            Err(_) => None,
        };
        match (shared, answer) {
            (Some(position), _) => {
                for waiter in waiters {
                    let _ = waiter.send(Ok(position.clone()));
                }
                if inner.kept < MAX_KEPT {
                    inner.kept += 1;
                    inner.map.insert(
                        self.channel.clone(),
                        Slot::Known {
                            position: position.clone(),
                            at: Instant::now(),
                        },
                    );
                } else {
                    self.positions
                        .any
                        .store(!inner.map.is_empty(), Ordering::Release);
                }
                Ok(position)
            }
            (None, Err(e)) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(e.clone()));
                }
                self.positions
                    .any
                    .store(!inner.map.is_empty(), Ordering::Release);
                Err(e)
            }
            (None, Ok(read)) => {
                // Publications of another epoch came meanwhile: the waiters
                // read for themselves (their senders dropped here).
                drop(waiters);
                self.positions
                    .any
                    .store(!inner.map.is_empty(), Ordering::Release);
                Ok(read)
            }
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        // Abandoned (the subscriber went away mid-read): let the waiters go.
        let mut inner = self.positions.inner.lock();
        if matches!(inner.map.get(&self.channel), Some(Slot::Reading { id, .. }) if *id == self.id)
        {
            inner.remove(self.channel.as_str());
            self.positions
                .any
                .store(!inner.map.is_empty(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition::new(offset, epoch)
    }

    /// Starts a read, which the test finishes.
    macro_rules! read {
        ($p:expr, $c:expr) => {
            match $p.begin($c) {
                Begin::Read(r) => r,
                _ => panic!("expected to read"),
            }
        };
    }

    fn known(p: &Arc<Positions>, c: &ChannelName) -> StreamPosition {
        match p.begin(c) {
            Begin::Known(k) => k,
            _ => panic!("expected a kept position"),
        }
    }

    #[tokio::test]
    async fn a_read_is_kept_and_moved_forward_by_dispatches() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        let r = read!(p, &c);
        assert_eq!(r.finish(Ok(at(5, "e"))), Ok(at(5, "e")));
        assert_eq!(known(&p, &c), at(5, "e"));
        p.dispatching("/a", &at(6, "e"));
        p.dispatching("/a", &at(4, "e")); // older: no effect
        p.dispatching("/b", &at(9, "e")); // another channel
        assert_eq!(known(&p, &c), at(6, "e"));
        // A new epoch is newer than anything of the old one.
        p.dispatching("/a", &at(1, "f"));
        assert_eq!(known(&p, &c), at(1, "f"));
    }

    #[tokio::test]
    async fn waiters_share_the_read_and_get_what_was_dispatched_meanwhile() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        let r = read!(p, &c);
        let Begin::Wait(w1) = p.begin(&c) else {
            panic!("expected to wait")
        };
        // Dispatched while the read is on its way: the waiter got it live
        // (it had joined), and so did the reader.
        p.dispatching("/a", &at(7, "e"));
        let Begin::Wait(w2) = p.begin(&c) else {
            panic!("expected to wait")
        };
        assert_eq!(r.finish(Ok(at(5, "e"))), Ok(at(7, "e")));
        assert_eq!(w1.await.unwrap(), Ok(at(7, "e")));
        assert_eq!(w2.await.unwrap(), Ok(at(7, "e")));
        assert_eq!(known(&p, &c), at(7, "e"));
    }

    #[tokio::test]
    async fn across_epochs_nothing_is_shared() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        let r = read!(p, &c);
        let Begin::Wait(w) = p.begin(&c) else {
            panic!("expected to wait")
        };
        p.dispatching("/a", &at(1, "new"));
        assert_eq!(r.finish(Ok(at(5, "old"))), Ok(at(5, "old")));
        assert!(w.await.is_err(), "the waiter reads for itself");
        assert!(matches!(p.begin(&c), Begin::Read(_)));
    }

    #[tokio::test]
    async fn errors_are_shared_and_not_kept() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        let r = read!(p, &c);
        let Begin::Wait(w) = p.begin(&c) else {
            panic!("expected to wait")
        };
        assert_eq!(
            r.finish(Err(HistoryError::Timeout)),
            Err(HistoryError::Timeout)
        );
        assert_eq!(w.await.unwrap(), Err(HistoryError::Timeout));
        assert_eq!(p.len(), 0);
        assert!(!p.any.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn an_abandoned_read_lets_its_waiters_go() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        let r = read!(p, &c);
        let Begin::Wait(w) = p.begin(&c) else {
            panic!("expected to wait")
        };
        drop(r);
        assert!(w.await.is_err());
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn forgotten_positions_are_read_again() {
        let p = Arc::new(Positions::default());
        let (a, b) = (ch("/a"), ch("/b"));
        read!(p, &a).finish(Ok(at(1, "e"))).unwrap();
        read!(p, &b).finish(Ok(at(2, "e"))).unwrap();
        p.forget("/a");
        assert!(matches!(p.begin(&a), Begin::Read(_)));
        assert_eq!(known(&p, &b), at(2, "e"));
        // A read forgotten on its way answers its reader, keeps nothing.
        let r = read!(p, &a);
        p.forget_all();
        assert_eq!(r.finish(Ok(at(3, "e"))), Ok(at(3, "e")));
        assert_eq!(p.len(), 0);
        assert!(matches!(p.begin(&b), Begin::Read(_)));
    }

    #[tokio::test]
    async fn at_most_max_kept_positions_are_kept() {
        let p = Arc::new(Positions::default());
        for i in 0..MAX_KEPT + 10 {
            let c = ch(&format!("/c{i}"));
            read!(p, &c).finish(Ok(at(1, "e"))).unwrap();
        }
        assert_eq!(p.len(), MAX_KEPT);
        assert_eq!(p.inner.lock().kept, MAX_KEPT);
        // Past the limit, a channel's subscribers read again.
        assert!(matches!(p.begin(&ch("/c0")), Begin::Known(_)));
        assert!(matches!(
            p.begin(&ch(&format!("/c{}", MAX_KEPT + 1))),
            Begin::Read(_)
        ));
        p.forget("/c0");
        assert_eq!(p.inner.lock().kept, MAX_KEPT - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn kept_positions_go_stale_and_are_swept() {
        let p = Arc::new(Positions::default());
        let c = ch("/a");
        read!(p, &c).finish(Ok(at(1, "e"))).unwrap();
        tokio::time::advance(FRESH / 2).await;
        assert_eq!(known(&p, &c), at(1, "e"));
        tokio::time::sleep(FRESH * 2).await;
        // The sweeper ran: nothing kept, the dispatch path skips the lock.
        assert_eq!(p.len(), 0);
        assert!(!p.any.load(Ordering::Acquire));
        assert!(!p.inner.lock().sweeping);
    }
}
