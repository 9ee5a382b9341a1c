//! The control channel: commands published on a pub/sub channel reach every
//! gateway's [`Registry`].

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tidings_bridge::{
    mailbox, mailbox::Next, Bridge, BrokerError, Outbound, SlowConsumerPolicy, Topic,
};
use tidings_core::{ChannelName, Message};
use tokio::task::JoinHandle;

use crate::{
    command::Command,
    registry::Registry,
    survey::{Surveys, REPLY_OP, SURVEY_OP},
};

/// Commands waiting on one gateway before more are dropped.
const QUEUE: usize = 1024;

/// Counters of the control channel.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Commands applied.
    pub applied: AtomicU64,
    /// Payloads refused (not a valid command).
    pub invalid: AtomicU64,
    /// Connections the applied commands reached on this gateway.
    pub reached: AtomicU64,
}

/// Listens on the control channel through `bridge` (so it is the same
/// Redis, or the in-process broker without one) and applies each command to
/// `registry`.
pub struct ControlChannel {
    channel: ChannelName,
    bridge: Bridge,
    stats: Arc<ControlStats>,
}

impl std::fmt::Debug for ControlChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlChannel")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl ControlChannel {
    /// Subscribes to `channel` and starts applying commands to `registry`.
    /// Resolves once the subscription is live (commands published from now
    /// on are received), or, when the broker is unreachable now, once that
    /// is logged: the bridge subscribes when it is back. The task ends when
    /// the bridge shuts down.
    pub async fn start(
        bridge: &Bridge,
        channel: ChannelName,
        registry: Arc<Registry>,
    ) -> (Self, JoinHandle<()>) {
        Self::start_inner(bridge, channel, registry, None).await
    }

    /// [`ControlChannel::start`], and hands `surveys` the survey requests
    /// and answers that come on the channel (it answers the requests from
    /// `registry`). `surveys` must have been made for this channel.
    pub async fn start_with_surveys(
        bridge: &Bridge,
        channel: ChannelName,
        registry: Arc<Registry>,
        surveys: Arc<Surveys>,
    ) -> (Self, JoinHandle<()>) {
        Self::start_inner(bridge, channel, registry, Some(surveys)).await
    }

    async fn start_inner(
        bridge: &Bridge,
        channel: ChannelName,
        registry: Arc<Registry>,
        surveys: Option<Arc<Surveys>>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mailbox(QUEUE, SlowConsumerPolicy::Drop);
        let mut sub = bridge.subscriber(tx);
        // Joined (not subscribed): if Redis is down now, the bridge
        // subscribes when it is back.
        let joined = sub.join(Topic::Channel(channel.clone())).await;
        let stats = Arc::new(ControlStats::default());
        let counters = stats.clone();
        let task = tokio::spawn(async move {
            let _sub = sub;
            loop {
                match rx.next().await {
                    Next::Item(Outbound::Deliver(d)) => {
                        let payload = payload_of(d.frame());
                        // Surveys share the channel; a listener without them
                        // (another registry on the same channel) leaves them.
                        if let Some(p) = &payload {
                            if let Some(op @ (SURVEY_OP | REPLY_OP)) = op_of(p).as_deref() {
                                if let Some(surveys) = &surveys {
                                    surveys.handle(op, p, &registry);
                                }
                                continue;
                            }
                        }
                        let applied = payload
                            .ok_or_else(|| "not a message frame".to_owned())
                            .and_then(|p| Command::parse(&p).map_err(|e| e.0));
                        match applied {
                            Ok(cmd) => {
                                let n = registry.apply(&cmd);
                                counters.applied.fetch_add(1, Ordering::Relaxed);
                                counters.reached.fetch_add(n as u64, Ordering::Relaxed);
                                tracing::debug!(target: "tidings::control", op = cmd.op(), reached = n, "control command applied");
                            }
                            Err(e) => {
                                counters.invalid.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(target: "tidings::control", error = %e, "invalid control command ignored");
                            }
                        }
                    }
                    Next::Item(Outbound::Notice(_) | Outbound::Gap(_) | Outbound::Rest(_)) => {}
                    Next::Dropped(n) => {
                        tracing::warn!(target: "tidings::control", dropped = n, "control commands dropped (queue full)");
                    }
                    Next::Overflowed | Next::Closed => return,
                }
            }
        });
        if let Err(e) = joined {
            tracing::warn!(target: "tidings::control", channel = %channel, error = %e, "the control channel is subscribed once the broker is back");
        }
        (
            Self {
                channel,
                bridge: bridge.clone(),
                stats,
            },
            task,
        )
    }

    /// Publishes `command` to every gateway (this one included).
    pub async fn publish(&self, command: &Command) -> Result<(), BrokerError> {
        self.bridge
            .publish(Message::new(self.channel.clone(), command.to_json()))
            .await
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The counters.
    pub fn stats(&self) -> &ControlStats {
        &self.stats
    }
}

/// The `op` of a JSON object payload, if it has one.
fn op_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Op {
        op: Option<String>,
    }
    serde_json::from_slice::<Op>(payload).ok()?.op
}

/// The `data` of a protocol v1 message frame, as bytes (a JSON payload is
/// embedded as is; a text payload is a JSON string).
fn payload_of(frame: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let f: Frame<'_> = serde_json::from_slice(frame).ok()?;
    let raw = f.data.get();
    if raw.starts_with('"') {
        // A text payload that was not JSON: hand over the text itself.
        serde_json::from_str::<String>(raw)
            .ok()
            .map(String::into_bytes)
    } else {
        Some(raw.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_comes_out_of_a_message_frame() {
        let ch = ChannelName::new("tidings:control").unwrap();
        let m = Message::new(ch, r#"{"op":"refresh","user":"1"}"#);
        let d = tidings_core::Delivery::new(&m);
        assert_eq!(
            payload_of(d.frame()).unwrap(),
            br#"{"op":"refresh","user":"1"}"#
        );
    }
}
