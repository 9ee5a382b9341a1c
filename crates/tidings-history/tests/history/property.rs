//! Property: for any interleaving of publishes, disconnects, reconnects,
//! recoveries, live deliveries and time passing, a client that follows the
//! seam (subscribe live, recover, then pass live messages through a
//! [`Follower`]) receives, per epoch, a prefix-closed, duplicate-free run of
//! offsets with the published bytes, or is told `recovered: false`; and once
//! it is connected and has caught up, it is at the channel's position.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use tidings_core::ChannelName;
use tidings_history::{
    Clock, Follower, History, HistoryOptions, LivePublication, MemoryHistory, Step, StreamPosition,
};

#[derive(Debug, Clone)]
enum Op {
    Publish,
    /// Handle up to n live messages the client's connection received.
    Process(usize),
    Disconnect,
    /// Subscribe live again (messages are kept aside until `Recover`).
    Connect,
    Recover,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Publish),
        4 => (1usize..4).prop_map(Op::Process),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        2 => Just(Op::Recover),
        1 => (1u64..15).prop_map(Op::Wait),
    ]
}

struct Client {
    connected: bool,
    /// Connected, but not recovered yet: live messages wait.
    pending: bool,
    follower: Option<Follower>,
    /// Where the client is according to the checker (independent of the
    /// follower): what it delivered last, or where a reset put it.
    at: Option<StreamPosition>,
    seen: HashSet<(String, u64)>,
    resets: usize,
    /// The offset the first subscription started from.
    first: u64,
}

impl Client {
    fn deliver(
        &mut self,
        pos: &StreamPosition,
        payload: &[u8],
        published: &HashMap<(String, u64), Bytes>,
    ) {
        let at = self
            .at
            .as_ref()
            .expect("delivers only after a first position");
        assert_eq!(
            pos.epoch, at.epoch,
            "delivery from another epoch without a reset"
        );
        assert_eq!(
            pos.offset,
            at.offset + 1,
            "not the next offset: a hole or a duplicate"
        );
        assert!(
            self.seen.insert((pos.epoch.clone(), pos.offset)),
            "duplicate {pos}"
        );
        assert_eq!(
            published
                .get(&(pos.epoch.clone(), pos.offset))
                .map(|b| &b[..]),
            Some(payload),
            "wrong bytes at {pos}"
        );
        self.at = Some(pos.clone());
    }
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let clock = Clock::manual();
        let wire: Arc<Mutex<Option<VecDeque<Bytes>>>> = Arc::new(Mutex::new(None));
        let sink = wire.clone();
        let h = MemoryHistory::with_clock(clock.clone()).with_live(Arc::new(move |_, payload| {
            if let Some(q) = sink.lock().as_mut() {
                q.push_back(payload);
            }
        }));
        let c = ChannelName::new("/p").unwrap();
        let o = HistoryOptions::new(4, Duration::from_secs(10))
            .unwrap()
            .with_meta_ttl(Duration::from_secs(20))
            .unwrap();
        let limit = 3;
        let mut published: HashMap<(String, u64), Bytes> = HashMap::new();
        let mut n = 0u64;
        let mut client = Client {
            connected: false,
            pending: false,
            follower: None,
            at: None,
            seen: HashSet::new(),
            resets: 0,
            first: 0,
        };
        // every run ends connected, recovered, with one more publication
        // (an epoch that expired under an idle client shows only with the
        // next publication: a gap, then `recovered: false`) and drained
        let tail = [
            Op::Connect,
            Op::Recover,
            Op::Publish,
            Op::Process(usize::MAX),
        ];
        for op in ops.into_iter().chain(tail) {
            match op {
                Op::Publish => {
                    n += 1;
                    let payload = Bytes::from(format!("m{n}"));
                    let p = h.publish(&c, payload.clone(), &o).await.unwrap();
                    assert!(published.insert((p.epoch, p.offset), payload).is_none());
                }
                Op::Disconnect => {
                    client.connected = false;
                    client.pending = false;
                    *wire.lock() = None;
                }
                Op::Connect => {
                    if !client.connected {
                        client.connected = true;
                        client.pending = true;
                        *wire.lock() = Some(VecDeque::new());
                    }
                }
                Op::Recover => {
                    if client.pending {
                        recover(&h, &c, &o, limit, &mut client, &published).await;
                    }
                }
                Op::Process(k) => {
                    if !client.connected || client.pending {
                        continue;
                    }
                    for _ in 0..k {
                        let Some(payload) = wire.lock().as_mut().and_then(VecDeque::pop_front)
                        else {
                            break;
                        };
                        let (pos, data) = LivePublication::open(&payload).expect("envelope");
                        match client.follower.as_mut().expect("recovered").accept(&pos) {
                            Step::Deliver => client.deliver(&pos, data, &published),
                            Step::Duplicate => {
                                let at = client.at.as_ref().unwrap();
                                assert!(pos.epoch == at.epoch && pos.offset <= at.offset);
                            }
                            Step::Gap => {
                                // what a gateway does: recover from where it is
                                recover(&h, &c, &o, limit, &mut client, &published).await;
                                // the message that showed the gap is covered
                                // by that recovery (or the reset)
                            }
                        }
                    }
                }
                Op::Wait(secs) => clock.advance(Duration::from_secs(secs)),
            }
        }
        // caught up: at the channel's position, nothing left on the wire
        let now = h.position(&c, &o).await.unwrap();
        assert_eq!(client.at.as_ref(), Some(&now));
        assert_eq!(client.follower.as_ref().map(Follower::position), Some(&now));
        assert!(wire.lock().as_ref().is_some_and(VecDeque::is_empty));
        // with no reset at all (so one epoch), every publication after the
        // first subscription was delivered exactly once
        if client.resets == 0 {
            assert_eq!(client.seen.len() as u64, now.offset - client.first);
        }
    });
}

async fn recover(
    h: &MemoryHistory,
    c: &ChannelName,
    o: &HistoryOptions,
    limit: u64,
    client: &mut Client,
    published: &HashMap<(String, u64), Bytes>,
) {
    client.pending = false;
    let Some(since) = client.follower.as_ref().map(|f| f.position().clone()) else {
        // a first subscription: start from the current position
        let p = h.position(c, o).await.unwrap();
        client.first = p.offset;
        client.at = Some(p.clone());
        client.follower = Some(Follower::new(p));
        return;
    };
    let r = h.recover(c, &since, limit, o).await.unwrap();
    if r.recovered {
        for p in &r.publications {
            client.deliver(&p.position(), &p.payload, published);
        }
        assert_eq!(client.at.as_ref(), Some(&r.position));
    } else {
        // told plainly: the client reloads and continues from here
        assert!(r.publications.is_empty());
        client.resets += 1;
        client.at = Some(r.position.clone());
    }
    client.follower.as_mut().unwrap().recovered(&r);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    #[test]
    fn a_following_client_gets_a_prefix_closed_duplicate_free_stream(
        ops in proptest::collection::vec(op(), 0..80)
    ) {
        run(ops);
    }
}
