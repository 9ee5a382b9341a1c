//! Smoke runs of every `tidings-bench` scenario, so the tool cannot rot:
//! a private `redis-server`, the real gateway launched by the bench
//! (`--launch`), 50 connections, a couple of seconds each. They check the
//! JSON report shows every connection opened, zero loss and zero wrong-user
//! deliveries, and sane numbers. They never assert on timings.

use std::{
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use tidings_e2e::redis::RedisServer;

const N: u64 = 50;

/// The gateway binary. `cargo test --workspace` builds it; for
/// `cargo test -p tidings-bench` alone, build it here (a no-op when it is
/// fresh). `$TIDINGS_BIN` overrides.
fn gateway() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("TIDINGS_BIN").is_some() {
            return;
        }
        let Some(cargo) = std::env::var_os("CARGO") else {
            return;
        };
        // target/<profile>/deps/<this test>
        let exe = std::env::current_exe().expect("current exe");
        let profile = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "tidings", "--bin", "tidings"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: `cargo build -p tidings` failed ({status:?}); using the binary already built, if any");
        }
    });
    tidings_e2e::gateway::binary()
}

/// Runs the bench with `args` (plus `--launch`, `--redis-url` of a private
/// server and `--json`) and returns its exit success and JSON report.
async fn bench(args: &[&str]) -> (bool, Value) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut all = args.to_vec();
    all.extend(["--redis-url", &url]);
    run_bench(&all).await
}

