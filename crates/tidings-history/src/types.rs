//! The vocabulary: positions, options, publications and recoveries.

use std::{fmt, time::Duration};

use bytes::Bytes;

use crate::HistoryError;

/// The longest epoch accepted in a position (epochs the implementations
/// make are 13 to 24 characters).
pub const MAX_EPOCH_LEN: usize = 64;

/// Where a channel's stream is: the offset of its last publication in the
/// current epoch.
///
/// Offsets count publications on one channel, from 1, without holes. The
/// epoch names one lifetime of the channel's history: it changes whenever the
/// offset counter was lost (the history expired, or Redis restarted without
/// persistence), and positions from another epoch say nothing about this
/// one. A channel that has no publication yet is at offset 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The offset of the last publication (0: none yet).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: String,
}

impl StreamPosition {
    /// A position.
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }

    /// Checks that the epoch could have come from an implementation: 1 to
    /// [`MAX_EPOCH_LEN`] characters of `[0-9A-Za-z_-]`.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if valid_epoch(self.epoch.as_bytes()) {
            Ok(())
        } else if self.epoch.is_empty() {
            Err(HistoryError::InvalidPosition("the epoch is empty"))
        } else if self.epoch.len() > MAX_EPOCH_LEN {
            Err(HistoryError::InvalidPosition("the epoch is too long"))
        } else {
            Err(HistoryError::InvalidPosition(
                "the epoch may only contain 0-9, A-Z, a-z, '_' and '-'",
            ))
        }
    }
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.offset, self.epoch)
    }
}

pub(crate) fn valid_epoch(epoch: &[u8]) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// The most publications a channel's history may keep.
pub const MAX_SIZE: u64 = 1_000_000;

/// How long a channel's epoch and offset are kept after its last publication
/// (or read) unless [`HistoryOptions::with_meta_ttl`] says otherwise: one day,
/// or the history's TTL if that is longer.
pub const DEFAULT_META_TTL: Duration = Duration::from_secs(86_400);

/// How much history one channel keeps.
///
/// - `size`: the last `size` publications are kept (older ones are trimmed).
/// - `ttl`: the whole history expires `ttl` after the channel's last
///   publication (a quiet channel frees its memory).
/// - `meta_ttl` (at least `ttl`, by default the longer of `ttl` and one
///   day): how long the channel's epoch and offset outlive its last
///   publication. While they live, a client that missed nothing is told
///   `recovered: true` even after the entries expired; once they are gone,
///   the channel starts a new epoch.
///
/// TTLs are whole seconds (Redis `EXPIRE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    size: u64,
    ttl_secs: u64,
    meta_ttl_secs: u64,
    sharded: bool,
}

impl HistoryOptions {
    /// Keep the last `size` publications for `ttl` after the last one.
    ///
    /// `size` must be 1 to [`MAX_SIZE`], `ttl` at least one second and whole
    /// seconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidings_history::HistoryOptions;
    /// let o = HistoryOptions::new(100, Duration::from_secs(600)).unwrap();
    /// assert_eq!(o.meta_ttl(), Duration::from_secs(86_400));
    /// assert!(HistoryOptions::new(0, Duration::from_secs(600)).is_err());
    /// assert!(HistoryOptions::new(10, Duration::from_millis(1500)).is_err());
    /// ```
    pub fn new(size: u64, ttl: Duration) -> Result<Self, HistoryError> {
        if !(1..=MAX_SIZE).contains(&size) {
            return Err(HistoryError::InvalidOptions(
                "size must be between 1 and 1000000",
            ));
        }
        let ttl_secs = whole_secs(ttl, "ttl must be whole seconds, at least 1")?;
        Ok(Self {
            size,
            ttl_secs,
            meta_ttl_secs: ttl_secs.max(DEFAULT_META_TTL.as_secs()),
            sharded: false,
        })
    }

    /// Delivers live with sharded pub/sub (`SPUBLISH`, for channels whose
    /// subscribers use `SSUBSCRIBE`) instead of `PUBLISH`.
    pub fn with_sharded(self, sharded: bool) -> Self {
        Self { sharded, ..self }
    }

    /// Whether live delivery uses `SPUBLISH`.
    pub fn sharded(&self) -> bool {
        self.sharded
    }

    /// Keeps the epoch and offset for `meta_ttl` after the last publication
    /// or read instead (at least the TTL, whole seconds).
    pub fn with_meta_ttl(self, meta_ttl: Duration) -> Result<Self, HistoryError> {
        let meta_ttl_secs = whole_secs(meta_ttl, "meta_ttl must be whole seconds, at least 1")?;
        if meta_ttl_secs < self.ttl_secs {
            return Err(HistoryError::InvalidOptions(
                "meta_ttl must be at least ttl",
            ));
        }
        Ok(Self {
            meta_ttl_secs,
            ..self
        })
    }

    /// How many publications are kept.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How long the history lives after the last publication.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// How long the epoch and offset live after the last publication or read.
    pub fn meta_ttl(&self) -> Duration {
        Duration::from_secs(self.meta_ttl_secs)
    }

    #[cfg(feature = "redis")]
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    #[cfg(feature = "redis")]
    pub(crate) fn meta_ttl_secs(&self) -> u64 {
        self.meta_ttl_secs
    }
}

fn whole_secs(d: Duration, message: &'static str) -> Result<u64, HistoryError> {
    if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > u64::from(u32::MAX) {
        return Err(HistoryError::InvalidOptions(message));
    }
    Ok(d.as_secs())
}

/// One publication kept in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its offset.
    pub offset: u64,
    /// The epoch it was published in.
    pub epoch: String,
    /// What was published, byte for byte.
    pub payload: Bytes,
}

impl Publication {
    /// The position right after this publication.
    pub fn position(&self) -> StreamPosition {
        StreamPosition::new(self.offset, self.epoch.clone())
    }
}

/// The answer to [`History::recover`](crate::History::recover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// What was missed since the given position, oldest first; empty unless
    /// `recovered`.
    pub publications: Vec<Publication>,
    /// The channel's current position, taken in the same atomic step as the
    /// publications: live messages up to it are covered by the replay.
    pub position: StreamPosition,
    /// Whether `publications` is everything published since the given
    /// position. `false` when the epoch differs, the missed publications
    /// were trimmed or expired, or there are more than the limit: the
    /// client must reload its state and continue from `position`.
    pub recovered: bool,
}
