//! Socket.IO protocol 5 over Engine.IO messages: parsing what the client
//! sends into protocol v1 requests, encoding the session's output as
//! Socket.IO packets (with the Engine.IO message prefix `4`).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use tidings_core::{message::WireFormat, Delivery};

use crate::config::SocketIoConfig;

/// A Socket.IO packet from the client (namespace `/` unless said).
#[derive(Debug, PartialEq)]
pub(crate) enum Packet {
    /// `0`: connect to a namespace.
    Connect(String),
    /// `1`: leave a namespace.
    Disconnect(String),
    /// `2`: an event, with an ack id when the client wants an answer.
    Event {
        /// The namespace.
        ns: String,
        /// The ack id.
        ack: Option<u64>,
        /// The event name.
        name: String,
        /// The arguments after the name.
        args: Vec<Value>,
    },
    /// `3`: an ack (the server asks for none: ignored).
    Ack,
}

/// Parses a Socket.IO packet (the data of an Engine.IO message).
pub(crate) fn parse(data: &str) -> Result<Packet, &'static str> {
    let mut chars = data.char_indices();
    let (_, kind) = chars.next().ok_or("empty packet")?;
    let mut rest = &data[1..];
    let ns = if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        let ns = rest[..end].to_owned();
        rest = rest.get(end + 1..).unwrap_or("");
        ns
    } else {
        "/".to_owned()
    };
    match kind {
        '0' => Ok(Packet::Connect(ns)),
        '1' => Ok(Packet::Disconnect(ns)),
        '2' => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let ack = if digits > 0 {
                Some(rest[..digits].parse().map_err(|_| "ack id out of range")?)
            } else {
                None
            };
            let args: Vec<Value> =
                serde_json::from_str(&rest[digits..]).map_err(|_| "event is not a JSON array")?;
            let mut args = args.into_iter();
            let name = match args.next() {
                Some(Value::String(s)) => s,
                _ => return Err("event without a name"),
            };
            Ok(Packet::Event {
                ns,
                ack,
                name,
                args: args.collect(),
            })
        }
        '3' => Ok(Packet::Ack),
        '5' | '6' => Err("binary packets are not supported"),
        _ => Err("unknown packet type"),
    }
}

/// The protocol v1 request an event stands for, with `id` the ack id
/// (so the reply can be sent as the ack). `Err`: the v1 error frame.
pub(crate) fn request(name: &str, args: &[Value], ack: Option<u64>) -> Result<Vec<u8>, Bytes> {
    let first = args.first();
    let channel_of = |v: Option<&Value>| match v {
        Some(Value::String(c)) => Some(json!({ "channel": c })),
        Some(Value::Object(o)) => Some(Value::Object(o.clone())),
        _ => None,
    };
    let bad = |m: &str| {
        let id = ack.and_then(|a| RawValue::from_string(a.to_string()).ok());
        tidings_core::protocol::encode_error(
            tidings_core::protocol::ErrorCode::BadRequest,
            m,
            id.as_deref(),
        )
    };
    let mut frame = match name {
        "subscribe" | "unsubscribe" => match channel_of(first) {
            Some(v) => v,
            None => {
                return Err(bad(
                    "give the channel (a string, or {channel, offset, epoch})",
                ))
            }
        },
        "publish" => match (first, args.get(1)) {
            (Some(Value::String(c)), Some(data)) => json!({ "channel": c, "data": data }),
            (Some(Value::Object(o)), None) => Value::Object(o.clone()),
            _ => return Err(bad("give the channel and the data")),
        },
        "rpc" => match first {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            _ => return Err(bad("give {method, path, data}")),
        },
        "ping" => json!({}),
        _ => {
            let id = ack.and_then(|a| RawValue::from_string(a.to_string()).ok());
            return Err(tidings_core::protocol::encode_error(
                tidings_core::protocol::ErrorCode::UnknownType,
                "unknown event (expected subscribe, unsubscribe, publish, rpc or ping)",
                id.as_deref(),
            ));
        }
    };
    frame["type"] = Value::String(name.to_owned());
    match ack {
        Some(a) => frame["id"] = a.into(),
        None => {
            if let Some(o) = frame.as_object_mut() {
                o.remove("id");
            }
        }
    }
    Ok(frame.to_string().into_bytes())
}

/// A `message` frame's parts.
#[derive(Deserialize)]
struct MessageFrame<'a> {
    #[serde(borrow)]
    channel: &'a RawValue,
    #[serde(default, borrow)]
    pattern: Option<&'a RawValue>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow)]
    from: Option<&'a RawValue>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    encoding: Option<&'a RawValue>,
}

