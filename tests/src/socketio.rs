//! The stock `socket.io-client` (npm, pinned in `tests/socketio/package.json`)
//! driven from Node by `tests/socketio/client.js`: installed on first use
//! (`.ci/run` installs it beforehand), with a clear failure when Node or npm
//! is missing.

use std::path::PathBuf;

use serde_json::Value;

use crate::node::{self, NodeProcess};

/// `tests/socketio`.
pub fn dir() -> PathBuf {
    node::dir("socketio")
}

/// Installs the pinned client into `tests/socketio/node_modules` if it is
/// not there; panics with what to do when it cannot.
pub fn ensure_installed() {
    node::ensure_installed("socketio", &["socket.io-client"], "the Socket.IO tests");
}

/// A running `client.js`.
pub struct NodeClient {
    node: NodeProcess,
}

impl NodeClient {
    /// Starts the client against `url` (`http://addr`) in `mode`
    /// (`polling` or `websocket`), with `cookie` if any.
    pub async fn start(url: &str, mode: &str, cookie: Option<&str>) -> NodeClient {
        ensure_installed();
        let mut args = vec![url, mode];
        args.extend(cookie);
        NodeClient {
            node: NodeProcess::start(&dir().join("client.js"), args, "the socket.io client"),
        }
    }

    /// The next thing the client reports (within [`crate::PATIENCE`]).
    pub async fn next(&mut self) -> Value {
        self.node.next().await
    }

    /// The next report whose `ev` is `ev`, skipping others.
    pub async fn next_ev(&mut self, ev: &str) -> Value {
        self.node.next_ev(ev).await
    }

    /// Emits `args` (`[name, ...]`); the ack is reported as `{"ev":"ack"}`.
    pub async fn emit(&mut self, args: Value) {
        self.node.send(serde_json::json!({ "emit": args })).await;
    }

    /// Emits and waits for the ack's reply.
    pub async fn call(&mut self, args: Value) -> Value {
        self.emit(args).await;
        self.next_ev("ack").await["reply"].clone()
    }

    /// Kills the client.
    pub async fn kill(self) {
        self.node.kill().await;
    }
}
