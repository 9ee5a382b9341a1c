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
pub mod django;
pub mod gateway;
pub mod http;
pub mod nginx;
pub mod raw;
pub mod redis;
pub mod ws;

pub use gateway::{Gateway, GatewayOptions};

/// A generous bound for things that should happen "at once" on loopback.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
