//! Protocol v1: the JSON text frames exchanged with clients.
//!
//! The contract is written down in `docs/protocol.md`; this module is its
//! single implementation. Server frames are built here and nowhere else, and
//! client frames are parsed here, so the document and the code cannot drift
//! apart without a test here failing.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ChannelName, ChannelPattern};

/// The protocol version this module speaks.
pub const VERSION: u32 = 1;

/// WebSocket close codes the gateway sends, as documented in `docs/protocol.md`.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (bad opcode, bad fragmentation,
    /// unmasked frame, reserved bits).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client violated a policy (for example a rate limit).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message (all of its fragments together) exceeded the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting: reconnect (to another instance) shortly.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not answer the server's ping within the pong timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The client did not read its messages fast enough and its outbound
    /// queue overflowed (slow-consumer policy `close`).
    pub const SLOW_CONSUMER: u16 = 4001;
    /// The backend disconnected the socket (control API); the client may
    /// reconnect.
    pub const DISCONNECTED: u16 = 4002;
    /// The backend revoked the session (control API): do not reconnect
    /// with the same credentials.
    pub const REVOKED: u16 = 4003;
    /// The backend changed the socket's identity (control API `refresh`):
    /// reconnect, and the identity is resolved afresh.
    pub const IDENTITY_CHANGED: u16 = 4004;
}

/// The `code` of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    BadJson,
    /// The frame was JSON but not a valid request (missing or mistyped field).
    BadRequest,
    /// The `type` is not one this protocol version knows.
    UnknownType,
    /// Binary frames carry nothing in protocol v1.
    BinaryUnsupported,
    /// The channel name is not valid.
    InvalidChannel,
    /// The socket's identity may not do this on this channel.
    Forbidden,
    /// The socket already holds the most subscriptions it may.
    TooManySubscriptions,
    /// The client sends requests faster than it may.
    RateLimited,
    /// The broker (Redis) cannot take the request right now; retry later.
    BrokerUnavailable,
    /// RPC is not configured on this gateway.
    RpcDisabled,
    /// The backend did not answer the RPC in time.
    RpcTimeout,
    /// The backend could not be reached for the RPC.
    RpcUnavailable,
    /// The socket has as many RPCs in flight as it may.
    TooManyRequests,
    /// Something unexpected failed on the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::BinaryUnsupported => "binary_unsupported",
            Self::InvalidChannel => "invalid_channel",
            Self::Forbidden => "forbidden",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::RateLimited => "rate_limited",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::RpcDisabled => "rpc_disabled",
            Self::RpcTimeout => "rpc_timeout",
            Self::RpcUnavailable => "rpc_unavailable",
            Self::TooManyRequests => "too_many_requests",
            Self::Internal => "internal",
        }
    }
}

/// A request a client sent, parsed from one text message.
#[derive(Debug)]
pub enum Request {
    /// `{"type":"subscribe","channel":C}`.
    Subscribe {
        /// The channel asked for (not yet validated).
        channel: String,
        /// The client's last position on the channel, `(offset, epoch)`
        /// (`"offset"` and `"epoch"`, always together): what was published
        /// after it is replayed before the live stream. Not yet validated
        /// beyond its types.
        since: Option<(u64, String)>,
        /// `"last": true`: replay the channel's last publication (the
        /// "last value") before the live stream. Ignored with `since`.
        last: bool,
    },
    /// `{"type":"unsubscribe","channel":C}`.
    Unsubscribe {
        /// The channel to leave (not yet validated).
        channel: String,
    },
    /// `{"type":"publish","channel":C,"data":D}`.
    Publish {
        /// The channel to publish on (not yet validated).
        channel: String,
        /// The `data` value, as the exact JSON text the client sent.
        data: Box<RawValue>,
        /// `"echo": false`: every subscriber but the sender's own
        /// connection gets it (no echo of a change to the client that
        /// made it). Default `true`.
        echo: bool,
    },
    /// `{"type":"ping"}`: an application-level ping, answered by `pong`.
    Ping,
    /// `{"type":"rpc","method":M,"path":P,"data":D}`: an HTTP request to the
    /// backend on the socket's behalf, answered by `rpc_result`.
    Rpc {
        /// The HTTP method (`GET`, `POST`, ...), as sent.
        method: String,
        /// The backend path (with query), as sent; checked by the gateway.
        path: String,
        /// The JSON body, if any.
        data: Option<Box<RawValue>>,
    },
}

