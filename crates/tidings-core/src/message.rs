//! Published messages and the shared deliveries fan-out hands out.

use std::sync::{Arc, OnceLock};

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

/// A wire format other than protocol v1 over WebSocket, naming a slot of
/// [`Delivery::encoded`]: each format's encoding of a message is made once,
/// by the first recipient of that format, and shared by the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireFormat(u8);

impl WireFormat {
    /// Server-Sent Events (`tidings-sse`).
    pub const SSE: Self = Self(0);
    /// Engine.IO / Socket.IO.
    pub const SOCKET_IO: Self = Self(1);
    /// Pusher Channels (protocol 7).
    pub const PUSHER: Self = Self(2);
    /// The protocol v1 frame's payload compressed for WebSocket
    /// permessage-deflate with no context takeover (`tidings-transport`;
    /// empty when compression does not make it smaller).
    pub const WS_DEFLATE: Self = Self(4);
    /// How many formats a delivery keeps an encoding for.
    pub const COUNT: usize = 5;

    /// Format number `n` (a free one, for a new wire adapter: 3 is
    /// unused). Panics (at compile time in a `const`) if `n` is not below
    /// [`WireFormat::COUNT`].
    pub const fn new(n: u8) -> Self {
        assert!((n as usize) < Self::COUNT, "wire format out of range");
        Self(n)
    }
}

/// One message made ready for every local recipient at once.
///
/// Fan-out builds a `Delivery` once per message and hands each recipient an
/// [`Arc`] of it: the protocol v1 frame is encoded a single time and every
/// socket writes the same bytes. Other wire formats encode it once too,
/// through [`Delivery::encoded`]. Nothing here is per-recipient.
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
    /// Other wire formats' encodings, made on first use.
    encoded: [OnceLock<Bytes>; WireFormat::COUNT],
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
            encoded: Default::default(),
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
            encoded: Default::default(),
        })
    }

    /// Whether this message names a connection to leave out (`exclude`).
    pub fn has_exclude(&self) -> bool {
        self.exclude.is_some()
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

    /// This message in wire format `format`: encoded by `encode` the first
    /// time any recipient of that format asks, then the same bytes for
    /// every other.
    ///
    /// ```
    /// use tidings_core::{ChannelName, Delivery, Message, message::WireFormat};
    /// let d = Delivery::new(&Message::new(ChannelName::new("/a").unwrap(), "hi"));
    /// let first = d.encoded(WireFormat::SSE, |d| [b"data: ", &d.frame()[..], b"\n\n"].concat().into()).clone();
    /// let again = d.encoded(WireFormat::SSE, |_| unreachable!("encoded once"));
    /// assert_eq!(first, again);
    /// ```
    pub fn encoded(&self, format: WireFormat, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.encoded[usize::from(format.0)].get_or_init(|| encode(self))
    }
}

/// The `exclude` of a sender envelope, if `payload` is one with it.
fn exclude_of(payload: &[u8]) -> Option<Box<str>> {
    protocol::SenderEnvelope::open(payload)?
        .exclude
        .map(String::into_boxed_str)
}
