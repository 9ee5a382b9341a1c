//! The event stream's encoding: protocol v1 frames as SSE events, the
//! `id:` of each event (the connection's channel positions), heartbeats.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use tidings_core::{message::WireFormat, ChannelName, Delivery};

/// Appends `frame` as one SSE event's `data:` lines and the blank line that
/// ends the event. A frame with line breaks (a publisher's pretty-printed
/// JSON) becomes several `data:` lines, which `EventSource` joins with
/// `\n` again.
pub(crate) fn push_data(frame: &[u8], out: &mut BytesMut) {
    out.reserve(frame.len() + 8);
    let mut rest = frame;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match end {
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
            None => {
                out.put_slice(rest);
                out.put_slice(b"\n\n");
                return;
            }
        }
    }
}

/// A live message as an SSE event (without `id:`), encoded once per
/// message for every SSE connection.
pub(crate) fn delivery_event(d: &Delivery) -> &Bytes {
    d.encoded(WireFormat::SSE, |d| {
        let mut out = BytesMut::new();
        push_data(d.frame(), &mut out);
        out.freeze()
    })
}

/// A heartbeat: a comment, which `EventSource` ignores (it keeps proxies
/// from timing the stream out and shows a dead connection to the writer).
pub(crate) const HEARTBEAT: &[u8] = b": ping\n\n";

/// The connection's position on each channel with history it follows, as
/// the frames it was sent say: what the `id:` of its events carries, so
/// that a reconnecting `EventSource` (`Last-Event-ID`) resumes there.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    map: BTreeMap<ChannelName, (u64, String)>,
}

impl Positions {
    /// Notes a live delivery; true when the positions changed.
    pub(crate) fn delivery(&mut self, d: &Delivery) -> bool {
        match (d.pattern(), d.position()) {
            (None, Some((offset, epoch))) => self.set(d.channel(), offset, epoch),
            _ => false,
        }
    }

    fn set(&mut self, channel: &ChannelName, offset: u64, epoch: &str) -> bool {
        match self.map.get_mut(channel) {
            Some((o, e)) if *o == offset && e == epoch => false,
            Some(at) => {
                *at = (offset, epoch.to_owned());
                true
            }
            None => {
                self.map.insert(channel.clone(), (offset, epoch.to_owned()));
                true
            }
        }
    }

    /// Notes a frame for this connection alone (a replayed message, the
    /// welcome, a subscribe or unsubscribe reply); true when the positions
    /// changed. Frames that cannot carry a position are not parsed.
    pub(crate) fn frame(&mut self, frame: &[u8]) -> bool {
        const UNSUBSCRIBED: &[u8] = b"{\"type\":\"unsubscribed\"";
        let has_offset = frame.windows(9).any(|w| w == b"\"offset\":");
        if !has_offset && !frame.starts_with(UNSUBSCRIBED) {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
            return false;
        };
        let channel = v
            .get("channel")
            .and_then(|c| c.as_str())
            .and_then(|c| ChannelName::new(c).ok());
        let at = |v: &serde_json::Value| {
            Some((
                v.get("offset")?.as_u64()?,
                v.get("epoch")?.as_str()?.to_owned(),
            ))
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("message") if v.get("pattern").is_none() => match (channel, at(&v)) {
                (Some(c), Some((o, e))) => self.set(&c, o, &e),
                _ => false,
            },
            Some("subscribed") => match (channel, at(&v)) {
                (Some(c), Some((o, e))) => self.set(&c, o, &e),
                _ => false,
            },
            Some("unsubscribed") => channel.is_some_and(|c| self.map.remove(&c).is_some()),
            Some("welcome") => {
                let mut changed = false;
                if let Some(ps) = v.get("positions").and_then(|p| p.as_object()) {
                    for (c, p) in ps {
                        if let (Ok(c), Some((o, e))) = (ChannelName::new(c), at(p)) {
                            changed |= self.set(&c, o, &e);
                        }
                    }
                }
                changed
            }
            _ => false,
        }
    }

    /// Appends the `id:` line naming every position, in the format
    /// `Last-Event-ID` (and the `since` parameter) is read back in:
    /// `{"channel":{"offset":N,"epoch":"E"},...}`.
    pub(crate) fn push_id(&self, out: &mut BytesMut) {
        let mut id = String::from("{");
        for (i, (c, (o, e))) in self.map.iter().enumerate() {
            if i > 0 {
                id.push(',');
            }
            id.push_str(&serde_json::to_string(c.as_str()).unwrap_or_default());
            id.push_str(":{\"offset\":");
            id.push_str(&o.to_string());
            id.push_str(",\"epoch\":");
            id.push_str(&serde_json::to_string(e).unwrap_or_default());
            id.push('}');
        }
        id.push('}');
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::Message;

    fn data(frame: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        push_data(frame, &mut out);
        out.to_vec()
    }

    #[test]
    fn line_breaks_become_data_lines() {
        assert_eq!(data(b"{\"a\":1}"), b"data: {\"a\":1}\n\n");
        assert_eq!(
            data(b"{\n\"a\":1\r\n}"),
            b"data: {\ndata: \"a\":1\ndata: }\n\n"
        );
        assert_eq!(data(b""), b"data: \n\n");
    }

    #[test]
    fn positions_follow_frames_and_deliveries_and_read_back() {
        let mut p = Positions::default();
        assert!(!p.frame(br#"{"type":"pong"}"#));
        assert!(p.frame(
            br#"{"type":"welcome","positions":{"/u/1":{"offset":3,"epoch":"e"}},"channels":["/u/1"]}"#
        ));
        let c = ChannelName::new("/u/2").unwrap();
        let d = Delivery::at_position(&Message::new(c, "x"), None, Some((9, "f")));
        assert!(p.delivery(&d));
        assert!(!p.delivery(&d), "same position");
        let mut id = BytesMut::new();
        p.push_id(&mut id);
        let id = std::str::from_utf8(&id).unwrap();
        let json = id.strip_prefix("id: ").unwrap().trim_end();
        let back = tidings_session::parse_positions(json, 64).unwrap();
        assert_eq!(back.len(), 2);
        assert!(p.frame(br#"{"type":"unsubscribed","channel":"/u/2"}"#));
        assert!(p.frame(br#"{"type":"message","channel":"/u/1","offset":4,"epoch":"e","data":1}"#));
        assert!(!p.frame(
            br#"{"type":"message","channel":"/u/1","pattern":"/u/*","offset":5,"epoch":"e","data":1}"#
        ));
    }

    #[test]
    fn a_delivery_is_encoded_once_for_every_connection() {
        let d = Delivery::new(&Message::new(ChannelName::new("/a").unwrap(), "{\n}"));
        let a = delivery_event(&d).clone();
        let b = delivery_event(&d);
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(
            &a[..],
            b"data: {\"type\":\"message\",\"channel\":\"/a\",\"data\":{\ndata: }}\n\n"
        );
    }
}
