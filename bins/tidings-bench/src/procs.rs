//! Processes the bench may start itself: the gateway (`--launch`) and a
//! private `redis-server` (when no `--redis-url` is given).

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

/// A gateway process the bench started. Killed on drop.
pub(crate) struct LaunchedGateway {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
    /// The last lines it printed (for error reports).
    tail: Arc<Mutex<Vec<String>>>,
}

impl LaunchedGateway {
    /// Starts `binary` with `env` (on top of a clean `TIDINGS_*`-free
    /// environment) listening on 127.0.0.1:0, and waits for its banner.
    pub(crate) async fn start(binary: &Path, env: &[(String, String)]) -> Result<Self, String> {
        Self::start_with(binary, &[], env).await
    }

    /// [`start`](Self::start) with arguments: `node server.js` for the
    /// Socket.IO baseline, which prints the same banner.
    pub(crate) async fn start_with(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("TIDINGS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        cmd.env("TIDINGS_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id().ok_or("the gateway exited at once")?;
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        let streams: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
            Box::new(child.stderr.take().ok_or("no stderr")?),
            Box::new(child.stdout.take().ok_or("no stdout")?),
        ];
        for stream in streams {
            let tail = tail.clone();
            let addr_tx = addr_tx.clone();
            // Keep reading so the pipe never fills and blocks the gateway.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        if let Some(a) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
                        {
                            let _ = addr_tx.send(a);
                        }
                    }
                    if let Ok(mut t) = tail.lock() {
                        if t.len() >= 50 {
                            t.remove(0);
                        }
                        t.push(line);
                    }
                }
            });
        }
        drop(addr_tx);
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx.recv()).await {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.start_kill();
                let out = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                return Err(format!("the gateway did not start; its output:\n{out}"));
            }
        };
        Ok(Self {
            child,
            addr,
            pid,
            tail,
        })
    }

    /// The last lines the gateway printed.
    pub(crate) fn tail(&self) -> String {
        self.tail.lock().map(|t| t.join("\n")).unwrap_or_default()
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM (a drain) and waits up to `limit` for it to exit.
    pub(crate) async fn drain(mut self, limit: Duration) -> Result<(), String> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !status.success() {
            return Err("kill -TERM failed".to_owned());
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "the gateway did not exit within {limit:?} of SIGTERM"
            )),
        }
    }
}

/// A private `redis-server` on a free port. Killed on drop.
pub(crate) struct PrivateRedis {
    child: Child,
    pub(crate) port: u16,
}

impl PrivateRedis {
    pub(crate) async fn start() -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if ping(port).await {
                return Ok(Self { child, port });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {port}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}
