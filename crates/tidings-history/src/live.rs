//! The live envelope: how a publication with history travels on pub/sub.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{types::valid_epoch, StreamPosition};

/// The first bytes of every live publication: NUL, `th1` (Tidings history,
/// version 1) and a space. No JSON text and no ordinary text starts with a
/// NUL byte, and no sender envelope (`{"__tidings":1,...}`) does either.
pub const LIVE_PREFIX: &[u8] = b"\0th1 ";

/// The longest offset, in decimal digits, an envelope may carry.
const MAX_OFFSET_DIGITS: usize = 16;

/// A publication with history as it travels on the channel itself:
///
/// ```text
/// \0th1 <offset> <epoch>\n<payload>
/// ```
///
/// NUL, `th1`, a space, the offset in decimal, a space, the epoch, a newline,
/// then the payload byte for byte (JSON, text, a sender envelope, or binary).
/// The atomic publish step writes it; a gateway that subscribes to the plain
/// channel name opens it to place the message at the seam between replay and
/// live. Anything else, including every plain `PUBLISH` that does not start
/// with [`LIVE_PREFIX`], is a plain message without a position.
#[derive(Debug)]
pub struct LivePublication;

impl LivePublication {
    /// Wraps `payload` published at `position`.
    ///
    /// ```
    /// use tidings_history::{LivePublication, StreamPosition};
    /// let wrapped = LivePublication::wrap(&StreamPosition::new(7, "e1"), b"{\"a\":1}");
    /// assert_eq!(&wrapped[..], b"\0th1 7 e1\n{\"a\":1}");
    /// ```
    pub fn wrap(position: &StreamPosition, payload: &[u8]) -> Bytes {
        let offset = position.offset.to_string();
        let mut out = BytesMut::with_capacity(
            LIVE_PREFIX.len() + offset.len() + position.epoch.len() + 2 + payload.len(),
        );
        out.put_slice(LIVE_PREFIX);
        out.put_slice(offset.as_bytes());
        out.put_u8(b' ');
        out.put_slice(position.epoch.as_bytes());
        out.put_u8(b'\n');
        out.put_slice(payload);
        out.freeze()
    }

    /// The position and the payload of a live publication, or `None` when
    /// `payload` is a plain message (no envelope, or a malformed one).
    ///
    /// ```
    /// use tidings_history::{LivePublication, StreamPosition};
    /// let (pos, data) = LivePublication::open(b"\0th1 7 e1\nhello").unwrap();
    /// assert_eq!(pos, StreamPosition::new(7, "e1"));
    /// assert_eq!(data, b"hello");
    /// assert!(LivePublication::open(b"{\"a\":1}").is_none());
    /// assert!(LivePublication::open(b"\0th1 x e1\nhello").is_none());
    /// ```
    pub fn open(payload: &[u8]) -> Option<(StreamPosition, &[u8])> {
        let rest = payload.strip_prefix(LIVE_PREFIX)?;
        let space = rest.iter().position(|&b| b == b' ')?;
        let (digits, rest) = (&rest[..space], &rest[space + 1..]);
        if digits.is_empty()
            || digits.len() > MAX_OFFSET_DIGITS
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits[0] == b'0' && digits.len() > 1)
        {
            return None;
        }
        let offset: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        if offset == 0 {
            return None;
        }
        let newline = rest
            .iter()
            .take(crate::MAX_EPOCH_LEN + 1)
            .position(|&b| b == b'\n')?;
        let (epoch, data) = (&rest[..newline], &rest[newline + 1..]);
        if !valid_epoch(epoch) {
            return None;
        }
        let epoch = std::str::from_utf8(epoch).ok()?.to_owned();
        Some((StreamPosition { offset, epoch }, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_plain_messages() {
        for payload in [
            &b""[..],
            b"x",
            b"{\"__tidings\":1,\"from\":\"1\",\"data\":2}",
            &[0xff, 0, b'\n'],
        ] {
            let pos = StreamPosition::new(12345, "abc-DEF_9");
            let wrapped = LivePublication::wrap(&pos, payload);
            let (p, d) = LivePublication::open(&wrapped).unwrap();
            assert_eq!(p, pos);
            assert_eq!(d, payload);
        }
        for plain in [
            &b""[..],
            b"hello",
            b"\0th1 ",
            b"\0th1 1 e",
            b"\0th1 0 e\nx",
            b"\0th1 01 e\nx",
            b"\0th1 -1 e\nx",
            b"\0th1 1  e\nx",
            b"\0th1 1 e e\nx",
            b"\0th1 1 \nx",
            b"\0th1 99999999999999999 e\nx",
            b"\0th2 1 e\nx",
        ] {
            assert!(LivePublication::open(plain).is_none(), "{plain:?}");
        }
        let long = format!("\0th1 1 {}\nx", "e".repeat(65));
        assert!(LivePublication::open(long.as_bytes()).is_none());
        let max = format!("\0th1 1 {}\nx", "e".repeat(64));
        assert!(LivePublication::open(max.as_bytes()).is_some());
    }
}
