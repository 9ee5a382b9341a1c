//! The `soak` scenario: sockets connect and disconnect continuously while
//! the gateway's Redis connections are killed at random, and every socket's
//! channel is probed until a message published on it through Redis reaches
//! the socket. A channel that stays silent for `--probe-deadline` seconds
//! while its socket is connected is a *silent channel*: the failure users
//! report ("connected, but never gets anything"). The target is zero.
//!
//! Each socket is its own user (cookie `uid=<n>`, a fresh `n` each time),
//! so its channel is `/app/user/<n>/notifications`, joined on connect.
//! Faults: every `--fault-every` seconds (jittered between half and one and
//! a half times that), one of: kill the gateway's subscription connection
//! (`CLIENT KILL` by id of its `TYPE pubsub` connection), its publish pool
//! (`TYPE normal`), both, or one of them at random. The bench's own Redis
//! connections are named `tidings-bench` and never killed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, Plan},
    publish::{command, parse_url, Rng},
    stats::{Latency, Sharded, Shared},
};

/// How the soak runs.
pub(crate) struct Soak {
    /// Sockets alive at once.
    pub(crate) connections: usize,
    /// How long new sockets keep being opened.
    pub(crate) duration: Duration,
    /// Mean seconds between faults (0: no faults).
    pub(crate) fault_every: f64,
    /// The kinds of fault to pick from (indexes into [`FAULTS`]).
    pub(crate) faults: Vec<usize>,
    /// A socket's channel that delivers nothing for this long is silent.
    pub(crate) probe_deadline: Duration,
    /// A socket lives between 0.2 s and this long after its first delivery.
    pub(crate) max_life: Duration,
    pub(crate) redis_url: String,
    pub(crate) target: SocketAddr,
    pub(crate) url: Arc<str>,
    pub(crate) sources: Vec<Option<IpAddr>>,
}

/// Between two probes of a channel that has delivered nothing yet.
const PROBE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Counts {
    sockets: AtomicU64,
    connect_failures: AtomicU64,
    delivered: AtomicU64,
    silent: AtomicU64,
    probes: AtomicU64,
    probe_errors: AtomicU64,
    gaps: AtomicU64,
    closed_by_gateway: AtomicU64,
    faults: [AtomicU64; 4],
    fault_errors: AtomicU64,
    next_user: AtomicU64,
}

/// The kinds of fault, as `--faults` names them.
pub(crate) const FAULTS: [&str; 4] = ["subscriber", "pool", "both", "one_random"];

/// A tiny RESP connection of the bench's own (named `tidings-bench`),
/// reconnecting on demand.
struct Redis {
    url: String,
    conn: Option<BufReader<TcpStream>>,
}

enum Reply {
    /// `+...`, `:n` or an array: not looked into.
    Other,
    /// `-ERR ...`.
    Error(String),
    /// `$n` bulk (None for nil).
    Bulk(Option<Vec<u8>>),
}

impl Redis {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            conn: None,
        }
    }

    async fn open(&self) -> Result<BufReader<TcpStream>, String> {
        let (hostport, auth) = parse_url(&self.url)?;
        let s = TcpStream::connect(&hostport)
            .await
            .map_err(|e| format!("connect to Redis: {e}"))?;
        let _ = s.set_nodelay(true);
        let mut conn = BufReader::new(s);
        if !auth.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(|a| a.as_bytes()));
            roundtrip(&mut conn, &args).await?;
        }
        roundtrip(&mut conn, &[b"CLIENT", b"SETNAME", b"tidings-bench"]).await?;
        Ok(conn)
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let r = tokio::time::timeout(Duration::from_secs(5), roundtrip(conn, args)).await;
        match r {
            Ok(Ok(Reply::Error(e))) => Err(e),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err("Redis timed out".to_owned())
            }
        }
    }
}

async fn roundtrip(conn: &mut BufReader<TcpStream>, args: &[&[u8]]) -> Result<Reply, String> {
    let mut out = Vec::new();
    command(&mut out, args);
    conn.get_mut()
        .write_all(&out)
        .await
        .map_err(|e| e.to_string())?;
    read_reply(conn).await
}

fn read_reply(
    conn: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, String>> + Send + '_>> {
    Box::pin(async move {
        let mut line = String::new();
        if conn.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("Redis closed the connection".to_owned());
        }
        let line = line.trim_end_matches("\r\n");
        if line.is_empty() {
            return Err("empty RESP line".to_owned());
        }
        let (t, rest) = line.split_at(1);
        let num = || rest.parse::<i64>().map_err(|e| e.to_string());
        Ok(match t {
            "+" => Reply::Other,
            "-" => Reply::Error(rest.to_owned()),
            ":" => {
                num()?;
                Reply::Other
            }
            "$" => {
                let n = num()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    conn.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => {
                for _ in 0..num()?.max(0) {
                    read_reply(conn).await?;
                }
                Reply::Other
            }
            other => return Err(format!("bad RESP type {other}")),
        })
    })
}

