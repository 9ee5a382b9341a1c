//! The `recovery` scenario: N clients, each its own user, hold sockets
//! while a backend publishes R msg/s with history (`FCALL tidings_publish`,
//! the one-command publish) to random users' notification channels; at
//! `--restart-at` the gateway is SIGKILLed and started again on the same
//! address (or drained with SIGTERM and started again). Every client
//! reconnects with its position (`since`) and the bench counts, per user,
//! what was published against what arrived: lost, duplicated, and the
//! recoveries the gateway answered `recovered: false`. Target: 0 and 0.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

use crate::{
    procs::LaunchedGateway,
    publish::{command, parse_url, Rng},
};

/// How the gateway goes away mid-run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Fault {
    /// SIGKILL, then a new process on the same address.
    Kill,
    /// SIGTERM (clients get 1012 over the drain spread), then a new one.
    Drain,
}

pub(crate) struct Recovery {
    pub(crate) connections: usize,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) restart_at: Duration,
    pub(crate) fault: Fault,
    pub(crate) concurrency: usize,
    pub(crate) drain_secs: f64,
    pub(crate) binary: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) redis_url: String,
    pub(crate) sources: Vec<Option<IpAddr>>,
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    holes: AtomicU64,
    not_recovered: AtomicU64,
    recovered: AtomicU64,
    gaps: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    publish_errors: AtomicU64,
    /// Clients that have had their first welcome.
    connected: AtomicU64,
}

/// Per user: published so far, and the client's position.
struct Users {
    published: Vec<AtomicU64>,
    position: Vec<AtomicU64>,
}

fn channel(user: usize) -> String {
    format!("/app/user/{user}/notifications")
}