/// A parsed client frame: the request and the optional `id` to echo back.
#[derive(Debug)]
pub struct ClientFrame {
    /// The client's `id`, echoed verbatim on the reply.
    pub id: Option<Box<RawValue>>,
    /// What the client asked for.
    pub request: Request,
}

/// Why a client frame could not be parsed, with the `id` when one was readable.
#[derive(Debug)]
pub struct ParseError {
    /// The error code to answer with.
    pub code: ErrorCode,
    /// A human-readable explanation (never echoes client data).
    pub message: String,
    /// The client's `id`, when the frame was JSON enough to carry one.
    pub id: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
    #[serde(default)]
    channel: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    method: Option<serde_json::Value>,
    #[serde(default)]
    path: Option<serde_json::Value>,
    #[serde(default)]
    offset: Option<serde_json::Value>,
    #[serde(default)]
    epoch: Option<serde_json::Value>,
    #[serde(default)]
    last: Option<serde_json::Value>,
    #[serde(default)]
    echo: Option<serde_json::Value>,
}

/// The largest offset a position may carry: 2^53 - 1, exact in JavaScript
/// numbers (and in the Redis function's Lua numbers).
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// The `offset` and `epoch` of a subscribe request: both or neither.
fn since_of(
    offset: Option<serde_json::Value>,
    epoch: Option<serde_json::Value>,
) -> Result<Option<(u64, String)>, &'static str> {
    match (offset, epoch) {
        (None, None) => Ok(None),
        (Some(serde_json::Value::Number(n)), Some(serde_json::Value::String(e))) => {
            match n.as_u64() {
                Some(o) if o <= MAX_OFFSET => Ok(Some((o, e))),
                _ => Err("\"offset\" must be an integer from 0 to 2^53 - 1"),
            }
        }
        (Some(_), Some(serde_json::Value::String(_))) => {
            Err("\"offset\" must be an integer from 0 to 2^53 - 1")
        }
        (Some(_), Some(_)) => Err("\"epoch\" must be a string"),
        _ => Err("\"offset\" and \"epoch\" go together"),
    }
}

/// A field that is present, even as `null` (serde maps `null` to `None`
/// for an `Option` otherwise).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl ClientFrame {
    /// Parses one client text message.
    ///
    /// ```
    /// use tidings_core::protocol::{ClientFrame, Request};
    /// let f = ClientFrame::parse(br#"{"type":"subscribe","channel":"/a","id":7}"#).unwrap();
    /// assert!(matches!(f.request, Request::Subscribe { ref channel, .. } if channel == "/a"));
    /// assert_eq!(f.id.unwrap().get(), "7");
    /// ```
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        let env: Envelope = serde_json::from_slice(text).map_err(|e| ParseError {
            code: if e.is_data() {
                ErrorCode::BadRequest
            } else {
                ErrorCode::BadJson
            },
            message: if e.is_data() {
                "frame must be a JSON object with a string \"type\"".to_owned()
            } else {
                format!(
                    "frame is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            },
            id: None,
        })?;
        let id = env.id;
        let fail = |code, message: &str, id| ParseError {
            code,
            message: message.to_owned(),
            id,
        };
        let channel = |c: Option<serde_json::Value>| match c {
            Some(serde_json::Value::String(s)) => Ok(s),
            _ => Err("\"channel\" must be a string"),
        };
        let kind = match &env.kind {
            Some(serde_json::Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(fail(ErrorCode::BadRequest, "\"type\" must be a string", id)),
            None => None,
        };
        let request = match kind {
            Some("subscribe") => {
                let channel = match channel(env.channel) {
                    Ok(channel) => channel,
                    Err(m) => return Err(fail(ErrorCode::BadRequest, m, id)),
                };
                let since = match since_of(env.offset, env.epoch) {
                    Ok(since) => since,
                    Err(m) => return Err(fail(ErrorCode::BadRequest, m, id)),
                };
                let last = match env.last {
                    None | Some(serde_json::Value::Bool(false)) => false,
                    Some(serde_json::Value::Bool(true)) => true,
                    Some(_) => {
                        return Err(fail(
                            ErrorCode::BadRequest,
                            "\"last\" must be a boolean",
                            id,
                        ))
                    }
                };
                Request::Subscribe {
                    channel,
                    since,
                    last,
                }
            }
            Some("unsubscribe") => match channel(env.channel) {
                Ok(channel) => Request::Unsubscribe { channel },
                Err(m) => return Err(fail(ErrorCode::BadRequest, m, id)),
            },
            Some("publish") => match (channel(env.channel), env.data) {
                (Ok(channel), Some(data)) => Request::Publish {
                    channel,
                    data,
                    echo: match env.echo {
                        None | Some(serde_json::Value::Bool(true)) => true,
                        Some(serde_json::Value::Bool(false)) => false,
                        Some(_) => {
                            return Err(fail(
                                ErrorCode::BadRequest,
                                "\"echo\" must be a boolean",
                                id,
                            ))
                        }
                    },
                },
                (Err(m), _) => return Err(fail(ErrorCode::BadRequest, m, id)),
                (_, None) => {
                    return Err(fail(ErrorCode::BadRequest, "\"data\" is required", id));
                }
            },
            Some("ping") => Request::Ping,
            Some("rpc") => match (env.method, env.path) {
                (
                    Some(serde_json::Value::String(method)),
                    Some(serde_json::Value::String(path)),
                ) => Request::Rpc {
                    method,
                    path,
                    data: env.data,
                },
                _ => {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        "\"method\" and \"path\" must be strings",
                        id,
                    ))
                }
            },
            Some(_) => {
                return Err(fail(
                    ErrorCode::UnknownType,
                    "unknown \"type\" (expected subscribe, unsubscribe, publish, rpc or ping)",
                    id,
                ))
            }
            None => return Err(fail(ErrorCode::BadRequest, "\"type\" is required", id)),
        };
        Ok(ClientFrame { id, request })
    }
}

