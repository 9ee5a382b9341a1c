//! The seam between replay and live, per connection.
//!
//! For each channel with history a connection subscribes to exactly, the
//! session keeps a [`Follower`]: the position of the last publication this
//! connection was given. The order of a (re)subscription is always: join
//! the channel live (its messages wait in the mailbox), then ask the
//! history for what came after the client's position, in one atomic step
//! that also gives the channel's current position; replay that, and let
//! every live message through the follower, which drops what the replay
//! already covered and notices a hole (a live message lost on the way, for
//! example while Redis reconnected) so it can be filled from the history.
//!
//! The per-message cost on the live path is one hash lookup, and only on a
//! connection that follows channels with history.

use bytes::Bytes;
use tidings_core::{
    protocol::{self, PositionReport},
    small::SmallMap,
    ChannelName, Delivery,
};
use tidings_history::{Follower, HistoryError, Recovery, Step, StreamPosition};

use crate::context::Context;

/// What the session does with one live delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write it.
    Deliver,
    /// The replay (or an earlier live message) covered it: skip it.
    Skip,
    /// Something is missing before it: fill the hole from the history.
    Repair(ChannelName),
}

/// The outcome of one recovery, as the session reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// Where the connection now is on the channel.
    pub(crate) position: StreamPosition,
    /// With a position asked for: whether everything missed was replayed.
    pub(crate) recovered: Option<bool>,
    /// Why not, when `recovered` is `Some(false)`.
    pub(crate) reason: Option<&'static str>,
}

impl Report {
    pub(crate) fn as_protocol(&self) -> PositionReport<'_> {
        PositionReport {
            offset: self.position.offset,
            epoch: &self.position.epoch,
            recovered: self.recovered,
            reason: self.reason,
        }
    }
}

/// A connection's followers, one per channel with history it subscribes to.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    /// Small: a connection follows a channel or two, mostly.
    map: SmallMap<ChannelName, Follower>,
}

/// What a replay asks for.
#[derive(Debug, Clone)]
pub(crate) enum From {
    /// Nothing: just the channel's current position.
    Now,
    /// Everything after the client's position.
    Position(StreamPosition),
    /// The channel's last publication ("last value").
    Last,
}

impl Followers {
    /// Stops following `channel` (unsubscribed).
    pub(crate) fn forget(&mut self, channel: &ChannelName) {
        self.map.remove(channel);
    }

    /// Whether `channel` is followed.
    pub(crate) fn follows(&self, channel: &ChannelName) -> bool {
        self.map.contains_key(channel)
    }

    /// The verdict on a live delivery. Deliveries through pattern
    /// subscriptions and those without a position (a plain `PUBLISH`) pass
    /// untouched; so do those of channels not followed.
    pub(crate) fn judge(&mut self, delivery: &Delivery) -> Verdict {
        if self.map.is_empty() || delivery.pattern().is_some() {
            return Verdict::Deliver;
        }
        let Some((offset, epoch)) = delivery.position() else {
            return Verdict::Deliver;
        };
        let Some(follower) = self.map.get_mut(delivery.channel()) else {
            return Verdict::Deliver;
        };
        let position = StreamPosition::new(offset, epoch);
        match follower.accept(&position) {
            Step::Deliver => Verdict::Deliver,
            Step::Duplicate => Verdict::Skip,
            Step::Gap => Verdict::Repair(delivery.channel().clone()),
        }
    }

