//! The real `pusher-js` client and the real Pusher server SDK for Node (npm,
//! pinned in `tests/pusher/package.json`), driven by `tests/pusher/client.js`:
//! installed on first use (`.ci/run` installs them beforehand), with a clear
//! failure when Node or npm is missing.

use std::{path::PathBuf, process::Stdio, sync::OnceLock};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// `tests/pusher`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pusher")
}

/// Installs the pinned packages into `tests/pusher/node_modules` if they
/// are not there; panics with what to do when it cannot.
pub fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if dir().join("node_modules/pusher-js/package.json").is_file()
            && dir().join("node_modules/pusher/package.json").is_file()
        {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run npm ({e}): the Pusher tests need Node.js and npm \
                     (Debian: apt-get install nodejs npm), then `npm install` in tests/pusher"
                )
            });
        assert!(
            status.success(),
            "npm install in tests/pusher failed (is the npm registry reachable?)"
        );
    });
}

/// A running `client.js`: one pusher-js connection and a server SDK.
pub struct PusherClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PusherClient {
    /// Starts the client against the gateway at `addr` (`host:port`) as
    /// app `app_id` with `key` and `secret`.
    pub async fn start(addr: &str, app_id: &str, key: &str, secret: &str) -> PusherClient {
        ensure_installed();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut child = Command::new("node")
            .arg(dir().join("client.js"))
            .args([host, port, app_id, key, secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js) is needed for the Pusher tests");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        PusherClient {
            child,
            stdin,
            lines,
        }
    }

    /// The next thing the client reports (within [`crate::PATIENCE`]).
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(crate::PATIENCE, self.lines.next_line())
            .await
            .expect("the pusher client to report in time")
            .expect("read")
            .expect("the client exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next report for which `pred` holds, skipping others.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next report whose `ev` is `ev`.
    pub async fn next_ev(&mut self, ev: &str) -> Value {
        self.next_where(|v| v["ev"] == ev).await
    }

    /// The next channel event named `event` on `channel`.
    pub async fn event(&mut self, channel: &str, event: &str) -> Value {
        self.next_where(|v| v["ev"] == "event" && v["channel"] == channel && v["event"] == event)
            .await
    }

    /// Sends a command (see `client.js`).
    pub async fn send(&mut self, cmd: Value) {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.expect("write");
    }

    /// Waits for the connection; returns its socket id.
    pub async fn connected(&mut self) -> String {
        self.next_ev("connected").await["socket_id"]
            .as_str()
            .expect("socket_id")
            .to_owned()
    }

    /// Kills the client.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
