//! Sockets subscribing to the same channel with history while it is being
//! published on share the reads of its current position (one read for a
//! burst, see the bridge's `positions` module), and each still gets exactly
//! what comes after the position its welcome reports: nothing missed,
//! nothing twice.
//!
//! The history is the in-memory one behind a store that answers position
//! reads slowly (as a remote store does), so publications land while reads
//! are on their way; sessions open on every worker thread at once.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Identity, Message};
use tidings_history::{BoxFuture, History, HistoryError, HistoryOptions, Recovery, StreamPosition};
use tidings_routing::{Router, Rule, RuleHistory};
use tidings_session::{Batch, Context, Output, Positions, Session, SessionConfig};

/// A history whose position reads take a while, counted.
struct SlowReads {
    inner: Arc<dyn History>,
    reads: Arc<AtomicUsize>,
}

impl History for SlowReads {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        payload: Bytes,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        self.inner.publish(channel, payload, opts)
    }

    fn position<'a>(
        &'a self,
        channel: &'a ChannelName,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            // Answer as of now, arrive later: publications land meanwhile.
            let answer = self.inner.position(channel, opts).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
            answer
        })
    }

    fn recover<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: &'a StreamPosition,
        limit: u64,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        self.inner.recover(channel, since, limit, opts)
    }

    fn name(&self) -> &'static str {
        "slow-reads"
    }
}

const PUBLISHED: u64 = 400;

/// How far the publisher is: publications started, and done.
#[derive(Default)]
struct Published {
    started: AtomicU64,
    done: AtomicU64,
}
const SOCKETS: usize = 200;

fn context(reads: Arc<AtomicUsize>) -> Arc<Context> {
    let rules = vec![Rule {
        channel: "/feed".into(),
        join: true,
        subscribe: true,
        publish: false,
        anonymous: true,
        sharded: false,
        history: Some(RuleHistory {
            size: PUBLISHED,
            ttl_secs: 600,
        }),
        presence: None,
    }];
    let router = Arc::new(Router::new(rules).unwrap());
    let lookup = {
        let router = router.clone();
        move |c: &ChannelName| {
            let h = router.history_for(c)?;
            HistoryOptions::new(h.size, Duration::from_secs(h.ttl_secs)).ok()
        }
    };
    let bridge = Bridge::in_process().with_memory_history(lookup.clone());
    let inner = bridge.history().unwrap();
    let bridge = bridge.with_history(Arc::new(SlowReads { inner, reads }), lookup);
    let config = SessionConfig {
        outbound_queue: 10_000,
        ..SessionConfig::default()
    };
    Arc::new(Context::new(config, router, bridge))
}

/// Opens a session (and says so on `opened`), then reads until the last
/// publication: the welcome's position and the offsets received after it.
/// Checks that the position is
/// neither behind what was published before the session opened (the
/// socket would be sent what came before it) nor ahead of what was
/// published when it had opened.
async fn follow(
    ctx: Arc<Context>,
    published: Arc<Published>,
    opened: Option<tokio::sync::oneshot::Sender<()>>,
) -> (u64, Vec<u64>) {
    let before = published.done.load(Ordering::SeqCst);
    let mut out = Vec::new();
    let mut session = Session::open(
        ctx,
        Arc::new(Identity::anonymous()),
        Arc::default(),
        "127.0.0.1:1".parse().unwrap(),
        &Positions::new(),
        &mut out,
    )
    .await;
    let after = published.started.load(Ordering::SeqCst);
    if let Some(opened) = opened {
        let _ = opened.send(());
    }
    let mut at = None;
    let mut got = Vec::new();
    loop {
        for o in out.drain(..) {
            let f: Value = serde_json::from_slice(o.frame()).unwrap();
            match f["type"].as_str().unwrap() {
                "welcome" => {
                    let p = f["positions"]["/feed"]["offset"].as_u64().unwrap();
                    assert!(
                        (before..=after).contains(&p),
                        "position {p} within what was published around the opening, {before}..={after}"
                    );
                    at = Some(p);
                }
                "message" => got.push(f["offset"].as_u64().unwrap()),
                other => panic!("unexpected {other}: {f}"),
            }
        }
        if at == Some(PUBLISHED) || got.last() == Some(&PUBLISHED) {
            return (at.unwrap(), got);
        }
        let event = tokio::time::timeout(Duration::from_secs(10), session.next_event())
            .await
            .expect("the last publication reaches every socket");
        session
            .on_event(event, &mut out, Batch::default())
            .await
            .unwrap();
        out.retain(|o: &Output| !o.frame().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_share_position_reads_and_miss_nothing_after_theirs() {
    let reads = Arc::new(AtomicUsize::new(0));
    let ctx = context(reads.clone());
    let published = Arc::new(Published::default());
    // A first subscriber, open before anything is published (position 0).
    let (opened, first_open) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(follow(ctx.clone(), published.clone(), Some(opened)));
    first_open.await.unwrap();
    let publisher = {
        let ctx = ctx.clone();
        let published = published.clone();
        tokio::spawn(async move {
            for i in 1..=PUBLISHED {
                let m = Message::new(ChannelName::new("/feed").unwrap(), i.to_string());
                published.started.store(i, Ordering::SeqCst);
                let at = ctx.bridge.publish_with_position(m).await.unwrap();
                assert_eq!(at.unwrap().offset, i);
                published.done.store(i, Ordering::SeqCst);
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
            }
        })
    };
    let mut sockets = Vec::new();
    for i in 0..SOCKETS {
        sockets.push(tokio::spawn(follow(ctx.clone(), published.clone(), None)));
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    publisher.await.unwrap();
    // And one after everything was published.
    sockets.push(tokio::spawn(follow(ctx.clone(), published.clone(), None)));
    let mut positions = Vec::new();
    for s in std::iter::once(first).chain(sockets) {
        let (at, got) = s.await.unwrap();
        let want: Vec<u64> = (at + 1..=PUBLISHED).collect();
        assert_eq!(got, want, "from position {at}: everything after it, once");
        positions.push(at);
    }
    positions.sort_unstable();
    positions.dedup();
    let reads = reads.load(Ordering::Relaxed);
    // The first socket's position, read before anything was published,
    // moved forward by every publication for those that came later.
    assert_eq!(positions.first(), Some(&0), "{positions:?}");
    assert_eq!(positions.last(), Some(&PUBLISHED), "{positions:?}");
    assert!(
        reads < SOCKETS / 4,
        "{reads} position reads for {} sockets",
        SOCKETS + 2
    );
}
