//! The sharded fan-out (one runner per worker thread) keeps every socket's
//! messages in order, from large and small fan-outs alike, and delivers
//! each exactly once. (These mailboxes have no direct writer, so the
//! sessions are woken as before; the direct path is tested in the mailbox's
//! unit tests and end to end by the transport's and the bench's tests.)

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

/// A socket for the fan-out to write to directly: it takes whole frames,
/// half frames or nothing, in a fixed rotation, and records the bytes.
#[derive(Default)]
struct Sock {
    tries: std::sync::atomic::AtomicUsize,
    wire: parking_lot::Mutex<Vec<u8>>,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, u8::try_from(payload.len()).expect("a small payload")];
    f.extend_from_slice(payload);
    f
}

impl tidings_bridge::DirectWrite for Sock {
    fn try_write_text(&self, payload: &Bytes) -> tidings_bridge::Direct {
        let f = frame(payload);
        let i = self
            .tries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = match i % 7 {
            3 => f.len() / 2,
            5 => 0,
            _ => f.len(),
        };
        self.wire.lock().extend_from_slice(&f[..n]);
        match n {
            0 => tidings_bridge::Direct::NotWritten,
            n if n == f.len() => tidings_bridge::Direct::Written,
            n => tidings_bridge::Direct::Partial(Bytes::copy_from_slice(&f[n..])),
        }
    }
}

/// The payloads of the frames on `wire`.
fn frames(wire: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = wire;
    while rest.len() >= 2 {
        let len = usize::from(rest[1]);
        assert_eq!(rest[0], 0x81, "a frame starts here");
        if rest.len() < 2 + len {
            break;
        }
        out.push(String::from_utf8(rest[2..2 + len].to_vec()).unwrap());
        rest = &rest[2 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_by_runners_and_the_sessions_never_interleave_or_reorder() {
    let bridge = Bridge::in_process();
    let all = channel("/all");
    const SOCKETS: usize = 100;
    const MESSAGES: usize = 60;
    let mut subs = Vec::new();
    let mut socks = Vec::new();
    for i in 0..SOCKETS {
        let (mb, mut rx) = mailbox(4 * MESSAGES, SlowConsumerPolicy::Close);
        let mut sub = bridge.subscriber(mb);
        sub.join(Topic::Channel(all.clone())).await.unwrap();
        sub.join(Topic::Channel(channel(&format!("/own/{i}"))))
            .await
            .unwrap();
        subs.push(sub);
        let sock = std::sync::Arc::new(Sock::default());
        rx.write_directly(sock.clone());
        socks.push(sock.clone());
        // The session: writes what it is woken for, as the transport does.
        tokio::spawn(async move {
            let gate = rx.gate();
            loop {
                match rx.next().await {
                    Next::Item(item) => {
                        let bytes = match item {
                            Outbound::Deliver(d) => frame(d.frame()),
                            Outbound::Notice(b) => frame(&b),
                            Outbound::Rest(b) => b.to_vec(),
                            Outbound::Gap(g) => panic!("no gap here: {g:?}"),
                        };
                        sock.wire.lock().extend_from_slice(&bytes);
                        gate.end();
                    }
                    Next::Closed => return,
                    other => panic!("{other:?}"),
                }
            }
        });
    }
    for m in 0..MESSAGES {
        bridge
            .publish(Message::new(all.clone(), Bytes::from(format!("{m}"))))
            .await
            .unwrap();
        let i = m % SOCKETS;
        bridge
            .publish(Message::new(
                channel(&format!("/own/{i}")),
                Bytes::from(format!("{m}")),
            ))
            .await
            .unwrap();
    }
    for (i, sock) in socks.iter().enumerate() {
        let expected = MESSAGES + (0..MESSAGES).filter(|m| m % SOCKETS == i).count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = frames(&sock.wire.lock());
            if got.len() >= expected || tokio::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(got.len(), expected, "socket {i}");
        let order: Vec<(usize, bool)> = got
            .iter()
            .map(|f| {
                let data = f.split("\"data\":").nth(1).unwrap();
                (
                    data.trim_end_matches('}').trim().parse().unwrap(),
                    f.contains("/own/"),
                )
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "socket {i} got its messages out of order");
    }
}
