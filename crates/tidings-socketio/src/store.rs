//! The Engine.IO sessions, by sid: what the transport side (polling
//! requests, a WebSocket) shares with the session's task. Bounded by the
//! connection limits (every entry holds an admission slot) and cleaned when
//! the task ends.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the transport hands the session's task.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One Engine.IO packet, as text.
    Packet(String),
    /// The transport is gone (the WebSocket closed).
    Gone,
}

/// Which transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// HTTP long-polling.
    Polling,
    /// A WebSocket is probing; polling still carries packets.
    Upgrading,
    /// The WebSocket.
    WebSocket,
}

/// One session's shared side.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sid: Arc<str>,
    /// Into the session's task.
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Out of it (also the upgrade's noop).
    pub(crate) out_tx: mpsc::Sender<Bytes>,
    /// Taken by the one poll (or the WebSocket) that writes.
    pub(crate) outbound: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    pub(crate) mode: Mutex<Mode>,
    /// Cancelled when the session has ended.
    pub(crate) closed: CancellationToken,
}

impl Shared {
    pub(crate) fn mode(&self) -> Mode {
        *self.mode.lock()
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }
}

/// The sessions.
#[derive(Debug, Default)]
pub(crate) struct Store {
    map: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
}

impl Store {
    pub(crate) fn get(&self, sid: &str) -> Option<Arc<Shared>> {
        self.map.lock().get(sid).cloned()
    }

    pub(crate) fn insert(&self, shared: Arc<Shared>) {
        self.map.lock().insert(shared.sid.clone(), shared);
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.map.lock().remove(sid);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// A fresh session id: 16 random bytes, hex.
pub(crate) fn sid() -> Arc<str> {
    let mut bytes = [0u8; 16];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Arc::from(s)
}
