//! What the broadcast benches share: an in-process gateway on its own
//! runtime with many real WebSocket clients over loopback, a broadcast
//! timed to the last socket written, and the clients drained between.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Message};
use tidings_transport::{serve, text_response, Gateway, TransportConfig};
use tokio_util::sync::CancellationToken;

/// The channel every socket joins by the default routing rules.
pub(crate) const CHANNEL: &str = "/app/broadcast";
/// Descriptors kept for everything else (the runtime, the listener, ...).
const SPARE_FDS: u64 = 64;

/// The sockets this process can afford of the `want`ed: two descriptors
/// each. Raises the open-file limit (the hard one too, where allowed).
pub(crate) fn affordable_sockets(want: usize) -> usize {
    let fds = (2 * want) as u64 + SPARE_FDS;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if hard < fds {
            // Allowed for root (CAP_SYS_RESOURCE) only; fine if refused.
            let _ = rlimit::Resource::NOFILE.set(fds, fds);
        } else if soft < fds {
            let _ = rlimit::Resource::NOFILE.set(fds, hard);
        }
    }
    let soft = rlimit::Resource::NOFILE.get().map_or(1024, |(s, _)| s);
    (soft.saturating_sub(SPARE_FDS) / 2).min(want as u64) as usize
}

/// A gateway on its own runtime with its clients connected.
pub(crate) struct Setup {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) gateway: Gateway,
    pub(crate) clients: Vec<TcpStream>,
    stop: CancellationToken,
}

impl Setup {
    /// A gateway with `config` (its connection limits raised to `n`) on
    /// `workers` threads, and `n` clients, each offering permessage-deflate
    /// when `offer_deflate`; `negotiated` says whether each must have it.
    pub(crate) fn new(
        workers: usize,
        n: usize,
        mut config: TransportConfig,
        offer_deflate: bool,
        negotiated: bool,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        config.limits.max_connections_per_ip = n + 10;
        config.limits.max_connections = n + 10;
        let (gateway, addr) = runtime.block_on(async {
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
        let clients = (0..n)
            .map(|_| connect(addr, offer_deflate, negotiated))
            .collect();
        Self {
            runtime,
            gateway,
            clients,
            stop,
        }
    }

    /// Publishes `payload` on [`CHANNEL`] from a task of the gateway's
    /// runtime (as the Redis reader does) and waits until every socket was
    /// written (the gateway's `frames_out`); how long that took.
    pub(crate) fn broadcast(&self, payload: &Bytes) -> Duration {
        let target = self.gateway.stats().frames_out_total() + self.clients.len() as u64;
        let bridge = self.gateway.bridge().clone();
        let payload = payload.clone();
        let start = Instant::now();
        self.runtime.spawn(async move {
            let channel = ChannelName::new(CHANNEL).expect("a channel name");
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
    pub(crate) fn drain(&mut self) -> u64 {
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

/// Opens a WebSocket (handshake by hand, offering permessage-deflate as
/// browsers do when `offer_deflate`) and reads up to its `welcome`; checks
/// the extension was `negotiated` or not.
fn connect(addr: SocketAddr, offer_deflate: bool, negotiated: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let offer = if offer_deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {offer}\r\n"
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
    let got = seen
        .windows(b"permessage-deflate".len())
        .any(|w| w == b"permessage-deflate");
    assert_eq!(got, negotiated, "permessage-deflate negotiated");
    s.set_nonblocking(true).expect("non-blocking");
    s
}