/// Appends `s` to `out` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping of a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn push_id(out: &mut String, id: Option<&RawValue>) {
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id.get());
    }
}

/// Encodes a delivered message: `{"type":"message","channel":C,"data":D}`.
///
/// `D` is the payload itself when it is valid JSON, otherwise the payload as a
/// JSON string. A payload that is not valid UTF-8 is sent base64-encoded with
/// `"encoding":"base64"`. Messages that came through a pattern subscription
/// also carry `"pattern"`.
///
/// ```
/// use tidings_core::{protocol::encode_message, ChannelName};
/// let c = ChannelName::new("/news").unwrap();
/// assert_eq!(&encode_message(&c, None, b"{\"a\":1}")[..], br#"{"type":"message","channel":"/news","data":{"a":1}}"#);
/// assert_eq!(&encode_message(&c, None, b"Hey")[..], br#"{"type":"message","channel":"/news","data":"Hey"}"#);
/// ```
pub fn encode_message(
    channel: &ChannelName,
    pattern: Option<&ChannelPattern>,
    payload: &[u8],
) -> Bytes {
    encode_message_at(channel, pattern, payload, None)
}

/// Like [`encode_message`], for a message with a position in its channel's
/// history: `position` is its `(offset, epoch)`, written as the frame's
/// `"offset"` (a number) and `"epoch"` (a string) right after `"channel"`
/// (and `"pattern"`). `None` gives exactly [`encode_message`]'s frame.
pub fn encode_message_at(
    channel: &ChannelName,
    pattern: Option<&ChannelPattern>,
    payload: &[u8],
    position: Option<(u64, &str)>,
) -> Bytes {
    if payload.starts_with(PRESENCE_ENVELOPE_PREFIX) {
        if let Some(frame) = presence_frame(channel, payload) {
            return frame;
        }
    }
    let mut out = String::with_capacity(payload.len() + channel.as_str().len() + 48);
    out.push_str("{\"type\":\"message\",\"channel\":");
    push_json_str(&mut out, channel.as_str());
    if let Some(p) = pattern {
        out.push_str(",\"pattern\":");
        push_json_str(&mut out, p.as_str());
    }
    if let Some((offset, epoch)) = position {
        out.push_str(",\"offset\":");
        out.push_str(&offset.to_string());
        out.push_str(",\"epoch\":");
        push_json_str(&mut out, epoch);
    }
    if let Some(sent) = SenderEnvelope::open(payload) {
        out.push_str(",\"from\":");
        match sent.from {
            Some(user) => push_json_str(&mut out, &user),
            None => out.push_str("null"),
        }
        out.push_str(",\"data\":");
        out.push_str(sent.data.get());
        out.push('}');
        return Bytes::from(out);
    }
    out.push_str(",\"data\":");
    push_payload(&mut out, payload);
    out.push('}');
    Bytes::from(out)
}

