//! The deployment files in `deploy/`, exercised for real:
//!
//! - `deploy/nginx/tidings.conf` runs in a real nginx (ports and paths
//!   changed, nothing else) in front of the real gateway and a fake Django:
//!   WebSockets upgrade through it with the same-origin check working,
//!   pings and pongs pass, `/` reaches Django, `/static/` is served from
//!   disk, Tidings' HTTP API is refused. nginx must be installed: these
//!   tests fail, they do not skip, without it.
//! - `deploy/systemd/tidings.service` has every hardening directive, only
//!   known keys, and passes `systemd-analyze verify` and
//!   `systemd-analyze security` when systemd-analyze is installed.
//! - `deploy/tidings.toml`, `deploy/systemd/tidings.env.example` and the
//!   environment in `deploy/docker/` pass `tidings check-config`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    gateway::{binary, temp_path},
    http,
    nginx::{self, Directive, Nginx, SitePorts},
    redis::free_port,
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The session cookie value the fake Django knows as user 42.
const SESSION: &str = "s3cret-session";

fn read(rel: &str) -> String {
    let path = nginx::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = temp_path(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `location <args>` block of the shipped site.
fn location<'a>(site: &'a [Directive], args: &[&str]) -> &'a Directive {
    nginx::find_all(site, "location")
        .into_iter()
        .find(|l| l.args == args)
        .unwrap_or_else(|| panic!("deploy/nginx/tidings.conf has no `location {args:?}`"))
}

/// A number `key = value` in deploy/tidings.toml, or `default`.
fn shipped_number(key: &str, default: f64) -> f64 {
    read("deploy/tidings.toml")
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map_or(default, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{key} is a number"))
        })
}

#[test]
fn nginx_site_sets_up_the_websocket_proxy() {
    let site = nginx::parse(&nginx::shipped_site()).expect("deploy/nginx/tidings.conf parses");

    // The map that turns `Upgrade` into `Connection: upgrade`.
    let map = nginx::find_all(&site, "map")
        .into_iter()
        .find(|m| m.args == ["$http_upgrade", "$connection_upgrade"])
        .expect("map $http_upgrade $connection_upgrade");
    assert_eq!(map.one("default"), ["upgrade"]);
    assert_eq!(
        map.one(""),
        ["close"],
        "no Upgrade header: Connection: close"
    );

    let ws = location(&site, &["=", "/ws"]);
    assert_eq!(ws.one("proxy_pass"), ["http://tidings_gateway"]);
    assert_eq!(ws.one("proxy_http_version"), ["1.1"]);
    assert_eq!(ws.proxy_header("Upgrade"), Some("$http_upgrade"));
    assert_eq!(ws.proxy_header("Connection"), Some("$connection_upgrade"));
    assert_eq!(
        ws.proxy_header("Host"),
        Some("$http_host"),
        "the browser's Host, port included, for the same-origin check"
    );
    assert_eq!(ws.proxy_header("X-Real-IP"), Some("$remote_addr"));
    assert_eq!(
        ws.proxy_header("X-Forwarded-For"),
        Some("$proxy_add_x_forwarded_for")
    );
    assert_eq!(ws.one("proxy_buffering"), ["off"]);
    // An idle socket carries only the gateway's pings: nginx must not time
    // it out between two of them, with a wide margin.
    let ping = shipped_number("ping_interval_secs", 20.0);
    for d in ["proxy_read_timeout", "proxy_send_timeout"] {
        let v = &ws.one(d)[0];
        let secs = nginx::time_secs(v).unwrap_or_else(|| panic!("{d} {v}: not a time"));
        assert!(
            secs >= 60.0 && secs >= 3.0 * ping,
            "{d} {v} must be at least 60 s and 3 x the ping interval ({ping} s)"
        );
    }

    // Tidings' HTTP API is refused on the public side.
    for path in ["/api/publish", "/api/tokens"] {
        let l = location(&site, &["=", path]);
        assert_eq!(l.one("deny"), ["all"], "{path}");
        assert_eq!(l.children("proxy_pass").count(), 0, "{path}");
    }
    // The other wires: unbuffered, long-lived, the client's Host.
    for args in [&["=", "/sse"][..], &["/socket.io/"][..]] {
        let l = location(&site, args);
        assert_eq!(l.one("proxy_pass"), ["http://tidings_gateway"], "{args:?}");
        assert_eq!(l.one("proxy_http_version"), ["1.1"], "{args:?}");
        assert_eq!(l.one("proxy_buffering"), ["off"], "{args:?}");
        assert_eq!(l.proxy_header("Host"), Some("$http_host"), "{args:?}");
        let secs = nginx::time_secs(&l.one("proxy_read_timeout")[0]).unwrap();
        assert!(secs >= 60.0, "{args:?}");
    }
    assert_eq!(
        location(&site, &["/socket.io/"]).proxy_header("Upgrade"),
        Some("$http_upgrade")
    );
    // Long-polling needs each client on one instance.
    let upstream = nginx::find_all(&site, "upstream")
        .into_iter()
        .find(|u| u.args == ["tidings_gateway"])
        .expect("upstream tidings_gateway");
    assert_eq!(upstream.one("hash"), ["$remote_addr", "consistent"]);
    // Nothing but the wires and the browser client go to the gateway.
    let to_gateway = nginx::find_all(&site, "proxy_pass")
        .into_iter()
        .filter(|p| p.args == ["http://tidings_gateway"])
        .count();
    assert_eq!(
        to_gateway, 4,
        "only /ws, /sse, /socket.io/ and /tidings.js may be proxied to the gateway"
    );
    assert_eq!(
        location(&site, &["=", "/tidings.js"]).one("proxy_pass"),
        ["http://tidings_gateway"]
    );
    assert_eq!(
        location(&site, &["/"]).one("proxy_pass"),
        ["http://django_app"]
    );
}

