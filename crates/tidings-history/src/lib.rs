#![doc = include_str!("../README.md")]

mod follower;
mod live;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod types;

use std::{future::Future, pin::Pin};

use bytes::Bytes;
use tidings_core::ChannelName;

pub use follower::{Follower, Step};
pub use live::{LivePublication, LIVE_PREFIX};
pub use memory::{Clock, LiveSink, MemoryHistory};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisHistory, DEFAULT_PREFIX, FUNCTION_LIBRARY, LIBRARY_NAME};
pub use types::{
    HistoryOptions, Publication, Recovery, StreamPosition, DEFAULT_META_TTL, MAX_EPOCH_LEN,
    MAX_SIZE,
};

/// The largest offset a position may carry: 2^53 - 1, exact in Lua numbers
/// (the Redis script) and in JavaScript clients.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// A boxed, sendable future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a history operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The position is malformed (an empty or foreign-looking epoch, an
    /// offset beyond [`MAX_OFFSET`]).
    #[error("invalid position: {0}")]
    InvalidPosition(&'static str),
    /// The history options are out of range.
    #[error("invalid history options: {0}")]
    InvalidOptions(&'static str),
    /// The position is ahead of the channel in the same epoch: it was never
    /// handed out by this history, so nothing can be replayed from it.
    #[error("position {since} is ahead of the channel's current position {current}")]
    FuturePosition {
        /// The position asked about.
        since: StreamPosition,
        /// Where the channel is.
        current: StreamPosition,
    },
    /// The store is not reachable right now (Redis down or reconnecting).
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// The store took too long to answer.
    #[error("history timed out")]
    Timeout,
    /// The store refused the request (for example a Redis ACL).
    #[error("history refused: {0}")]
    Refused(String),
    /// The store cannot run the history functions (Redis older than 7.0).
    #[error("history unsupported by the server: {0}")]
    Unsupported(String),
    /// The store answered something this crate does not understand.
    #[error("unexpected answer from the history store: {0}")]
    Protocol(String),
}

impl HistoryError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout)
    }
}

/// Positions and replay of channel histories.
///
/// Every method names its channel's [`HistoryOptions`]: the history of one
/// channel must always be used with the same options (the gateway takes
/// them from the routing rule the channel matches).
///
/// Both implementations, [`RedisHistory`] and [`MemoryHistory`], give the
/// same answers to the same calls (one test suite runs against both).
pub trait History: Send + Sync + 'static {
    /// Publishes `payload` on `channel` with history, in one atomic step:
    /// assigns the next offset, appends to the history, trims it to
    /// `opts.size()`, renews its expiry and publishes the live message
    /// (see [`LivePublication`]). Publications on one channel get offsets
    /// 1, 2, 3, ... in the order of their atomic steps, whoever publishes,
    /// and live messages go out in that order. Returns the publication's
    /// position.
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        payload: Bytes,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;

    /// The channel's current position. A channel without history yet (or
    /// whose epoch expired) starts a new epoch at offset 0 now, so that the
    /// position stays valid when the first publication comes.
    fn position<'a>(
        &'a self,
        channel: &'a ChannelName,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;

    /// What was published on `channel` after `since`, at most `limit`
    /// publications, together with the current position, in one atomic step.
    ///
    /// `recovered` is `false` when `since` is from another epoch, when some
    /// of the missed publications were trimmed or expired, or when more than
    /// `limit` were missed. A position ahead of the channel in the same
    /// epoch is [`HistoryError::FuturePosition`]; a malformed one is
    /// [`HistoryError::InvalidPosition`].
    fn recover<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: &'a StreamPosition,
        limit: u64,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>>;

    /// A short name for logs and metrics (`"in-memory"`, `"redis"`).
    fn name(&self) -> &'static str;
}

/// Checks a position given to [`History::recover`].
fn check_since(since: &StreamPosition) -> Result<(), HistoryError> {
    since.validate()?;
    if since.offset > MAX_OFFSET {
        return Err(HistoryError::InvalidPosition(
            "the offset is larger than 2^53 - 1",
        ));
    }
    Ok(())
}
