//! Pusher protocol 7 messages: what clients send, what the server writes,
//! and the error and close codes.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{value::RawValue, Value};
use tidings_core::{message::WireFormat, Delivery};

use crate::config::PusherConfig;

/// `pusher:error` and close codes of the protocol.
pub mod code {
    /// The app key is unknown (close: do not reconnect).
    pub const APP_UNKNOWN: u16 = 4001;
    /// No protocol version given.
    pub const NO_PROTOCOL: u16 = 4008;
    /// A protocol version the server does not speak.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// The connection (or subscription) is not authorized.
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over capacity: reconnect after a back-off.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Reconnect now (the server is restarting).
    pub const RECONNECT: u16 = 4200;
    /// No pong to the server's ping in time.
    pub const PONG_TIMEOUT: u16 = 4201;
    /// A client event refused: over the rate limit.
    pub const CLIENT_EVENT_RATE: u16 = 4301;
}

/// A message from the client.
#[derive(Debug, Deserialize)]
pub(crate) struct ClientMessage<'a> {
    /// The event name.
    pub(crate) event: String,
    /// The channel (client events).
    #[serde(default)]
    pub(crate) channel: Option<String>,
    /// The data: an object, or a JSON string of one.
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
}

/// `pusher:subscribe`'s data.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscribe {
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) auth: Option<String>,
    #[serde(default)]
    pub(crate) channel_data: Option<String>,
}

/// `pusher:signin`'s data.
#[derive(Debug, Deserialize)]
pub(crate) struct Signin {
    pub(crate) auth: String,
    pub(crate) user_data: String,
}

/// Data that is an object or a JSON string of one, as `T`.
pub(crate) fn data_as<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?;
    if raw.get().starts_with('"') {
        let s: String = serde_json::from_str(raw.get()).ok()?;
        serde_json::from_str(&s).ok()
    } else {
        serde_json::from_str(raw.get()).ok()
    }
}

/// `{"event":E,"data":D}` with `channel` when given; `data` is written as
/// a JSON string of itself (as Pusher servers do for their own events).
pub(crate) fn event(event: &str, channel: Option<&str>, data: &Value) -> Bytes {
    let mut v = serde_json::json!({ "event": event });
    if let Some(c) = channel {
        v["channel"] = Value::String(c.to_owned());
    }
    v["data"] = Value::String(data.to_string());
    Bytes::from(v.to_string())
}

/// `pusher:error` with a code (or none) and a message.
pub(crate) fn error(code: Option<u16>, message: &str) -> Bytes {
    let data = serde_json::json!({ "code": code, "message": message });
    Bytes::from(serde_json::json!({ "event": "pusher:error", "data": data }).to_string())
}

/// `pusher:subscription_error` for `channel`.
pub(crate) fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Bytes {
    let data = serde_json::json!({ "type": kind, "error": message, "status": status });
    Bytes::from(
        serde_json::json!({ "event": "pusher:subscription_error", "channel": channel, "data": data })
            .to_string(),
    )
}

/// The parts of a protocol v1 `message` frame the Pusher event needs.
#[derive(Deserialize)]
struct MessageFrame<'a> {
    #[serde(borrow)]
    channel: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A published payload that names its event.
#[derive(Deserialize)]
struct Named<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    user_id: Option<String>,
}

/// A protocol v1 `message` frame as a Pusher event: the payload's `event`
/// and `data` when it is `{"event":E,"data":D}`, else the whole payload as
/// the data of `cfg.event`. `None`: not a message of a Pusher channel.
pub(crate) fn message_event(cfg: &PusherConfig, frame: &[u8]) -> Option<Bytes> {
    let m: MessageFrame<'_> = serde_json::from_slice(frame).ok()?;
    let (_, channel) = cfg.pusher_channel(m.channel)?;
    let (name, data, user) = match serde_json::from_str::<Named<'_>>(m.data.get()) {
        Ok(n) => (n.event, n.data, n.user_id),
        Err(_) => (cfg.event.clone(), m.data, None),
    };
    let mut out = String::with_capacity(frame.len() + 32);
    out.push_str("{\"event\":");
    out.push_str(&serde_json::to_string(&name).ok()?);
    out.push_str(",\"channel\":");
    out.push_str(&serde_json::to_string(channel).ok()?);
    out.push_str(",\"data\":");
    out.push_str(data.get());
    if let Some(u) = user {
        out.push_str(",\"user_id\":");
        out.push_str(&serde_json::to_string(&u).ok()?);
    }
    out.push('}');
    Some(Bytes::from(out))
}

