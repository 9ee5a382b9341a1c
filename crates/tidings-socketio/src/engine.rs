//! Engine.IO protocol 4: packet types, payloads (packets joined by the
//! record separator on long-polling), the open packet, error answers.

use bytes::Bytes;

/// Packets of a long-polling payload are separated by this byte.
pub(crate) const SEPARATOR: u8 = 0x1e;

/// `0`: open (server to client, once).
pub(crate) const OPEN: u8 = b'0';
/// `1`: close.
pub(crate) const CLOSE: u8 = b'1';
/// `2`: ping.
pub(crate) const PING: u8 = b'2';
/// `3`: pong.
pub(crate) const PONG: u8 = b'3';
/// `4`: message (a Socket.IO packet).
pub(crate) const MESSAGE: u8 = b'4';
/// `5`: upgrade.
pub(crate) const UPGRADE: u8 = b'5';
/// `6`: noop.
pub(crate) const NOOP: u8 = b'6';

/// The open packet.
pub(crate) fn open_packet(
    sid: &str,
    upgrades: bool,
    ping_interval_ms: u128,
    ping_timeout_ms: u128,
    max_payload: usize,
) -> Bytes {
    Bytes::from(format!(
        "{}{{\"sid\":\"{sid}\",\"upgrades\":{},\"pingInterval\":{ping_interval_ms},\"pingTimeout\":{ping_timeout_ms},\"maxPayload\":{max_payload}}}",
        OPEN as char,
        if upgrades { "[\"websocket\"]" } else { "[]" }
    ))
}

/// A one-byte packet.
pub(crate) fn packet(kind: u8) -> Bytes {
    Bytes::copy_from_slice(&[kind])
}

/// Splits a long-polling payload into packets (text packets only: a
/// binary one, `b<base64>`, is refused).
pub(crate) fn split_payload(body: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for p in body.split(|&b| b == SEPARATOR) {
        let p = std::str::from_utf8(p).map_err(|_| "payload is not UTF-8")?;
        if p.is_empty() {
            return Err("empty packet");
        }
        if p.starts_with('b') {
            return Err("binary packets are not supported");
        }
        out.push(p.to_owned());
    }
    Ok(out)
}

/// Engine.IO's error codes, with the messages the reference server gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EngineError {
    /// `0`: transport unknown.
    UnknownTransport,
    /// `1`: session id unknown.
    UnknownSid,
    /// `2`: bad handshake method.
    BadHandshakeMethod,
    /// `3`: bad request.
    BadRequest,
    /// `5`: unsupported protocol version.
    UnsupportedVersion,
}

impl EngineError {
    /// The JSON body: `{"code":N,"message":TEXT}`.
    pub(crate) fn body(self) -> String {
        let (code, message) = match self {
            Self::UnknownTransport => (0, "Transport unknown"),
            Self::UnknownSid => (1, "Session ID unknown"),
            Self::BadHandshakeMethod => (2, "Bad handshake method"),
            Self::BadRequest => (3, "Bad request"),
            Self::UnsupportedVersion => (5, "Unsupported protocol version"),
        };
        format!("{{\"code\":{code},\"message\":\"{message}\"}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_and_refuse_binary() {
        assert_eq!(
            split_payload(b"40\x1e42[\"a\"]").unwrap(),
            ["40", "42[\"a\"]"]
        );
        assert!(split_payload(b"bAQID").is_err());
        assert!(split_payload(b"4\x1e").is_err());
        assert!(split_payload(b"\xff").is_err());
        assert_eq!(
            &open_packet("x", true, 25000, 20000, 1000)[..],
            br#"0{"sid":"x","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000}"#
        );
        assert_eq!(
            EngineError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
    }
}
