//! Every accepted subscription ends subscribed or answered with an error,
//! whatever the order of the broker's connection events; a refusal hits
//! only the topic refused; the self-check repairs what the broker lost.
//! (Against real Redis: tests/tests/redis_bridge.rs.)

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use tidings_bridge::{
    mailbox, mailbox::Next, BoxFuture, Bridge, Broker, BrokerError, Inbound, MailboxReceiver,
    Outbound, SlowConsumerPolicy, Topic,
};
use tidings_core::ChannelName;

/// A broker whose subscription side can be switched off, which refuses any
/// batch containing a topic named in `refuse` (as Redis refuses a whole
/// `SUBSCRIBE`), and which can lose a subscription behind the bridge's back.
#[derive(Clone, Default)]
struct Fake {
    up: Arc<AtomicBool>,
    refuse: Arc<Mutex<HashSet<String>>>,
    held: Arc<Mutex<HashSet<String>>>,
    calls: Arc<Mutex<Vec<Vec<String>>>>,
}

fn name(t: &Topic) -> String {
    match t {
        Topic::Channel(c) => c.as_str().to_owned(),
        Topic::Pattern(p) => p.as_str().to_owned(),
    }
}

impl Broker for Fake {
    fn publish(&self, _: &ChannelName, _: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
    fn subscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        let names: Vec<String> = topics.iter().map(name).collect();
        self.calls.lock().unwrap().push(names.clone());
        let result = if !self.up.load(Ordering::SeqCst) {
            Err(BrokerError::Unavailable("down".into()))
        } else if names
            .iter()
            .any(|n| self.refuse.lock().unwrap().contains(n))
        {
            Err(BrokerError::Refused("NOPERM".into()))
        } else {
            self.held.lock().unwrap().extend(names);
            Ok(())
        };
        Box::pin(async move { result })
    }
    fn unsubscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut held = self.held.lock().unwrap();
        for t in topics {
            held.remove(&name(t));
        }
        Box::pin(async { Ok(()) })
    }
    fn is_ready(&self) -> bool {
        // Publishing is never possible here: subscribing must not need it.
        false
    }
    fn can_subscribe(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
    fn missing<'a>(&'a self, held: &'a [Topic]) -> BoxFuture<'a, Result<Vec<Topic>, BrokerError>> {
        let has = self.held.lock().unwrap().clone();
        let missing = held
            .iter()
            .filter(|t| !has.contains(&name(t)))
            .cloned()
            .collect();
        Box::pin(async move { Ok(missing) })
    }
    fn name(&self) -> &'static str {
        "fake"
    }
}

fn bridge(fake: &Fake, self_check: Option<Duration>) -> Bridge {
    let f = fake.clone();
    Bridge::try_with_self_check(self_check, move |_: Inbound| Ok::<_, ()>(f)).unwrap()
}

fn channel(n: &str) -> Topic {
    Topic::Channel(ChannelName::new(n).unwrap())
}

async fn next_notice(rx: &mut MailboxReceiver) -> String {
    match tokio::time::timeout(Duration::from_secs(60), rx.next()).await {
        Ok(Next::Item(Outbound::Gap(g))) => String::from_utf8(
            tidings_core::protocol::encode_gap(&g.channels, &g.patterns, &g.reason).to_vec(),
        )
        .unwrap(),
        other => panic!("expected a notice, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_join_made_while_the_broker_cannot_subscribe_is_retried_without_a_reconnect() {
    let fake = Fake::default();
    let bridge = bridge(&fake, None);
    let (mb, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    let news = channel("/news");
    assert!(matches!(
        sub.join(news.clone()).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(!bridge.is_ready());
    // The subscription side comes up; no `connection_restored` is sent.
    fake.up.store(true, Ordering::SeqCst);
    let gap = next_notice(&mut rx).await;
    assert_eq!(
        gap,
        r#"{"type":"gap","channels":["/news"],"patterns":[],"reason":"broker_reconnected"}"#
    );
    assert!(fake.held.lock().unwrap().contains("/news"));
    // A second socket joins it at once.
    let (mb2, _rx2) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub2 = bridge.subscriber(mb2);
    sub2.join(news).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_subscribe_while_publishing_is_down_succeeds() {
    let fake = Fake::default();
    fake.up.store(true, Ordering::SeqCst);
    let bridge = bridge(&fake, None);
    assert!(!bridge.is_ready(), "publishing is down");
    let (mb, _rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    sub.subscribe(channel("/a")).await.unwrap();
    assert!(fake.held.lock().unwrap().contains("/a"));
}

#[tokio::test(start_paused = true)]
async fn a_refused_topic_in_a_batch_fails_only_itself() {
    let fake = Fake::default();
    fake.up.store(true, Ordering::SeqCst);
    fake.refuse.lock().unwrap().insert("/no".into());
    let bridge = bridge(&fake, None);
    let mut subs = Vec::new();
    let mut waits = Vec::new();
    for n in ["/ok1", "/no", "/ok2", "/ok3"] {
        let (mb, rx) = mailbox(16, SlowConsumerPolicy::Close);
        let mut sub = bridge.subscriber(mb);
        waits.push(tokio::spawn(async move {
            let r = sub.subscribe(channel(n)).await;
            (r, sub)
        }));
        subs.push(rx);
    }
    let mut results = Vec::new();
    for w in waits {
        results.push(w.await.unwrap().0);
    }
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(BrokerError::Refused(_))),
        "{results:?}"
    );
    assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");
    let held = fake.held.lock().unwrap().clone();
    assert_eq!(
        held,
        ["/ok1", "/ok2", "/ok3"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // Not retried in a loop, and readiness is not held back by it.
    let calls = fake.calls.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fake.calls.lock().unwrap().len(), calls);
}

#[tokio::test(start_paused = true)]
async fn the_self_check_repairs_a_lost_subscription_and_counts_it() {
    let fake = Fake::default();
    fake.up.store(true, Ordering::SeqCst);
    let bridge = bridge(&fake, Some(Duration::from_secs(30)));
    let (mb, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    sub.join(channel("/a")).await.unwrap();
    sub.join(channel("/b")).await.unwrap();
    // The broker loses /b; the bridge is not told.
    fake.held.lock().unwrap().remove("/b");
    let gap = next_notice(&mut rx).await;
    assert_eq!(
        gap,
        r#"{"type":"gap","channels":["/b"],"patterns":[],"reason":"broker_reconnected"}"#
    );
    assert!(fake.held.lock().unwrap().contains("/b"));
    assert_eq!(bridge.hub().stats().snapshot().selfcheck_repairs, 1);
}