/// A protocol v1 presence frame (`join` or `leave`, from the gateway's
/// presence tracker) as `pusher_internal:member_added` / `member_removed`.
fn presence_event(cfg: &PusherConfig, frame: &[u8]) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct Presence<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(borrow)]
        channel: &'a str,
        user: String,
        #[serde(default)]
        info: Option<Value>,
    }
    let p: Presence<'_> = serde_json::from_slice(frame).ok()?;
    let (_, channel) = cfg.pusher_channel(p.channel)?;
    if !channel.starts_with("presence-") {
        return None;
    }
    match p.kind {
        "join" => Some(event(
            "pusher_internal:member_added",
            Some(channel),
            &serde_json::json!({ "user_id": p.user, "user_info": p.info.unwrap_or(Value::Null) }),
        )),
        "leave" => Some(event(
            "pusher_internal:member_removed",
            Some(channel),
            &serde_json::json!({ "user_id": p.user }),
        )),
        _ => None,
    }
}

/// The user of a protocol v1 `join` frame.
pub(crate) fn joining_user(frame: &[u8]) -> Option<String> {
    if !frame.starts_with(b"{\"type\":\"join\"") {
        return None;
    }
    #[derive(Deserialize)]
    struct Join {
        user: String,
    }
    serde_json::from_slice::<Join>(frame).ok().map(|j| j.user)
}

/// A live message as a Pusher event, encoded once per message for every
/// Pusher connection of the process (empty: not one for Pusher clients).
pub(crate) fn delivery_event<'d>(cfg: &PusherConfig, d: &'d Delivery) -> &'d Bytes {
    d.encoded(WireFormat::PUSHER, |d| {
        if d.frame().starts_with(b"{\"type\":\"message\"") {
            message_event(cfg, d.frame())
        } else {
            presence_event(cfg, d.frame())
        }
        .unwrap_or_default()
    })
}

/// What a published event's payload is: `{"event":E,"data":D}` (with the
/// sender's `user_id` for a presence client event).
pub(crate) fn payload(event: &str, data: &RawValue, user_id: Option<&str>) -> String {
    let mut out = String::with_capacity(data.get().len() + event.len() + 24);
    out.push_str("{\"event\":");
    out.push_str(&Value::String(event.to_owned()).to_string());
    out.push_str(",\"data\":");
    out.push_str(data.get());
    if let Some(u) = user_id {
        out.push_str(",\"user_id\":");
        out.push_str(&Value::String(u.to_owned()).to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::{ChannelName, Message};

    #[test]
    fn messages_become_pusher_events() {
        let cfg = PusherConfig::default();
        let c = ChannelName::new("/pusher/1/orders").unwrap();
        let named = Delivery::new(&Message::new(
            c.clone(),
            r#"{"event":"order.shipped","data":"{\"id\":7}"}"#,
        ));
        assert_eq!(
            &delivery_event(&cfg, &named)[..],
            br#"{"event":"order.shipped","channel":"orders","data":"{\"id\":7}"}"#
        );
        let plain = Delivery::new(&Message::new(c, "hello"));
        assert_eq!(
            &delivery_event(&cfg, &plain)[..],
            br#"{"event":"message","channel":"orders","data":"hello"}"#
        );
        let other = Delivery::new(&Message::new(
            ChannelName::new("/app/broadcast").unwrap(),
            "x",
        ));
        assert!(delivery_event(&cfg, &other).is_empty());
    }

    #[test]
    fn presence_frames_become_member_events() {
        let cfg = PusherConfig::default();
        let join = br#"{"type":"join","channel":"/pusher/1/presence-a","user":"7","info":{"n":1}}"#;
        let e: Value = serde_json::from_slice(&presence_event(&cfg, join).unwrap()).unwrap();
        assert_eq!(e["event"], "pusher_internal:member_added");
        assert_eq!(e["channel"], "presence-a");
        let data: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({"user_id":"7","user_info":{"n":1}}));
        assert_eq!(joining_user(join).as_deref(), Some("7"));
        let leave = br#"{"type":"leave","channel":"/pusher/1/presence-a","user":"7"}"#;
        let e: Value = serde_json::from_slice(&presence_event(&cfg, leave).unwrap()).unwrap();
        assert_eq!(e["event"], "pusher_internal:member_removed");
        assert_eq!(joining_user(leave), None);
        // Not a presence channel, or not a Pusher channel: nothing.
        let public = br#"{"type":"join","channel":"/pusher/1/public-a","user":"7"}"#;
        assert!(presence_event(&cfg, public).is_none());
        let native = br#"{"type":"join","channel":"/app/room","user":"7"}"#;
        assert!(presence_event(&cfg, native).is_none());
    }

    #[test]
    fn client_data_as_object_or_string() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#""{\"channel\":\"a\",\"auth\":\"k:s\"}""#).unwrap();
        let s: Subscribe = data_as(Some(&raw)).unwrap();
        assert_eq!(s.channel, "a");
        let raw: Box<RawValue> = serde_json::from_str(r#"{"channel":"b"}"#).unwrap();
        let s: Subscribe = data_as(Some(&raw)).unwrap();
        assert_eq!((s.channel.as_str(), s.auth), ("b", None));
        assert_eq!(
            serde_json::from_slice::<Value>(&error(Some(4009), "no")).unwrap(),
            serde_json::json!({"event":"pusher:error","data":{"code":4009,"message":"no"}})
        );
    }
}
