//! `tidings-bench`: an end-to-end load generator for the Tidings gateway.
//!
//! It opens N WebSockets to a gateway, each with its own identity through
//! the gateway's real identity path (a built-in whoami backend the cookie
//! proxy asks: cookie `uid=<n>` is user `n`), publishes through Redis at a
//! given rate, and measures delivery latency, loss, wrong-user deliveries,
//! connect rate and latency, and the gateway's memory and CPU.
//!
//! ```text
//! tidings-bench idle          -n 19000 -d 30 --launch target/release/tidings
//! tidings-bench per-user      -n 10000 --rate 20000 -d 10 --launch target/release/tidings
//! tidings-bench broadcast     -n 10000 --rate 1 -d 20 --launch target/release/tidings
//! tidings-bench connect-storm -n 10000 -c 1000 --same-cookie-every 10 --cache on --launch target/release/tidings
//! tidings-bench soak          -n 100 -d 600 --fault-every 3 --launch target/release/tidings
//! tidings-bench recovery      -n 10000 --rate 5000 -d 20 --restart-at 8 --fault kill --launch target/release/tidings
//! tidings-bench idle          -n 10000 --wire sse --launch target/release/tidings
//! tidings-bench broadcast     -n 10000 --wire socketio --launch target/release/tidings
//! tidings-bench broadcast     -n 10000 --wire pusher --launch target/release/tidings
//! tidings-bench broadcast     -n 10000 --wire socketio --socketio-baseline bins/tidings-bench/socketio-baseline
//! tidings-bench per-user      -n 2000 --rate 10000 -d 20 --gateways 3 --sharded \
//!                             --redis-cluster 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 \
//!                             --baseline-secs 3 --launch target/release/tidings
//! ```
//!
//! See docs/benchmarks.md, "End-to-end load (tidings-bench)".

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
};

mod client;
mod procs;
mod publish;
mod recovery;
mod resp;
mod soak;
mod stats;
mod whoami;
mod wire;

use stats::{Latency, ProcSample, Shared};

/// End-to-end load generator for the Tidings gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N authenticated connections for T seconds; report the gateway's
    /// RSS before, after, and per connection.
    Idle(Common),
    /// Publish R msg/s for T seconds, each to the notification channel of a
    /// random user among the N connections' users.
    PerUser {
        #[command(flatten)]
        common: Common,
        /// Messages per second.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
    },
    /// Publish R msg/s on `/app/broadcast` (every socket) for T seconds.
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// Messages per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
    },
    /// Open N connections as fast as possible (concurrency C); report the
    /// connect rate, connect latency and the whoami requests it took.
    ConnectStorm(Common),
    /// For T seconds, keep N sockets connecting and disconnecting (each its
    /// own user) while the gateway's Redis connections are killed at random
    /// every few seconds; probe each socket's channel through Redis until it
    /// delivers, and count the channels that stay silent (target: 0).
    Soak {
        #[command(flatten)]
        common: Common,
        /// Mean seconds between faults (jittered from half to 1.5 times
        /// this); 0: no faults.
        #[arg(long, default_value_t = 3.0)]
        fault_every: f64,
        /// The faults to pick from at random, comma-separated: `subscriber`
        /// (kill the gateway's subscription connection), `pool` (its
        /// publish connections), `both`, `one_random` (one of its
        /// connections).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "subscriber,pool,both,one_random"
        )]
        faults: Vec<String>,
        /// A socket's channel that delivers nothing for this many seconds
        /// after its welcome counts as silent.
        #[arg(long, default_value_t = 30.0)]
        probe_deadline: f64,
        /// Each socket stays between 0.2 s and this many seconds after its
        /// first delivery, then closes and a new one opens.
        #[arg(long, default_value_t = 3.0)]
        max_life: f64,
    },
    /// N clients (each its own user) hold sockets while R msg/s are
    /// published with history (`FCALL tidings_publish`) to random users;
    /// the gateway is SIGKILLed (or drained) mid-run and started again on
    /// the same address; clients reconnect with their positions. Counts
    /// lost and duplicated messages (target: 0 and 0). Needs --launch.
    Recovery {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: RecoveryArgs,
    },
}

/// The `recovery` scenario's own options.
#[derive(Args, Clone)]
struct RecoveryArgs {
    /// Messages per second, with history, each to a random user.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds after publishing starts when the gateway goes away.
    #[arg(long, default_value_t = 5.0)]
    restart_at: f64,
    /// How it goes away: `kill` (SIGKILL) or `drain` (SIGTERM); a new
    /// process then starts on the same address.
    #[arg(long, value_enum, default_value_t = recovery::Fault::Kill)]
    fault: recovery::Fault,
}

