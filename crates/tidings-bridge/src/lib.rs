#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`mailbox`](mod@mailbox): a socket's bounded outbound queue and its slow-consumer policy.
//! - [`hub`]: the local subscriber registry and the fan-out loop.
//! - [`broker`]: the [`Broker`] trait, [`BrokerError`] and the [`Inbound`]
//!   handle a broker delivers through.
//! - [`local`]: the in-process broker.
//! - `redis`: the Redis broker, one server or Sentinel (feature `redis`).
//! - `cluster`: the Redis Cluster broker, classic and sharded pub/sub
//!   (feature `redis`).
//! - [`history`](mod@history): publishing with history (offsets).
//! - `positions`: channels' current positions, read once per burst of
//!   subscriptions and kept current by the hub.
//! - [`bridge`]: the [`Bridge`] itself and a socket's [`Subscriber`] handle.
//! - [`stats`]: counters for metrics.
//! - `bench`: hidden entry points for this crate's benchmarks to the
//!   hub's crate-private methods (not part of the API).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
pub mod bench;
pub mod bridge;
pub mod broker;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod cluster;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod config;
pub mod history;
pub mod hub;
pub mod local;
pub mod mailbox;
mod positions;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod stats;

pub use bridge::{Bridge, Subscriber};
pub use broker::{BoxFuture, Broker, BrokerError, Inbound, Topic};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use cluster::ClusterBroker;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use config::{ModeName, RedisSettings};
pub use history::HistoryLookup;
pub use hub::{Hub, QueueDepths};
pub use local::LocalBroker;
pub use mailbox::{
    mailbox, Direct, DirectWrite, GapNotice, Mailbox, MailboxReceiver, MailboxWaker, Outbound,
    SlowConsumerPolicy, WriteGate,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisBroker, RedisConfig, RedisMode, RedisSetupError, ShardedLookup};
pub use stats::BridgeStats;
pub use tidings_history;
