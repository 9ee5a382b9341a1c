//! permessage-deflate on one broadcast to a mixed population: sockets that
//! negotiated the extension get the compressed frame (RSV1 set), the others
//! the plain one, each intact; the message is compressed once; frames under
//! the threshold go plain to everyone. The sockets are idle, so the fan-out
//! writes them directly (`direct`); deliveries that must go through each
//! socket's session (one naming a connection to leave out) get the same
//! bytes from it. Client messages compressed by the client (one frame or
//! fragments) are inflated, bounded by the message limit, and refused when
//! broken or not negotiated.

use std::{io::Read, net::SocketAddr, time::Duration};

use bytes::Bytes;
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Message};
use tidings_transport::{serve, text_response, Gateway, TransportConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

async fn gateway(deflate: bool) -> (Gateway, SocketAddr, CancellationToken) {
    let config = TransportConfig {
        permessage_deflate: deflate,
        deflate_threshold: 1024,
        ..TransportConfig::default()
    };
    let gateway = Gateway::builder(Bridge::in_process())
        .config(config)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = |_req, _peer| async { text_response(http::StatusCode::NOT_FOUND, "") };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(serve(listener, gateway.clone(), http, async move {
        stopped.cancelled().await
    }));
    (gateway, addr, stop)
}

/// A client socket past its handshake and welcome; what the handshake
/// answered in `Sec-WebSocket-Extensions`.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    extensions: Option<String>,
}

impl Client {
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> Client {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut c = Client {
            s,
            buf: Vec::new(),
            extensions: None,
        };
        while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            c.more().await;
        }
        let end = c.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(c.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c.extensions = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_owned())
        });
        let (rsv1, welcome) = c.frame().await;
        assert!(!rsv1);
        assert!(welcome.starts_with(br#"{"type":"welcome""#));
        c
    }

    async fn more(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.s.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap();
        assert!(n > 0, "the gateway closed the socket");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next server frame (final, text): whether RSV1 was set, and its
    /// payload as sent.
    async fn frame(&mut self) -> (bool, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                let (hlen, len) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    ),
                    127 if self.buf.len() >= 10 => (
                        10,
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, usize::from(n)),
                };
                if hlen != usize::MAX && self.buf.len() >= hlen + len {
                    assert_eq!(b0 & 0xbf, 0x81, "a final text frame, no RSV2/RSV3");
                    let payload = self.buf[hlen..hlen + len].to_vec();
                    self.buf.drain(..hlen + len);
                    return (b0 & 0x40 != 0, payload);
                }
            }
            self.more().await;
        }
    }

    /// The next message's text, inflated when compressed; whether it was.
    async fn message(&mut self) -> (bool, Vec<u8>) {
        let (rsv1, payload) = self.frame().await;
        if !rsv1 {
            return (false, payload);
        }
        let mut input = payload;
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::new();
        // The trailing empty block is not a final one: read to the end of
        // the input, not of the stream.
        let mut d = flate2::read::DeflateDecoder::new(&input[..]);
        let mut chunk = [0u8; 4096];
        loop {
            match d.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("inflate: {e}"),
            }
        }
        (true, out)
    }
}

fn json_of(size: usize, tag: &str) -> Bytes {
    let mut s = format!("{{\"tag\":\"{tag}\",\"items\":[");
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}}},",
            i * 7 % 100
        ));
        i += 1;
    }
    s.push_str("{}]}");
    Bytes::from(s)
}

