//! The real `pusher-js` client and the real Pusher server SDK for Node (npm,
//! pinned in `tests/pusher/package.json`), driven by `tests/pusher/client.js`:
//! installed on first use (`.ci/run` installs them beforehand), with a clear
//! failure when Node or npm is missing.

use std::path::PathBuf;

use serde_json::Value;

use crate::node::{self, NodeProcess};

/// `tests/pusher`.
pub fn dir() -> PathBuf {
    node::dir("pusher")
}

/// Installs the pinned packages into `tests/pusher/node_modules` if they
/// are not there; panics with what to do when it cannot.
pub fn ensure_installed() {
    node::ensure_installed("pusher", &["pusher-js", "pusher"], "the Pusher tests");
}

/// A running `client.js`: one pusher-js connection and a server SDK.
pub struct PusherClient {
    node: NodeProcess,
}

impl PusherClient {
    /// Starts the client against the gateway at `addr` (`host:port`) as
    /// app `app_id` with `key` and `secret`.
    pub async fn start(addr: &str, app_id: &str, key: &str, secret: &str) -> PusherClient {
        ensure_installed();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        PusherClient {
            node: NodeProcess::start(
                &dir().join("client.js"),
                [host, port, app_id, key, secret],
                "the pusher client",
            ),
        }
    }

    /// The next thing the client reports (within [`crate::PATIENCE`]).
    pub async fn next(&mut self) -> Value {
        self.node.next().await
    }

    /// The next report for which `pred` holds, skipping others.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.node.next_where(pred).await
    }

    /// The next report whose `ev` is `ev`.
    pub async fn next_ev(&mut self, ev: &str) -> Value {
        self.node.next_ev(ev).await
    }

    /// The next channel event named `event` on `channel`.
    pub async fn event(&mut self, channel: &str, event: &str) -> Value {
        self.next_where(|v| v["ev"] == "event" && v["channel"] == channel && v["event"] == event)
            .await
    }

    /// Sends a command (see `client.js`).
    pub async fn send(&mut self, cmd: Value) {
        self.node.send(cmd).await;
    }

    /// Waits for the connection; returns its socket id.
    pub async fn connected(&mut self) -> String {
        self.next_ev("connected").await["socket_id"]
            .as_str()
            .expect("socket_id")
            .to_owned()
    }

    /// Kills the client.
    pub async fn kill(self) {
        self.node.kill().await;
    }
}

/// A running `server.js`: the app's side for a pusher-js page in a
/// browser. It serves, on a loopback port, the page (`/?gw=HOST:PORT`,
/// loading the pinned pusher-js browser build), the channel authorization
/// endpoint (`/auth?user=ID`, signed by the server SDK's
/// `authorizeChannel`; 403 for channels starting `private-forbidden`), the
/// user authentication endpoint (`/user-auth?user=ID`,
/// `authenticateUser`) and a webhook receiver (`/webhook`, checked with the
/// SDK's `webhook(request).isValid()`), and runs the SDK's calls.
pub struct AppServer {
    node: NodeProcess,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl AppServer {
    /// Starts the server as app `app_id` with `key` and `secret`.
    pub async fn start(app_id: &str, key: &str, secret: &str) -> AppServer {
        ensure_installed();
        let mut node = NodeProcess::start(
            &dir().join("server.js"),
            [app_id, key, secret],
            "the pusher app server",
        );
        let port = node.next_ev("listening").await["port"]
            .as_u64()
            .expect("port") as u16;
        AppServer { node, port }
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Points the server SDK at the gateway at `addr` (`host:port`).
    pub async fn use_gateway(&mut self, addr: &str) {
        self.node.send(serde_json::json!({ "gateway": addr })).await;
        self.node.next_ev("gateway").await;
    }

    /// Sends a command (see `server.js`).
    pub async fn send(&mut self, cmd: Value) {
        self.node.send(cmd).await;
    }

    /// The next report whose `ev` is `ev`.
    pub async fn next_ev(&mut self, ev: &str) -> Value {
        self.node.next_ev(ev).await
    }

    /// The next report for which `pred` holds, skipping others.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.node.next_where(pred).await
    }
}
