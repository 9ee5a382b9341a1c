//! Micro-benchmarks of local fan-out through the [`Hub`]: channel lookup
//! with many channels, one message to many sockets, and the pattern scan of
//! brokers without server-side pattern matching.
//!
//! Only the dispatch is timed: mailboxes are drained between timed batches,
//! outside the measurement, so every offer finds room (checked at the end).
//!
//! `cargo bench -p tidings-bridge`; see `docs/benchmarks.md`.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_bridge::{bench, mailbox, Hub, MailboxReceiver, SlowConsumerPolicy, Topic};
use tidings_core::{ChannelName, ChannelPattern, Message};

/// Dispatches timed together before the mailboxes they filled are drained.
const BATCH: u64 = 1024;

fn drain(rx: &mut MailboxReceiver) {
    while rx.try_next().is_some() {}
}

fn payload() -> &'static [u8] {
    br#"{"event":"update","id":42}"#
}

fn assert_nothing_dropped(hub: &Hub) {
    let s = hub.stats().snapshot();
    assert_eq!(
        s.dropped_slow, 0,
        "a mailbox filled up: the bench measured drops"
    );
    assert_eq!(s.slow_closes, 0);
}

/// One message to one channel among `n` channels with one subscriber each:
/// the hash lookup plus one encode and one offer. Channels are picked in a
/// scattered order so the lookups do not walk memory sequentially.
fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch_channel");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 1_000, 100_000] {
        let hub = Hub::new();
        // Enough room for every delivery one batch can put in one mailbox.
        let cap = if n < BATCH as usize {
            2 * BATCH as usize
        } else {
            64
        };
        let mut rxs = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            let name = ChannelName::new(&format!("/app/user/{i}/notifications")).unwrap();
            let (mb, rx) = mailbox(cap, SlowConsumerPolicy::Drop);
            bench::add(&hub, &Topic::Channel(name.clone()), i as u64, &mb);
            rxs.push(rx);
            names.push(name);
        }
        assert_eq!(hub.topic_counts(), (n, 0));
        // 4096 scattered targets (a multiplicative hash of 0..4096).
        let targets: Vec<usize> = (0..4096u64)
            .map(|k| (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % n)
            .collect();
        let messages: Vec<Message> = targets
            .iter()
            .map(|&t| Message::new(names[t].clone(), payload()))
            .collect();
        g.bench_function(BenchmarkId::new("subscriptions", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let batch = BATCH.min(iters - done);
                    let start = Instant::now();
                    for k in done..done + batch {
                        bench::dispatch_channel(
                            &hub,
                            black_box(&messages[k as usize % messages.len()]),
                        );
                    }
                    timed += start.elapsed();
                    for k in done..done + batch {
                        drain(&mut rxs[targets[k as usize % targets.len()]]);
                    }
                    done += batch;
                }
                timed
            })
        });
        assert_nothing_dropped(&hub);
        if n == 100_000 {
            // The same channel every time among 100,000: the same work as
            // above with the caches warm, to tell algorithmic cost from
            // memory latency.
            let hot = &messages[0];
            let hot_rx = targets[0];
            g.bench_function("hot_channel_among_100000", |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut done = 0u64;
                    while done < iters {
                        let batch = (cap as u64 / 2).min(iters - done);
                        let start = Instant::now();
                        for _ in 0..batch {
                            bench::dispatch_channel(&hub, black_box(hot));
                        }
                        timed += start.elapsed();
                        drain(&mut rxs[hot_rx]);
                        done += batch;
                    }
                    timed
                })
            });
            assert_nothing_dropped(&hub);
            // A message nobody local listens to: the lookup alone (plus counters).
            let stray = Message::new(
                ChannelName::new("/app/user/none/notifications").unwrap(),
                payload(),
            );
            g.bench_function("unrouted_among_100000", |b| {
                b.iter(|| bench::dispatch_channel(&hub, black_box(&stray)))
            });
        }
    }
    g.finish();
}

/// One message to one channel with `n` local subscribers: one encode, then
/// `n` pointer copies and non-blocking queue pushes.
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    let channel = ChannelName::new("/app/broadcast").unwrap();
    let message = Message::new(channel.clone(), payload());
    for n in [100usize, 1_000, 10_000] {
        let hub = Hub::new();
        let mut rxs = Vec::with_capacity(n);
        for i in 0..n {
            let (mb, rx) = mailbox(4, SlowConsumerPolicy::Drop);
            bench::add(&hub, &Topic::Channel(channel.clone()), i as u64, &mb);
            rxs.push(rx);
        }
        assert_eq!(hub.subscriber_count(&Topic::Channel(channel.clone())), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("subscribers", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    bench::dispatch_channel(&hub, black_box(&message));
                    timed += start.elapsed();
                    rxs.iter_mut().for_each(drain);
                }
                timed
            })
        });
        assert_nothing_dropped(&hub);
    }
    g.finish();
}

/// `dispatch_all` (what the in-process broker uses) with `p` distinct local
/// patterns, one subscriber each, for a message that matches exactly one of
/// them: one glob match per pattern, one fan-out.
fn patterns(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch_all_patterns");
    g.throughput(Throughput::Elements(1));
    let message = Message::new(ChannelName::new("/app/tenant/0/feed").unwrap(), payload());
    for p in [1usize, 10, 100] {
        let hub = Hub::new();
        let mut rxs = Vec::with_capacity(p);
        for i in 0..p {
            let pattern = ChannelPattern::new(&format!("/app/tenant/{i}/*")).unwrap();
            let (mb, rx) = mailbox(2 * BATCH as usize, SlowConsumerPolicy::Drop);
            bench::add(&hub, &Topic::Pattern(pattern), i as u64, &mb);
            rxs.push(rx);
        }
        assert_eq!(hub.topic_counts(), (0, p));
        g.bench_function(BenchmarkId::new("patterns", p), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let batch = BATCH.min(iters - done);
                    let start = Instant::now();
                    for _ in 0..batch {
                        bench::dispatch_all(&hub, black_box(&message));
                    }
                    timed += start.elapsed();
                    // Only the subscriber of /app/tenant/0/* received anything.
                    drain(&mut rxs[0]);
                    done += batch;
                }
                timed
            })
        });
        assert_nothing_dropped(&hub);
        assert_eq!(hub.stats().snapshot().unrouted, 0);
    }
    g.finish();
}

// `criterion_group!` defines an undocumented `pub fn`; keep it out of the
// crate root.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::lookup, super::fan_out, super::patterns);
}
criterion_main!(group::benches);