    /// (Re)starts following `channel`, which the connection has just joined
    /// live: asks the history (if the channel keeps one) per `from`, and
    /// appends the replayed message frames to `replay`. `None`: the channel
    /// keeps no history (nothing to report).
    pub(crate) async fn start(
        &mut self,
        ctx: &Context,
        channel: &ChannelName,
        from: From,
        replay: &mut Vec<Bytes>,
    ) -> Option<Report> {
        let history = ctx.bridge.history()?;
        let opts = ctx.bridge.history_options(channel)?;
        if let (From::Now, Some(f)) = (&from, self.map.get(channel)) {
            // Already following (subscribed twice): where it is, untouched,
            // so that nothing queued behind it is skipped.
            return Some(Report {
                position: f.position().clone(),
                recovered: None,
                reason: None,
            });
        }
        let limit = ctx.config.max_replay.min(opts.size()).max(1);
        let asked = match &from {
            From::Position(p) => Some(p.clone()),
            _ => None,
        };
        let answer = match &from {
            // Shared with the other sockets subscribing to the channel
            // meanwhile (a storm of connections asks once).
            From::Now => ctx
                .bridge
                .current_position(channel, &opts)
                .await
                .map(|position| Recovery {
                    publications: Vec::new(),
                    position,
                    recovered: true,
                }),
            From::Position(since) => history.recover(channel, since, limit, &opts).await,
            From::Last => match history.position(channel, &opts).await {
                Ok(now) if now.offset > 0 => {
                    let before = StreamPosition::new(now.offset - 1, now.epoch.clone());
                    history.recover(channel, &before, 1, &opts).await
                }
                other => other.map(|position| Recovery {
                    publications: Vec::new(),
                    position,
                    recovered: true,
                }),
            },
        };
        match answer {
            Ok(recovery) => {
                let reason = (!recovery.recovered)
                    .then(|| why_not(asked.as_ref(), &recovery.position, limit));
                ctx.stats.recovery(
                    asked.is_some(),
                    recovery.recovered,
                    recovery.publications.len(),
                );
                for p in &recovery.publications {
                    replay.push(protocol::encode_message_at(
                        channel,
                        None,
                        &p.payload,
                        Some((p.offset, &p.epoch)),
                    ));
                }
                self.map
                    .insert(channel.clone(), Follower::new(recovery.position.clone()));
                Some(Report {
                    position: recovery.position,
                    recovered: asked.is_some().then_some(recovery.recovered),
                    reason,
                })
            }
            Err(HistoryError::FuturePosition { current, .. }) => {
                // Never handed out by this history: nothing can be
                // replayed from it, and the client must reload.
                ctx.stats.recovery(true, false, 0);
                self.map
                    .insert(channel.clone(), Follower::new(current.clone()));
                Some(Report {
                    position: current,
                    recovered: Some(false),
                    reason: Some("position_ahead"),
                })
            }
            Err(e) => {
                // The store is unreachable: the live stream goes on, and
                // following starts with its first publication.
                tracing::debug!(%channel, error = %e, "history unavailable for a subscription");
                self.map.remove(channel);
                ctx.stats.recovery(asked.is_some(), false, 0);
                asked.map(|position| Report {
                    position,
                    recovered: Some(false),
                    reason: Some("unavailable"),
                })
            }
        }
    }

    /// Starts following `channel` at the position of its first positioned
    /// live delivery, when no replay could set one (the history was
    /// unreachable at subscribe time).
    pub(crate) fn adopt(&mut self, delivery: &Delivery, ctx: &Context) {
        if delivery.pattern().is_some() || self.map.contains_key(delivery.channel()) {
            return;
        }
        if let Some((offset, epoch)) = delivery.position() {
            if ctx.bridge.history_options(delivery.channel()).is_some() {
                self.map.insert(
                    delivery.channel().clone(),
                    Follower::new(StreamPosition::new(offset, epoch)),
                );
            }
        }
    }

    /// Fills a hole on a followed channel: replays what came after the
    /// connection's position. `Some(true)` when all of it was replayed,
    /// `Some(false)` when the client must be told (`gap`, reason
    /// `not_recovered`; following continues from the channel's current
    /// position), `None` when the channel is not followed.
    pub(crate) async fn repair(
        &mut self,
        ctx: &Context,
        channel: &ChannelName,
        replay: &mut Vec<Bytes>,
    ) -> Option<bool> {
        let since = self.map.get(channel)?.position().clone();
        // The store may be reconnecting at the same moment as the broker
        // (a Redis restart): a few quick tries before giving up.
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
            let report = self
                .start(ctx, channel, From::Position(since.clone()), replay)
                .await;
            match report {
                Some(Report {
                    reason: Some("unavailable"),
                    ..
                }) => {
                    // `start` stopped following; resume at the old position
                    // for the next try.
                    self.map
                        .insert(channel.clone(), Follower::new(since.clone()));
                }
                Some(r) => return Some(r.recovered.unwrap_or(true)),
                None => return Some(false),
            }
        }
        self.map.remove(channel);
        Some(false)
    }
}

/// Why a recovery from `asked` did not deliver everything.
fn why_not(asked: Option<&StreamPosition>, now: &StreamPosition, limit: u64) -> &'static str {
    match asked {
        Some(a) if a.epoch != now.epoch => "epoch_changed",
        Some(a) if now.offset.saturating_sub(a.offset) > limit => "too_many",
        _ => "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_cause() {
        let now = StreamPosition::new(50, "e");
        assert_eq!(
            why_not(Some(&StreamPosition::new(1, "x")), &now, 10),
            "epoch_changed"
        );
        assert_eq!(
            why_not(Some(&StreamPosition::new(1, "e")), &now, 10),
            "too_many"
        );
        assert_eq!(
            why_not(Some(&StreamPosition::new(45, "e")), &now, 10),
            "expired"
        );
    }
}
