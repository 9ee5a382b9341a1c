//! Published messages and the shared deliveries fan-out hands out.

use std::sync::Arc;

use bytes::Bytes;

use crate::{protocol, ChannelName, ChannelPattern};

/// A message published on a channel: the channel and the payload exactly as
/// the publisher sent it (any bytes; JSON, text or binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel it was published on.
    pub channel: ChannelName,
    /// The payload bytes, untouched.
    pub payload: Bytes,
}

impl Message {
    /// A message on `channel` carrying `payload`.
    pub fn new(channel: ChannelName, payload: impl Into<Bytes>) -> Self {
        Self {
            channel,
            payload: payload.into(),
        }
    }
}

/// One message made ready for every local recipient at once.
///
/// Fan-out builds a `Delivery` once per message and hands each recipient an
/// [`Arc`] of it: the protocol v1 frame is encoded a single time and every
/// socket writes the same bytes. Nothing here is per-recipient.
#[derive(Debug)]
pub struct Delivery {
    channel: ChannelName,
    pattern: Option<ChannelPattern>,
    frame: Bytes,
    /// The connection that must not receive it (a sender envelope's
    /// `exclude`).
    exclude: Option<Box<str>>,
    /// The publication's position in its channel's history (offset, epoch).
    position: Option<(u64, Box<str>)>,
}

impl Delivery {
    /// Encodes `message` once, as received through an exact subscription.
    pub fn new(message: &Message) -> Arc<Self> {
        Self::build(message, None)
    }

    /// Encodes `message` once, as received through the pattern subscription
    /// `pattern`.
    pub fn for_pattern(message: &Message, pattern: &ChannelPattern) -> Arc<Self> {
        Self::build(message, Some(pattern.clone()))
    }

    /// Encodes `message` once with its position in the channel's history,
    /// `(offset, epoch)` (the frame's `"offset"` and `"epoch"`), as received
    /// through `pattern` or, when `None`, the exact subscription.
    /// `message.payload` must be the publication itself, never the live
    /// envelope it arrived in.
    pub fn at_position(
        message: &Message,
        pattern: Option<&ChannelPattern>,
        position: Option<(u64, &str)>,
    ) -> Arc<Self> {
        let frame =
            protocol::encode_message_at(&message.channel, pattern, &message.payload, position);
        Arc::new(Self {
            channel: message.channel.clone(),
            pattern: pattern.cloned(),
            frame,
            exclude: exclude_of(&message.payload),
            position: position.map(|(offset, epoch)| (offset, Box::from(epoch))),
        })
    }

    fn build(message: &Message, pattern: Option<ChannelPattern>) -> Arc<Self> {
        let frame = protocol::encode_message(&message.channel, pattern.as_ref(), &message.payload);
        Arc::new(Self {
            channel: message.channel.clone(),
            pattern,
            frame,
            exclude: exclude_of(&message.payload),
            position: None,
        })
    }

    /// Whether the connection `conn` (its id as in `welcome`) must not
    /// receive this message.
    pub fn excludes(&self, conn: &str) -> bool {
        self.exclude.as_deref() == Some(conn)
    }

    /// The channel the message was published on.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The pattern subscription it came through, if any.
    pub fn pattern(&self) -> Option<&ChannelPattern> {
        self.pattern.as_ref()
    }

    /// The publication's position in its channel's history, `(offset,
    /// epoch)`, when it was published with history.
    pub fn position(&self) -> Option<(u64, &str)> {
        self.position.as_ref().map(|(o, e)| (*o, &**e))
    }

    /// The protocol v1 text frame payload (`{"type":"message",...}`), shared.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// The `exclude` of a sender envelope, if `payload` is one with it.
fn exclude_of(payload: &[u8]) -> Option<Box<str>> {
    protocol::SenderEnvelope::open(payload)?
        .exclude
        .map(String::into_boxed_str)
}
