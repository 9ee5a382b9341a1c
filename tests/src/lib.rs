//! Test harness for Tidings' end-to-end tests: it starts the real `tidings`
//! binary (and real `redis-server`s) on free loopback ports, and talks to
//! them with real clients: tokio-tungstenite, a raw WebSocket client for
//! crafting bad frames, and raw HTTP/1.1.
//!
//! The binary is found next to the test executable (`target/<profile>/tidings`,
//! which `cargo test --workspace` builds because the `tidings` package has
//! integration tests of its own), or at `$TIDINGS_BIN`.

pub mod backend;
pub mod browser;
pub mod cluster;
pub mod django;
pub mod gateway;
pub mod http;
pub mod nginx;
pub mod node;
pub mod pusher;
pub mod raw;
pub mod redis;
pub mod socketio;
pub mod sse;
pub mod ws;

pub use gateway::{Gateway, GatewayOptions};

/// Open files (sockets) the busiest tests need in one process: a storm test
/// opens 1,000 client sockets while the other tests of its binary run
/// beside it, and the gateways it starts inherit the same limit.
pub const OPEN_FILES_NEEDED: u64 = 4096;

/// Raises this process's open-file soft limit to its hard limit, once.
///
/// A login shell often starts with a soft limit of 1,024, which the storm
/// tests exceed ("Too many open files"). Every helper that starts a process
/// or opens many sockets calls this first (the gateway and Redis spawners),
/// so `cargo test --workspace` works as written; the processes it spawns
/// inherit the raised limit. When even the hard limit is below
/// [`OPEN_FILES_NEEDED`], it says so on stderr (past the test output
/// capture), once per test process, with the fix.
pub fn raise_open_file_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let before = rlimit::Resource::NOFILE.get().ok();
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(soft) => {
                if soft < OPEN_FILES_NEEDED {
                    // Straight to stderr, past the test harness's output
                    // capture: this must be seen even when the test that
                    // happened to print it passes.
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "tidings-e2e: the open-file limit is {soft} even after raising the soft \
                         limit to the hard limit; some tests open over 1,000 sockets at once and \
                         will fail with \"Too many open files\". Raise the hard limit to at least \
                         {OPEN_FILES_NEEDED} (as root: `ulimit -Hn {OPEN_FILES_NEEDED}`, or \
                         `nofile` in /etc/security/limits.conf, or LimitNOFILE= for a systemd \
                         service) and run the tests again."
                    );
                } else if let Some((old, _)) = before.filter(|(old, _)| *old < soft) {
                    eprintln!("tidings-e2e: raised the open-file soft limit from {old} to {soft}");
                }
                soft
            }
            Err(e) => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "tidings-e2e: cannot raise the open-file limit ({e}); tests that open many \
                     sockets may fail with \"Too many open files\""
                );
                before.map_or(0, |(soft, _)| soft)
            }
        }
    })
}

/// `s` percent-encoded for a query value (everything but ASCII letters
/// and digits escaped).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A generous bound for things that should happen "at once" on loopback.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