/// Kills gateway connections every `every` seconds (jittered) until `stop`,
/// each time a fault of a kind picked at random among `kinds`.
async fn faults(url: String, every: f64, kinds: Vec<usize>, stop: Instant, counts: Arc<Counts>) {
    let mut redis = Redis::new(&url);
    let mut rng = Rng(client::now_ns() | 1);
    while Instant::now() < stop {
        let jitter = 0.5 + rng.below(1000) as f64 / 1000.0;
        tokio::time::sleep(Duration::from_secs_f64(every * jitter)).await;
        if Instant::now() >= stop {
            return;
        }
        let list = match redis.cmd(&[b"CLIENT", b"LIST"]).await {
            Ok(Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b).into_owned(),
            _ => {
                counts.fault_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        // The gateway's connections: every client not named tidings-bench.
        let mut pubsub = Vec::new();
        let mut normal = Vec::new();
        for line in list.lines() {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or("")
                    .to_owned()
            };
            if field("name") == "tidings-bench" {
                continue;
            }
            let id = field("id");
            if field("flags").contains('P') || field("sub") != "0" || field("psub") != "0" {
                pubsub.push(id);
            } else {
                normal.push(id);
            }
        }
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let victims: Vec<String> = match kind {
            0 => pubsub,
            1 => normal,
            2 => pubsub.into_iter().chain(normal).collect(),
            _ => {
                let all: Vec<String> = pubsub.into_iter().chain(normal).collect();
                if all.is_empty() {
                    all
                } else {
                    let i = rng.below(all.len() as u64) as usize;
                    vec![all[i].clone()]
                }
            }
        };
        for id in &victims {
            if redis
                .cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
                .await
                .is_err()
            {
                counts.fault_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts.faults[kind].fetch_add(1, Ordering::Relaxed);
    }
}

/// One slot: opens a socket, probes its channel until a delivery (or the
/// deadline: a silent channel), keeps it a little, closes it; again until
/// `stop`.
async fn slot(
    index: usize,
    soak: Arc<Soak>,
    stop: Instant,
    counts: Arc<Counts>,
    shared: Arc<Shared>,
    first_delivery: Arc<Sharded>,
    samples: Arc<Mutex<Vec<String>>>,
) {
    let mut redis = Redis::new(&soak.redis_url);
    let mut rng = Rng((client::now_ns() ^ (index as u64).wrapping_mul(0x9E37_79B9)) | 1);
    let sample = |s: String| {
        let mut v = samples.lock();
        if v.len() < 20 {
            v.push(s);
        }
    };
    while Instant::now() < stop {
        let user = counts.next_user.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = Plan {
            index,
            user,
            source: soak.sources[index % soak.sources.len()],
            target: soak.target,
            url: soak.url.clone(),
            wire: crate::wire::Wire::Websocket,
        };
        let mut ws =
            match tokio::time::timeout(Duration::from_secs(30), client::connect(&plan, &shared))
                .await
            {
                Ok(Ok(ws)) => ws,
                _ => {
                    counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        counts.sockets.fetch_add(1, Ordering::Relaxed);
        let channel = format!("/app/user/{user}/notifications");
        let welcomed = Instant::now();
        let life = Duration::from_millis(200)
            + Duration::from_millis(rng.below(soak.max_life.as_millis().max(1) as u64));
        let mut delivered_at: Option<Instant> = None;
        let mut next_probe = welcomed;
        let mut probe = 0u64;
        loop {
            let now = Instant::now();
            let wake = match delivered_at {
                Some(at) => {
                    if now >= at + life {
                        break;
                    }
                    at + life
                }
                None => {
                    if now >= welcomed + soak.probe_deadline {
                        counts.silent.fetch_add(1, Ordering::Relaxed);
                        sample(format!(
                            "silent channel {channel}: nothing in {:?} after the welcome ({probe} probes)",
                            soak.probe_deadline
                        ));
                        break;
                    }
                    if now >= next_probe {
                        probe += 1;
                        let payload = format!("{{\"probe\":{probe}}}");
                        counts.probes.fetch_add(1, Ordering::Relaxed);
                        if redis
                            .cmd(&[b"PUBLISH", channel.as_bytes(), payload.as_bytes()])
                            .await
                            .is_err()
                        {
                            counts.probe_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        next_probe = Instant::now() + PROBE_EVERY;
                    }
                    next_probe.min(welcomed + soak.probe_deadline)
                }
            };
            let frame =
                tokio::time::timeout(wake.saturating_duration_since(Instant::now()), ws.next())
                    .await;
            match frame {
                Err(_) => {}
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("message")
                            if v["channel"] == channel.as_str() && delivered_at.is_none() =>
                        {
                            delivered_at = Some(Instant::now());
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                            first_delivery.record(index, welcomed.elapsed().as_micros() as u64);
                        }
                        Some("gap") => {
                            counts.gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                    counts.closed_by_gateway.fetch_add(1, Ordering::Relaxed);
                    sample(format!("{channel}: the gateway closed the socket"));
                    break;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
        let _ = ws.send(Message::Close(None)).await;
        drop(ws);
    }
}

/// `GET /metrics` of the gateway: `name value` pairs of the unlabelled
/// samples.
async fn metrics(addr: SocketAddr) -> Vec<(String, f64)> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    if s.write_all(req.as_bytes()).await.is_err() || s.read_to_end(&mut buf).await.is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Runs the soak; returns whether no channel stayed silent, and the report.
pub(crate) async fn run(soak: Soak) -> Result<(bool, Value), String> {
    let soak = Arc::new(soak);
    let counts = Arc::new(Counts::default());
    let shared = Arc::new(Shared::new(0, 0));
    let first_delivery = Arc::new(Sharded::new(16));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let stop = started + soak.duration;
    let mut tasks = JoinSet::new();
    if soak.fault_every > 0.0 && !soak.faults.is_empty() {
        tasks.spawn(faults(
            soak.redis_url.clone(),
            soak.fault_every,
            soak.faults.clone(),
            stop,
            counts.clone(),
        ));
    }
    for i in 0..soak.connections.max(1) {
        tasks.spawn(slot(
            i,
            soak.clone(),
            stop,
            counts.clone(),
            shared.clone(),
            first_delivery.clone(),
            samples.clone(),
        ));
    }
    let progress = tokio::spawn({
        let counts = counts.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                eprintln!(
                    "[soak {:>6.1}s] sockets {} delivered {} silent {} gaps {} faults {} probes {}",
                    started.elapsed().as_secs_f64(),
                    c(&counts.sockets),
                    c(&counts.delivered),
                    c(&counts.silent),
                    c(&counts.gaps),
                    counts.faults.iter().map(c).sum::<u64>(),
                    c(&counts.probes),
                );
            }
        }
    });
    while tasks.join_next().await.is_some() {}
    progress.abort();
    let wall = started.elapsed();
    let m = metrics(soak.target).await;
    let metric = |name: &str| m.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let faults: serde_json::Map<String, Value> = FAULTS
        .iter()
        .zip(&counts.faults)
        .map(|(k, v)| ((*k).to_owned(), json!(c(v))))
        .collect();
    let total_faults: u64 = counts.faults.iter().map(c).sum();
    let sockets = c(&counts.sockets);
    let silent = c(&counts.silent);
    let ok = silent == 0
        && sockets > 0
        && c(&counts.delivered) == sockets
        && c(&counts.closed_by_gateway) == 0
        && (soak.fault_every == 0.0 || total_faults > 0);
    let report = json!({
        "scenario": "soak",
        "ok": ok,
        "config": {
            "connections": soak.connections,
            "duration_secs": soak.duration.as_secs_f64(),
            "fault_every_secs": soak.fault_every,
            "fault_kinds": soak.faults.iter().map(|k| FAULTS[*k]).collect::<Vec<_>>(),
            "probe_deadline_secs": soak.probe_deadline.as_secs_f64(),
            "max_life_secs": soak.max_life.as_secs_f64(),
            "gateway_url": &*soak.url,
        },
        "wall_secs": wall.as_secs_f64(),
        "sockets": sockets,
        "connect_failures": c(&counts.connect_failures),
        "delivered": c(&counts.delivered),
        "silent_channels": silent,
        "closed_by_gateway": c(&counts.closed_by_gateway),
        "gap_notices": c(&counts.gaps),
        "probes": c(&counts.probes),
        "probe_errors": c(&counts.probe_errors),
        "faults": faults,
        "faults_total": total_faults,
        "fault_errors": c(&counts.fault_errors),
        "first_delivery_latency": Latency::of(&first_delivery.merged()),
        "gateway_metrics": {
            "tidings_broker_reconnects_total": metric("tidings_broker_reconnects_total"),
            "tidings_bridge_selfcheck_repairs_total": metric("tidings_bridge_selfcheck_repairs_total"),
            "tidings_gap_notices_total": metric("tidings_gap_notices_total"),
        },
        "samples": samples.lock().clone(),
    });
    Ok((ok, report))
}
