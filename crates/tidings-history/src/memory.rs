//! The in-memory history: the same semantics as Redis, in one process.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_core::ChannelName;

use crate::{
    check_since, BoxFuture, History, HistoryError, HistoryOptions, LivePublication, Publication,
    Recovery, StreamPosition,
};

/// Where [`MemoryHistory`] sends live publications: called with the channel
/// and the [`LivePublication`] envelope, in offset order, while the history
/// is locked (so it must neither block nor call the history; hand the
/// message to a broker or a channel).
pub type LiveSink = Arc<dyn Fn(&ChannelName, Bytes) + Send + Sync>;

/// The time [`MemoryHistory`] expires histories by: the system clock, or a
/// manual one that only moves when told to (for tests).
#[derive(Clone, Debug)]
pub struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that starts now and moves only by [`Clock::advance`].
    pub fn manual() -> Self {
        Self(Some(Arc::new(Mutex::new(Instant::now()))))
    }

    /// Moves a manual clock forward by `by`; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            *t.lock() += by;
        }
    }

    fn now(&self) -> Instant {
        match &self.0 {
            Some(t) => *t.lock(),
            None => Instant::now(),
        }
    }
}

/// How often, at most, expired channels are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Channel histories in this process's memory, for the gateway without
/// Redis: a ring buffer per channel, trimmed to the size and expiring with
/// the TTL exactly like the Redis keys, and an epoch per channel lifetime
/// (a random per-process prefix and a counter), so a restarted process
/// never reuses an epoch and every client position from before the
/// restart gets `recovered: false`.
pub struct MemoryHistory {
    clock: Clock,
    sink: Option<LiveSink>,
    process: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    channels: HashMap<ChannelName, Channel>,
    epochs: u64,
    next_sweep: Instant,
}

struct Channel {
    epoch: String,
    offset: u64,
    entries: VecDeque<(u64, Bytes)>,
    /// When the entries expire (`None`: no entries).
    entries_expire: Option<Instant>,
    /// When the epoch and offset expire.
    meta_expires: Instant,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("channels", &self.inner.lock().channels.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    /// An empty history on the system clock, without a live sink (its
    /// publications are kept and replayed, but not delivered live; see
    /// [`MemoryHistory::with_live`]).
    pub fn new() -> Self {
        Self::with_clock(Clock::system())
    }

    /// An empty history on `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("the operating system's random generator failed");
        let now = clock.now();
        Self {
            clock,
            sink: None,
            process: u64::from_le_bytes(random) & 0xffff_ffff_ffff,
            inner: Mutex::new(Inner {
                channels: HashMap::new(),
                epochs: 0,
                next_sweep: now + SWEEP_EVERY,
            }),
        }
    }

