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

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Message};
use tidings_transport::{serve, text_response, Gateway, TransportConfig};
use tokio_util::sync::CancellationToken;

/// Sockets wanted.
const SOCKETS: usize = 10_000;
/// Descriptors kept for everything else (the runtime, the listener, ...).
const SPARE_FDS: u64 = 64;

/// The sockets this process can afford: two descriptors each.
fn affordable_sockets() -> usize {
    let want = (2 * SOCKETS) as u64 + SPARE_FDS;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if hard < want {
            // Allowed for root (CAP_SYS_RESOURCE) only; fine if refused.
            let _ = rlimit::Resource::NOFILE.set(want, want);
        } else if soft < want {
            let _ = rlimit::Resource::NOFILE.set(want, hard);
        }
    }
    let soft = rlimit::Resource::NOFILE.get().map_or(1024, |(s, _)| s);
    (soft.saturating_sub(SPARE_FDS) / 2).min(SOCKETS as u64) as usize
}

/// A gateway on its own runtime with `n` clients connected.
struct Setup {
    runtime: tokio::runtime::Runtime,
    gateway: Gateway,
    clients: Vec<TcpStream>,
    stop: CancellationToken,
}

impl Setup {
    fn new(workers: usize, n: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        let (gateway, addr) = runtime.block_on(async {
            let mut config = TransportConfig::default();
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
        let clients = (0..n).map(|_| connect(addr)).collect();
        Self {
            runtime,
            gateway,
            clients,
            stop,
        }
    }

    /// Publishes one broadcast from a task of the gateway's runtime and
    /// waits until every socket was written.
    fn broadcast(&self, target: u64) {
        let bridge = self.gateway.bridge().clone();
        self.runtime.spawn(async move {
            let channel = ChannelName::new("/app/broadcast").expect("a channel name");
            let payload = Bytes::from_static(br#"{"price":42,"symbol":"TDG"}"#);
            bridge
                .publish(Message::new(channel, payload))
                .await
                .expect("published");
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.gateway.stats().frames_out_total() < target {
            assert!(Instant::now() < deadline, "the broadcast did not complete");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Reads whatever the clients were sent.
    fn drain(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        for c in &mut self.clients {
            loop {
                match c.read(&mut buf) {
                    Ok(0) => panic!("the gateway closed a socket"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
        self.clients.clear();
    }
}

/// Opens a WebSocket (handshake by hand) and reads up to its `welcome`.
fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
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
    s.set_nonblocking(true).expect("non-blocking");
    s
}

fn broadcast(c: &mut Criterion) {
    let n = affordable_sockets();
    let mut group = c.benchmark_group(format!("broadcast_{n}_sockets"));
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for workers in [1, 2] {
        let mut setup = Setup::new(workers, n);
        let joined =
            setup
                .gateway
                .bridge()
                .hub()
                .subscriber_count(&tidings_bridge::Topic::Channel(
                    ChannelName::new("/app/broadcast").expect("a name"),
                ));
        assert_eq!(joined, n, "every socket joins /app/broadcast");
        group.bench_function(BenchmarkId::new("workers", workers), |b| {
            b.iter_custom(|iters| {
                setup.drain();
                let start = Instant::now();
                for _ in 0..iters {
                    let target = setup.gateway.stats().frames_out_total() + n as u64;
                    setup.broadcast(target);
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