#[derive(Args, Clone)]
struct Common {
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold (idle), publish (per-user, broadcast) or hold after
    /// the storm (connect-storm). Default: 10, or 1 for connect-storm.
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Connection attempts in flight at once. Above the gateway's listen
    /// backlog (4096, capped by the kernel's net.core.somaxconn) a storm
    /// overflows its accept queue and the dropped SYNs are retried after 1 s.
    #[arg(short = 'c', long, default_value_t = 100)]
    concurrency: usize,
    /// Start this gateway binary with the right environment (cookie proxy
    /// to the built-in whoami backend, Redis, high connection limits).
    #[arg(long, value_name = "TIDINGS_BINARY", conflicts_with = "gateway_url")]
    launch: Option<PathBuf>,
    /// With --launch: start this many gateway processes (each on its own
    /// port, all on the same Redis); clients are spread over them
    /// round-robin.
    #[arg(long, value_name = "N", default_value_t = 1)]
    gateways: usize,
    /// How clients talk to the gateway: its WebSocket protocol (`/ws`),
    /// Server-Sent Events (`/sse`), Socket.IO over WebSocket, or Socket.IO
    /// over long-polling (with --launch, Socket.IO is turned on).
    #[arg(long, value_enum, default_value_t = wire::Wire::Websocket)]
    wire: wire::Wire,
    /// Instead of a gateway, start the reference Node socket.io server in
    /// this directory (`node DIR/server.js`, dependencies installed with
    /// `npm install`; see bins/tidings-bench/socketio-baseline) with the
    /// same whoami backend and Redis. Needs a Socket.IO --wire.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["launch", "gateway_url"]
    )]
    socketio_baseline: Option<PathBuf>,
    /// The WebSocket URL of a gateway started by you (with
    /// `TIDINGS_IDENTITY__RESOLVERS='["cookie_proxy"]'`,
    /// `TIDINGS_IDENTITY__COOKIE_PROXY__URL=<the whoami URL, see --whoami-listen>`,
    /// `TIDINGS_IDENTITY__ANONYMOUS=refuse`). Repeat it for several
    /// gateways: clients are spread over them round-robin.
    #[arg(long, value_name = "WS_URL")]
    gateway_url: Vec<String>,
    /// The process id of that gateway, to read its RSS and CPU (repeat it
    /// in the order of the --gateway-url's).
    #[arg(long, value_name = "PID")]
    gateway_pid: Vec<u32>,
    /// Redis to publish through (and, with --launch, the gateway's
    /// `TIDINGS_REDIS_URL`). With --launch and none given, the bench
    /// starts a private `redis-server` on a free port.
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    redis_url: Option<String>,
    /// A Redis Cluster to publish through instead (`host:port` or
    /// `redis://` seed nodes, comma-separated): each message goes to the
    /// master owning its channel's slot, and every node's CPU is read with
    /// `INFO cpu`. With --launch, the gateways run with
    /// `redis.mode = "cluster"` on these nodes.
    #[arg(long, value_name = "NODES", value_delimiter = ',')]
    redis_cluster: Vec<String>,
    /// The user channels (`/app/user/{user}/notifications`) are sharded:
    /// with --launch the gateways' routing rule says `sharded = true`
    /// (SSUBSCRIBE), and the bench publishes with `SPUBLISH`.
    #[arg(long)]
    sharded: bool,
    /// Before publishing, hold this many seconds with every socket open,
    /// measuring Redis's and the gateways' CPU at rest (topology checks,
    /// pings, cluster bus): reported, and subtracted in the per-message
    /// figures.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    baseline_secs: f64,
    /// With --launch: the cookie proxy's answer cache (off sets
    /// `TIDINGS_IDENTITY__COOKIE_PROXY__CACHE_TTL_SECS=0`).
    #[arg(long, value_enum, default_value_t = Cache::On)]
    cache: Cache,
    /// K connections share each user (and cookie): connection i is user
    /// i/K + 1. 1: every connection is its own user.
    #[arg(long, value_name = "K", default_value_t = 1)]
    same_cookie_every: usize,
    /// Spread client sockets over this many source addresses 127.0.0.2,
    /// 127.0.0.3, ... (loopback gateways only; 0: let the kernel choose).
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Where the built-in whoami backend listens (port 0: a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    whoami_listen: SocketAddr,
    /// With --launch: an extra gateway environment variable (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// After publishing, wait at most this many seconds for deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Cache {
    On,
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidings-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(cli.scenario) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    // Connection tasks may still hold sockets: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tidings-bench: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Idle,
    PerUser,
    Broadcast,
    ConnectStorm,
    Soak,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle",
            Kind::PerUser => "per-user",
            Kind::Broadcast => "broadcast",
            Kind::ConnectStorm => "connect-storm",
            Kind::Soak => "soak",
        }
    }
}

/// The `recovery` scenario: its own gateway, Redis and whoami backend.
async fn run_recovery(common: Common, args: RecoveryArgs) -> Result<bool, String> {
    if common.wire != wire::Wire::Websocket || common.socketio_baseline.is_some() {
        return Err("recovery drives the gateway's WebSockets only (--wire websocket)".to_owned());
    }
    if common.gateways != 1 || !common.redis_cluster.is_empty() || common.sharded {
        return Err(
            "recovery drives one gateway on one Redis server (no --gateways, --redis-cluster or --sharded)"
                .to_owned(),
        );
    }
    let bin = common
        .launch
        .clone()
        .ok_or("recovery restarts the gateway itself: give --launch <tidings binary>")?;
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".to_owned());
    }
    let duration = common.duration.unwrap_or(10.0);
    let secs = |v: f64, what: &str| {
        if v.is_finite() && v >= 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!("{what} must be a non-negative number of seconds"))
        }
    };
    let restart_at = secs(args.restart_at, "--restart-at")?;
    if args.restart_at >= duration {
        return Err("--restart-at must come before the end of --duration".to_owned());
    }
    rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    let whoami = whoami::Whoami::start(common.whoami_listen)
        .await
        .map_err(|e| format!("whoami backend: {e}"))?;
    let private_redis;
    let redis_url = match &common.redis_url {
        Some(u) => u.clone(),
        None => {
            let r = procs::PrivateRedis::start().await?;
            let url = r.url();
            private_redis = Some(r);
            let _ = &private_redis;
            url
        }
    };
    let mut env: Vec<(String, String)> = vec![
        (
            "TIDINGS_IDENTITY__RESOLVERS".into(),
            "[\"cookie_proxy\"]".into(),
        ),
        ("TIDINGS_IDENTITY__COOKIE_PROXY__URL".into(), whoami.url()),
        ("TIDINGS_IDENTITY__ANONYMOUS".into(), "refuse".into()),
        ("TIDINGS_LIMITS__MAX_CONNECTIONS".into(), "1000000".into()),
        (
            "TIDINGS_LIMITS__MAX_CONNECTIONS_PER_IP".into(),
            "1000000".into(),
        ),
        (
            "TIDINGS_LIMITS__MAX_CONNECTIONS_PER_USER".into(),
            "1000000".into(),
        ),
        ("TIDINGS_REDIS_URL".into(), redis_url.clone()),
    ];
    for kv in &common.gateway_env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--gateway-env {kv}: expected KEY=VALUE"))?;
        env.push((k.to_owned(), v.to_owned()));
    }
    let sources: Vec<Option<IpAddr>> = if common.source_ips > 0 {
        (0..common.source_ips)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i.min(250)))))
            .collect()
    } else {
        vec![None]
    };
    let (ok, report) = recovery::run(recovery::Recovery {
        connections: common.connections,
        rate: args.rate,
        duration: secs(duration, "--duration")?,
        restart_at,
        fault: args.fault,
        concurrency: common.concurrency,
        drain_secs: common.drain_secs.max(30.0),
        binary: bin,
        env,
        redis_url,
        sources,
    })
    .await?;
    println!();
    println!(
        "tidings-bench recovery: {} clients, {} msg/s with history for {duration} s, gateway {:?} at {} s (load before: {})",
        common.connections,
        args.rate,
        args.fault,
        args.restart_at,
        loadavg.as_deref().unwrap_or("?")
    );
    if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            println!("  {k:<30}{v}");
        }
    }
    println!(
        "  {}",
        if ok {
            "PASS: nothing lost, nothing twice"
        } else {
            "FAIL"
        }
    );
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())
            .map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(ok)
}

