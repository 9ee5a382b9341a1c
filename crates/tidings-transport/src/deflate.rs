//! permessage-deflate (RFC 7692): negotiation, and compressing a delivery
//! once for every socket that negotiated it.
//!
//! # What is negotiated
//!
//! With `permessage_deflate` on, the first `permessage-deflate` offer of
//! the client's `Sec-WebSocket-Extensions` that is valid (known
//! parameters, each at most once, valid values) and that the server
//! supports is accepted, and the answer is always
//!
//! ```text
//! Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover
//! ```
//!
//! - `server_no_context_takeover`: every server message is compressed on
//!   its own, with an empty window. That is what lets a message be
//!   compressed **once** and the same bytes be written to every socket
//!   that negotiated the extension (they all negotiated the same thing),
//!   and it means the server keeps no compressor per connection.
//! - `client_no_context_takeover` (RFC 7692 §7.1.1.2 lets the server ask
//!   it whether offered or not): every client message is compressed on its
//!   own too, so it is inflated with a fresh context and the server keeps
//!   no inflater per connection either.
//! - `client_max_window_bits` (offered or not, with any value) is left
//!   out of the answer: the inflater reads any window up to 15 bits.
//! - An offer with `server_max_window_bits` below 15 is declined (the
//!   compressor always uses a 32 KiB window); the next offer is tried.
//!
//! # What is compressed
//!
//! Deliveries (the frames shared by all recipients of a message) of at
//! least `deflate_threshold_bytes`, once per message: the compressed bytes
//! are kept beside the delivery's frame (`WireFormat::WS_DEFLATE`), made by
//! the first socket that needs them. A message that does not get smaller is
//! sent uncompressed. A socket's own frames (replies, welcome, history
//! replays) are never compressed: that would be work per socket.
//!
//! # Memory
//!
//! Nothing per connection: a socket that negotiated the extension differs
//! from one that did not only by which shared settings it points to. The
//! compressor and inflater are per worker thread (reset for each message):
//! about 300 KiB for the compressor and 45 KiB for the inflater, per
//! thread, once used.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderValue;
use tidings_core::{message::WireFormat, Delivery};

/// The extension's name.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// The answer to an accepted offer (whatever the offer was).
pub(crate) const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The compression level (zlib's scale, 0 to 9). Fixed: the compressed
/// bytes are shared by every socket, so they cannot depend on settings
/// that could differ between gateways of one process.
const LEVEL: u32 = 6;

/// What a sync flush ends with, and what RFC 7692 strips from (and appends
/// to) each message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the `Sec-WebSocket-Extensions` header values holds a
/// `permessage-deflate` offer the server accepts (see the module docs).
pub(crate) fn negotiate<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values.into_iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| offers(s).any(|(name, params)| name == EXTENSION && accept(params)))
    })
}

/// The extensions offered in one header value: each name with its
/// parameters (`;`-separated, not yet parsed), `None` without any.
fn offers(value: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    split_outside_quotes(value, ',').filter_map(|ext| {
        let ext = ext.trim();
        if ext.is_empty() {
            return None;
        }
        Some(match ext.split_once(';') {
            Some((name, params)) => (name.trim(), Some(params)),
            None => (ext, None),
        })
    })
}

/// `s` split on `sep` where `sep` is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                rest = Some(&s[i + 1..]);
                return Some(&s[..i]);
            }
        }
        rest = None;
        Some(s)
    })
}

/// A window-bits value: a number from 8 to 15, as a token or a quoted
/// string, without a sign or leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| (8..=15).contains(n))
}

/// Whether an offer with these parameters is valid and supported (RFC 7692
/// §5: unknown parameters, repeated ones and invalid values decline it).
fn accept(params: Option<&str>) -> bool {
    let Some(params) = params else {
        return true;
    };
    let mut seen = [false; 4];
    for param in split_outside_quotes(params, ';') {
        let param = param.trim();
        if param.is_empty() {
            // `permessage-deflate;` with nothing after the separator.
            return false;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param, None),
        };
        let (i, ok) = match name {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            // Only 15 is supported: the compressor's window is 32 KiB.
            "server_max_window_bits" => (2, value.and_then(window_bits) == Some(15)),
            "client_max_window_bits" => (3, value.is_none_or(|v| window_bits(v).is_some())),
            _ => return false,
        };
        if !ok || std::mem::replace(&mut seen[i], true) {
            return false;
        }
    }
    true
}

/// Counters of the extension, for `/metrics`.
#[derive(Debug, Default)]
pub struct DeflateStats {
    messages: AtomicU64,
    frames: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    client_messages: AtomicU64,
}

