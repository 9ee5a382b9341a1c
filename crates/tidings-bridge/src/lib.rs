//! The broker bridge of the Tidings gateway.
//!
//! Sockets never talk to the broker themselves. Each process has one
//! [`Bridge`]: it keeps the local subscribers of every channel in a [`Hub`],
//! holds **one** broker subscription per channel (or pattern) whatever the
//! number of local sockets on it, and fans each incoming message out to the
//! sockets' bounded [`Mailbox`]es, encoding the frame once for all of them.
//!
//! The broker behind it is a trait, [`Broker`], with two implementations:
//!
//! - [`LocalBroker`]: in-process, no setup at all. Publishing delivers to this
//!   process's sockets. The zero-setup default, and what tests embed.
//! - [`RedisBroker`]: Redis pub/sub (see `docs/redis.md`), so that anything
//!   that `PUBLISH`es on Redis reaches the sockets of every gateway instance.
//!
//! # Layout
//!
//! - [`mailbox`]: a socket's bounded outbound queue and its slow-consumer policy.
//! - [`hub`]: the local subscriber registry and the fan-out loop.
//! - [`broker`]: the [`Broker`] trait, [`BrokerError`] and the [`Inbound`]
//!   handle a broker delivers through.
//! - [`local`]: the in-process broker.
//! - [`redis`]: the Redis broker.
//! - [`bridge`]: the [`Bridge`] itself and a socket's [`Subscriber`] handle.
//! - [`stats`]: counters for metrics.
//!
//! # Example
//!
//! ```
//! use tidings_bridge::{mailbox, mailbox::Next, Bridge, Outbound, SlowConsumerPolicy, Topic};
//! use tidings_core::{ChannelName, Message};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bridge = Bridge::in_process();
//! let (mailbox, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
//! let mut sub = bridge.subscriber(mailbox);
//! let news = ChannelName::new("/news").unwrap();
//! sub.subscribe(Topic::Channel(news.clone())).await.unwrap();
//!
//! bridge.publish(Message::new(news, "hello")).await.unwrap();
//! match rx.next().await {
//!     Next::Item(Outbound::Deliver(d)) => {
//!         assert_eq!(&d.frame()[..], br#"{"type":"message","channel":"/news","data":"hello"}"#)
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! # }
//! ```

pub mod bridge;
pub mod broker;
pub mod hub;
pub mod local;
pub mod mailbox;
pub mod redis;
pub mod stats;

pub use bridge::{Bridge, Subscriber};
pub use broker::{BoxFuture, Broker, BrokerError, Inbound, Topic};
pub use hub::{Hub, QueueDepths};
pub use local::LocalBroker;
pub use mailbox::{mailbox, Mailbox, MailboxReceiver, Outbound, SlowConsumerPolicy};
pub use redis::{RedisBroker, RedisConfig, RedisSetupError};
pub use stats::BridgeStats;