/// Polls `GET /readyz` until it answers 200.
pub(crate) async fn wait_ready(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            if s.write_all(req.as_bytes()).await.is_ok()
                && s.read_to_end(&mut buf).await.is_ok()
                && buf.starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway at {addr} did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ws://host:port/path` → the socket address to connect to.
async fn target_of(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("--gateway-url must be a ws:// or http:// URL")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let found = tokio::net::lookup_host(&hostport)
        .await
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .find(SocketAddr::is_ipv4);
    found.ok_or_else(|| format!("{hostport} has no IPv4 address"))
}

/// What Redis and the gateways cost at rest (`--baseline-secs`).
struct Baseline {
    wall: f64,
    /// Per Redis node, cores.
    redis_cores: Vec<Option<f64>>,
    /// Per gateway, cores.
    gateway_cores: Vec<Option<f64>>,
}

/// Each gateway's `/proc` sample (`None`: no pid, or gone).
fn read_all(pids: &[Option<u32>]) -> Vec<Option<ProcSample>> {
    pids.iter()
        .map(|p| p.and_then(|p| ProcSample::read(Some(p))))
        .collect()
}

/// Per node: CPU seconds between two `INFO cpu` samples, divided by `wall`
/// seconds (cores).
fn cores_each(before: &[Option<f64>], after: &[Option<f64>], wall: f64) -> Vec<Option<f64>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if wall > 0.0 => Some((a - b).max(0.0) / wall),
            _ => None,
        })
        .collect()
}