/// Appends `payload` as a frame's `data`: the JSON itself when it is JSON,
/// a JSON string when it is other UTF-8, else base64 followed by
/// `"encoding":"base64"`.
fn push_payload(out: &mut String, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => out.push_str(raw.get()),
            Err(_) => push_json_str(out, text),
        },
        Err(_) => {
            out.push('"');
            base64_into(out, payload);
            out.push_str("\",\"encoding\":\"base64\"");
        }
    }
}

/// How a message a client published travels through the broker: the data
/// wrapped with the sender the gateway stamped on it,
/// `{"__tidings":1,"from":"42","data":D}`. Recipients get
/// `{"type":"message","channel":C,"from":"42","data":D}`. The gateway always
/// wraps what a client publishes, so a client cannot forge `from`; other
/// publishers (the backend) may use the same envelope to publish on a
/// user's behalf.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderEnvelope<'a> {
    #[serde(rename = "__tidings")]
    version: u8,
    /// The sender's user id; `None` for an anonymous sender.
    pub from: Option<String>,
    /// A connection id (as in its `welcome`) that must not receive this
    /// message: the sender's own socket, so it gets no echo of its change.
    #[serde(default)]
    pub exclude: Option<String>,
    /// The published data.
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// The first bytes of every sender envelope (the gateway writes the keys in
/// this order); other payloads are not parsed for an envelope at all.
pub const SENDER_ENVELOPE_PREFIX: &[u8] = b"{\"__tidings\":1,";

impl<'a> SenderEnvelope<'a> {
    /// Wraps `data` (valid JSON) as published by `from`.
    pub fn wrap(from: Option<&str>, data: &RawValue) -> Bytes {
        let mut out = String::with_capacity(data.get().len() + 48);
        out.push_str("{\"__tidings\":1,\"from\":");
        match from {
            Some(user) => push_json_str(&mut out, user),
            None => out.push_str("null"),
        }
        out.push_str(",\"data\":");
        out.push_str(data.get());
        out.push('}');
        Bytes::from(out)
    }

    /// Wraps `data` (valid JSON) as published by `from`, for every
    /// connection except `exclude`.
    pub fn wrap_excluding(from: Option<&str>, exclude: &str, data: &RawValue) -> Bytes {
        let mut out = String::with_capacity(data.get().len() + exclude.len() + 64);
        out.push_str("{\"__tidings\":1,\"from\":");
        match from {
            Some(user) => push_json_str(&mut out, user),
            None => out.push_str("null"),
        }
        out.push_str(",\"exclude\":");
        push_json_str(&mut out, exclude);
        out.push_str(",\"data\":");
        out.push_str(data.get());
        out.push('}');
        Bytes::from(out)
    }

    /// The envelope in `payload`, if it is one.
    pub fn open(payload: &'a [u8]) -> Option<Self> {
        if !payload.starts_with(SENDER_ENVELOPE_PREFIX) {
            return None;
        }
        serde_json::from_slice::<Self>(payload)
            .ok()
            .filter(|e| e.version == 1)
    }
}

/// The first bytes of a presence event a gateway publishes on a channel
/// with presence: `{"__tidings_presence":"join","user":"42","info":{...}}`
/// or `{"__tidings_presence":"leave","user":"42"}`. Subscribers receive it
/// as a `join` or `leave` frame (see [`encode_presence_envelope`]).
pub const PRESENCE_ENVELOPE_PREFIX: &[u8] = b"{\"__tidings_presence\":";

/// The payload a gateway publishes for a presence event (`"join"` or
/// `"leave"`) of `user`, with the user's public `info` (JSON) on a join.
pub fn encode_presence_envelope(event: &str, user: &str, info: Option<&RawValue>) -> Bytes {
    let mut out = String::with_capacity(64 + user.len());
    out.push_str("{\"__tidings_presence\":");
    push_json_str(&mut out, event);
    out.push_str(",\"user\":");
    push_json_str(&mut out, user);
    if let Some(info) = info {
        out.push_str(",\"info\":");
        out.push_str(info.get());
    }
    out.push('}');
    Bytes::from(out)
}

