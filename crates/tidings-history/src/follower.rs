//! The seam between replay and live, as a small state machine.

use crate::{Recovery, StreamPosition};

/// What to do with a live publication, given what a client already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next publication: deliver it (the position moved to it).
    Deliver,
    /// Already delivered (by the replay, or before): drop it.
    Duplicate,
    /// Something is missing between the position and this publication, or
    /// it is from another epoch: recover from [`Follower::position`] (the
    /// position did not move).
    Gap,
}

/// Follows one channel's stream for one client: the last delivered position,
/// and the decision for each live publication.
///
/// The seam, in order: subscribe to live messages (keep them aside), then
/// [`History::recover`](crate::History::recover) from the client's position,
/// deliver the recovered publications, [`Follower::recovered`] with the
/// recovery, then pass every kept and later live publication through
/// [`Follower::accept`]: those the replay already covered are
/// [`Step::Duplicate`]s, so the client gets every offset once, in order.
///
/// ```
/// use tidings_history::{Follower, StreamPosition, Step};
/// let mut f = Follower::new(StreamPosition::new(3, "e"));
/// assert_eq!(f.accept(&StreamPosition::new(3, "e")), Step::Duplicate);
/// assert_eq!(f.accept(&StreamPosition::new(4, "e")), Step::Deliver);
/// assert_eq!(f.accept(&StreamPosition::new(6, "e")), Step::Gap);
/// assert_eq!(f.accept(&StreamPosition::new(1, "other")), Step::Gap);
/// assert_eq!(f.position(), &StreamPosition::new(4, "e"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    position: StreamPosition,
}

impl Follower {
    /// Follows from `position` (everything up to it is delivered).
    pub fn new(position: StreamPosition) -> Self {
        Self { position }
    }

    /// The last delivered position.
    pub fn position(&self) -> &StreamPosition {
        &self.position
    }

    /// Takes a recovery's answer: its publications are delivered (when
    /// `recovered`) or the client was told to reload; either way the client
    /// is now at the recovery's position.
    pub fn recovered(&mut self, recovery: &Recovery) {
        self.position = recovery.position.clone();
    }

    /// Decides on the live publication at `position`.
    pub fn accept(&mut self, position: &StreamPosition) -> Step {
        if position.epoch != self.position.epoch {
            return Step::Gap;
        }
        if position.offset <= self.position.offset {
            Step::Duplicate
        } else if position.offset == self.position.offset + 1 {
            self.position.offset = position.offset;
            Step::Deliver
        } else {
            Step::Gap
        }
    }
}
