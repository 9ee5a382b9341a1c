//! The bridge holds exactly one broker subscription per topic with local
//! interest, whatever the interleaving of joins and leaves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tidings_bridge::{
    mailbox, BoxFuture, Bridge, Broker, BrokerError, Inbound, Outbound, SlowConsumerPolicy, Topic,
};
use tidings_core::{ChannelName, ChannelPattern, Message};

/// A broker that records what the bridge asks of it and publishes locally.
#[derive(Clone)]
struct Recording {
    inbound: Inbound,
    log: Arc<Mutex<Vec<(String, Topic)>>>,
}

impl Broker for Recording {
    fn publish(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inbound
            .message_everywhere(&Message::new(channel.clone(), payload));
        Box::pin(async { Ok(()) })
    }
    fn subscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut log = self.log.lock().unwrap();
        log.extend(topics.iter().map(|t| ("sub".to_string(), t.clone())));
        drop(log);
        Box::pin(async {
            tokio::task::yield_now().await;
            Ok(())
        })
    }
    fn unsubscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut log = self.log.lock().unwrap();
        log.extend(topics.iter().map(|t| ("unsub".to_string(), t.clone())));
        drop(log);
        Box::pin(async { Ok(()) })
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "recording"
    }
}

type Calls = Arc<Mutex<Vec<(String, Topic)>>>;

fn recording_bridge() -> (Bridge, Calls) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (
        Bridge::new(move |inbound| Recording { inbound, log: l }),
        log,
    )
}

fn chan(s: &str) -> Topic {
    Topic::Channel(ChannelName::new(s).unwrap())
}

/// Replays the log into the broker's final subscription state.
fn net_state(log: &[(String, Topic)]) -> HashMap<Topic, i32> {
    let mut m = HashMap::new();
    for (op, t) in log {
        let e = m.entry(t.clone()).or_insert(0);
        *e += if op == "sub" { 1 } else { -1 };
        assert!(
            (0..=1).contains(e),
            "broker state for {t} went to {e}: {log:?}"
        );
    }
    m
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

#[tokio::test]
async fn hundred_sockets_one_subscription() {
    let (bridge, log) = recording_bridge();
    let mut subs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..100 {
        let (mb, rx) = mailbox(8, SlowConsumerPolicy::Close);
        let mut s = bridge.subscriber(mb);
        s.subscribe(chan("/news")).await.unwrap();
        subs.push(s);
        rxs.push(rx);
    }
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "one SUBSCRIBE for 100 sockets"
    );
    bridge
        .publish(Message::new(ChannelName::new("/news").unwrap(), "x"))
        .await
        .unwrap();
    let mut frames = Vec::new();
    for rx in &mut rxs {
        match rx.try_next() {
            Some(Outbound::Deliver(d)) => frames.push(d),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // Every recipient shares the very same encoded frame.
    assert!(frames.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    subs.truncate(1);
    settle().await;
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "still one socket: no UNSUBSCRIBE yet"
    );
    subs.clear();
    settle().await;
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1], ("unsub".to_string(), chan("/news")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_leaves_end_consistent() {
    let (bridge, log) = recording_bridge();
    let topics: Vec<Topic> = (0..5).map(|i| chan(&format!("/t/{i}"))).collect();
    let mut tasks = Vec::new();
    for n in 0..64u64 {
        let bridge = bridge.clone();
        let topics = topics.clone();
        tasks.push(tokio::spawn(async move {
            let (mb, _rx) = mailbox(8, SlowConsumerPolicy::Close);
            let mut s = bridge.subscriber(mb);
            for round in 0..20u64 {
                let t = &topics[((n + round) % 5) as usize];
                s.subscribe(t.clone()).await.unwrap();
                if (n + round) % 3 == 0 {
                    s.unsubscribe(t);
                }
                tokio::task::yield_now().await;
            }
            // Keep topic 0 held by the even tasks only.
            for t in &topics {
                s.unsubscribe(t);
            }
            if n % 2 == 0 {
                s.subscribe(topics[0].clone()).await.unwrap();
                Some(s)
            } else {
                None
            }
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    settle().await;
    let state = net_state(&log.lock().unwrap());
    assert_eq!(
        state.get(&topics[0]),
        Some(&1),
        "held topic stays subscribed"
    );
    for t in &topics[1..] {
        assert_eq!(
            state.get(t).copied().unwrap_or(0),
            0,
            "{t} has no sockets and must be unsubscribed"
        );
    }
    assert_eq!(bridge.hub().subscriber_count(&topics[0]), 32);
    drop(held);
    settle().await;
    let state = net_state(&log.lock().unwrap());
    assert!(state.values().all(|v| *v == 0), "{state:?}");
}

#[tokio::test]
async fn patterns_match_locally() {
    let bridge = Bridge::in_process();
    let (mb, mut rx) = mailbox(8, SlowConsumerPolicy::Close);
    let mut s = bridge.subscriber(mb);
    s.subscribe(Topic::Pattern(ChannelPattern::new("socketio_*").unwrap()))
        .await
        .unwrap();
    bridge
        .publish(Message::new(
            ChannelName::new("socketio_news").unwrap(),
            "{\"a\":1}",
        ))
        .await
        .unwrap();
    bridge
        .publish(Message::new(ChannelName::new("other").unwrap(), "no"))
        .await
        .unwrap();
    match rx.try_next() {
        Some(Outbound::Deliver(d)) => assert_eq!(
            &d.frame()[..],
            br#"{"type":"message","channel":"socketio_news","pattern":"socketio_*","data":{"a":1}}"#
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        rx.try_next().is_none(),
        "non-matching channel must not be delivered"
    );
}