/// Publishes `rate` msg/s for `duration` with FCALL over `conns`
/// pipelined connections; returns how many were published.
async fn publish(
    redis_url: String,
    rate: f64,
    duration: Duration,
    users: Arc<Users>,
    counts: Arc<Counts>,
) -> Result<u64, String> {
    const CONNS: usize = 4;
    let (hostport, auth) = parse_url(&redis_url)?;
    let mut writers = Vec::new();
    let mut readers = JoinSet::new();
    for _ in 0..CONNS {
        let stream = TcpStream::connect(&hostport)
            .await
            .map_err(|e| format!("cannot connect to Redis at {hostport}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        if !auth.is_empty() {
            let mut out = Vec::new();
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(|a| a.as_bytes()));
            command(&mut out, &args);
            write.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        let counts = counts.clone();
        readers.spawn(async move {
            // Replies: `*2 :offset $n epoch` or `-ERR`; count the errors.
            let mut read = BufReader::new(read);
            let mut line = Vec::new();
            loop {
                line.clear();
                match read.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.first() == Some(&b'-') {
                    counts.publish_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        writers.push(write);
    }
    let n = users.published.len();
    let total = (rate * duration.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sent = 0u64;
    let mut out = Vec::new();
    let mut k = 0usize;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        if due <= sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for _ in sent..due {
            let user = rng.below(n as u64) as usize + 1;
            let seq = users.published[user - 1].fetch_add(1, Ordering::Relaxed) + 1;
            out.clear();
            command(
                &mut out,
                &[
                    b"FCALL",
                    b"tidings_publish",
                    b"1",
                    channel(user).as_bytes(),
                    seq.to_string().as_bytes(),
                    b"100",
                    b"600",
                ],
            );
            writers[k % CONNS]
                .write_all(&out)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            k += 1;
        }
        sent = due;
    }
    for w in &mut writers {
        let _ = w.flush().await;
    }
    // Let the replies come in, then stop the readers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    readers.abort_all();
    Ok(sent)
}

/// One client: connects (with `since` once it has a position), reads,
/// reconnects whenever the socket ends, until told to stop and caught up.
#[allow(clippy::too_many_arguments)]
async fn client(
    user: usize,
    target: SocketAddr,
    source: Option<IpAddr>,
    users: Arc<Users>,
    counts: Arc<Counts>,
    permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
) {
    let ch = channel(user);
    let mut epoch: Option<String> = None;
    let mut first = true;
    let mut rng = Rng(user as u64 * 0x2545_F491_4F6C_DD1D + 1);
    loop {
        let position = users.position[user - 1].load(Ordering::Relaxed);
        let since = epoch.as_ref().map(|e| {
            let v = json!({ ch.as_str(): {"offset": position, "epoch": e} }).to_string();
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("?since={enc}")
        });
        let url = format!("ws://{target}/ws{}", since.unwrap_or_default());
        let ws = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            connect(&url, target, source, user).await
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) && caught_up(&users, user) {
                    return;
                }
                // The gateway is restarting: retry with jitter.
                let ms = 50 + rng.below(200);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
        };
        if first {
            counts.connected.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        loop {
            if stop.load(Ordering::Relaxed) && caught_up(&users, user) {
                let _ = ws.close(None).await;
                return;
            }
            let next = tokio::time::timeout(Duration::from_millis(250), ws.next()).await;
            let msg = match next {
                Err(_) => continue,
                Ok(Some(Ok(m))) => m,
                Ok(_) => break,
            };
            let Message::Text(t) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("welcome") => {
                    if let Some(at) = v["positions"].get(ch.as_str()) {
                        let reported = at["offset"].as_u64().unwrap_or(0);
                        match at.get("recovered") {
                            Some(Value::Bool(true)) => {
                                counts.recovered.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Value::Bool(false)) => {
                                counts.not_recovered.fetch_add(1, Ordering::Relaxed);
                                users.position[user - 1].store(reported, Ordering::Relaxed);
                            }
                            _ => {
                                users.position[user - 1].store(reported, Ordering::Relaxed);
                            }
                        }
                        epoch = at["epoch"].as_str().map(str::to_owned);
                    }
                }
                Some("message") => {
                    let offset = v["offset"].as_u64().unwrap_or(0);
                    let pos = users.position[user - 1].load(Ordering::Relaxed);
                    if offset <= pos {
                        counts.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if offset > pos + 1 {
                        counts.holes.fetch_add(offset - pos - 1, Ordering::Relaxed);
                    }
                    users.position[user - 1].store(offset, Ordering::Relaxed);
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Some("gap") => {
                    // Only those naming this channel (the broadcast has no
                    // history and gets one after a restart).
                    let named = v["channels"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c.as_str() == Some(ch.as_str())));
                    if named {
                        counts.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    }
}

fn caught_up(users: &Users, user: usize) -> bool {
    users.position[user - 1].load(Ordering::Relaxed)
        >= users.published[user - 1].load(Ordering::Relaxed)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(
    url: &str,
    target: SocketAddr,
    source: Option<IpAddr>,
    user: usize,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| e.to_string())?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .map_err(|_| "connect timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("uid={user}")).map_err(|e| e.to_string())?,
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .map_err(|_| "handshake timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Runs the scenario; `Ok((passed, report))`.
pub(crate) async fn run(r: Recovery) -> Result<(bool, Value), String> {
    let n = r.connections;
    let users = Arc::new(Users {
        published: (0..n).map(|_| AtomicU64::new(0)).collect(),
        position: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let gw = LaunchedGateway::start(&r.binary, &r.env).await?;
    let target = gw.addr;
    crate::wait_ready(target).await?;
    eprintln!("gateway: pid {} on {target}", gw.pid);
    let permits = Arc::new(Semaphore::new(r.concurrency.max(1)));
    let mut clients = JoinSet::new();
    for user in 1..=n {
        clients.spawn(client(
            user,
            target,
            r.sources[user % r.sources.len()],
            users.clone(),
            counts.clone(),
            permits.clone(),
            stop.clone(),
        ));
    }
    // Every client connected (its welcome gave it a position).
    let connected = Instant::now();
    while counts.connected.load(Ordering::Relaxed) < n as u64 {
        if connected.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {n} clients connected within 120 s",
                counts.connected.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Their welcomes have been read (positions known) by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "{n} clients connected in {:.1} s",
        connected.elapsed().as_secs_f64()
    );
    let publisher = tokio::spawn(publish(
        r.redis_url.clone(),
        r.rate,
        r.duration,
        users.clone(),
        counts.clone(),
    ));
    // The fault.
    tokio::time::sleep(r.restart_at).await;
    let fault_at = Instant::now();
    let mut env = r.env.clone();
    env.push(("TIDINGS_LISTEN".into(), target.to_string()));
    match r.fault {
        Fault::Kill => gw.stop().await,
        Fault::Drain => gw.drain(Duration::from_secs(60)).await?,
    }
    let down = fault_at.elapsed();
    let gw = LaunchedGateway::start(&r.binary, &env).await?;
    crate::wait_ready(target).await?;
    let back = fault_at.elapsed();
    eprintln!(
        "gateway {:?}: down after {:.2} s, a new one ready after {:.2} s",
        r.fault,
        down.as_secs_f64(),
        back.as_secs_f64()
    );
    let published = publisher.await.map_err(|e| format!("publisher: {e}"))??;
    stop.store(true, Ordering::Relaxed);
    // Until every client has everything, or the drain time.
    let drain = Instant::now();
    let deadline = Duration::from_secs_f64(r.drain_secs.max(1.0));
    let mut all_caught_up_after = None;
    while drain.elapsed() < deadline {
        if (0..n).all(|i| {
            users.position[i].load(Ordering::Relaxed) >= users.published[i].load(Ordering::Relaxed)
        }) {
            all_caught_up_after = Some(fault_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clients.abort_all();
    let lost: u64 = (0..n)
        .map(|i| {
            users.published[i]
                .load(Ordering::Relaxed)
                .saturating_sub(users.position[i].load(Ordering::Relaxed))
        })
        .sum::<u64>()
        + counts.holes.load(Ordering::Relaxed);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let duplicates = c(&counts.duplicates);
    let not_recovered = c(&counts.not_recovered);
    let report = json!({
        "clients": n,
        "rate": r.rate,
        "fault": format!("{:?}", r.fault).to_lowercase(),
        "published": published,
        "delivered": c(&counts.delivered),
        "lost": lost,
        "duplicates": duplicates,
        "recovered": c(&counts.recovered),
        "not_recovered": not_recovered,
        "gap_notices": c(&counts.gaps),
        "reconnects": c(&counts.reconnects),
        "connect_failures_while_down": c(&counts.connect_failures),
        "publish_errors": c(&counts.publish_errors),
        "gateway_down_s": down.as_secs_f64(),
        "gateway_back_s": back.as_secs_f64(),
        "all_caught_up_s": all_caught_up_after.map(|d| d.as_secs_f64()),
    });
    gw.stop().await;
    let ok =
        lost == 0 && duplicates == 0 && not_recovered == 0 && c(&counts.gaps) == 0 && published > 0;
    Ok((ok, report))
}
