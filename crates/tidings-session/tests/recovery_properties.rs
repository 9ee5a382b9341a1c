//! Property: for any interleaving of publishes, reads, disconnects and
//! reconnects (with the client's last position, on connect for a joined
//! channel or on subscribe), what a client receives on a channel with
//! history is a gapless, duplicate-free run of offsets, broken only where
//! the session said `recovered: false` (or a `gap` with `not_recovered`);
//! and once connected and drained it has everything published.
//!
//! The session is driven directly (no sockets), on the in-process bridge
//! with the in-memory history: the same code every wire adapter drives.

use std::{sync::Arc, time::Duration};

use proptest::prelude::*;
use serde_json::{json, Value};
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Identity, Message};
use tidings_history::{HistoryOptions, StreamPosition};
use tidings_routing::{Router, Rule, RuleHistory};
use tidings_session::{Batch, Context, Output, Positions, Session, SessionConfig};

#[derive(Debug, Clone)]
enum Op {
    /// Publish this many messages on the channel.
    Publish(u8),
    /// Read what is queued.
    Read,
    /// Drop the connection (whatever was queued and not read is lost).
    Disconnect,
    /// Connect again with the last position.
    Reconnect,
    /// Subscribe again with the last position while connected (messages
    /// may be queued behind it: the seam between replay and live).
    Resubscribe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..4).prop_map(Op::Publish),
        3 => Just(Op::Read),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Reconnect),
        2 => Just(Op::Resubscribe),
    ]
}

const SIZE: u64 = 6;

fn rules() -> Vec<Rule> {
    let rule = |channel: &str, join: bool| Rule {
        channel: channel.into(),
        join,
        subscribe: true,
        publish: false,
        anonymous: true,
        sharded: false,
        history: Some(RuleHistory {
            size: SIZE,
            ttl_secs: 600,
        }),
        presence: None,
    };
    vec![rule("/joined", true), rule("/subscribed", false)]
}

fn context() -> Arc<Context> {
    let router = Arc::new(Router::new(rules()).unwrap());
    let lookup = {
        let router = router.clone();
        move |c: &ChannelName| {
            let h = router.history_for(c)?;
            HistoryOptions::new(h.size, Duration::from_secs(h.ttl_secs)).ok()
        }
    };
    let bridge = Bridge::in_process().with_memory_history(lookup);
    let config = SessionConfig {
        client_messages_per_sec: 1e6,
        client_message_burst: 1_000_000,
        outbound_queue: 10_000,
        ..SessionConfig::default()
    };
    Arc::new(Context::new(config, router, bridge))
}

/// What the client knows about one channel.
#[derive(Debug, Default)]
struct Client {
    /// The last position it has.
    at: Option<StreamPosition>,
    /// Offsets received in the current run (since the last
    /// `recovered: false`).
    run: Vec<u64>,
}

impl Client {
    fn take_report(&mut self, report: &Value) {
        let position = StreamPosition::new(
            report["offset"].as_u64().unwrap(),
            report["epoch"].as_str().unwrap(),
        );
        match report.get("recovered") {
            Some(Value::Bool(false)) => {
                // Told plainly: the client reloads and continues from here.
                self.run.clear();
                self.at = Some(position);
            }
            Some(Value::Bool(true)) => {
                // Everything after its position follows: its position stays.
                assert!(self.at.is_some());
            }
            _ => {
                assert!(self.at.is_none() || self.at.as_ref().unwrap().offset <= position.offset);
                if self.at.is_none() {
                    self.at = Some(position);
                }
            }
        }
    }

    fn take_message(&mut self, f: &Value) {
        let offset = f["offset"].as_u64().expect("offset");
        let epoch = f["epoch"].as_str().expect("epoch");
        let at = self.at.as_ref().expect("a position before any message");
        assert_eq!(at.epoch, epoch, "one epoch: {f}");
        assert_eq!(
            offset,
            at.offset + 1,
            "no hole, no duplicate: {f}, run {:?}",
            self.run
        );
        self.at = Some(StreamPosition::new(offset, epoch));
        self.run.push(offset);
    }
}

struct Harness {
    ctx: Arc<Context>,
    session: Option<Session>,
    joined: Client,
    subscribed: Client,
    published: u64,
}