    /// Sends every publication live through `sink` (the in-process broker).
    pub fn with_live(mut self, sink: LiveSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// How many channels have an epoch in memory (expired ones are swept
    /// at most once a second, on the next call).
    pub fn channels(&self) -> usize {
        self.inner.lock().channels.len()
    }

    fn publish_now(
        &self,
        channel: &ChannelName,
        payload: Bytes,
        opts: &HistoryOptions,
    ) -> StreamPosition {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let process = self.process;
        let (ch, _) = inner.channel(channel, now, process);
        ch.offset += 1;
        ch.entries.push_back((ch.offset, payload.clone()));
        while ch.entries.len() as u64 > opts.size() {
            ch.entries.pop_front();
        }
        ch.entries_expire = Some(now + opts.ttl());
        ch.meta_expires = now + opts.meta_ttl();
        let position = StreamPosition::new(ch.offset, ch.epoch.clone());
        if let Some(sink) = &self.sink {
            sink(channel, LivePublication::wrap(&position, &payload));
        }
        position
    }

    fn position_now(&self, channel: &ChannelName, opts: &HistoryOptions) -> StreamPosition {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let (ch, created) = inner.channel(channel, now, self.process);
        ch.touch(now, opts, created);
        StreamPosition::new(ch.offset, ch.epoch.clone())
    }

    fn recover_now(
        &self,
        channel: &ChannelName,
        since: &StreamPosition,
        limit: u64,
        opts: &HistoryOptions,
    ) -> Result<Recovery, HistoryError> {
        check_since(since)?;
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let (ch, created) = inner.channel(channel, now, self.process);
        ch.touch(now, opts, created);
        let position = StreamPosition::new(ch.offset, ch.epoch.clone());
        let unrecoverable = |position| {
            Ok(Recovery {
                publications: Vec::new(),
                position,
                recovered: false,
            })
        };
        if since.epoch != ch.epoch {
            return unrecoverable(position);
        }
        if since.offset > ch.offset {
            return Err(HistoryError::FuturePosition {
                since: since.clone(),
                current: position,
            });
        }
        let missed = ch.offset - since.offset;
        if missed > limit {
            return unrecoverable(position);
        }
        let first = ch.entries.front().map_or(ch.offset + 1, |(o, _)| *o);
        if missed > 0 && first > since.offset + 1 {
            return unrecoverable(position);
        }
        let publications = ch
            .entries
            .iter()
            .filter(|(o, _)| *o > since.offset)
            .map(|(o, p)| Publication {
                offset: *o,
                epoch: ch.epoch.clone(),
                payload: p.clone(),
            })
            .collect();
        Ok(Recovery {
            publications,
            position,
            recovered: true,
        })
    }
}

impl Inner {
    /// The channel, created (with a new epoch at offset 0) if it has none
    /// or its epoch expired; its entries dropped if they expired.
    fn channel(&mut self, name: &ChannelName, now: Instant, process: u64) -> (&mut Channel, bool) {
        if now >= self.next_sweep {
            self.channels.retain(|_, c| now < c.meta_expires);
            for c in self.channels.values_mut() {
                c.expire_entries(now);
            }
            self.next_sweep = now + SWEEP_EVERY;
        }
        if self
            .channels
            .get(name)
            .is_some_and(|c| now >= c.meta_expires)
        {
            self.channels.remove(name);
        }
        let mut created = false;
        if !self.channels.contains_key(name) {
            self.epochs += 1;
            let epoch = format!("{process:012x}-{:x}", self.epochs);
            self.channels.insert(
                name.clone(),
                Channel {
                    epoch,
                    offset: 0,
                    entries: VecDeque::new(),
                    entries_expire: None,
                    // set by the caller (touch or publish)
                    meta_expires: now,
                },
            );
            created = true;
        }
        let ch = self.channels.get_mut(name).expect("just inserted");
        ch.expire_entries(now);
        (ch, created)
    }
}

impl Channel {
    fn expire_entries(&mut self, now: Instant) {
        if self.entries_expire.is_some_and(|t| now >= t) {
            self.entries.clear();
            self.entries_expire = None;
        }
    }

    /// A read keeps the epoch at least `meta_ttl` longer (never shortens it).
    fn touch(&mut self, now: Instant, opts: &HistoryOptions, created: bool) {
        let until = now + opts.meta_ttl();
        if created || until > self.meta_expires {
            self.meta_expires = until;
        }
    }
}

impl History for MemoryHistory {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        payload: Bytes,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move { Ok(self.publish_now(channel, payload, opts)) })
    }

    fn position<'a>(
        &'a self,
        channel: &'a ChannelName,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move { Ok(self.position_now(channel, opts)) })
    }

    fn recover<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: &'a StreamPosition,
        limit: u64,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        Box::pin(async move { self.recover_now(channel, since, limit, opts) })
    }

    fn name(&self) -> &'static str {
        "in-memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_channels_are_swept_out_of_memory() {
        let clock = Clock::manual();
        let h = MemoryHistory::with_clock(clock.clone());
        let o = HistoryOptions::new(10, Duration::from_secs(1))
            .unwrap()
            .with_meta_ttl(Duration::from_secs(2))
            .unwrap();
        for name in ["/a", "/b", "/c"] {
            let c = ChannelName::new(name).unwrap();
            h.publish_now(&c, Bytes::from_static(b"x"), &o);
        }
        assert_eq!(h.channels(), 3);
        clock.advance(Duration::from_secs(2));
        h.position_now(&ChannelName::new("/d").unwrap(), &o);
        assert_eq!(h.channels(), 1, "the three expired ones are gone");
    }
}