#[tokio::test]
async fn nginx_proxies_websockets_django_and_static_files() {
    // Fail early and clearly if nginx is missing.
    nginx::binary();

    // The fake Django: user 42 for our session cookie, {"user": null} for
    // anything else, on every path (`/` included).
    let django = Backend::start(Mode::users([(SESSION, json!({"user": "42"}))])).await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", django.url())
            // Forwarded to whoami, so the test sees what nginx sent the gateway.
            .env(
                "TIDINGS_IDENTITY__COOKIE_PROXY__HEADERS",
                r#"["x-real-ip","x-forwarded-for","x-forwarded-proto"]"#,
            )
            // Pings every 0.5 s, answered within 1 s or the socket closes:
            // a connection that passes no pong through nginx dies fast.
            .env("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "0.5")
            .env("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS", "1"),
    )
    .await;
    let dir = TempDir::new("nginx-static");
    let static_root = dir.0.join("static");
    std::fs::create_dir_all(&static_root).expect("static dir");
    std::fs::write(static_root.join("app.css"), "body { color: teal }\n").expect("app.css");

    let port = free_port();
    let site = nginx::adapt_site(
        &nginx::shipped_site(),
        &SitePorts {
            listen: port,
            django: django.addr.port(),
            gateway: gw.addr.port(),
            static_root: PathBuf::from(format!("{}/", static_root.display())),
        },
    );
    let nginx = Nginx::start(&site, port).await;
    let front = nginx.addr;
    let origin = format!("http://{front}");
    let ws_url = format!("ws://{front}/ws");

    // `/` is Django's, with the client's address passed on.
    let r = http::get(front, "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"user":null}"#),
        "{r:?}"
    );
    let call = django.last_call();
    assert_eq!(call.path, "/");
    assert_eq!(call.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(call.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(call.header("x-forwarded-proto"), Some("http"));

    // `/static/` comes from disk, not from Django.
    django.clear_calls();
    let r = http::get(front, "/static/app.css").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "body { color: teal }\n"),
        "{r:?}\n{}",
        nginx.logs()
    );
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(django.call_count(), 0, "static files must not reach Django");

    // `/tidings.js`, the browser client, comes from the gateway.
    let r = http::get(front, "/tidings.js").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.logs());
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(r.body.contains("export function connect("), "{r:?}");
    assert_eq!(django.call_count(), 0, "the client must not reach Django");

    // A plain GET on /ws reaches the gateway, which wants an upgrade.
    let r = http::get(front, "/ws").await;
    assert_eq!(r.status, 426, "{r:?}");

    // A socket through nginx: same origin as the page, Django's cookie.
    let cookie = format!("sessionid={SESSION}");
    let mut c = Client::connect_with(&ws_url, &[("Origin", &origin), ("Cookie", &cookie)])
        .await
        .unwrap_or_else(|r| panic!("upgrade through nginx refused: {r:?}\n{}", nginx.logs()));
    assert_eq!(c.welcome["user"], "42", "{}", c.welcome);
    assert_eq!(
        c.welcome["channels"],
        json!(["/app/broadcast", "/app/user/42/notifications"])
    );
    // The welcome is sent before the joins are done; a request is read only
    // after them, so a pong means the socket's channels are subscribed.
    assert_eq!(
        c.request(json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
    // The gateway asked Django with the headers nginx added.
    let whoami = django.last_call();
    assert_eq!(whoami.path, "/whoami");
    assert_eq!(whoami.cookie.as_deref(), Some(cookie.as_str()));
    assert_eq!(whoami.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(whoami.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(whoami.header("x-forwarded-proto"), Some("http"));

    // Host is passed through as the browser sent it, so other origins,
    // even the same host on another port, are refused by the gateway.
    for evil in ["https://evil.example", "http://127.0.0.1:1"] {
        let refused = Client::connect_with(&ws_url, &[("Origin", evil), ("Cookie", &cookie)])
            .await
            .err()
            .unwrap_or_else(|| panic!("Origin {evil} was accepted through nginx"));
        assert_eq!(refused.status, 403, "Origin {evil}: {refused:?}");
    }

    // Tidings' HTTP API is not reachable through nginx.
    let publish = json!({"channel": "/app/user/42/notifications", "data": "via nginx"}).to_string();
    let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
    for path in ["/api/publish", "/api/tokens"] {
        let r = http::request(front, "POST", path, &headers, publish.as_bytes()).await;
        assert_eq!(r.status, 403, "POST {path} through nginx: {r:?}");
    }
    assert!(
        django.calls().iter().all(|c| !c.path.starts_with("/api/")),
        "the API paths must not reach Django either"
    );

    // Publishing on the gateway's own loopback port reaches the socket
    // through nginx (and is the first message: nothing came via nginx).
    let r = gw
        .publish("/app/user/42/notifications", json!({"n": 0}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let first = c.next_json_within(PATIENCE).await.unwrap_or_else(|| {
        panic!(
            "the publish did not arrive through nginx\ngateway:\n{}\nnginx:\n{}",
            gw.logs(),
            nginx.logs()
        )
    });
    // The default notification rule keeps a history: offset 1 of its epoch.
    let epoch = first["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(
        first,
        json!({"type": "message", "channel": "/app/user/42/notifications", "offset": 1, "epoch": epoch, "data": {"n": 0}})
    );

    // Idle for 2 s: only the gateway's pings flow, and our pongs must get
    // back through nginx (else the 1 s pong timeout closes the socket).
    let mut ws = c.into_inner();
    let mut pings = 0;
    let idle_until = Instant::now() + Duration::from_secs(2);
    loop {
        match timeout_at(idle_until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Pong(_)))) => {}
            Ok(other) => panic!(
                "while idle through nginx the socket got {other:?}\ngateway:\n{}\nnginx:\n{}",
                gw.logs(),
                nginx.logs()
            ),
        }
    }
    assert!(
        pings >= 3,
        "expected the gateway's pings (every 0.5 s) through nginx, got {pings}"
    );
    // Still open and delivering, in order.
    for n in 1..=5 {
        let r = gw
            .publish("/app/user/42/notifications", json!({"n": n}))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < 5 {
        match timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frame");
                got.push(v["data"]["n"].clone());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("after idling, the socket through nginx got {other:?}"),
        }
    }
    assert_eq!(got, [1, 2, 3, 4, 5].map(|n| json!(n)));

    // nginx logs the upgrade as 101 once the tunnel closes.
    let _ = ws.close(None).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let access = nginx.access_log();
        if access.lines().any(|l| l.contains("GET /ws HTTP/1.1\" 101")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 101 for /ws in nginx's access log:\n{access}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[section] key=value` lines of a unit file, in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("tidings.service line {}: not key=value: {line}", i + 1));
        assert!(!section.is_empty(), "line {}: key outside a section", i + 1);
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// The directives the unit may use, per section (all documented in
/// systemd.directives(7), systemd 247+): the check when systemd-analyze is
/// not installed, and a list a reviewer extends on purpose.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "Unit",
        &[
            "Description",
            "Documentation",
            "After",
            "Before",
            "Wants",
            "Requires",
            "StartLimitIntervalSec",
            "StartLimitBurst",
        ],
    ),
    (
        "Service",
        &[
            "Type",
            "ExecStart",
            "EnvironmentFile",
            "Environment",
            "KillSignal",
            "TimeoutStopSec",
            "Restart",
            "RestartSec",
            "RestartPreventExitStatus",
            "LimitNOFILE",
            "DynamicUser",
            "NoNewPrivileges",
            "CapabilityBoundingSet",
            "AmbientCapabilities",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "ProtectProc",
            "ProcSubset",
            "RestrictAddressFamilies",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "SystemCallErrorNumber",
            "UMask",
        ],
    ),
    ("Install", &["WantedBy"]),
];

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let text = read("deploy/systemd/tidings.service");
    let entries = unit_entries(&text);
    let values = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = values(key);
        assert_eq!(
            v.len(),
            1,
            "tidings.service: expected one {key}=, found {v:?}"
        );
        v[0]
    };

    for (section, key, _) in &entries {
        let known = KNOWN
            .iter()
            .find(|(s, _)| s == section)
            .unwrap_or_else(|| panic!("tidings.service: unexpected section [{section}]"));
        assert!(
            known.1.contains(&key.as_str()),
            "tidings.service: [{section}] {key}= is not a directive this test knows"
        );
    }

    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("LimitNOFILE", "65536"),
        ("EnvironmentFile", "-/etc/tidings/tidings.env"),
        (
            "ExecStart",
            "/usr/local/bin/tidings --config /etc/tidings/tidings.toml",
        ),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), want, "tidings.service: {key}=");
    }
    assert!(
        values("SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
    let stop = one("TimeoutStopSec");
    let stop_secs: f64 = stop
        .strip_suffix('s')
        .unwrap_or(stop)
        .parse()
        .unwrap_or_else(|_| panic!("TimeoutStopSec={stop}: write it in seconds"));
    // The longest a SIGTERM'd gateway takes: the readiness delay, then the grace.
    let shutdown = shipped_number("readiness_delay_secs", 0.0) + shipped_number("grace_secs", 10.0);
    assert!(
        stop_secs >= shutdown + 5.0,
        "TimeoutStopSec={stop} must leave the gateway its shutdown time ({shutdown} s) and more"
    );

    // With systemd's own tools, when this machine has them.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "systemd-analyze is not installed: tidings.service checked by parsing only \
             (known directives, hardening values)"
        );
        return;
    };
    assert!(out.status.success(), "systemd-analyze --version failed");
    let dir = TempDir::new("systemd");
    let unit = dir.0.join("tidings.service");
    let config = nginx::repo_root().join("deploy/tidings.toml");
    let local = text.replace(
        "ExecStart=/usr/local/bin/tidings --config /etc/tidings/tidings.toml",
        &format!(
            "ExecStart={} --config {}",
            binary().display(),
            config.display()
        ),
    );
    assert_ne!(local, text, "ExecStart was rewritten");
    std::fs::write(&unit, local).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and bad values are warnings, not errors: any line about
    // our unit fails the test.
    let about_us: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("tidings.service"))
        .collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify complains about tidings.service:\n{said}"
    );
    // The exposure score: 1.4 ("OK") when written; fail above 2.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze security");
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.0:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tidings [--config FILE] check-config` with exactly these
/// `TIDINGS_*` variables; returns (success, stdout, stderr).
fn check_config(config: Option<&Path>, env: &[(String, String)]) -> (bool, String, String) {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("check-config")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("run tidings check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    v.to_owned()
}

/// `TIDINGS_*=value` lines of an environment file; commented-out examples
/// (`#TIDINGS_...`) too when `examples`.
fn env_file(text: &str, examples: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = if examples {
                l.strip_prefix('#').unwrap_or(l)
            } else {
                l
            };
            let (k, v) = l.split_once('=')?;
            k.starts_with("TIDINGS_")
                .then(|| (k.to_owned(), unquote(v)))
        })
        .collect()
}