/// Runs the bench with `args` (plus `--launch` and `--json`).
async fn run_bench(args: &[&str]) -> (bool, Value) {
    let json = tidings_e2e::gateway::temp_path("bench.json");
    let gateway = gateway();
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(args)
        .arg("--launch")
        .arg(&gateway)
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the bench finished within 60 s")
        .expect("run tidings-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "tidings-bench {args:?} took {:?}\n{stdout}\n{stderr}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); output:\n{stdout}\n{stderr}"));
    let _ = std::fs::remove_file(&json);
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert!(
        stdout.contains("result: "),
        "the human table is printed: {stdout}"
    );
    // Every run lasts over a second, so at least one progress line (the
    // soak prints its own, every 10 s).
    assert!(
        args[0] == "soak" || stderr.contains("gateway RSS"),
        "progress lines go to stderr: {stderr}"
    );
    (out.status.success(), report)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not a non-negative integer"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

/// What every scenario must show.
fn assert_sane(ok: bool, r: &Value, scenario: &str) {
    assert_eq!(r["scenario"], scenario);
    assert!(ok, "the bench reported problems: {r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    let c = &r["connect"];
    assert_eq!(u(&c["opened"]), N, "{c}");
    assert_eq!(u(&c["failed"]), 0, "{c}");
    assert!(f(&c["rate_per_sec"]) > 0.0, "{c}");
    let lat = &c["latency"];
    assert_eq!(u(&lat["count"]), N, "{lat}");
    assert!(f(&lat["p50_ms"]) > 0.0, "{lat}");
    assert!(f(&lat["p50_ms"]) <= f(&lat["p99_ms"]), "{lat}");
    assert!(f(&lat["p99_ms"]) <= f(&lat["max_ms"]), "{lat}");
    let d = &r["delivery"];
    for k in [
        "lost",
        "duplicated",
        "wrong_user",
        "wrong_welcome",
        "disconnected",
        "foreign",
        "other_frames",
    ] {
        assert_eq!(u(&d[k]), 0, "{k}: {d}");
    }
    let g = &r["gateway"];
    assert!(u(&g["pid"]) > 0, "{g}");
    assert_eq!(g["alive_at_end"], true, "{g}");
    assert!(u(&g["rss_kib_before"]) > 0, "{g}");
    assert!(u(&g["rss_kib_after"]) > 0, "{g}");
    assert!(f(&g["cpu_percent_connect"]) >= 0.0, "{g}");
    // Every connection is its own user here unless shared on purpose: at
    // least one whoami request per distinct cookie cannot be avoided.
    let users = u(&r["config"]["users"]);
    let whoami = u(&r["whoami_requests"]["total"]);
    assert!(
        (users..=N).contains(&whoami),
        "whoami requests {whoami} for {users} users"
    );
}

fn assert_delivered(r: &Value, published: u64, expected: u64) {
    let d = &r["delivery"];
    assert_eq!(u(&d["published"]), published, "{d}");
    assert_eq!(u(&d["expected"]), expected, "{d}");
    assert_eq!(u(&d["received"]), expected, "{d}");
    let replies = &d["publish_replies"];
    assert_eq!(u(&replies["errors"]), 0, "{replies}");
    assert_eq!(u(&replies["zero_receivers"]), 0, "{replies}");
    let lat = &d["latency"];
    assert_eq!(u(&lat["count"]), expected, "{lat}");
    assert!(f(&lat["p50_ms"]) > 0.0, "{lat}");
    assert!(f(&lat["p99_ms"]) <= f(&lat["max_ms"]), "{lat}");
    // Sane: loopback deliveries take far less than a minute.
    assert!(f(&lat["max_ms"]) < 60_000.0, "{lat}");
}

#[tokio::test]
async fn idle() {
    let (ok, r) = bench(&["idle", "-n", "50", "-d", "1"]).await;
    assert_sane(ok, &r, "idle");
    assert_eq!(u(&r["config"]["users"]), N);
    let g = &r["gateway"];
    assert!(u(&g["rss_kib_connected"]) > 0, "{g}");
    assert!(g["rss_bytes_per_connection"].is_number(), "{g}");
}

#[tokio::test]
async fn per_user() {
    let (ok, r) = bench(&["per-user", "-n", "50", "--rate", "200", "-d", "2"]).await;
    assert_sane(ok, &r, "per-user");
    // Every message goes to one user, who has one socket.
    assert_delivered(&r, 400, 400);
}

#[tokio::test]
async fn per_user_shared_cookies() {
    let (ok, r) = bench(&[
        "per-user",
        "-n",
        "50",
        "--same-cookie-every",
        "5",
        "--rate",
        "100",
        "-d",
        "2",
    ])
    .await;
    assert_sane(ok, &r, "per-user");
    assert_eq!(u(&r["config"]["users"]), 10);
    // Each message reaches all 5 sockets of its user.
    assert_delivered(&r, 200, 1000);
}

/// The cluster mode: a real 3-master Redis Cluster, two gateways launched
/// on it, per-user traffic on classic then sharded user channels.
#[tokio::test]
async fn per_user_on_a_cluster_with_two_gateways() {
    let cluster = tidings_e2e::cluster::RedisCluster::start(0).await;
    let nodes: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let nodes = nodes.join(",");
    for sharded in [false, true] {
        let mut args = vec![
            "per-user",
            "-n",
            "50",
            "--rate",
            "200",
            "-d",
            "1",
            "--gateways",
            "2",
            "--redis-cluster",
            &nodes,
            "--baseline-secs",
            "0.2",
        ];
        if sharded {
            args.push("--sharded");
        }
        let (ok, r) = run_bench(&args).await;
        assert_sane(ok, &r, "per-user");
        assert_eq!(r["config"]["sharded"], sharded, "{r:#}");
        assert_eq!(u(&r["config"]["gateways"]), 2, "{r:#}");
        assert_eq!(
            r["config"]["redis_cluster"].as_array().map(Vec::len),
            Some(3)
        );
        let d = &r["delivery"];
        assert_eq!(u(&d["published"]), 200, "{d}");
        assert_eq!(u(&d["received"]), 200, "{d}");
        let replies = &d["publish_replies"];
        assert_eq!(u(&replies["replies"]), 200, "{replies}");
        // A misrouted SPUBLISH would be answered MOVED.
        assert_eq!(u(&replies["errors"]), 0, "{replies}");
        if sharded {
            // Each SPUBLISH reached the one gateway holding that user's socket.
            assert_eq!(u(&replies["zero_receivers"]), 0, "{replies}");
        }
        let gateways = r["gateways"].as_array().expect("gateways");
        assert_eq!(gateways.len(), 2, "{r:#}");
        assert_ne!(gateways[0]["pid"], gateways[1]["pid"]);
        assert_ne!(gateways[0]["url"], gateways[1]["url"]);
        for g in gateways {
            assert!(f(&g["cpu_percent_main"]) >= 0.0, "{g}");
            assert!(f(&g["baseline_cores"]) >= 0.0, "{g}");
        }
        let redis = &r["redis"];
        let nodes = redis["nodes"].as_array().expect("redis nodes");
        assert_eq!(nodes.len(), 3, "{redis}");
        for n in nodes {
            assert!(f(&n["cpu_percent_main"]) > 0.0, "{n}");
            assert!(f(&n["cores_per_10k_msg_per_sec"]) >= 0.0, "{n}");
        }
        assert!(f(&redis["cores_per_10k_msg_per_sec"]) >= 0.0, "{redis}");
    }
}

#[tokio::test]
async fn broadcast() {
    let (ok, r) = bench(&["broadcast", "-n", "50", "--rate", "2", "-d", "2"]).await;
    assert_sane(ok, &r, "broadcast");
    // 4 messages, each to all 50 sockets.
    assert_delivered(&r, 4, 4 * N);
}

#[tokio::test]
async fn connect_storm_cache_on_and_off() {
    for cache in ["on", "off"] {
        let (ok, r) = bench(&[
            "connect-storm",
            "-n",
            "50",
            "-c",
            "50",
            "--same-cookie-every",
            "10",
            "--cache",
            cache,
            "-d",
            "1",
        ])
        .await;
        assert_sane(ok, &r, "connect-storm");
        assert_eq!(r["config"]["cache"], cache);
        assert_eq!(u(&r["config"]["users"]), 5);
        assert!(f(&r["connect"]["wall_secs"]) > 0.0);
    }
}

#[tokio::test]
async fn soak_with_faults() {
    // 20 sockets cycling for 5 s while a gateway Redis connection is killed
    // about every second: every socket's channel delivers.
    let (ok, r) = bench(&[
        "soak",
        "-n",
        "20",
        "-d",
        "5",
        "--fault-every",
        "1",
        "--max-life",
        "1",
    ])
    .await;
    assert_eq!(r["scenario"], "soak");
    assert!(ok, "the soak reported problems: {r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    let sockets = u(&r["sockets"]);
    assert!(sockets >= 20, "{r:#}");
    assert_eq!(u(&r["silent_channels"]), 0, "{r:#}");
    assert_eq!(u(&r["delivered"]), sockets, "{r:#}");
    assert_eq!(u(&r["closed_by_gateway"]), 0, "{r:#}");
    assert!(u(&r["faults_total"]) >= 1, "{r:#}");
    assert_eq!(u(&r["fault_errors"]), 0, "{r:#}");
    assert!(
        r["gateway_metrics"]["tidings_bridge_selfcheck_repairs_total"].is_number(),
        "{r:#}"
    );
}

/// Every wire against the gateway: each client its own user, per-user and
/// broadcast messages arrive on the right client, exactly once.
async fn other_wire(wire: &str) {
    let (ok, r) = bench(&[
        "per-user", "-n", "50", "--rate", "100", "-d", "2", "--wire", wire,
    ])
    .await;
    assert_sane(ok, &r, "per-user");
    assert_eq!(r["config"]["wire"], wire);
    assert_delivered(&r, 200, 200);
    let (ok, r) = bench(&[
        "broadcast",
        "-n",
        "50",
        "--rate",
        "2",
        "-d",
        "2",
        "--wire",
        wire,
    ])
    .await;
    assert_sane(ok, &r, "broadcast");
    assert_delivered(&r, 4, 200);
}

#[tokio::test]
async fn wire_sse() {
    other_wire("sse").await;
}

#[tokio::test]
async fn wire_socketio() {
    other_wire("socketio").await;
}

#[tokio::test]
async fn wire_socketio_polling() {
    other_wire("socketio-polling").await;
}