impl DeflateStats {
    /// Messages compressed (once each, however many sockets got them).
    pub fn messages_compressed_total(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Compressed frames written to sockets.
    pub fn frames_total(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Bytes saved on the wire by compressed frames (their payloads'
    /// uncompressed size less their compressed size, summed over sockets).
    pub fn bytes_saved_total(&self) -> u64 {
        self.bytes_in
            .load(Ordering::Relaxed)
            .saturating_sub(self.bytes_out.load(Ordering::Relaxed))
    }

    /// Compressed messages received from clients (and inflated).
    pub fn client_messages_total(&self) -> u64 {
        self.client_messages.load(Ordering::Relaxed)
    }

    /// A compressed frame of `raw` bytes, `sent` compressed, was written.
    pub(crate) fn wrote(&self, raw: usize, sent: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(raw as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
    }

    pub(crate) fn inflated(&self) {
        self.client_messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// The extension as negotiated by a socket: the settings every socket
/// that negotiated it shares.
#[derive(Debug)]
pub(crate) struct Deflate {
    /// Deliveries smaller than this go uncompressed.
    pub(crate) threshold: usize,
    pub(crate) stats: Arc<DeflateStats>,
}

impl Deflate {
    /// What to write for `delivery`: its compressed payload (`true`), made
    /// once per message, or its frame as it is (`false`) when under the
    /// threshold or not made smaller by compression.
    pub(crate) fn payload<'a>(&self, delivery: &'a Delivery) -> (&'a Bytes, bool) {
        let frame = delivery.frame();
        if frame.len() < self.threshold {
            return (frame, false);
        }
        let deflated = delivery.encoded(WireFormat::WS_DEFLATE, |d| {
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            worth_it(d.frame())
        });
        if deflated.is_empty() {
            (frame, false)
        } else {
            (deflated, true)
        }
    }
}

/// `frame` compressed, or empty when compression does not make it smaller
/// (no compressed message is empty).
fn worth_it(frame: &[u8]) -> Bytes {
    let out = compress(frame);
    if out.len() < frame.len() {
        Bytes::from(out)
    } else {
        Bytes::new()
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `data` compressed as one permessage-deflate message with no context
/// takeover: raw deflate (level 6), sync-flushed, its `00 00 ff ff` tail
/// stripped. What the gateway sends, with RSV1 set, for a delivery of
/// `data` to a socket that negotiated permessage-deflate.
pub fn compress(data: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let done = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
            // Compressing into memory cannot fail (the only error is a
            // misuse of the stream).
            let _ = c.compress_vec(&data[done.min(data.len())..], &mut out, FlushCompress::Sync);
            let consumed = c.total_in() as usize >= data.len();
            if consumed && out.len() < out.capacity() && out.ends_with(&TAIL) {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
        out
    })
}

/// Why a client's compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the message limit.
    TooBig,
    /// It is not valid deflate data.
    Invalid,
}

/// A client's compressed message (all its fragments' payloads together),
/// inflated with a fresh context, refusing to make more than `max` bytes.
pub(crate) fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        let d = d.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        // Grow as the output does, never beyond max + 1 (a decompression
        // bomb stops at the limit).
        let mut out = Vec::with_capacity((data.len() * 4).clamp(64, max.saturating_add(1)));
        for input in [data, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let used = usize::try_from(d.total_in() - start).unwrap_or(usize::MAX);
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig);
                    }
                    let room = (max + 1 - out.len()).min(out.capacity().max(64));
                    out.reserve_exact(room);
                }
                let status = d
                    .decompress_vec(
                        &input[used.min(input.len())..],
                        &mut out,
                        FlushDecompress::Sync,
                    )
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                let used = usize::try_from(d.total_in() - start).unwrap_or(usize::MAX);
                match status {
                    // The client ended the stream with a final block: what
                    // follows (our tail) is not read.
                    Status::StreamEnd => return Ok(out),
                    _ if used >= input.len() && out.len() < out.capacity() => break,
                    Status::BufError if used >= input.len() => break,
                    _ => {}
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(offer: &str) -> bool {
        negotiate([&HeaderValue::from_str(offer).unwrap()])
    }

    #[test]
    fn offers_are_accepted_or_declined_per_rfc_7692() {
        // What browsers, Node's ws and Python's websockets send.
        assert!(ok("permessage-deflate; client_max_window_bits"));
        assert!(ok("permessage-deflate"));
        assert!(ok(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ));
        assert!(ok("permessage-deflate; client_max_window_bits=10"));
        assert!(ok("permessage-deflate; client_max_window_bits=\"12\""));
        assert!(ok("permessage-deflate; server_max_window_bits=15"));
        assert!(ok(
            "  permessage-deflate ;client_max_window_bits ; server_no_context_takeover "
        ));
        // Declined: unknown, repeated, valueless where a value is needed,
        // values where none is allowed, out of range, unsupported windows.
        assert!(!ok("permessage-deflate; foo"));
        assert!(!ok(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ));
        assert!(!ok("permessage-deflate; server_max_window_bits"));
        assert!(!ok("permessage-deflate; server_max_window_bits=10"));
        assert!(!ok("permessage-deflate; client_max_window_bits=16"));
        assert!(!ok("permessage-deflate; client_max_window_bits=7"));
        assert!(!ok("permessage-deflate; client_max_window_bits=010"));
        assert!(!ok("permessage-deflate; client_max_window_bits=+9"));
        assert!(!ok("permessage-deflate; server_no_context_takeover=1"));
        assert!(!ok("permessage-deflate;"));
        // Other extensions are not ours.
        assert!(!ok("x-webkit-deflate-frame"));
        assert!(!ok("permessage-deflatex"));
        assert!(!ok(""));
    }

    #[test]
    fn the_first_acceptable_offer_of_several_wins() {
        // A declined offer is skipped for the next one, in one header or
        // several.
        assert!(ok(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(ok(
            "x-foo; a=\"b,c\", permessage-deflate; client_max_window_bits"
        ));
        assert!(!ok(
            "permessage-deflate; server_max_window_bits=9, permessage-deflate; bar"
        ));
        let bad = HeaderValue::from_static("permessage-deflate; nope");
        let good = HeaderValue::from_static("permessage-deflate");
        assert!(negotiate([&bad, &good]));
        assert!(!negotiate([&bad]));
        assert!(!negotiate([]));
        // A quoted comma does not split an offer.
        assert!(!ok(
            "permessage-deflate; client_max_window_bits=\"1,permessage-deflate\""
        ));
    }

    #[test]
    fn compress_inflate_round_trip() {
        let json = br#"{"type":"message","channel":"/news","data":{"items":["#;
        let mut msg = json.to_vec();
        for i in 0..200 {
            msg.extend_from_slice(format!("{{\"id\":{i},\"title\":\"headline {i}\"}},").as_bytes());
        }
        msg.extend_from_slice(b"{}]}}");
        let c = compress(&msg);
        assert!(c.len() * 3 < msg.len(), "{} of {}", c.len(), msg.len());
        assert!(!c.ends_with(&TAIL));
        assert_eq!(inflate(&c, msg.len()).unwrap(), msg);
        // The same input, the same bytes (no context carried over).
        assert_eq!(compress(&msg), c);
        // Tiny and empty messages.
        for m in [&b""[..], b"a", b"hello hello hello"] {
            assert_eq!(inflate(&compress(m), 100).unwrap(), m);
        }
        // The limit holds (a bomb stops there) and garbage is refused.
        let zeros = vec![0u8; 1 << 20];
        let bomb = compress(&zeros);
        assert!(bomb.len() < 2048);
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Invalid)
        );
    }

    #[test]
    fn a_final_block_from_the_client_is_read() {
        // A client may end a message with BFINAL set (a finished stream).
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(b"final block", &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&out, 100).unwrap(), b"final block");
    }

    #[test]
    fn a_delivery_is_compressed_once_and_small_ones_not_at_all() {
        use tidings_core::{ChannelName, Message};
        let stats = Arc::new(DeflateStats::default());
        let deflate = Deflate {
            threshold: 1024,
            stats: stats.clone(),
        };
        let ch = ChannelName::new("/a").unwrap();
        let big = Delivery::new(&Message::new(ch.clone(), "x".repeat(4096)));
        let (first, compressed) = deflate.payload(&big);
        assert!(compressed);
        assert!(first.len() < 200);
        let first = first.clone();
        for _ in 0..10 {
            let (again, compressed) = deflate.payload(&big);
            assert!(compressed);
            // The same shared bytes, not a copy.
            assert_eq!(again.as_ptr(), first.as_ptr());
        }
        assert_eq!(stats.messages_compressed_total(), 1);
        assert_eq!(inflate(&first, 1 << 16).unwrap(), &big.frame()[..]);
        let small = Delivery::new(&Message::new(ch.clone(), "hi"));
        assert_eq!(deflate.payload(&small), (small.frame(), false));
        assert_eq!(stats.messages_compressed_total(), 1);
        // Incompressible bytes are not worth it.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(worth_it(&noise).is_empty());
        assert!(!worth_it(&big.frame()[..]).is_empty());
    }
}