#[test]
fn example_config_and_environment_pass_check_config() {
    let config = nginx::repo_root().join("deploy/tidings.toml");
    let env_text = read("deploy/systemd/tidings.env.example");

    // The file alone.
    let (ok, out, err) = check_config(Some(&config), &[]);
    assert!(ok, "deploy/tidings.toml: {err}");
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    assert!(
        out.contains("url = \"http://127.0.0.1:8000/tidings/whoami/\""),
        "{out}"
    );
    assert!(out.contains("allow_local_without_key = false"), "{out}");
    // Behind nginx on this host, the proxy's X-Forwarded-For is believed.
    let limits = out.split("[limits]").nth(1).expect("a [limits] section");
    assert!(
        limits.contains("trusted_proxies = [\n    \"127.0.0.1\""),
        "limits.trusted_proxies trusts the local nginx: {limits}"
    );

    // With the example environment as shipped: the empty API key stops
    // startup, naming the variable, so a copied example never runs with a
    // placeholder key.
    let env = env_file(&env_text, false);
    assert!(
        env.iter()
            .any(|(k, v)| k == "TIDINGS_API_KEY" && v.is_empty()),
        "tidings.env.example ships TIDINGS_API_KEY empty: {env:?}"
    );
    let (ok, _, err) = check_config(Some(&config), &env);
    assert!(!ok, "an empty TIDINGS_API_KEY must stop startup");
    assert!(err.contains("TIDINGS_API_KEY"), "{err}");

    // Filled in, and with the commented examples too.
    for examples in [false, true] {
        let env: Vec<_> = env_file(&env_text, examples)
            .into_iter()
            .map(|(k, v)| {
                let v = if k == "TIDINGS_API_KEY" {
                    "a-key-for-the-deploy-test-0123456789".to_owned()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        let (ok, out, err) = check_config(Some(&config), &env);
        assert!(ok, "tidings.env.example (examples: {examples}): {err}");
        assert!(out.contains("api_key = \"<redacted>\""), "{out}");
        assert!(out.contains("redis_url = \"<redacted>\""), "{out}");
        assert!(!out.contains("a-key-for-the-deploy-test"), "{out}");
    }
}

#[test]
fn docker_environment_passes_check_config() {
    // The image's ENV lines.
    let dockerfile = read("deploy/docker/Dockerfile");
    let mut env = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("ENV ") {
            in_env = true;
            env.extend(words_with_tidings(rest));
        } else if in_env {
            env.extend(words_with_tidings(l));
        }
        if in_env && !l.ends_with('\\') {
            in_env = false;
        }
    }
    assert!(
        env.contains(&("TIDINGS_LISTEN".to_owned(), "0.0.0.0:8080".to_owned())),
        "the image listens beyond the container's loopback: {env:?}"
    );

    // The gateway's environment in compose.yaml (`KEY: value` lines).
    let compose = read("deploy/docker/compose.yaml");
    let from_compose: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            k.starts_with("TIDINGS_")
                .then(|| (k.to_owned(), unquote(v)))
        })
        .collect();
    for key in [
        "TIDINGS_REDIS_URL",
        "TIDINGS_IDENTITY__RESOLVERS",
        "TIDINGS_IDENTITY__COOKIE_PROXY__URL",
    ] {
        assert!(
            from_compose.iter().any(|(k, _)| k == key),
            "compose.yaml sets {key}"
        );
    }
    env.extend(from_compose);
    let (ok, out, err) = check_config(None, &env);
    assert!(ok, "the Docker environment {env:?}: {err}");
    assert!(out.contains("listen = \"0.0.0.0:8080\""), "{out}");
    assert!(out.contains("format = \"json\""), "{out}");
}

/// The `TIDINGS_*=value` words of a Dockerfile `ENV` line.
fn words_with_tidings(line: &str) -> Vec<(String, String)> {
    line.trim_end_matches('\\')
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            k.starts_with("TIDINGS_")
                .then(|| (k.to_owned(), unquote(v)))
        })
        .collect()
}