/// The `join` or `leave` frame of a presence envelope on `channel`, if
/// `payload` is one.
fn presence_frame(channel: &ChannelName, payload: &[u8]) -> Option<Bytes> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[serde(rename = "__tidings_presence")]
        event: &'a str,
        user: String,
        #[serde(borrow, default)]
        info: Option<&'a RawValue>,
    }
    let e: Envelope<'_> = serde_json::from_slice(payload).ok()?;
    if e.event != "join" && e.event != "leave" {
        return None;
    }
    let mut out = String::with_capacity(payload.len() + channel.as_str().len() + 32);
    let _ = write!(out, "{{\"type\":\"{}\",\"channel\":", e.event);
    push_json_str(&mut out, channel.as_str());
    out.push_str(",\"user\":");
    push_json_str(&mut out, &e.user);
    if let Some(info) = e.info {
        out.push_str(",\"info\":");
        out.push_str(info.get());
    }
    out.push('}');
    Some(Bytes::from(out))
}

/// `{"type":"rpc_result","id":I,"status":S,"data":D}`: the backend's answer
/// to an `rpc` request. `body` is sent as JSON when it parses as JSON,
/// otherwise as a string (base64 with `"encoding":"base64"` if not UTF-8).
pub fn encode_rpc_result(id: Option<&RawValue>, status: u16, body: &[u8]) -> Bytes {
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str("{\"type\":\"rpc_result\"");
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id.get());
    }
    out.push_str(",\"status\":");
    out.push_str(&status.to_string());
    out.push_str(",\"data\":");
    if body.is_empty() {
        out.push_str("null");
    } else {
        push_payload(&mut out, body);
    }
    out.push('}');
    Bytes::from(out)
}