async fn publish(gateway: &Gateway, payload: Bytes) {
    let channel = ChannelName::new("/app/broadcast").unwrap();
    gateway
        .bridge()
        .publish(Message::new(channel, payload))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_population_gets_the_right_bytes_compressed_once() {
    let (gateway, addr, stop) = gateway(true).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let offer = match i % 4 {
            0 => None,
            1 => Some("permessage-deflate; client_max_window_bits"),
            2 => Some("permessage-deflate; server_max_window_bits=9"),
            _ => Some("permessage-deflate"),
        };
        let c = Client::connect(addr, offer).await;
        let negotiated = matches!(i % 4, 1 | 3);
        assert_eq!(c.extensions.is_some(), negotiated, "{offer:?}");
        clients.push((negotiated, c));
    }

    let big = json_of(4096, "big");
    publish(&gateway, big.clone()).await;
    let mut plain_frame = None;
    for (negotiated, c) in &mut clients {
        let (compressed, text) = c.message().await;
        assert_eq!(compressed, *negotiated);
        let v: serde_json_lite::Value = serde_json_lite::parse(&text);
        assert_eq!(v.data, &big[..], "intact");
        if !compressed {
            // Every plain socket gets the very same bytes.
            assert_eq!(plain_frame.get_or_insert_with(|| text.clone()), &text);
        }
    }
    let stats = gateway.deflate_stats();
    assert_eq!(stats.messages_compressed_total(), 1, "compressed once");
    assert_eq!(stats.frames_total(), 10);
    assert!(stats.bytes_saved_total() > 10 * 2048);

    // Under the threshold: plain for everyone, nothing compressed.
    let small = Bytes::from_static(br#"{"hello":"world"}"#);
    publish(&gateway, small.clone()).await;
    for (_, c) in &mut clients {
        let (compressed, text) = c.message().await;
        assert!(!compressed);
        assert_eq!(serde_json_lite::parse(&text).data, &small[..]);
    }
    assert_eq!(stats.messages_compressed_total(), 1);
    assert_eq!(stats.frames_total(), 10);

    // A delivery naming a connection to leave out never goes direct: each
    // socket's session writes it (`ws::write_all`), compressed the same.
    let data = json_of(4096, "session");
    let mut enveloped = br#"{"__tidings":1,"from":null,"exclude":"nobody","data":"#.to_vec();
    enveloped.extend_from_slice(&data);
    enveloped.push(b'}');
    publish(&gateway, Bytes::from(enveloped)).await;
    for (negotiated, c) in &mut clients {
        let (compressed, text) = c.message().await;
        assert_eq!(compressed, *negotiated);
        assert_eq!(serde_json_lite::parse(&text).data, &data[..]);
    }
    assert_eq!(stats.messages_compressed_total(), 2);
    assert_eq!(stats.frames_total(), 20);

    // Several large messages in a row, queued behind each other: the
    // same bytes, in order.
    let many: Vec<Bytes> = (0..20).map(|i| json_of(3000, &format!("m{i}"))).collect();
    for m in &many {
        publish(&gateway, m.clone()).await;
    }
    for (negotiated, c) in &mut clients {
        for m in &many {
            let (compressed, text) = c.message().await;
            assert_eq!(compressed, *negotiated);
            assert_eq!(serde_json_lite::parse(&text).data, &m[..]);
        }
    }
    assert_eq!(stats.messages_compressed_total(), 22);
    assert_eq!(stats.frames_total(), 20 + 20 * 10);
    stop.cancel();
}

#[tokio::test]
async fn with_the_extension_off_nothing_is_negotiated_or_compressed() {
    let (gateway, addr, stop) = gateway(false).await;
    let mut c = Client::connect(addr, Some("permessage-deflate; client_max_window_bits")).await;
    assert_eq!(c.extensions, None);
    let big = json_of(4096, "off");
    publish(&gateway, big.clone()).await;
    let (compressed, text) = c.message().await;
    assert!(!compressed);
    assert_eq!(serde_json_lite::parse(&text).data, &big[..]);
    assert_eq!(gateway.deflate_stats().messages_compressed_total(), 0);
    stop.cancel();
}

/// A client frame, masked; `rsv1` marks a compressed message's first frame.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// `data` compressed as a client would (raw deflate, sync flush, the
/// `00 00 ff ff` tail stripped), with flate2's own encoder.
fn client_deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut out = std::mem::take(e.get_mut());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The close code the server sends next (skipping other frames).
    async fn close_code(&mut self) -> u16 {
        loop {
            while self.buf.len() < 2 {
                self.more().await;
            }
            let (b0, len) = (self.buf[0], usize::from(self.buf[1] & 0x7f));
            assert!(len < 126, "a small frame");
            while self.buf.len() < 2 + len {
                self.more().await;
            }
            let frame: Vec<u8> = self.buf.drain(..2 + len).collect();
            if b0 & 0x0f == 0x8 {
                return u16::from_be_bytes([frame[2], frame[3]]);
            }
        }
    }
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_and_bounded() {
    let (_gateway, addr, stop) = gateway(true).await;
    let offer = Some("permessage-deflate; client_max_window_bits");

    // One frame, and fragmented (RSV1 on the first frame only): each
    // inflated with a fresh context, answered.
    let mut c = Client::connect(addr, offer).await;
    let id = "x".repeat(3000);
    let ping = format!(r#"{{"type":"ping","id":"{id}"}}"#);
    c.send(&client_frame(
        true,
        true,
        0x1,
        &client_deflate(ping.as_bytes()),
    ))
    .await;
    let (_, pong) = c.message().await;
    assert_eq!(pong, format!(r#"{{"type":"pong","id":"{id}"}}"#).as_bytes());
    let z = client_deflate(br#"{"type":"ping","id":2}"#);
    let (a, b) = z.split_at(z.len() / 2);
    c.send(&client_frame(false, true, 0x1, a)).await;
    c.send(&client_frame(true, false, 0x0, b)).await;
    assert_eq!(c.message().await.1, br#"{"type":"pong","id":2}"#);
    // An uncompressed message on the same socket is read as it is.
    c.send(&client_frame(
        true,
        false,
        0x1,
        br#"{"type":"ping","id":3}"#,
    ))
    .await;
    assert_eq!(c.message().await.1, br#"{"type":"pong","id":3}"#);
    // RSV1 on a continuation frame is a protocol error.
    c.send(&client_frame(false, false, 0x1, b"[")).await;
    c.send(&client_frame(true, true, 0x0, b"]")).await;
    assert_eq!(c.close_code().await, 1002);

    // A bomb: a small compressed message inflating past the message limit
    // (64 KiB) closes with 1009, whatever its compressed size.
    let mut c = Client::connect(addr, offer).await;
    let bomb = client_deflate(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 8 * 1024);
    c.send(&client_frame(true, true, 0x1, &bomb)).await;
    assert_eq!(c.close_code().await, 1009);

    // Data that does not inflate: 1007.
    let mut c = Client::connect(addr, offer).await;
    c.send(&client_frame(true, true, 0x1, &[0xff, 0xff, 0xff, 0xff]))
        .await;
    assert_eq!(c.close_code().await, 1007);

    // Without the extension negotiated, RSV1 is a protocol error.
    let mut c = Client::connect(addr, None).await;
    c.send(&client_frame(true, true, 0x1, &client_deflate(b"{}")))
        .await;
    assert_eq!(c.close_code().await, 1002);
    stop.cancel();
}

/// Just enough of a `message` frame to find its `data`: the frame is
/// `{"type":"message","channel":"...","data":<payload>}` with the
/// publisher's JSON payload as it was.
mod serde_json_lite {
    pub(crate) struct Value<'a> {
        pub(crate) data: &'a [u8],
    }

    pub(crate) fn parse(frame: &[u8]) -> Value<'_> {
        let key = br#","data":"#;
        let at = frame
            .windows(key.len())
            .position(|w| w == key)
            .unwrap_or_else(|| panic!("no data in {}", String::from_utf8_lossy(frame)));
        assert!(frame.starts_with(br#"{"type":"message","channel":"/app/broadcast""#));
        assert!(frame.ends_with(b"}"));
        Value {
            data: &frame[at + key.len()..frame.len() - 1],
        }
    }
}
