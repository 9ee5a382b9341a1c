//! Starting and stopping the real gateway binary.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

/// Where the `tidings` binary is.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/tidings
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("tidings");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace` (it builds the binary) or set TIDINGS_BIN",
        bin.display()
    );
    bin
}

/// How to start a gateway.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Extra environment variables (`TIDINGS_*`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// A TOML config file body, written to a temp file and passed with `--config`.
    pub config_toml: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
}

impl GatewayOptions {
    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    /// Uses this TOML as the config file.
    pub fn toml(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_owned());
        self
    }
}

/// A running gateway process. Killed on drop.
pub struct Gateway {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    exited: watch::Receiver<bool>,
    _config: Option<TempFile>,
}

/// A file deleted on drop.
pub struct TempFile(pub PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A unique temp path.
pub fn temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "tidings-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs the binary to completion (for `check-config` and config errors).
pub async fn run_to_exit(opts: GatewayOptions) -> (ExitStatus, String, String) {
    let (mut cmd, _cfg) = command(&opts);
    let out = cmd.output().await.expect("run tidings");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn command(opts: &GatewayOptions) -> (Command, Option<TempFile>) {
    // Before the gateway (which inherits it) and the test's sockets exist.
    crate::raise_open_file_limit();
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("TIDINGS_LISTEN", "127.0.0.1:0");
    let cfg = opts.config_toml.as_ref().map(|body| {
        let f = TempFile(temp_path("config.toml"));
        std::fs::write(&f.0, body).expect("write config");
        f
    });
    if let Some(f) = &cfg {
        cmd.arg("--config").arg(&f.0);
    }
    cmd.args(&opts.args);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    (cmd, cfg)
}

impl Gateway {
    /// Starts a gateway with default settings (in-process broker).
    pub async fn start() -> Gateway {
        Self::start_with(GatewayOptions::default()).await
    }

    /// Starts a gateway and waits until it listens.
    pub async fn start_with(opts: GatewayOptions) -> Gateway {
        let (mut cmd, cfg) = command(&opts);
        let mut child = cmd.spawn().expect("spawn tidings");
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        let (exit_tx, exited) = watch::channel(false);
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        for stream in [
            Box::new(stderr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stdout),
        ] {
            let logs = logs.clone();
            let addr_tx = addr_tx.clone();
            let exit_tx = exit_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        if let Some(a) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
                        {
                            let _ = addr_tx.send(a);
                        }
                    }
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                let _ = exit_tx.send(true);
            });
        }
        drop(addr_tx);
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx.recv()).await {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "gateway did not start; its output:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        Gateway {
            child: Some(child),
            addr,
            logs,
            exited,
            _config: cfg,
        }
    }

    /// Waits (up to [`crate::PATIENCE`]) until `/readyz` answers 200, for
    /// example until the gateway's first Redis connection is up.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            let res = crate::http::get(self.addr, "/readyz").await;
            if res.status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready: {} {}\n{}",
                res.status,
                res.body,
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(limit, child.wait()).await.ok()?.ok()?;
        // Let the log readers drain.
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), exited.wait_for(|e| *e)).await;
        Some(status)
    }

    /// Publishes over the HTTP API (no API key).
    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> crate::http::Response {
        self.publish_with_key(channel, data, None).await
    }

    /// Publishes over the HTTP API with an optional bearer key; returns the response.
    pub async fn publish_with_key(
        &self,
        channel: &str,
        data: serde_json::Value,
        key: Option<&str>,
    ) -> crate::http::Response {
        let body = serde_json::json!({ "channel": channel, "data": data }).to_string();
        let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        if let Some(k) = key {
            headers.push(("Authorization".to_owned(), format!("Bearer {k}")));
        }
        crate::http::request(self.addr, "POST", "/api/publish", &headers, body.as_bytes()).await
    }
}