fn base64_into(out: &mut String, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// Where a channel that keeps a history stands for one connection, as
/// `welcome` (per joined channel) and `subscribed` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PositionReport<'a> {
    /// The offset of the last publication the connection has (or, with no
    /// replay asked for, the channel's current offset).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: &'a str,
    /// Whether the replay asked for (a position in the request) delivered
    /// everything missed; absent when no position was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Why not, when `recovered` is `false`: `epoch_changed`, `expired`,
    /// `too_many`, `position_ahead` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// Encodes the `welcome` frame sent once on connect. `recovery`: whether
/// this gateway keeps history (so positions are worth sending back);
/// `positions`: each joined channel that keeps a history, with its
/// position (and, when the client sent one, whether it was recovered).
pub fn encode_welcome(
    connection: &str,
    user: Option<&str>,
    channels: &[ChannelName],
    patterns: &[ChannelPattern],
    recovery: bool,
    positions: &[(&ChannelName, PositionReport<'_>)],
) -> Bytes {
    struct Positions<'a, 'b>(&'a [(&'a ChannelName, PositionReport<'b>)]);
    impl Serialize for Positions<'_, '_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (c, p) in self.0 {
                m.serialize_entry(c.as_str(), p)?;
            }
            m.end()
        }
    }
    #[derive(Serialize)]
    struct Welcome<'a, 'b> {
        #[serde(rename = "type")]
        kind: &'static str,
        protocol: u32,
        connection: &'a str,
        user: Option<&'a str>,
        channels: &'a [ChannelName],
        patterns: &'a [ChannelPattern],
        recovery: bool,
        positions: Positions<'a, 'b>,
    }
    let w = Welcome {
        kind: "welcome",
        protocol: VERSION,
        connection,
        user,
        channels,
        patterns,
        recovery,
        positions: Positions(positions),
    };
    Bytes::from(serde_json::to_vec(&w).unwrap_or_default())
}

/// Encodes the `subscribed` reply, with the channel's position when it
/// keeps a history.
pub fn encode_subscribed(
    channel: &str,
    position: Option<&PositionReport<'_>>,
    id: Option<&RawValue>,
) -> Bytes {
    let mut out = String::with_capacity(96 + channel.len());
    out.push_str("{\"type\":\"subscribed\",\"channel\":");
    push_json_str(&mut out, channel);
    if let Some(p) = position {
        let _ = write!(out, ",\"offset\":{},\"epoch\":", p.offset);
        push_json_str(&mut out, p.epoch);
        if let Some(r) = p.recovered {
            let _ = write!(out, ",\"recovered\":{r}");
        }
        if let Some(reason) = p.reason {
            out.push_str(",\"reason\":");
            push_json_str(&mut out, reason);
        }
    }
    push_id(&mut out, id);
    out.push('}');
    Bytes::from(out)
}

/// Encodes a reply naming a channel: `subscribed`, `unsubscribed` or `published`.
pub fn encode_ack(kind: &str, channel: &str, id: Option<&RawValue>) -> Bytes {
    let mut out = String::with_capacity(48 + channel.len());
    let _ = write!(out, "{{\"type\":\"{kind}\",\"channel\":");
    push_json_str(&mut out, channel);
    push_id(&mut out, id);
    out.push('}');
    Bytes::from(out)
}

/// Encodes the `pong` reply to an application-level `ping`.
pub fn encode_pong(id: Option<&RawValue>) -> Bytes {
    let mut out = String::from("{\"type\":\"pong\"");
    push_id(&mut out, id);
    out.push('}');
    Bytes::from(out)
}

/// Encodes an error frame: `{"type":"error","code":..,"message":..}`.
pub fn encode_error(code: ErrorCode, message: &str, id: Option<&RawValue>) -> Bytes {
    let mut out = String::with_capacity(64 + message.len());
    let _ = write!(
        out,
        "{{\"type\":\"error\",\"code\":\"{}\",\"message\":",
        code.as_str()
    );
    push_json_str(&mut out, message);
    push_id(&mut out, id);
    out.push('}');
    Bytes::from(out)
}

/// Encodes a `gap` notice: messages on these channels may have been missed
/// (for example while the broker connection was down).
pub fn encode_gap(channels: &[ChannelName], patterns: &[ChannelPattern], reason: &str) -> Bytes {
    #[derive(Serialize)]
    struct Gap<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channels: &'a [ChannelName],
        patterns: &'a [ChannelPattern],
        reason: &'a str,
    }
    Bytes::from(
        serde_json::to_vec(&Gap {
            kind: "gap",
            channels,
            patterns,
            reason,
        })
        .unwrap_or_default(),
    )
}

/// Encodes a `dropped` notice: this many messages were not delivered to this
/// socket because its outbound queue was full (slow-consumer policy `drop`).
pub fn encode_dropped(count: u64) -> Bytes {
    Bytes::from(format!("{{\"type\":\"dropped\",\"count\":{count}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn v(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("server frames are JSON")
    }

    #[test]
    fn message_positions() {
        let c = ChannelName::new("/u/1").unwrap();
        let p = ChannelPattern::new("/u/*").unwrap();
        assert_eq!(
            &encode_message_at(&c, None, b"{\"a\":1}", Some((7, "e-1")))[..],
            br#"{"type":"message","channel":"/u/1","offset":7,"epoch":"e-1","data":{"a":1}}"#
        );
        assert_eq!(
            v(&encode_message_at(&c, Some(&p), b"x", Some((1, "E")))),
            json!({"type":"message","channel":"/u/1","pattern":"/u/*","offset":1,"epoch":"E","data":"x"})
        );
        assert_eq!(
            encode_message_at(&c, None, b"x", None),
            encode_message(&c, None, b"x")
        );
    }

    #[test]
    fn message_payloads() {
        let c = ChannelName::new("/c\"q").unwrap();
        assert_eq!(
            v(&encode_message(&c, None, b" [1, 2] ")),
            json!({"type":"message","channel":"/c\"q","data":[1,2]})
        );
        assert_eq!(
            v(&encode_message(&c, None, b"42")),
            json!({"type":"message","channel":"/c\"q","data":42})
        );
        assert_eq!(
            v(&encode_message(&c, None, b"not json {")),
            json!({"type":"message","channel":"/c\"q","data":"not json {"})
        );
        assert_eq!(
            v(&encode_message(&c, None, b"")),
            json!({"type":"message","channel":"/c\"q","data":""})
        );
        assert_eq!(
            v(&encode_message(&c, None, &[0xff, 0x00, 0x61])),
            json!({"type":"message","channel":"/c\"q","data":"/wBh","encoding":"base64"})
        );
        let p = ChannelPattern::new("/c*").unwrap();
        assert_eq!(
            v(&encode_message(&c, Some(&p), b"1"))["pattern"],
            json!("/c*")
        );
    }

    #[test]
    fn sender_envelope_round_trip_and_no_forgery() {
        let ch = ChannelName::new("/room").unwrap();
        let data: Box<RawValue> = serde_json::from_str(r#"{"text":"hi"}"#).unwrap();
        let wrapped = SenderEnvelope::wrap(Some("42"), &data);
        let frame = encode_message(&ch, None, &wrapped);
        assert_eq!(
            &frame[..],
            br#"{"type":"message","channel":"/room","from":"42","data":{"text":"hi"}}"#
        );
        // A client that puts an envelope in its data only gets it nested.
        let forged: Box<RawValue> =
            serde_json::from_str(r#"{"__tidings":1,"from":"1","data":"x"}"#).unwrap();
        let frame = encode_message(&ch, None, &SenderEnvelope::wrap(Some("42"), &forged));
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["from"], "42");
        assert_eq!(v["data"]["from"], "1");
        // Anonymous senders are null; near-envelopes are plain payloads.
        let frame = encode_message(&ch, None, &SenderEnvelope::wrap(None, &data));
        assert!(frame.starts_with(br#"{"type":"message","channel":"/room","from":null"#));
        let near = br#"{"__tidings":1,"from":"1","data":2,"extra":3}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&encode_message(&ch, None, near)).unwrap();
        assert!(v.get("from").is_none());
        assert_eq!(v["data"]["extra"], 3);
    }

    #[test]
    fn rpc_frames() {
        let f = ClientFrame::parse(
            br#"{"type":"rpc","id":1,"method":"POST","path":"/api/x","data":{"a":1}}"#,
        )
        .unwrap();
        assert!(
            matches!(f.request, Request::Rpc { ref method, ref path, ref data } if method == "POST" && path == "/api/x" && data.as_ref().unwrap().get() == r#"{"a":1}"#)
        );
        let e = ClientFrame::parse(br#"{"type":"rpc","id":1,"path":"/api/x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let id: Box<RawValue> = serde_json::from_str("7").unwrap();
        assert_eq!(
            &encode_rpc_result(Some(&id), 200, br#"{"ok":true}"#)[..],
            br#"{"type":"rpc_result","id":7,"status":200,"data":{"ok":true}}"#
        );
        assert_eq!(
            &encode_rpc_result(None, 500, b"Server Error")[..],
            br#"{"type":"rpc_result","status":500,"data":"Server Error"}"#
        );
        assert_eq!(
            &encode_rpc_result(None, 204, b"")[..],
            br#"{"type":"rpc_result","status":204,"data":null}"#
        );
    }

    #[test]
    fn base64_padding() {
        let enc = |d: &[u8]| {
            let mut s = String::new();
            base64_into(&mut s, d);
            s
        };
        assert_eq!(enc(b""), "");
        assert_eq!(enc(b"f"), "Zg==");
        assert_eq!(enc(b"fo"), "Zm8=");
        assert_eq!(enc(b"foo"), "Zm9v");
        assert_eq!(enc(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn parse_requests_and_errors() {
        let f =
            ClientFrame::parse(br#"{"type":"publish","channel":"/a","data":{"x":[1]},"id":"r1"}"#)
                .unwrap();
        match f.request {
            Request::Publish {
                channel,
                data,
                echo,
            } => {
                assert_eq!(channel, "/a");
                assert_eq!(data.get(), r#"{"x":[1]}"#);
                assert!(echo);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(f.id.unwrap().get(), "\"r1\"");

        let e = ClientFrame::parse(b"{nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        let e = ClientFrame::parse(b"[1]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = ClientFrame::parse(br#"{"type":"dance","id":3}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.id.unwrap().get(), "3");
        let e = ClientFrame::parse(br#"{"type":"subscribe","channel":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = ClientFrame::parse(br#"{"type":"publish","channel":"/a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn replies_are_json() {
        let id = RawValue::from_string("{\"k\":1}".into()).unwrap();
        assert_eq!(
            v(&encode_ack("subscribed", "/a", Some(&id))),
            json!({"type":"subscribed","channel":"/a","id":{"k":1}})
        );
        assert_eq!(
            v(&encode_error(ErrorCode::Forbidden, "no \"way\"", None)),
            json!({"type":"error","code":"forbidden","message":"no \"way\""})
        );
        assert_eq!(v(&encode_pong(None)), json!({"type":"pong"}));
        assert_eq!(v(&encode_dropped(3)), json!({"type":"dropped","count":3}));
        let b = ChannelName::new("/b").unwrap();
        let w = v(&encode_welcome(
            "c1",
            Some("42"),
            std::slice::from_ref(&b),
            &[],
            false,
            &[],
        ));
        assert_eq!(
            w,
            json!({"type":"welcome","protocol":1,"connection":"c1","user":"42","channels":["/b"],"patterns":[],"recovery":false,"positions":{}})
        );
        let at = |recovered, reason| PositionReport {
            offset: 7,
            epoch: "e1",
            recovered,
            reason,
        };
        let w = v(&encode_welcome(
            "c1",
            None,
            std::slice::from_ref(&b),
            &[],
            true,
            &[(&b, at(Some(true), None))],
        ));
        assert_eq!(
            w["positions"],
            json!({"/b":{"offset":7,"epoch":"e1","recovered":true}})
        );
        assert_eq!(
            v(&encode_subscribed(
                "/b",
                Some(&at(Some(false), Some("expired"))),
                Some(&id)
            )),
            json!({"type":"subscribed","channel":"/b","offset":7,"epoch":"e1","recovered":false,"reason":"expired","id":{"k":1}})
        );
        assert_eq!(
            v(&encode_subscribed("/b", Some(&at(None, None)), None)),
            json!({"type":"subscribed","channel":"/b","offset":7,"epoch":"e1"})
        );
        assert_eq!(
            v(&encode_subscribed("/b", None, None)),
            json!({"type":"subscribed","channel":"/b"})
        );
    }

    #[test]
    fn subscribe_positions_parse_or_are_refused_clearly() {
        let sub = |s: &str| ClientFrame::parse(s.as_bytes()).map(|f| f.request);
        assert!(matches!(
            sub(r#"{"type":"subscribe","channel":"a","offset":3,"epoch":"e"}"#),
            Ok(Request::Subscribe { since: Some((3, ref e)), last: false, .. }) if e == "e"
        ));
        assert!(matches!(
            sub(r#"{"type":"subscribe","channel":"a","last":true}"#),
            Ok(Request::Subscribe {
                since: None,
                last: true,
                ..
            })
        ));
        for bad in [
            r#"{"type":"subscribe","channel":"a","offset":3}"#,
            r#"{"type":"subscribe","channel":"a","epoch":"e"}"#,
            r#"{"type":"subscribe","channel":"a","offset":-1,"epoch":"e"}"#,
            r#"{"type":"subscribe","channel":"a","offset":1.5,"epoch":"e"}"#,
            r#"{"type":"subscribe","channel":"a","offset":"3","epoch":"e"}"#,
            r#"{"type":"subscribe","channel":"a","offset":9007199254740992,"epoch":"e"}"#,
            r#"{"type":"subscribe","channel":"a","offset":3,"epoch":4}"#,
            r#"{"type":"subscribe","channel":"a","last":1}"#,
        ] {
            let e = sub(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
    }
}

#[cfg(test)]
mod presence_envelope_tests {
    use super::*;

    #[test]
    fn presence_envelopes_become_join_and_leave_frames() {
        let ch = ChannelName::new("/app/room/1").unwrap();
        let info = RawValue::from_string(r#"{"name":"Anna"}"#.into()).unwrap();
        let join = encode_presence_envelope("join", "42", Some(&info));
        assert_eq!(
            &encode_message(&ch, None, &join)[..],
            br#"{"type":"join","channel":"/app/room/1","user":"42","info":{"name":"Anna"}}"#
        );
        let leave = encode_presence_envelope("leave", "42", None);
        assert_eq!(
            &encode_message(&ch, None, &leave)[..],
            br#"{"type":"leave","channel":"/app/room/1","user":"42"}"#
        );
        // Anything else starting the same way is an ordinary message.
        let odd = br#"{"__tidings_presence":"explode","user":"1"}"#;
        assert!(encode_message(&ch, None, odd).starts_with(br#"{"type":"message""#));
    }
}
