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

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Message};
use tidings_transport::{deflate_message, serve, text_response, Gateway, TransportConfig};
use tokio_util::sync::CancellationToken;

/// Descriptors kept for everything else.
const SPARE_FDS: u64 = 64;

fn wanted_sockets() -> usize {
    std::env::var("TIDINGS_BENCH_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The sockets this process can afford: two descriptors each.
fn affordable_sockets(want: usize) -> usize {
    let fds = (2 * want) as u64 + SPARE_FDS;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if hard < fds {
            let _ = rlimit::Resource::NOFILE.set(fds, fds);
        } else if soft < fds {
            let _ = rlimit::Resource::NOFILE.set(fds, hard);
        }
    }
    let soft = rlimit::Resource::NOFILE.get().map_or(1024, |(s, _)| s);
    (soft.saturating_sub(SPARE_FDS) / 2).min(want as u64) as usize
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

struct Setup {
    runtime: tokio::runtime::Runtime,
    gateway: Gateway,
    clients: Vec<TcpStream>,
    stop: CancellationToken,
}

impl Setup {
    fn new(n: usize, deflate: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        let (gateway, addr) = runtime.block_on(async {
            let mut config = TransportConfig {
                permessage_deflate: deflate,
                ..TransportConfig::default()
            };
            config.limits.max_connections_per_ip = n + 10;
            config.limits.max_connections = n + 10;
            let gateway = Gateway::builder(Bridge::in_process())
                .config(config)
                .build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a listener");
            let addr = listener.local_addr().expect("its address");
            let http = |_req, _peer| async { text_response(http::StatusCode::NOT_FOUND, "") };
            let stopped = stop.clone();
            tokio::spawn(serve(listener, gateway.clone(), http, async move {
                stopped.cancelled().await
            }));
            (gateway, addr)
        });
        let clients = (0..n).map(|_| connect(addr, deflate)).collect();
        Self {
            runtime,
            gateway,
            clients,
            stop,
        }
    }

    /// Publishes one broadcast and waits until every socket was written;
    /// how long that took.
    fn broadcast(&self, payload: &Bytes) -> Duration {
        let target = self.gateway.stats().frames_out_total() + self.clients.len() as u64;
        let bridge = self.gateway.bridge().clone();
        let payload = payload.clone();
        let start = Instant::now();
        self.runtime.spawn(async move {
            let channel = ChannelName::new("/app/broadcast").expect("a channel name");
            bridge
                .publish(Message::new(channel, payload))
                .await
                .expect("published");
        });
        let deadline = start + Duration::from_secs(120);
        while self.gateway.stats().frames_out_total() < target {
            assert!(Instant::now() < deadline, "the broadcast did not complete");
            std::thread::sleep(Duration::from_micros(50));
        }
        start.elapsed()
    }

    /// Reads whatever the clients were sent; how many bytes.
    fn drain(&mut self) -> u64 {
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        for c in &mut self.clients {
            loop {
                match c.read(&mut buf) {
                    Ok(0) => panic!("the gateway closed a socket"),
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
        total
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
        self.clients.clear();
    }
}

/// Opens a WebSocket offering permessage-deflate (as browsers do) and
/// reads up to its `welcome`; checks the extension was negotiated when
/// `deflate`.
fn connect(addr: SocketAddr, deflate: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("upgrade request");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(9).any(|w| w == b"\"welcome\"") {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let negotiated = seen
        .windows(b"permessage-deflate".len())
        .any(|w| w == b"permessage-deflate");
    assert_eq!(negotiated, deflate);
    s.set_nonblocking(true).expect("non-blocking");
    s
}

fn deflate(c: &mut Criterion) {
    let payload = payload();
    let frame = tidings_core::Delivery::new(&Message::new(
        ChannelName::new("/app/broadcast").expect("a name"),
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
        let mut setup = Setup::new(n, on);
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