/// Cores per 10,000 msg/s: `cores` busy over `wall` seconds, less the
/// `idle` cores at rest, for `messages` published.
fn per_10k(cores: Option<f64>, idle: Option<f64>, wall: f64, messages: usize) -> Option<f64> {
    let cores = cores?;
    (messages > 0).then(|| (cores - idle.unwrap_or(0.0)).max(0.0) * wall / messages as f64 * 1e4)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A phase's CPU use, as a percentage of one core.
fn cpu_percent(
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    wall: Duration,
    hz: f64,
) -> Option<f64> {
    let (b, a) = (before?, after?);
    let secs = wall.as_secs_f64();
    (secs > 0.0).then(|| a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / hz / secs * 100.0)
}

/// Returns Ok(true) when everything was delivered exactly right.
async fn run(scenario: Scenario) -> Result<bool, String> {
    if let Scenario::Recovery { common, args } = scenario {
        return run_recovery(common, args).await;
    }
    let mut soak_args = None;
    let (kind, common, rate) = match scenario {
        Scenario::Soak {
            common,
            fault_every,
            faults,
            probe_deadline,
            max_life,
        } => {
            soak_args = Some((fault_every, faults, probe_deadline, max_life));
            (Kind::Soak, common, 0.0)
        }
        Scenario::Idle(c) => (Kind::Idle, c, 0.0),
        Scenario::PerUser { common, rate } => (Kind::PerUser, common, rate),
        Scenario::Broadcast { common, rate } => (Kind::Broadcast, common, rate),
        Scenario::ConnectStorm(c) => (Kind::ConnectStorm, c, 0.0),
        Scenario::Recovery { .. } => unreachable!("handled above"),
    };
    if kind == Kind::PerUser && common.wire == wire::Wire::Pusher {
        return Err(
            "--wire pusher subscribes to one public channel: idle and broadcast only".to_owned(),
        );
    }
    if kind == Kind::Soak && common.wire != wire::Wire::Websocket {
        return Err("soak drives WebSockets only (--wire websocket)".to_owned());
    }
    let n = common.connections;
    let k = common.same_cookie_every.max(1);
    let users = n.div_ceil(k) as u64;
    let duration = common.duration.unwrap_or(if kind == Kind::ConnectStorm {
        1.0
    } else {
        10.0
    });
    if matches!(kind, Kind::PerUser | Kind::Broadcast) && !(rate > 0.0 && rate.is_finite()) {
        return Err("--rate must be a positive number".to_owned());
    }
    let hz = stats::clock_ticks();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));

    // Sockets: ours, plus the gateway's (a launched gateway inherits the limit).
    let nofile = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if (n + common.concurrency + 64) as u64 > nofile {
        eprintln!(
            "warning: {n} connections + {} in flight need more than the open-file limit {nofile}",
            common.concurrency
        );
    }

    let whoami = whoami::Whoami::start(common.whoami_listen)
        .await
        .map_err(|e| {
            format!(
                "whoami backend: cannot listen on {}: {e}",
                common.whoami_listen
            )
        })?;
    eprintln!("whoami backend: {}", whoami.url());

    // The gateway: launched here, or given.
    let mut private_redis = None;
    if common.socketio_baseline.is_some() && !common.wire.is_socketio() {
        return Err(
            "--socketio-baseline serves Socket.IO only: give --wire socketio or socketio-polling"
                .to_owned(),
        );
    }
    let launches = common.launch.is_some() || common.socketio_baseline.is_some();
    if common.gateways == 0 {
        return Err("--gateways must be at least 1".to_owned());
    }
    if common.gateways > 1 && common.launch.is_none() {
        return Err(
            "--gateways N starts N gateways: give --launch (or repeat --gateway-url)".to_owned(),
        );
    }
    if !common.gateway_pid.is_empty() && common.gateway_pid.len() != common.gateway_url.len() {
        return Err("give one --gateway-pid per --gateway-url, in the same order".to_owned());
    }
    let cluster = if common.redis_cluster.is_empty() {
        None
    } else {
        if common.socketio_baseline.is_some() {
            return Err(
                "--redis-cluster drives tidings gateways, not the Socket.IO baseline".to_owned(),
            );
        }
        let map = resp::ClusterMap::read(&common.redis_cluster).await?;
        eprintln!(
            "redis cluster: masters {}; nodes {}",
            map.masters.join(" "),
            map.nodes.join(" ")
        );
        Some(map)
    };
    let redis_url = match (&common.redis_url, &cluster, launches) {
        (Some(u), _, _) => Some(u.clone()),
        (None, Some(_), _) => {
            let (first, _) = resp::node_address(&common.redis_cluster[0])?;
            Some(if common.redis_cluster[0].starts_with("redis://") {
                common.redis_cluster[0].clone()
            } else {
                format!("redis://{first}")
            })
        }
        (None, None, true) => {
            let r = procs::PrivateRedis::start().await?;
            let url = r.url();
            eprintln!("private redis-server: {url}");
            private_redis = Some(r);
            Some(url)
        }
        (None, None, false) => None,
    };
    let launch = common.launch.clone().or_else(|| {
        common
            .socketio_baseline
            .as_ref()
            .map(|_| PathBuf::from("node"))
    });
    // (WebSocket URL, pid, the process if launched here) per gateway.
    let mut gateways: Vec<(String, Option<u32>, Option<procs::LaunchedGateway>)> = Vec::new();
    match &launch {
        Some(bin) => {
            let mut env: Vec<(String, String)> = vec![
                (
                    "TIDINGS_IDENTITY__RESOLVERS".into(),
                    "[\"cookie_proxy\"]".into(),
                ),
                ("TIDINGS_IDENTITY__COOKIE_PROXY__URL".into(), whoami.url()),
                ("TIDINGS_IDENTITY__ANONYMOUS".into(), "refuse".into()),
                ("TIDINGS_LIMITS__MAX_CONNECTIONS".into(), "1000000".into()),
                (
                    "TIDINGS_LIMITS__MAX_CONNECTIONS_PER_IP".into(),
                    "1000000".into(),
                ),
                (
                    "TIDINGS_LIMITS__MAX_CONNECTIONS_PER_USER".into(),
                    "1000000".into(),
                ),
            ];
            if let Some(u) = &redis_url {
                env.push(("TIDINGS_REDIS_URL".into(), u.clone()));
            }
            if cluster.is_some() {
                env.push(("TIDINGS_REDIS__MODE".into(), "cluster".into()));
                let seeds: Vec<String> = common
                    .redis_cluster
                    .iter()
                    .skip(1)
                    .map(|n| resp::node_address(n).map(|(hp, _)| format!("{hp:?}")))
                    .collect::<Result<_, _>>()?;
                env.push((
                    "TIDINGS_REDIS__NODES".into(),
                    format!("[{}]", seeds.join(",")),
                ));
            }
            if common.sharded {
                // The default rules, with the user channels sharded.
                env.push((
                    "TIDINGS_ROUTING__RULES".into(),
                    concat!(
                        "[{ channel = \"/app/broadcast\", join = true, subscribe = true, anonymous = true },",
                        " { channel = \"/app/user/{user}/notifications\", join = true, subscribe = true, sharded = true }]"
                    )
                    .into(),
                ));
            }
            if common.cache == Cache::Off {
                env.push((
                    "TIDINGS_IDENTITY__COOKIE_PROXY__CACHE_TTL_SECS".into(),
                    "0".into(),
                ));
            }
            for kv in &common.gateway_env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--gateway-env {kv}: expected KEY=VALUE"))?;
                env.push((k.to_owned(), v.to_owned()));
            }
            if common.wire.is_socketio() {
                env.push(("TIDINGS_SOCKETIO__ENABLED".into(), "true".into()));
            }
            if common.wire == wire::Wire::Pusher {
                env.extend(wire::pusher_env());
            }
            for _ in 0..common.gateways {
                let gw = match &common.socketio_baseline {
                    Some(dir) => {
                        let script = dir.join("server.js");
                        procs::LaunchedGateway::start_with(bin, &[script.as_os_str()], &env).await?
                    }
                    None => procs::LaunchedGateway::start(bin, &env).await?,
                };
                eprintln!("gateway: pid {} on {}", gw.pid, gw.addr);
                gateways.push((common.wire.url(gw.addr), Some(gw.pid), Some(gw)));
            }
        }
        None if !common.gateway_url.is_empty() => {
            for (i, url) in common.gateway_url.iter().enumerate() {
                gateways.push((url.clone(), common.gateway_pid.get(i).copied(), None));
            }
        }
        None => {
            return Err(
                "give --launch <tidings binary>, --socketio-baseline <dir> or --gateway-url"
                    .to_owned(),
            )
        }
    }
    let mut targets = Vec::new();
    for (url, _, _) in &gateways {
        let target = target_of(url).await?;
        wait_ready(target).await?;
        targets.push(target);
    }
    let gw_pids: Vec<Option<u32>> = gateways.iter().map(|g| g.1).collect();
    // The first gateway, for what drives only one (soak) and the report's
    // single-gateway fields.
    let ws_url = gateways[0].0.clone();
    let pid = gateways[0].1;
    let target = targets[0];
    if let Some((fault_every, faults, probe_deadline, max_life)) = soak_args {
        if gateways.len() > 1 || cluster.is_some() {
            return Err("soak drives one gateway on one Redis server".to_owned());
        }
        let mut launched = gateways.pop().and_then(|g| g.2);
        let faults = faults
            .iter()
            .map(|f| {
                soak::FAULTS
                    .iter()
                    .position(|k| k == f)
                    .ok_or_else(|| format!("--faults: unknown fault {f:?}"))
            })
            .collect::<Result<Vec<usize>, String>>()?;
        let secs = |v: f64, what: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("{what} must be a non-negative number of seconds"))
            }
        };
        let sources: Vec<Option<IpAddr>> = if target.ip().is_loopback() && common.source_ips > 0 {
            (0..common.source_ips)
                .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i.min(250)))))
                .collect()
        } else {
            vec![None]
        };
        let (ok, report) = soak::run(soak::Soak {
            connections: n,
            duration: secs(duration, "--duration")?,
            fault_every: secs(fault_every, "--fault-every")?.as_secs_f64(),
            faults,
            probe_deadline: secs(probe_deadline, "--probe-deadline")?,
            max_life: secs(max_life, "--max-life")?,
            redis_url: redis_url
                .clone()
                .ok_or("soak needs Redis: give --redis-url or --launch")?,
            target,
            url: Arc::from(ws_url.as_str()),
            sources,
        })
        .await?;
        let alive = launched
            .as_mut()
            .is_none_or(procs::LaunchedGateway::running);
        if let Some(g) = launched {
            g.stop().await;
        }
        drop(private_redis);
        let ok = ok && alive;
        println!();
        println!(
            "tidings-bench soak: {n} sockets at a time for {duration} s, a fault every ~{fault_every} s"
        );
        println!("  {:<14}{ws_url}", "gateway");
        for key in [
            "sockets",
            "delivered",
            "silent_channels",
            "gap_notices",
            "closed_by_gateway",
            "connect_failures",
            "probes",
            "probe_errors",
            "faults_total",
            "faults",
            "first_delivery_latency",
            "gateway_metrics",
        ] {
            println!("  {key:<24}{}", report[key]);
        }
        for s in report["samples"].as_array().into_iter().flatten() {
            println!("    {s}");
        }
        if !alive {
            println!("  THE GATEWAY DIED during the run");
        }
        println!(
            "  result: {}",
            if ok { "OK" } else { "PROBLEMS (see above)" }
        );
        if let Some(path) = &common.json {
            let mut report = report;
            report["ok"] = json!(ok);
            let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        return Ok(ok);
    }
    if matches!(kind, Kind::PerUser | Kind::Broadcast) && redis_url.is_none() {
        return Err("--redis-url is needed to publish".to_owned());
    }

    let max_messages = match kind {
        Kind::PerUser | Kind::Broadcast => (rate * duration).ceil().max(1.0) as usize,
        _ => 0,
    };
    let shared = Arc::new(Shared::new(max_messages, users));
    let sent = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(parking_lot::Mutex::new("connect"));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress(
        kind,
        shared.clone(),
        sent.clone(),
        phase.clone(),
        gw_pids.clone(),
        peak_rss.clone(),
        hz,
    ));

    // Redis's CPU time, from `INFO cpu` on every node.
    let mut redis_cpu = match (&cluster, &redis_url) {
        (Some(map), _) => Some(resp::RedisCpu::connect(&map.nodes, &map.auth).await?),
        (None, Some(url)) => {
            let (hostport, auth) = publish::parse_url(url)?;
            Some(resp::RedisCpu::connect(&[hostport], &auth).await?)
        }
        (None, None) => None,
    };

    // Settle, then the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gw_before_each = read_all(&gw_pids);
    let gw_before = stats::total(&gw_before_each);

    // Connect N clients.
    let sources: Vec<Option<IpAddr>> = if target.ip().is_loopback() && common.source_ips > 0 {
        (0..common.source_ips)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i.min(250)))))
            .collect()
    } else {
        vec![None]
    };
    let urls: Vec<Arc<str>> = gateways.iter().map(|g| Arc::from(g.0.as_str())).collect();
    let permits = Arc::new(Semaphore::new(common.concurrency.max(1)));
    let mut clients = JoinSet::new();
    let redis_pid = private_redis.as_ref().and_then(procs::PrivateRedis::pid);
    let bench_connect_before = ProcSample::read(None);
    let machine_connect_before = stats::machine_cpu();
    let connect_start = Instant::now();
    for i in 0..n {
        clients.spawn(client::run(
            client::Plan {
                index: i,
                user: (i / k) as u64 + 1,
                source: sources[i % sources.len()],
                target: targets[i % targets.len()],
                url: urls[i % urls.len()].clone(),
                wire: common.wire,
            },
            shared.clone(),
            permits.clone(),
        ));
    }
    loop {
        let done = shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let connect_wall = connect_start.elapsed();
    let gw_connected_each = read_all(&gw_pids);
    let gw_connected = stats::total(&gw_connected_each);
    let bench_connected = ProcSample::read(None);
    let machine_connected = stats::machine_cpu();
    let whoami_after_connect = whoami.requests();
    let opened = shared.opened.load(Ordering::Relaxed);

    // At rest with every socket open: what Redis and the gateways cost
    // without messages.
    let mut baseline = None;
    if common.baseline_secs > 0.0 {
        *phase.lock() = "baseline";
        let redis0 = match redis_cpu.as_mut() {
            Some(r) => r.sample().await,
            None => Vec::new(),
        };
        let gw0 = read_all(&gw_pids);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(common.baseline_secs)).await;
        let redis1 = match redis_cpu.as_mut() {
            Some(r) => r.sample().await,
            None => Vec::new(),
        };
        let gw1 = read_all(&gw_pids);
        let wall = start.elapsed().as_secs_f64();
        baseline = Some(Baseline {
            wall,
            redis_cores: cores_each(&redis0, &redis1, wall),
            gateway_cores: gw0
                .iter()
                .zip(&gw1)
                .map(|(a, b)| cpu_percent(*a, *b, start.elapsed(), hz).map(|p| p / 100.0))
                .collect(),
        });
    }

    // The scenario's own phase.
    let mut publisher = match (kind, &cluster) {
        (Kind::PerUser | Kind::Broadcast, Some(map)) => {
            Some(publish::Publisher::connect_cluster(map, common.sharded, users).await?)
        }
        (Kind::PerUser | Kind::Broadcast, None) => Some(
            publish::Publisher::connect(redis_url.as_deref().unwrap_or_default(), common.sharded)
                .await?,
        ),
        _ => None,
    };
    let bench_before = ProcSample::read(None);
    let redis_before = match redis_cpu.as_mut() {
        Some(r) => r.sample().await,
        None => Vec::new(),
    };
    let main_start = Instant::now();
    let mut published = 0usize;
    let mut drain_wall = Duration::ZERO;
    let mut publisher_replies = None;
    match kind {
        Kind::Idle | Kind::ConnectStorm | Kind::Soak => {
            *phase.lock() = "hold";
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
        }
        Kind::PerUser | Kind::Broadcast => {
            *phase.lock() = "publish";
            let publisher = publisher
                .as_mut()
                .ok_or("no publisher for a publishing scenario")?;
            publisher.sent = sent.clone();
            let target = if kind == Kind::PerUser {
                publish::Target::PerUser { users }
            } else {
                publish::Target::Broadcast {
                    channel: common.wire.broadcast_channel(),
                }
            };
            published = publisher.run(rate, &target, &shared).await?;
            *phase.lock() = "drain";
            let drain_start = Instant::now();
            let expected = shared.expected_total(published);
            while shared.received.load(Ordering::Relaxed) < expected
                && drain_start.elapsed() < Duration::from_secs_f64(common.drain_secs)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Late duplicates or strays: a short extra look.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drain_wall = drain_start.elapsed();
            publisher_replies = Some(publisher.replies.clone());
        }
    }
    let main_wall = main_start.elapsed();
    let gw_after_each = read_all(&gw_pids);
    let gw_after = stats::total(&gw_after_each);
    let bench_after = ProcSample::read(None);
    let redis_after = match redis_cpu.as_mut() {
        Some(r) => r.sample().await,
        None => Vec::new(),
    };
    let machine_after = stats::machine_cpu();
    progress.abort();
    clients.abort_all();
    drop(publisher);

    let mut gateway_alive = true;
    let mut gateway_tail = None;
    for (i, (_, gw_pid, launched)) in gateways.iter_mut().enumerate() {
        let alive = match launched.as_mut() {
            Some(g) => g.running(),
            None => gw_after_each[i].is_some() || gw_pid.is_none(),
        };
        if !alive {
            gateway_alive = false;
            gateway_tail = launched.as_ref().map(procs::LaunchedGateway::tail);
        }
    }
    for (_, _, launched) in gateways.drain(..) {
        if let Some(g) = launched {
            g.stop().await;
        }
    }
    drop(private_redis);

    // The report.
    let failed = shared.failed.load(Ordering::Relaxed);
    let connect_lat = Latency::of(&shared.connect.merged());
    let delivery_lat = Latency::of(&shared.delivery.merged());
    let expected = shared.expected_total(published);
    let received = shared.received.load(Ordering::Relaxed);
    let (lost, duplicated) = shared.loss(published);
    let wrong_user = shared.wrong_user.load(Ordering::Relaxed);
    let wrong_welcome = shared.wrong_welcome.load(Ordering::Relaxed);
    let disconnected = shared.disconnected.load(Ordering::Relaxed);
    let foreign = shared.foreign.load(Ordering::Relaxed);
    let other_frames = shared.other_frames.load(Ordering::Relaxed);
    let connect_rate = opened as f64 / connect_wall.as_secs_f64().max(1e-9);
    let rss = |s: Option<ProcSample>| s.map(|s| s.rss_kib);
    let per_conn_bytes = match (gw_before, gw_after) {
        (Some(b), Some(a)) if opened > 0 => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / opened as f64)
        }
        _ => None,
    };
    let per_conn_connected = match (gw_before, gw_connected) {
        (Some(b), Some(a)) if opened > 0 => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / opened as f64)
        }
        _ => None,
    };
    let gw_cpu_connect = cpu_percent(gw_before, gw_connected, connect_wall, hz);
    let gw_cpu_main = cpu_percent(gw_connected, gw_after, main_wall, hz);
    let bench_cpu_main = cpu_percent(bench_before, bench_after, main_wall, hz);
    let wall = main_wall.as_secs_f64();
    let redis_nodes = redis_cpu
        .as_ref()
        .map(resp::RedisCpu::nodes)
        .unwrap_or_default();
    let redis_cores = cores_each(&redis_before, &redis_after, wall);
    let redis_cpu_main = (!redis_cores.is_empty() && redis_cores.iter().all(Option::is_some))
        .then(|| redis_cores.iter().flatten().sum::<f64>() * 100.0);
    let redis_idle = baseline.as_ref().map(|b| &b.redis_cores);
    let idle_of =
        |v: Option<&Vec<Option<f64>>>, i: usize| v.and_then(|v| v.get(i).copied().flatten());
    let redis_per_10k_each: Vec<Option<f64>> = redis_cores
        .iter()
        .enumerate()
        .map(|(i, c)| per_10k(*c, idle_of(redis_idle, i), wall, published))
        .collect();
    let redis_per_10k = (!redis_per_10k_each.is_empty()
        && redis_per_10k_each.iter().all(Option::is_some))
    .then(|| redis_per_10k_each.iter().flatten().sum::<f64>());
    let gw_idle = baseline.as_ref().map(|b| &b.gateway_cores);
    let gw_cores_each: Vec<Option<f64>> = gw_connected_each
        .iter()
        .zip(&gw_after_each)
        .map(|(a, b)| cpu_percent(*a, *b, main_wall, hz).map(|p| p / 100.0))
        .collect();
    let gw_idle_total = gw_idle.map(|v| v.iter().flatten().sum::<f64>());
    let gw_per_10k = per_10k(
        gw_cpu_main.map(|p| p / 100.0),
        gw_idle_total,
        wall,
        published,
    );
    // Gateway CPU per delivered frame, at rest subtracted, in µs.
    let gw_us_per_delivery = gw_cpu_main.and_then(|p| {
        (received > 0).then(|| {
            (p / 100.0 - gw_idle_total.unwrap_or(0.0)).max(0.0) * wall / received as f64 * 1e6
        })
    });
    let per_gateway: Vec<Value> = gw_pids
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "url": urls[i].as_ref(),
                "pid": p,
                "rss_kib_after": rss(gw_after_each[i]),
                "cpu_percent_connect": cpu_percent(gw_before_each[i], gw_connected_each[i], connect_wall, hz),
                "cpu_percent_main": gw_cores_each[i].map(|c| c * 100.0),
                "baseline_cores": idle_of(gw_idle, i),
            })
        })
        .collect();
    let per_node: Vec<Value> = redis_nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            json!({
                "node": node,
                "cpu_percent_main": redis_cores[i].map(|c| c * 100.0),
                "baseline_cores": idle_of(redis_idle, i),
                "cores_per_10k_msg_per_sec": redis_per_10k_each[i],
            })
        })
        .collect();
    let bench_cpu_connect = cpu_percent(bench_connect_before, bench_connected, connect_wall, hz);
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine_connect = stats::machine_busy_percent(machine_connect_before, machine_connected);
    let machine_main = stats::machine_busy_percent(machine_connected, machine_after);
    // What other processes took: busy share of all cores minus ours.
    let others = |machine: Option<f64>, ours: &[Option<f64>]| {
        machine.map(|m| (m - ours.iter().flatten().sum::<f64>() / nproc).max(0.0))
    };
    let others_connect = others(machine_connect, &[gw_cpu_connect, bench_cpu_connect]);
    let others_main = others(machine_main, &[gw_cpu_main, bench_cpu_main, redis_cpu_main]);
    let errors: Value = shared
        .errors
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let samples = shared.samples.lock().clone();
    let replies = publisher_replies.as_ref().map(|r| {
        json!({
            "replies": r.replies.load(Ordering::Relaxed),
            "zero_receivers": r.zero_receivers.load(Ordering::Relaxed),
            "errors": r.errors.load(Ordering::Relaxed),
        })
    });
    let mut ok = failed == 0
        && lost == 0
        && duplicated == 0
        && wrong_user == 0
        && wrong_welcome == 0
        && disconnected == 0
        && foreign == 0
        && other_frames == 0
        && gateway_alive;
    if matches!(kind, Kind::PerUser | Kind::Broadcast) && published < max_messages {
        ok = false;
    }
    let report = json!({
        "scenario": kind.name(),
        "ok": ok,
        "config": {
            "connections": n,
            "users": users,
            "same_cookie_every": k,
            "concurrency": common.concurrency,
            "duration_secs": duration,
            "rate_per_sec": if rate > 0.0 { json!(rate) } else { Value::Null },
            "source_ips": sources.iter().filter(|s| s.is_some()).count(),
            "launched": launch.is_some(),
            "cache": match (common.launch.is_some(), common.cache) {
                (false, _) => "as configured",
                (true, Cache::On) => "on",
                (true, Cache::Off) => "off",
            },
            "gateway_url": ws_url,
            "gateways": gw_pids.len(),
            "redis_cluster": cluster.as_ref().map(|m| m.masters.clone()),
            "sharded": common.sharded,
            "baseline_secs": baseline.as_ref().map(|b| b.wall),
            "wire": common.wire.name(),
            "server": if common.socketio_baseline.is_some() { "socket.io (node)" } else { "tidings" },
        },
        "connect": {
            "attempted": n,
            "opened": opened,
            "failed": failed,
            "errors": errors,
            "wall_secs": connect_wall.as_secs_f64(),
            "rate_per_sec": connect_rate,
            "latency": connect_lat,
        },
        "whoami_requests": {
            "after_connect": whoami_after_connect,
            "total": whoami.requests(),
        },
        "delivery": {
            "published": published,
            "expected": expected,
            "received": received,
            "lost": lost,
            "duplicated": duplicated,
            "wrong_user": wrong_user,
            "wrong_welcome": wrong_welcome,
            "foreign": foreign,
            "other_frames": other_frames,
            "disconnected": disconnected,
            "publish_replies": replies,
            "drain_secs": drain_wall.as_secs_f64(),
            "latency": delivery_lat,
        },
        "gateway": {
            "pid": pid,
            "alive_at_end": gateway_alive,
            "rss_kib_before": rss(gw_before),
            "rss_kib_connected": rss(gw_connected),
            "rss_kib_after": rss(gw_after),
            "rss_kib_peak": gw_after.map(|s| s.hwm_kib).or(Some(peak_rss.load(Ordering::Relaxed)).filter(|p| *p > 0)),
            "rss_bytes_per_connection": per_conn_bytes,
            "rss_bytes_per_connection_when_connected": per_conn_connected,
            "threads": gw_after.map(|s| s.threads),
            "cpu_percent_connect": gw_cpu_connect,
            "cpu_percent_main": gw_cpu_main,
            "baseline_cores": gw_idle_total,
            "cores_per_10k_msg_per_sec": gw_per_10k,
            "cpu_us_per_delivery": gw_us_per_delivery,
            "main_phase_secs": main_wall.as_secs_f64(),
        },
        "gateways": per_gateway,
        "redis": {
            "private": redis_pid.is_some(),
            "cpu_percent_main": redis_cpu_main,
            "cores_per_10k_msg_per_sec": redis_per_10k,
            "nodes": per_node,
        },
        "machine": {
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_at_start": loadavg,
            "busy_percent_of_all_cores_connect": machine_connect,
            "busy_percent_of_all_cores_main": machine_main,
            "other_processes_percent_of_all_cores_connect": others_connect,
            "other_processes_percent_of_all_cores_main": others_main,
        },
        "bench": {
            "cpu_percent_connect": bench_cpu_connect,
            "cpu_percent_main": bench_cpu_main,
            "rss_kib": bench_after.map(|s| s.rss_kib),
        },
        "samples": samples,
    });

    // The human table.
    let fmt_opt =
        |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1}{unit}"));
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        )
    };
    println!();
    println!(
        "tidings-bench {}: {n} connections ({users} users, {k} per user), concurrency {}{}",
        kind.name(),
        common.concurrency,
        if rate > 0.0 {
            format!(", {rate} msg/s for {duration} s")
        } else {
            format!(", held {duration} s")
        }
    );
    println!(
        "  {:<14}{} ({}, wire {})",
        "gateway",
        ws_url,
        if common.socketio_baseline.is_some() {
            "socket.io baseline"
        } else {
            "tidings"
        },
        common.wire.name()
    );
    println!(
        "  {:<14}{opened} opened, {failed} failed in {:.2} s = {connect_rate:.0} conn/s",
        "connect",
        connect_wall.as_secs_f64()
    );
    if failed > 0 {
        println!("  {:<14}{errors}", "  errors");
    }
    println!("  {:<14}{}", "connect lat.", lat(&connect_lat));
    println!(
        "  {:<14}{} requests ({} during the connect phase)",
        "whoami",
        whoami.requests(),
        whoami_after_connect
    );
    if matches!(kind, Kind::PerUser | Kind::Broadcast) {
        println!(
            "  {:<14}{published} published, {expected} expected, {received} received, {lost} lost, {duplicated} duplicated, {wrong_user} wrong-user",
            "delivery"
        );
        println!("  {:<14}{}", "latency", lat(&delivery_lat));
    }
    println!(
        "  {:<14}{} disconnected, {other_frames} other frames, {foreign} unattributed, {wrong_welcome} wrong welcomes",
        "anomalies", disconnected
    );
    println!(
        "  {:<14}RSS {} MiB before, {} MiB connected, {} MiB at end; {} per connection",
        "gateway mem",
        fmt_opt(rss(gw_before).map(mib), ""),
        fmt_opt(rss(gw_connected).map(mib), ""),
        fmt_opt(rss(gw_after).map(mib), ""),
        fmt_opt(per_conn_bytes.map(|b| b / 1024.0), " KiB"),
    );
    println!(
        "  {:<14}{} of one core while connecting, {} during the {} phase ({:.1} s)",
        "gateway cpu",
        fmt_opt(gw_cpu_connect, "%"),
        fmt_opt(gw_cpu_main, "%"),
        if rate > 0.0 { "publish" } else { "hold" },
        main_wall.as_secs_f64(),
    );
    println!(
        "  {:<14}{} while connecting (clients and whoami), {} during the {} phase",
        "bench cpu",
        fmt_opt(bench_cpu_connect, "%"),
        fmt_opt(bench_cpu_main, "%"),
        if rate > 0.0 { "publish" } else { "hold" },
    );
    if gw_pids.len() > 1 {
        let each: Vec<String> = gw_cores_each
            .iter()
            .map(|c| fmt_opt(c.map(|c| c * 100.0), "%"))
            .collect();
        println!(
            "  {:<14}{} during the {} phase",
            "  each",
            each.join(", "),
            if rate > 0.0 { "publish" } else { "hold" }
        );
    }
    if published > 0 {
        let f3 = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
        println!(
            "  {:<14}{} cores per 10,000 msg/s, {} µs per delivery{}",
            "  per message",
            f3(gw_per_10k),
            fmt_opt(gw_us_per_delivery, ""),
            gw_idle_total.map_or(String::new(), |i| format!(
                " (at rest {i:.4} cores, subtracted)"
            )),
        );
    }
    if !redis_nodes.is_empty() {
        println!(
            "  {:<14}{} of one core during the {} phase ({} node{})",
            "redis cpu",
            fmt_opt(redis_cpu_main, "%"),
            if rate > 0.0 { "publish" } else { "hold" },
            redis_nodes.len(),
            if redis_nodes.len() == 1 { "" } else { "s" },
        );
        if published > 0 {
            let f3 = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
            let each: Vec<String> = redis_nodes
                .iter()
                .zip(&redis_per_10k_each)
                .map(|(n, c)| format!("{n} {}", f3(*c)))
                .collect();
            println!(
                "  {:<14}{} cores per 10,000 msg/s{}: {}",
                "  per message",
                f3(redis_per_10k),
                if baseline.is_some() {
                    " (at rest subtracted)"
                } else {
                    ""
                },
                each.join(", "),
            );
        }
    }
    println!(
        "  {:<14}{} of all cores busy while connecting, {} during the {} phase; other processes took {} and {} (load average at start {})",
        "machine",
        fmt_opt(machine_connect, "%"),
        fmt_opt(machine_main, "%"),
        if rate > 0.0 { "publish" } else { "hold" },
        fmt_opt(others_connect, "%"),
        fmt_opt(others_main, "%"),
        loadavg.as_deref().unwrap_or("n/a"),
    );
    if !samples.is_empty() {
        println!("  first anomalies:");
        for s in &samples {
            println!("    {s}");
        }
    }
    if !gateway_alive {
        println!("  THE GATEWAY DIED during the run");
        if let Some(t) = gateway_tail {
            println!("{t}");
        }
    }
    println!(
        "  result: {}",
        if ok { "OK" } else { "PROBLEMS (see above)" }
    );

    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ok)
}

