//! Node.js helpers driven over stdio: a script under `tests/<dir>` with
//! its pinned npm packages (installed on first use; `.ci/run` installs them
//! beforehand), reporting one JSON line per thing that happens and reading
//! JSON-line commands. The Socket.IO and Pusher helpers are built on it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// `tests/<name>`.
pub fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Installs `tests/<name>`'s pinned packages into its `node_modules` if one
/// of `packages` is not there; panics with what to do when it cannot.
/// `what` names the tests in the message ("the Pusher tests").
pub fn ensure_installed(name: &str, packages: &[&str], what: &str) {
    static DONE: Mutex<Option<HashMap<String, ()>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let done = done.get_or_insert_with(HashMap::new);
    if done.contains_key(name) {
        return;
    }
    let d = dir(name);
    let present = |p: &str| {
        d.join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    };
    if !packages.iter().all(|p| present(p)) {
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&d)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run npm ({e}): {what} need Node.js and npm \
                     (Debian: apt-get install nodejs npm), then `npm install` in tests/{name}"
                )
            });
        assert!(
            status.success(),
            "npm install in tests/{name} failed (is the npm registry reachable?)"
        );
    }
    done.insert(name.to_owned(), ());
}

/// A running Node script: JSON lines out, JSON-line commands in. Killed
/// when dropped.
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    what: &'static str,
}

impl NodeProcess {
    /// Starts `node <script> <args>`; `what` names it in failures.
    pub fn start<I, S>(script: &Path, args: I, what: &'static str) -> NodeProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("node (Node.js) is needed for {what}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        NodeProcess {
            child,
            stdin,
            lines,
            what,
        }
    }

    /// The next thing the script reports (within [`crate::PATIENCE`]).
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(crate::PATIENCE, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} to report in time", self.what))
            .expect("read")
            .unwrap_or_else(|| panic!("{} exited", self.what));
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

    /// Sends a command (one JSON line).
    pub async fn send(&mut self, cmd: Value) {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.expect("write");
    }

    /// Kills the script.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
