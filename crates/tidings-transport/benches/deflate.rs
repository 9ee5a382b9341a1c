//! What permessage-deflate costs and saves on a broadcast of a 4 KB JSON
//! message to 10,000 real WebSockets of an in-process gateway (the same
//! path as the `broadcast` bench: the in-process broker, the hub's sharded
//! fan-out, the mailboxes, direct writes over loopback TCP), with the
//! extension off and on (every client offers it; with it on each
//! negotiates it).
//!
//! Criterion times one broadcast (publish to the last socket written); the
//! clients do not read during it and are drained after each one. Beside
//! it the bench prints, per mode:
//! - the bytes each delivery took on the wire (all frames read by the
//!   clients, divided by the deliveries);
//! - the gateway's CPU time per delivery (this process's user + system
//!   time over the timed broadcasts; the clients are idle then, so it is
//!   the gateway's, plus the bench's own polling of the counters).
//!
//! `compress_4k_json` times one compression of the message, which the
//! gateway does once per message whatever the number of sockets.
//!
//! ```sh
//! cargo bench -p tidings-transport --bench deflate
//! ```
//!
//! `TIDINGS_BENCH_SOCKETS` sets another number of sockets,
//! `TIDINGS_BENCH_DEFLATE=off` (or `on`) runs one mode only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{affordable_sockets, Setup, CHANNEL};
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_core::{ChannelName, Message};
use tidings_transport::{deflate_message, TransportConfig};

fn wanted_sockets() -> usize {
    std::env::var("TIDINGS_BENCH_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A 4 KB JSON document like a feed update: repeated keys, similar values.
fn payload() -> Bytes {
    let mut s = String::from("{\"feed\":\"markets\",\"items\":[");
    let mut i = 0u32;
    while s.len() < 4000 {
        s.push_str(&format!(
            "{{\"symbol\":\"TDG{}\",\"price\":{}.{:02},\"change\":-0.{:02},\"volume\":{},\"venue\":\"XPAR\"}},",
            i,
            100 + i * 37 % 900,
            i * 13 % 100,
            i * 7 % 100,
            10_000 + i * 7919 % 90_000
        ));
        i += 1;
    }
    s.pop();
    s.push_str("]}");
    Bytes::from(s)
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn deflate(c: &mut Criterion) {
    let payload = payload();
    let frame = tidings_core::Delivery::new(&Message::new(
        ChannelName::new(CHANNEL).expect("a name"),
        payload.clone(),
    ))
    .frame()
    .clone();
    let frame_len = frame.len();
    let compressed = deflate_message(&frame).len();
    eprintln!(
        "message frame payload: {frame_len} bytes; compressed: {compressed} bytes ({:.1} %)",
        100.0 * compressed as f64 / frame_len as f64
    );
    c.bench_function("compress_4k_json", |b| {
        b.iter(|| deflate_message(std::hint::black_box(&frame)))
    });

    let n = affordable_sockets(wanted_sockets());
    let mut group = c.benchmark_group(format!("broadcast_4k_json_{n}_sockets"));
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    // `TIDINGS_BENCH_DEFLATE=off` or `=on` runs one mode only (the memory
    // figure is only fair for the first setup of a process: the second
    // reuses memory the first freed).
    let modes: &[bool] = match std::env::var("TIDINGS_BENCH_DEFLATE").as_deref() {
        Ok("off") => &[false],
        Ok("on") => &[true],
        _ => &[false, true],
    };
    for &on in modes {
        let mode = if on { "deflate_on" } else { "deflate_off" };
        let rss = rss_kib();
        let config = TransportConfig {
            permessage_deflate: on,
            ..TransportConfig::default()
        };
        // Every client offers the extension; it is negotiated when on.
        let mut setup = Setup::new(2, n, config, true, on);
        // Idle sockets (the clients' side is kernel memory, not this
        // process's).
        std::thread::sleep(Duration::from_millis(500));
        let idle = rss_kib().saturating_sub(rss) as f64 / n as f64;
        // One broadcast for the bytes on the wire.
        setup.broadcast(&payload);
        std::thread::sleep(Duration::from_millis(200));
        let wire = setup.drain();
        let (mut cpu, mut deliveries) = (Duration::ZERO, 0u64);
        group.bench_function(BenchmarkId::new(mode, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = cpu_time();
                    total += setup.broadcast(&payload);
                    cpu += cpu_time().saturating_sub(before);
                    deliveries += n as u64;
                    setup.drain();
                }
                total
            })
        });
        let stats = setup.gateway.deflate_stats();
        eprintln!(
            "{mode}: {:.0} bytes on the wire per delivery (frame payload {frame_len}); \
             CPU {:.2} µs per delivery over {deliveries} deliveries; \
             messages compressed {}, compressed frames {}; \
             process memory per idle socket {idle:.2} KiB",
            wire as f64 / n as f64,
            cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64,
            stats.messages_compressed_total(),
            stats.frames_total(),
        );
        drop(setup);
    }
    group.finish();
}

// `criterion_group!` defines an undocumented `pub fn`; keep it out of the
// crate root.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::deflate);
}
criterion_main!(group::benches);
