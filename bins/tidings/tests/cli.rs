//! The binary's configuration handling: layering, errors that name the key
//! and its source, and `check-config`.
//!
//! (This integration test also makes `cargo test --workspace` build the
//! `tidings` binary that the end-to-end suite in `tests/` drives.)

mod common;
use common::tidings;

fn write_config(name: &str, body: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tidings-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn check_config_prints_defaults_and_redacts_secrets() {
    let (ok, out, err) = tidings(
        &["check-config"],
        &[
            ("TIDINGS_API_KEY", "1234567890123456789"),
            (
                "TIDINGS_REDIS_URL",
                "redis://:hunter2hunter2@127.0.0.1:6379/2",
            ),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    assert!(out.contains("api_key = \"<redacted>\""), "{out}");
    assert!(out.contains("redis_url = \"<redacted>\""), "{out}");
    assert!(
        !out.contains("1234567890123456789") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(out.contains("[[routing.rules]]"));
}

#[test]
fn layering_file_then_environment() {
    let p = write_config(
        "layers",
        "listen = \"127.0.0.1:9001\"\n[websocket]\nping_interval_secs = 5\n",
    );
    let (ok, out, err) = tidings(
        &["--config", p.to_str().unwrap(), "check-config"],
        &[("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "7")],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("listen = \"127.0.0.1:9001\""),
        "file beats defaults: {out}"
    );
    assert!(
        out.contains("ping_interval_secs = 7"),
        "environment beats file: {out}"
    );
    let (ok, out, _) = tidings(
        &["--config", p.to_str().unwrap(), "check-config"],
        &[("TIDINGS_LISTEN", "0.0.0.0:9002")],
    );
    assert!(ok);
    assert!(out.contains("listen = \"0.0.0.0:9002\""), "{out}");
}

#[test]
fn bad_values_name_the_key_and_the_source() {
    let (ok, _, err) = tidings(
        &["check-config"],
        &[("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "soon")],
    );
    assert!(!ok);
    assert!(
        err.contains("ping_interval_secs") && err.contains("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS"),
        "{err}"
    );

    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_LISTEN", "not-an-address")]);
    assert!(!ok);
    assert!(
        err.contains("listen") && err.contains("TIDINGS_LISTEN"),
        "{err}"
    );

    let (ok, _, err) = tidings(
        &["check-config"],
        &[("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS", "-1")],
    );
    assert!(!ok);
    assert!(
        err.contains("websocket.pong_timeout_secs")
            && err.contains("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS"),
        "{err}"
    );

    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_REDIS_URL", "http://x")]);
    assert!(!ok);
    assert!(err.contains("redis_url"), "{err}");
    assert!(!err.contains("http://x"), "secrets are not echoed: {err}");
}

#[test]
fn redis_modes_need_their_keys_and_name_them() {
    let url = ("TIDINGS_REDIS_URL", "redis://:s3cret@127.0.0.1:26379");
    let sentinel = ("TIDINGS_REDIS__MODE", "sentinel");
    let (ok, _, err) = tidings(&["check-config"], &[url, sentinel]);
    assert!(!ok);
    assert!(
        err.contains("config key `redis.sentinel_service`") && err.contains("required"),
        "{err}"
    );
    let (ok, out, err) = tidings(
        &["check-config"],
        &[
            url,
            sentinel,
            ("TIDINGS_REDIS__SENTINEL_SERVICE", "mymaster"),
            ("TIDINGS_REDIS__NODES", r#"["127.0.0.1:26380"]"#),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("mode = \"sentinel\""), "{out}");
    assert!(!out.contains("s3cret") && !err.contains("s3cret"));

    // Cluster: a URL is required, database 0 only, nodes are host:port.
    let cluster = ("TIDINGS_REDIS__MODE", "cluster");
    let (ok, _, err) = tidings(&["check-config"], &[cluster]);
    assert!(!ok);
    assert!(err.contains("config key `redis_url`"), "{err}");
    let (ok, _, err) = tidings(
        &["check-config"],
        &[
            cluster,
            ("TIDINGS_REDIS_URL", "redis://:s3cret@127.0.0.1:7000/3"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("database 0") && !err.contains("s3cret"),
        "{err}"
    );
    let (ok, _, err) = tidings(
        &["check-config"],
        &[cluster, url, ("TIDINGS_REDIS__NODES", r#"["7001"]"#)],
    );
    assert!(!ok);
    assert!(err.contains("config key `redis.nodes`"), "{err}");
    let (ok, _, err) = tidings(&["check-config"], &[url, ("TIDINGS_REDIS__MODE", "ring")]);
    assert!(!ok);
    assert!(err.contains("redis.mode"), "{err}");

    // A sharded pattern rule stops startup, naming the rule.
    let file = write_config(
        "sharded-pattern",
        "[[routing.rules]]\nchannel = \"/app/feed/*\"\nsubscribe = true\nsharded = true\n",
    );
    let (ok, _, err) = tidings(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    std::fs::remove_file(&file).ok();
    assert!(!ok);
    assert!(
        err.contains("routing.rules") && err.contains("sharded") && err.contains("pattern"),
        "{err}"
    );
}

#[test]
fn unknown_keys_stop_startup() {
    // A typo in the environment.
    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_LISTN", "127.0.0.1:1")]);
    assert!(!ok);
    assert!(err.contains("listn"), "{err}");
    // A typo in the file names the key and the file.
    let p = write_config("typo", "[websocket]\nping_intervall_secs = 3\n");
    let (ok, _, err) = tidings(&["--config", p.to_str().unwrap(), "check-config"], &[]);
    assert!(!ok);
    assert!(
        err.contains("ping_intervall_secs") && err.contains(p.to_str().unwrap()),
        "{err}"
    );
    // A bad routing rule.
    let p = write_config(
        "rule",
        "[[routing.rules]]\nchannel = \"/u/{uid}\"\njoin = true\n",
    );
    let (ok, _, err) = tidings(&["--config", p.to_str().unwrap(), "check-config"], &[]);
    assert!(!ok);
    assert!(
        err.contains("routing.rules") && err.contains("uid"),
        "{err}"
    );
    // A missing file.
    let (ok, _, err) = tidings(
        &["--config", "/nonexistent/tidings.toml", "check-config"],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn an_all_digit_api_key_is_kept_exactly() {
    // figment would read this as a number and round it; the key must be
    // used byte for byte (leading zeros and all).
    let key = "00123456789012345678";
    let (ok, out, err) = tidings(&["check-config"], &[("TIDINGS_API_KEY", key)]);
    assert!(ok, "{err}");
    assert!(out.contains("api_key = \"<redacted>\""), "{out}");
    assert!(!out.contains(key) && !err.contains(key));
}

// ------------------------------------------------------------ running

/// What a gateway started by [`run_gateway`] printed.
struct Run {
    /// Everything it wrote to stderr up to the end of its banner (or its exit).
    stderr: String,
    /// Its exit status when it exited by itself (it is killed otherwise).
    exited: Option<std::process::ExitStatus>,
}

/// Runs the gateway (`run` mode) through `program` (the binary itself, or a
/// shell that `exec`s it as `$0`) with `args`, with no `TIDINGS_*` or
/// `RUST_LOG` variable but `TIDINGS_LISTEN=127.0.0.1:0` and `env`. Reads its
/// stderr until its banner is complete or it exits; `inspect` sees the
/// running process id; then the process is killed.
fn run_gateway(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    inspect: impl FnOnce(u32),
) -> Run {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("TIDINGS_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run tidings");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    // The banner ends with the publish example (and warnings, logged at
    // once after it); EOF means the process exited.
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        out.push_str(&line);
        out.push('\n');
        if line.contains("publish:") {
            break;
        }
    }
    let exited = child.try_wait().expect("try_wait");
    let exited = match exited {
        Some(status) => Some(status),
        None if out.contains("publish:") => {
            inspect(child.id());
            let _ = child.kill();
            let _ = child.wait();
            None
        }
        None => {
            // Not started and not exited: either it printed an error and is
            // exiting, or it hangs.
            let status = child.wait().expect("wait");
            Some(status)
        }
    };
    // Whatever else it printed before exiting.
    out.extend(rx.try_iter().map(|l| l + "\n"));
    Run {
        stderr: out,
        exited,
    }
}

/// The variables the kubelet sets in every pod of the namespace for a
/// Service named `tidings` (cluster IP 10.0.0.1, one port named `http`,
/// 8080/TCP) and one named `tidings-redis` (10.0.0.2, an unnamed 6379/TCP).
const KUBERNETES_VARS: &[(&str, &str)] = &[
    ("TIDINGS_SERVICE_HOST", "10.0.0.1"),
    ("TIDINGS_SERVICE_PORT", "8080"),
    ("TIDINGS_SERVICE_PORT_HTTP", "8080"),
    ("TIDINGS_PORT", "tcp://10.0.0.1:8080"),
    ("TIDINGS_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
    ("TIDINGS_PORT_8080_TCP_PROTO", "tcp"),
    ("TIDINGS_PORT_8080_TCP_PORT", "8080"),
    ("TIDINGS_PORT_8080_TCP_ADDR", "10.0.0.1"),
    ("TIDINGS_REDIS_SERVICE_HOST", "10.0.0.2"),
    ("TIDINGS_REDIS_SERVICE_PORT", "6379"),
    ("TIDINGS_REDIS_PORT", "tcp://10.0.0.2:6379"),
    ("TIDINGS_REDIS_PORT_6379_TCP", "tcp://10.0.0.2:6379"),
    ("TIDINGS_REDIS_PORT_6379_TCP_PROTO", "tcp"),
    ("TIDINGS_REDIS_PORT_6379_TCP_PORT", "6379"),
    ("TIDINGS_REDIS_PORT_6379_TCP_ADDR", "10.0.0.2"),
];

#[test]
fn kubernetes_service_variables_do_not_stop_startup() {
    // check-config: accepted, the real settings still apply, and the skipped
    // variables are named.
    let mut env = KUBERNETES_VARS.to_vec();
    env.push(("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "7"));
    let (ok, out, err) = tidings(&["check-config"], &env);
    assert!(
        ok,
        "the Kubernetes service variables stop the gateway: {err}"
    );
    assert!(out.contains("ping_interval_secs = 7"), "{out}");
    for (name, _) in KUBERNETES_VARS {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("# ignored {name}:"))),
            "check-config does not say {name} was ignored:\n{out}"
        );
    }
    assert!(
        out.parse::<toml::Table>().is_ok(),
        "the output stays TOML: {out}"
    );

    // An IPv6 cluster, a UDP port and a port name with digits.
    let v6 = [
        ("TIDINGS_SERVICE_HOST", "fd00::1"),
        ("TIDINGS_SERVICE_PORT", "8080"),
        ("TIDINGS_SERVICE_PORT_HTTP2", "8080"),
        ("TIDINGS_PORT", "tcp://[fd00::1]:8080"),
        ("TIDINGS_PORT_8080_TCP", "tcp://[fd00::1]:8080"),
        ("TIDINGS_PORT_8080_TCP_ADDR", "fd00::1"),
        ("TIDINGS_PORT_53_UDP", "udp://[fd00::1]:53"),
        ("TIDINGS_PORT_53_UDP_PROTO", "udp"),
    ];
    let (ok, _, err) = tidings(&["check-config"], &v6);
    assert!(ok, "{err}");

    // The gateway itself starts, and says what it ignored.
    let run = run_gateway(env!("CARGO_BIN_EXE_tidings"), &[], KUBERNETES_VARS, |_| ());
    assert!(run.exited.is_none(), "did not start:\n{}", run.stderr);
    assert!(
        run.stderr.contains("ignoring ") && run.stderr.contains("TIDINGS_PORT_8080_TCP_ADDR"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_keys_that_only_resemble_kubernetes_ones_stop_startup() {
    // A typo next to the Kubernetes variables is still a typo.
    let mut env = KUBERNETES_VARS.to_vec();
    env.push(("TIDINGS_LISTN", "127.0.0.1:1"));
    let (ok, _, err) = tidings(&["check-config"], &env);
    assert!(!ok, "TIDINGS_LISTN was accepted");
    assert!(
        err.contains("listn") && err.contains("TIDINGS_LISTN"),
        "{err}"
    );
    // The same names with values Kubernetes never sets are somebody's
    // settings, not Kubernetes': refused, not silently skipped.
    for (name, value) in [
        ("TIDINGS_PORT", "8080"),
        ("TIDINGS_PORT", "http://10.0.0.1:8080"),
        ("TIDINGS_SERVICE_HOST", "gateway.example"),
        ("TIDINGS_SERVICE_PORT", "http"),
        ("TIDINGS_PORT_8080_TCP_PORT", "9090"),
        ("TIDINGS_PORT_8080_TCP", "tcp://10.0.0.1:9090"),
        ("TIDINGS_PORT_8080_TCP_PROTO", "udp"),
        ("TIDINGS_PORT_8080_HTTP", "tcp://10.0.0.1:8080"),
        ("TIDINGS_HOST", "10.0.0.1"),
    ] {
        let (ok, out, err) = tidings(&["check-config"], &[(name, value)]);
        assert!(!ok, "{name}={value} was accepted:\n{out}");
        assert!(
            err.contains("unknown field") && err.contains(name),
            "{name}={value}: {err}"
        );
    }
}

#[test]
fn a_busy_port_is_reported_once_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_gateway(
        env!("CARGO_BIN_EXE_tidings"),
        &[],
        &[("TIDINGS_LISTEN", &addr)],
        |_| (),
    );
    let status = run.exited.expect("the gateway started on a busy port");
    assert!(!status.success());
    assert_eq!(
        run.stderr.matches("cannot listen").count(),
        1,
        "the error is printed once:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}"))
            && run.stderr.contains("TIDINGS_LISTEN")
            && run.stderr.contains("`listen`"),
        "the error names the address and the setting to change:\n{}",
        run.stderr
    );
}

/// The banner line that starts with `label`.
fn banner_line<'a>(stderr: &'a str, label: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no `{label}` line:\n{stderr}"))
}

#[test]
fn the_banner_gives_a_reachable_url_for_an_unspecified_address() {
    // (Bound on a free port for the moment the banner takes.)
    let run = run_gateway(
        env!("CARGO_BIN_EXE_tidings"),
        &[],
        &[("TIDINGS_LISTEN", "0.0.0.0:0")],
        |_| (),
    );
    assert!(run.exited.is_none(), "did not start:\n{}", run.stderr);
    let demo = banner_line(&run.stderr, "demo page:");
    assert!(demo.contains("http://127.0.0.1:"), "{demo}");
    let ws = banner_line(&run.stderr, "websocket:");
    assert!(ws.contains("ws://127.0.0.1:"), "{ws}");
    let publish = banner_line(&run.stderr, "publish:");
    assert!(publish.contains("http://127.0.0.1:"), "{publish}");
    assert!(
        !demo.contains("0.0.0.0") && !ws.contains("0.0.0.0") && !publish.contains("0.0.0.0"),
        "{}",
        run.stderr
    );

    // IPv6, where this machine has it.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: the [::] case is not checked");
        return;
    }
    let run = run_gateway(
        env!("CARGO_BIN_EXE_tidings"),
        &[],
        &[("TIDINGS_LISTEN", "[::]:0")],
        |_| (),
    );
    assert!(run.exited.is_none(), "did not start:\n{}", run.stderr);
    let demo = banner_line(&run.stderr, "demo page:");
    assert!(demo.contains("http://[::1]:"), "{demo}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_gateway_raises_its_open_file_soft_limit() {
    // Started with a soft limit of 256 (a login shell gives 1,024), it must
    // raise it to the hard limit: every socket is a file.
    let mut limits = None;
    let run = run_gateway(
        "sh",
        &[
            "-c",
            "ulimit -S -n 256 && exec \"$0\"",
            env!("CARGO_BIN_EXE_tidings"),
        ],
        &[],
        |pid| limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok(),
    );
    assert!(run.exited.is_none(), "did not start:\n{}", run.stderr);
    let limits = limits.expect("/proc/<pid>/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert!(
        hard != "256",
        "the hard limit is 256 here: nothing to raise"
    );
    assert_eq!(soft, hard, "soft limit not raised: {line}");
}
