//! Regression guard for the broadcast fan-out: one message to 10,000 real
//! WebSockets of an in-process gateway, through the real path (the
//! in-process broker, the hub's sharded fan-out, the mailboxes, the socket
//! writes over loopback TCP), with 1 and with 2 worker threads.
//!
//! One iteration publishes one message on `/app/broadcast` (which every
//! socket joins by the default routing rules) from a task on the gateway's
//! runtime, as the Redis reader does, and ends when the gateway has written
//! the frame to every socket (its `frames_out` counter). The clients do not
//! read during the timed part (their receive buffers hold the frames); they
//! are drained between samples. The throughput criterion prints is
//! deliveries per second.
//!
//! 10,000 connections take 20,000 descriptors in this one process: the
//! bench raises its open-file limit (the hard limit too, where allowed) and
//! uses fewer sockets when it cannot (the benchmark's name says how many).
//!
//! ```sh
//! cargo bench -p tidings-transport --bench broadcast
//! ```

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{affordable_sockets, Setup, CHANNEL};
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_core::ChannelName;
use tidings_transport::TransportConfig;

/// Sockets wanted.
const SOCKETS: usize = 10_000;

fn broadcast(c: &mut Criterion) {
    let n = affordable_sockets(SOCKETS);
    let payload = Bytes::from_static(br#"{"price":42,"symbol":"TDG"}"#);
    let mut group = c.benchmark_group(format!("broadcast_{n}_sockets"));
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for workers in [1, 2] {
        let mut setup = Setup::new(workers, n, TransportConfig::default(), false, false);
        let joined =
            setup
                .gateway
                .bridge()
                .hub()
                .subscriber_count(&tidings_bridge::Topic::Channel(
                    ChannelName::new(CHANNEL).expect("a name"),
                ));
        assert_eq!(joined, n, "every socket joins /app/broadcast");
        group.bench_function(BenchmarkId::new("workers", workers), |b| {
            b.iter_custom(|iters| {
                setup.drain();
                let start = Instant::now();
                for _ in 0..iters {
                    setup.broadcast(&payload);
                }
                start.elapsed()
            })
        });
        drop(setup);
    }
    group.finish();
}

// `criterion_group!` defines an undocumented `pub fn`; keep it out of the
// crate root.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::broadcast);
}
criterion_main!(group::benches);