impl Harness {
    fn take(&mut self, frames: Vec<Output>) {
        for o in frames {
            let f: Value = serde_json::from_slice(o.frame()).unwrap();
            match f["type"].as_str().unwrap() {
                "welcome" => {
                    if let Some(r) = f["positions"].get("/joined") {
                        self.joined.take_report(r);
                    }
                }
                "subscribed" => self.subscribed.take_report(&f),
                "message" => match f["channel"].as_str().unwrap() {
                    "/joined" => self.joined.take_message(&f),
                    "/subscribed" => self.subscribed.take_message(&f),
                    other => panic!("message on {other}"),
                },
                "gap" => {
                    assert_eq!(f["reason"], "not_recovered", "{f}");
                    panic!("no hole can open in process: {f}");
                }
                other => panic!("unexpected {other}: {f}"),
            }
        }
    }

    async fn connect(&mut self) {
        let mut since = Positions::new();
        if let Some(p) = &self.joined.at {
            since.insert(ChannelName::new("/joined").unwrap(), p.clone());
        }
        let mut out = Vec::new();
        let mut s = Session::open(
            self.ctx.clone(),
            Arc::new(Identity::anonymous()),
            Arc::default(),
            "127.0.0.1:1".parse().unwrap(),
            &since,
            &mut out,
        )
        .await;
        let sub = match &self.subscribed.at {
            Some(p) => {
                json!({"type":"subscribe","channel":"/subscribed","offset":p.offset,"epoch":p.epoch})
            }
            None => json!({"type":"subscribe","channel":"/subscribed"}),
        };
        s.on_message(sub.to_string().as_bytes(), false, &mut out)
            .await
            .unwrap();
        self.session = Some(s);
        self.take(out);
    }

    async fn resubscribe(&mut self) {
        let (Some(s), Some(p)) = (self.session.as_mut(), &self.subscribed.at) else {
            return;
        };
        let sub =
            json!({"type":"subscribe","channel":"/subscribed","offset":p.offset,"epoch":p.epoch});
        let mut out = Vec::new();
        s.on_message(sub.to_string().as_bytes(), false, &mut out)
            .await
            .unwrap();
        self.take(out);
    }

    async fn read(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Ok(ev) = tokio::time::timeout(Duration::from_millis(1), s.next_event()).await {
            s.on_event(ev, &mut out, Batch::default()).await.unwrap();
        }
        self.take(out);
    }

    async fn publish(&mut self, n: u8) {
        for _ in 0..n {
            self.published += 1;
            for ch in ["/joined", "/subscribed"] {
                let m = Message::new(ChannelName::new(ch).unwrap(), self.published.to_string());
                let at = self.ctx.bridge.publish_with_position(m).await.unwrap();
                assert_eq!(at.unwrap().offset, self.published);
            }
        }
    }
}

fn check(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness {
            ctx: context(),
            session: None,
            joined: Client::default(),
            subscribed: Client::default(),
            published: 0,
        };
        h.connect().await;
        for op in ops {
            match op {
                Op::Publish(n) => h.publish(n).await,
                Op::Read => h.read().await,
                Op::Disconnect => h.session = None,
                Op::Reconnect => {
                    h.session = None;
                    h.connect().await;
                }
                Op::Resubscribe => h.resubscribe().await,
            }
        }
        // Connected and drained, the client has everything, and the runs
        // since its last reload are gapless.
        if h.session.is_none() {
            h.connect().await;
        }
        h.read().await;
        for c in [&h.joined, &h.subscribed] {
            assert_eq!(c.at.as_ref().unwrap().offset, h.published, "{c:?}");
            let w = c.run.windows(2).all(|w| w[1] == w[0] + 1);
            assert!(w, "{c:?}");
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn what_a_client_receives_is_gapless_and_duplicate_free_or_it_is_told(ops in proptest::collection::vec(op(), 1..40)) {
        check(ops);
    }
}

/// A reconnect that missed more than the history keeps is told, and
/// continues from the channel's current position.
#[test]
fn missing_more_than_is_kept_says_not_recovered() {
    check(vec![
        Op::Publish(1),
        Op::Read,
        Op::Disconnect,
        Op::Publish(3),
        Op::Publish(3),
        Op::Publish(3),
        Op::Reconnect,
        Op::Publish(1),
        Op::Read,
    ]);
}
