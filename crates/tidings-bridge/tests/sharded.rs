//! The sharded fan-out (one runner per worker thread) keeps every socket's
//! messages in order, from large and small fan-outs alike, and delivers
//! each exactly once.

use std::time::Duration;

use bytes::Bytes;
use tidings_bridge::{mailbox, mailbox::Next, Bridge, Outbound, SlowConsumerPolicy, Topic};
use tidings_core::{ChannelName, Message};

fn channel(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_fan_outs_stay_in_order_per_socket() {
    let bridge = Bridge::in_process();
    assert_eq!(bridge.hub().shard_count(), 2);
    let all = channel("/all");
    const SOCKETS: usize = 200;
    const MESSAGES: usize = 50;
    let mut subs = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..SOCKETS {
        let (mb, rx) = mailbox(4 * MESSAGES, SlowConsumerPolicy::Close);
        let mut sub = bridge.subscriber(mb);
        sub.join(Topic::Channel(all.clone())).await.unwrap();
        // Every tenth socket also has a channel of its own (a small fan-out).
        if i % 10 == 0 {
            sub.join(Topic::Channel(channel(&format!("/own/{i}"))))
                .await
                .unwrap();
        }
        subs.push(sub);
        rxs.push(rx);
    }
    const { assert!(SOCKETS > tidings_bridge::hub::INLINE_MAX) };
    for m in 0..MESSAGES {
        bridge
            .publish(Message::new(all.clone(), Bytes::from(format!("{m}"))))
            .await
            .unwrap();
        for i in (0..SOCKETS).step_by(10) {
            bridge
                .publish(Message::new(
                    channel(&format!("/own/{i}")),
                    Bytes::from(format!("{m}")),
                ))
                .await
                .unwrap();
        }
    }
    for (i, rx) in rxs.iter_mut().enumerate() {
        let expected = if i % 10 == 0 { 2 * MESSAGES } else { MESSAGES };
        let mut seen = Vec::new();
        while seen.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(10), rx.next())
                .await
                .unwrap_or_else(|_| panic!("socket {i}: only {} of {expected}", seen.len()));
            match next {
                Next::Item(Outbound::Deliver(d)) => {
                    let frame = String::from_utf8(d.frame().to_vec()).unwrap();
                    seen.push(frame);
                }
                other => panic!("socket {i}: {other:?}"),
            }
        }
        // Message m on /all comes before message m on the socket's own
        // channel, which comes before message m + 1 on /all.
        let order: Vec<(usize, bool)> = seen
            .iter()
            .map(|f| {
                let own = f.contains("/own/");
                let data = f.split("\"data\":").nth(1).unwrap();
                let n: usize = data.trim_end_matches('}').trim().parse().unwrap();
                (n, own)
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "socket {i} got its messages out of order");
        assert!(rx.try_next().is_none(), "socket {i}: a duplicate");
    }
    let stats = bridge.hub().stats().snapshot();
    assert_eq!(
        stats.deliveries as usize,
        SOCKETS * MESSAGES + (SOCKETS / 10) * MESSAGES
    );
}