/// A `message` frame as the event `event`:
/// `42["notification",DATA,{"channel":C,...}]`.
pub(crate) fn message_event(event: &str, frame: &[u8]) -> Option<Bytes> {
    let m: MessageFrame<'_> = serde_json::from_slice(frame).ok()?;
    let mut out = String::with_capacity(frame.len() + event.len() + 16);
    out.push_str("42[");
    out.push_str(&serde_json::to_string(event).ok()?);
    out.push(',');
    out.push_str(m.data.get());
    out.push_str(",{\"channel\":");
    out.push_str(m.channel.get());
    for (key, v) in [
        ("pattern", m.pattern),
        ("epoch", m.epoch),
        ("from", m.from),
        ("encoding", m.encoding),
    ] {
        if let Some(v) = v {
            out.push_str(&format!(",\"{key}\":{}", v.get()));
        }
    }
    if let Some(o) = m.offset {
        out.push_str(&format!(",\"offset\":{o}"));
    }
    out.push_str("}]");
    Some(Bytes::from(out))
}

/// A live message as a Socket.IO event, encoded once per message for every
/// Socket.IO connection of the process (the event name depends on the
/// channel alone, so every connection would encode the same bytes).
pub(crate) fn delivery_event<'d>(cfg: &SocketIoConfig, d: &'d Delivery) -> &'d Bytes {
    d.encoded(WireFormat::SOCKET_IO, |d| {
        message_event(cfg.event_for(d.channel().as_str()), d.frame())
            .unwrap_or_else(|| frame_event(d.frame()))
    })
}

/// Any other frame: a replayed message as its event, the ack of the
/// request it answers (its `id` is the ack id), or else the event
/// `tidings` with the frame.
pub(crate) fn frame_packet(cfg: &SocketIoConfig, frame: &[u8]) -> Bytes {
    if frame.starts_with(b"{\"type\":\"message\"") {
        #[derive(Deserialize)]
        struct Channel<'a> {
            #[serde(borrow)]
            channel: &'a str,
        }
        if let Ok(Channel { channel }) = serde_json::from_slice::<Channel<'_>>(frame) {
            if let Some(e) = message_event(cfg.event_for(channel), frame) {
                return e;
            }
        }
    }
    #[derive(Deserialize)]
    struct Id {
        #[serde(default)]
        id: Option<Value>,
    }
    if let Ok(Id {
        id: Some(Value::Number(n)),
    }) = serde_json::from_slice::<Id>(frame)
    {
        if let Some(ack) = n.as_u64() {
            let mut out = format!("43{ack}[").into_bytes();
            out.extend_from_slice(frame);
            out.push(b']');
            return Bytes::from(out);
        }
    }
    frame_event(frame)
}

/// `42["tidings",FRAME]`.
fn frame_event(frame: &[u8]) -> Bytes {
    let mut out = b"42[\"tidings\",".to_vec();
    out.extend_from_slice(frame);
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_parse() {
        assert_eq!(parse("0").unwrap(), Packet::Connect("/".into()));
        assert_eq!(parse("0/admin,").unwrap(), Packet::Connect("/admin".into()));
        assert_eq!(
            parse("0{\"token\":\"x\"}").unwrap(),
            Packet::Connect("/".into())
        );
        assert_eq!(
            parse("212[\"publish\",\"/a\",{\"x\":1}]").unwrap(),
            Packet::Event {
                ns: "/".into(),
                ack: Some(12),
                name: "publish".into(),
                args: vec![json!("/a"), json!({"x": 1})]
            }
        );
        assert!(parse("2[1]").is_err());
        assert!(parse("2nope").is_err());
        assert!(parse("5-1[\"x\"]").is_err());
        assert!(parse("").is_err());
        assert!(parse("299999999999999999999999[\"a\"]").is_err());
    }

    #[test]
    fn events_become_requests_and_frames_become_packets() {
        let r = request("publish", &[json!("/a"), json!({"x":1})], Some(3)).unwrap();
        let v: Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(
            v,
            json!({"type":"publish","channel":"/a","data":{"x":1},"id":3})
        );
        let r = request("subscribe", &[json!("/a")], None).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&r).unwrap(),
            json!({"type":"subscribe","channel":"/a"})
        );
        assert!(request("dance", &[], Some(1)).is_err());
        assert!(request("publish", &[json!(1)], None).is_err());
        let cfg = SocketIoConfig::default();
        assert_eq!(
            &frame_packet(&cfg, br#"{"type":"published","channel":"/a","id":3}"#)[..],
            br#"433[{"type":"published","channel":"/a","id":3}]"#
        );
        assert_eq!(
            &frame_packet(&cfg, br#"{"type":"gap","channels":[]}"#)[..],
            br#"42["tidings",{"type":"gap","channels":[]}]"#
        );
        assert_eq!(
            &frame_packet(
                &cfg,
                br#"{"type":"message","channel":"/u","offset":3,"epoch":"e","data":"Hey"}"#
            )[..],
            br#"42["notification","Hey",{"channel":"/u","epoch":"e","offset":3}]"#
        );
    }
}
