//! The stock `socket.io-client` (npm, pinned in `tests/socketio/package.json`)
//! driven from Node by `tests/socketio/client.js`: installed on first use
//! (`.ci/run` installs it beforehand), with a clear failure when Node or npm
//! is missing.

use std::{path::PathBuf, process::Stdio, sync::OnceLock};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// `tests/socketio`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio")
}

/// Installs the pinned client into `tests/socketio/node_modules` if it is
/// not there; panics with what to do when it cannot.
pub fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if dir()
            .join("node_modules/socket.io-client/package.json")
            .is_file()
        {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run npm ({e}): the Socket.IO tests need Node.js and npm \
                     (Debian: apt-get install nodejs npm), then `npm install` in tests/socketio"
                )
            });
        assert!(
            status.success(),
            "npm install in tests/socketio failed (is the npm registry reachable?)"
        );
    });
}

/// A running `client.js`.
pub struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeClient {
    /// Starts the client against `url` (`http://addr`) in `mode`
    /// (`polling` or `websocket`), with `cookie` if any.
    pub async fn start(url: &str, mode: &str, cookie: Option<&str>) -> NodeClient {
        ensure_installed();
        let mut cmd = Command::new("node");
        cmd.arg(dir().join("client.js")).arg(url).arg(mode);
        if let Some(c) = cookie {
            cmd.arg(c);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js) is needed for the Socket.IO tests");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        NodeClient {
            child,
            stdin,
            lines,
        }
    }

    /// The next thing the client reports (within [`crate::PATIENCE`]).
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(crate::PATIENCE, self.lines.next_line())
            .await
            .expect("the socket.io client to report in time")
            .expect("read")
            .expect("the client exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next report whose `ev` is `ev`, skipping others.
    pub async fn next_ev(&mut self, ev: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["ev"] == ev {
                return v;
            }
        }
    }

    /// Emits `args` (`[name, ...]`); the ack is reported as `{"ev":"ack"}`.
    pub async fn emit(&mut self, args: Value) {
        let line = format!("{}\n", serde_json::json!({ "emit": args }));
        self.stdin.write_all(line.as_bytes()).await.expect("write");
    }

    /// Emits and waits for the ack's reply.
    pub async fn call(&mut self, args: Value) -> Value {
        self.emit(args).await;
        self.next_ev("ack").await["reply"].clone()
    }

    /// Kills the client.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