/// Prints a progress line to stderr every second.
async fn progress(
    kind: Kind,
    shared: Arc<Shared>,
    sent: Arc<AtomicU64>,
    phase: Arc<parking_lot::Mutex<&'static str>>,
    pids: Vec<Option<u32>>,
    peak_rss: Arc<AtomicU64>,
    hz: f64,
) {
    let start = Instant::now();
    let mut last = (
        Instant::now(),
        0u64,
        0u64,
        0u64,
        stats::total(&read_all(&pids)),
    );
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let opened = shared.opened.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let sent_n = sent.load(Ordering::Relaxed);
        let recv = shared.received.load(Ordering::Relaxed);
        let gw = stats::total(&read_all(&pids));
        let secs = now.duration_since(last.0).as_secs_f64();
        let per_s = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        let cpu = cpu_percent(last.4, gw, now.duration_since(last.0), hz);
        if let Some(g) = gw {
            peak_rss.fetch_max(g.rss_kib, Ordering::Relaxed);
        }
        let mut line = format!(
            "[{} {:>5.1}s {}] open {opened} (+{:.0}/s) failed {failed} closed {}",
            kind.name(),
            start.elapsed().as_secs_f64(),
            *phase.lock(),
            per_s(opened, last.1),
            shared.disconnected.load(Ordering::Relaxed),
        );
        if matches!(kind, Kind::PerUser | Kind::Broadcast) {
            line += &format!(
                " | sent {sent_n} ({:.0}/s) recv {recv} ({:.0}/s) wrong-user {} p99 {:.2} ms",
                per_s(sent_n, last.2),
                per_s(recv, last.3),
                shared.wrong_user.load(Ordering::Relaxed),
                shared.delivery.merged().value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        if let Some(g) = gw {
            line += &format!(
                " | gateway RSS {:.1} MiB CPU {}",
                mib(g.rss_kib),
                cpu.map_or("n/a".to_owned(), |c| format!("{c:.0}%"))
            );
        }
        eprintln!("{line}");
        last = (now, opened, sent_n, recv, gw);
    }
}
