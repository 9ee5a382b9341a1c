//! One test suite, run against both implementations: whatever a test here
//! checks, Redis and the in-memory history answer the same.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_core::ChannelName;
use tidings_history::{
    Clock, History, HistoryError, HistoryOptions, LivePublication, MemoryHistory, RedisHistory,
    StreamPosition,
};
use tokio::sync::mpsc;

use crate::support::{pool, RedisServer};

/// What the suite needs from a backend besides the [`History`] itself.
pub(crate) trait Backend {
    /// The history under test.
    fn history(&self) -> &dyn History;
    /// Receives every live publication on `channel` from now on.
    async fn live(&self, channel: &ChannelName) -> mpsc::UnboundedReceiver<Bytes>;
    /// Returns once `channel`'s entries have expired (published with
    /// [`short`] options).
    async fn expire_entries(&self, channel: &ChannelName);
    /// Returns once `channel`'s epoch and offset have expired too.
    async fn expire_meta(&self, channel: &ChannelName);
}

/// One second of entries, two of epoch.
pub(crate) fn short() -> HistoryOptions {
    HistoryOptions::new(100, Duration::from_secs(1))
        .unwrap()
        .with_meta_ttl(Duration::from_secs(2))
        .unwrap()
}

fn opts(size: u64) -> HistoryOptions {
    HistoryOptions::new(size, Duration::from_secs(600)).unwrap()
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

pub(crate) struct Memory {
    pub(crate) history: MemoryHistory,
    clock: Clock,
    live: Arc<Mutex<HashMap<ChannelName, mpsc::UnboundedSender<Bytes>>>>,
}

impl Memory {
    pub(crate) fn new() -> Self {
        let clock = Clock::manual();
        let live: Arc<Mutex<HashMap<ChannelName, mpsc::UnboundedSender<Bytes>>>> = Arc::default();
        let sink = live.clone();
        let history =
            MemoryHistory::with_clock(clock.clone()).with_live(Arc::new(move |c, payload| {
                if let Some(tx) = sink.lock().get(c) {
                    let _ = tx.send(payload);
                }
            }));
        Self {
            history,
            clock,
            live,
        }
    }
}

impl Backend for Memory {
    fn history(&self) -> &dyn History {
        &self.history
    }
    async fn live(&self, channel: &ChannelName) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.live.lock().insert(channel.clone(), tx);
        rx
    }
    async fn expire_entries(&self, _: &ChannelName) {
        self.clock.advance(short().ttl());
    }
    async fn expire_meta(&self, _: &ChannelName) {
        self.clock.advance(short().meta_ttl());
    }
}

pub(crate) struct Redis {
    pub(crate) server: RedisServer,
    pub(crate) history: RedisHistory,
}

impl Redis {
    pub(crate) async fn new() -> Self {
        let server = RedisServer::start().await;
        let history = RedisHistory::new(pool(&server).await);
        history.install().await.unwrap();
        Self { server, history }
    }

    /// Waits until `key` is gone (Redis expired it).
    async fn gone(&self, key: &str) {
        let mut c = self.server.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.int(&[b"EXISTS", key.as_bytes()]).await == 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never expired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Backend for Redis {
    fn history(&self) -> &dyn History {
        &self.history
    }
    async fn live(&self, channel: &ChannelName) -> mpsc::UnboundedReceiver<Bytes> {
        self.server.client().await.subscribe(channel.as_str()).await
    }
    async fn expire_entries(&self, channel: &ChannelName) {
        self.gone(&self.history.stream_key(channel)).await;
    }
    async fn expire_meta(&self, channel: &ChannelName) {
        self.gone(&self.history.meta_key(channel)).await;
    }
}

async fn live_next(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> (StreamPosition, Bytes) {
    let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a live publication within 10 s")
        .expect("live channel open");
    let (pos, data) = LivePublication::open(&payload).expect("a live envelope");
    (pos, Bytes::copy_from_slice(data))
}

/// Publications come back in order, live and replayed, byte for byte;
/// recovery from any position covers exactly what came after it; a limit
/// below what was missed answers `recovered: false`.
pub(crate) async fn publish_and_recover_in_order(b: &impl Backend) {
    let h = b.history();
    let c = ch("/app/user/42/notifications");
    let o = opts(100);
    let start = h.position(&c, &o).await.unwrap();
    assert_eq!(start.offset, 0);
    // a read does not move the epoch
    assert_eq!(h.position(&c, &o).await.unwrap(), start);
    let mut live = b.live(&c).await;
    let payloads: Vec<Bytes> = vec![
        Bytes::from_static(br#"{"text":"hi"}"#),
        Bytes::from_static(b"plain text"),
        Bytes::from_static(b""),
        Bytes::from_static(b"\0th1 9 fake\nnested envelope"),
        Bytes::from_static(&[0xff, 0x00, b'\n', 0x80]),
    ];
    for (i, p) in payloads.iter().enumerate() {
        let pos = h.publish(&c, p.clone(), &o).await.unwrap();
        assert_eq!(pos, StreamPosition::new(i as u64 + 1, start.epoch.clone()));
    }
    for (i, p) in payloads.iter().enumerate() {
        let (pos, data) = live_next(&mut live).await;
        assert_eq!(pos, StreamPosition::new(i as u64 + 1, start.epoch.clone()));
        assert_eq!(&data, p);
    }
    let end = StreamPosition::new(5, start.epoch.clone());
    assert_eq!(h.position(&c, &o).await.unwrap(), end);
    for since in 0..=5u64 {
        let r = h
            .recover(
                &c,
                &StreamPosition::new(since, start.epoch.clone()),
                100,
                &o,
            )
            .await
            .unwrap();
        assert!(r.recovered, "from {since}");
        assert_eq!(r.position, end);
        let got: Vec<(u64, Bytes)> = r
            .publications
            .iter()
            .map(|p| (p.offset, p.payload.clone()))
            .collect();
        let want: Vec<(u64, Bytes)> = (since + 1..=5)
            .map(|o| (o, payloads[o as usize - 1].clone()))
            .collect();
        assert_eq!(got, want, "from {since}");
        assert!(r.publications.iter().all(|p| p.epoch == start.epoch));
    }
    // the limit: 5 missed, 4 allowed -> not recovered; 5 allowed -> recovered
    let zero = StreamPosition::new(0, start.epoch.clone());
    let r = h.recover(&c, &zero, 4, &o).await.unwrap();
    assert!(!r.recovered);
    assert!(r.publications.is_empty());
    assert_eq!(r.position, end);
    assert!(h.recover(&c, &zero, 5, &o).await.unwrap().recovered);
    // channels are independent
    let other = ch("/app/user/43/notifications");
    let p = h
        .publish(&other, Bytes::from_static(b"x"), &o)
        .await
        .unwrap();
    assert_eq!(p.offset, 1);
    assert_eq!(h.position(&c, &o).await.unwrap(), end);
}

/// Trimmed publications cannot be recovered: `recovered: false`, never a
/// replay with a hole.
pub(crate) async fn trimming_makes_old_positions_unrecoverable(b: &impl Backend) {
    let h = b.history();
    let c = ch("/trim");
    let o = opts(3);
    for i in 1..=5u64 {
        h.publish(&c, Bytes::from(i.to_string()), &o).await.unwrap();
    }
    let epoch = h.position(&c, &o).await.unwrap().epoch;
    for since in 0..=1 {
        let r = h
            .recover(&c, &StreamPosition::new(since, epoch.clone()), 100, &o)
            .await
            .unwrap();
        assert!(!r.recovered, "from {since}: 2 was trimmed");
        assert!(r.publications.is_empty());
        assert_eq!(r.position, StreamPosition::new(5, epoch.clone()));
    }
    let r = h
        .recover(&c, &StreamPosition::new(2, epoch.clone()), 100, &o)
        .await
        .unwrap();
    assert!(r.recovered);
    let offsets: Vec<u64> = r.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
}

/// Malformed positions and positions from the future get clear errors;
/// positions from another epoch get `recovered: false`.
pub(crate) async fn bad_positions(b: &impl Backend) {
    let h = b.history();
    let c = ch("/bad");
    let o = opts(10);
    let p = h.publish(&c, Bytes::from_static(b"x"), &o).await.unwrap();
    let future = StreamPosition::new(2, p.epoch.clone());
    assert_eq!(
        h.recover(&c, &future, 10, &o).await.unwrap_err(),
        HistoryError::FuturePosition {
            since: future.clone(),
            current: p.clone()
        }
    );
    for epoch in ["", "has space", "a\nb", &"e".repeat(65)] {
        let err = h
            .recover(&c, &StreamPosition::new(0, epoch), 10, &o)
            .await
            .unwrap_err();
        assert!(matches!(err, HistoryError::InvalidPosition(_)), "{epoch:?}");
    }
    let err = h
        .recover(&c, &StreamPosition::new(1 << 53, p.epoch.clone()), 10, &o)
        .await
        .unwrap_err();
    assert!(matches!(err, HistoryError::InvalidPosition(_)));
    // another epoch, even with an offset "from the future", is simply not
    // recoverable
    for offset in [0, 1, 99] {
        let r = h
            .recover(&c, &StreamPosition::new(offset, "someotherepoch"), 10, &o)
            .await
            .unwrap();
        assert!(!r.recovered);
        assert!(r.publications.is_empty());
        assert_eq!(r.position, p);
    }
}

/// Entries expire with the TTL (a position behind them is unrecoverable,
/// one that missed nothing still recovers); once the epoch expires too, the
/// channel starts a new epoch and every old position is unrecoverable.
pub(crate) async fn ttl_expiry(b: &impl Backend) {
    let h = b.history();
    let c = ch("/ttl");
    let o = short();
    h.publish(&c, Bytes::from_static(b"1"), &o).await.unwrap();
    let p = h.publish(&c, Bytes::from_static(b"2"), &o).await.unwrap();
    b.expire_entries(&c).await;
    let zero = StreamPosition::new(0, p.epoch.clone());
    let r = h.recover(&c, &zero, 10, &o).await.unwrap();
    assert!(!r.recovered, "the entries expired");
    assert_eq!(r.position, p);
    let r = h.recover(&c, &p, 10, &o).await.unwrap();
    assert!(r.recovered, "nothing was missed");
    assert!(r.publications.is_empty());
    // the epoch lives on: offsets continue
    let p3 = h.publish(&c, Bytes::from_static(b"3"), &o).await.unwrap();
    assert_eq!(p3, StreamPosition::new(3, p.epoch.clone()));
    b.expire_entries(&c).await;
    b.expire_meta(&c).await;
    let r = h.recover(&c, &p3, 10, &o).await.unwrap();
    assert!(!r.recovered, "the epoch expired");
    assert_eq!(r.position.offset, 0);
    assert_ne!(r.position.epoch, p.epoch);
    let p1 = h.publish(&c, Bytes::from_static(b"new"), &o).await.unwrap();
    assert_eq!(p1, StreamPosition::new(1, r.position.epoch.clone()));
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Memory::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Redis::new().await).await;
                }
            )*
        }
    };
}

both!(
    publish_and_recover_in_order,
    trimming_makes_old_positions_unrecoverable,
    bad_positions,
    ttl_expiry,
);
