//! A raw WebSocket client that writes exactly the frames a test crafts:
//! fragments, bad UTF-8, reserved bits, oversize, and never answers pings
//! unless told to.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A raw client.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code, for a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == op::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    /// Connects and completes the handshake (asserting 101).
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        let rest = buf.split_off(head_end);
        RawWs { stream, buf: rest }
    }

    /// The client's end of the TCP connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Writes one masked frame; `rsv` sets the three reserved bits (0..8).
    pub async fn send_frame_rsv(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push((u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f));
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // The server may close mid-write; that is an outcome tests check.
        let _ = self.stream.write_all(&f).await;
    }

    /// Connects to `gw`'s WebSocket path and reads the welcome frame.
    pub async fn welcomed(gw: &crate::Gateway) -> RawWs {
        let mut r = RawWs::connect(gw.addr, "/ws").await;
        let w = r.next_json(crate::PATIENCE).await.expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        r
    }

    /// Writes raw bytes (for frames no well-behaved client would send,
    /// such as unmasked ones).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_frame_rsv(fin, 0, opcode, payload).await;
    }

    /// Reads one server frame, or `None` if the connection ended or nothing
    /// came within `limit`.
    pub async fn read_frame(&mut self, limit: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until a close frame; returns its code. Pings are left
    /// unanswered. `None` if the connection ended without a close frame.
    pub async fn close_code(&mut self, limit: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            if f.opcode == op::CLOSE {
                return f.close_code();
            }
        }
    }

    /// Reads the next text frame as JSON, skipping pings (unanswered).
    pub async fn next_json(&mut self, limit: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            match f.opcode {
                op::TEXT => return Some(serde_json::from_slice(&f.payload).expect("JSON")),
                op::PING | op::PONG => continue,
                _ => return None,
            }
        }
    }
}

fn parse(b: &[u8]) -> Option<(ServerFrame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let len7 = (b[1] & 0x7f) as usize;
    let (len, mut i) = match len7 {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10)
        }
        n => (n, 2),
    };
    if b[1] & 0x80 != 0 {
        i += 4; // servers do not mask; tolerate it anyway
    }
    if b.len() < i + len {
        return None;
    }
    Some((
        ServerFrame {
            fin,
            opcode,
            payload: b[i..i + len].to_vec(),
        },
        i + len,
    ))
}

/// Writes `request` (a whole HTTP request, as bytes on the wire) on a new
/// connection and reads one response: its status line, header block and
/// body (by `Content-Length`, or until the server closes). `None` when
/// the connection ended or stalled before a complete response head.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.ok()?;
    read_response(&mut stream).await
}

/// One HTTP response read by [`http_exchange`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status line, `HTTP/1.1 403 Forbidden`.
    pub status_line: String,
    /// The status code.
    pub status: u16,
    /// The header block, lines joined with `\r\n`.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Reads one response from `stream` (see [`http_exchange`]).
pub async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let deadline = tokio::time::Instant::now() + crate::PATIENCE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf.split_off(head_end);
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            // Closed (the end of a body without a length) or stalled.
            _ => break,
        }
    }
    Some(RawResponse {
        status_line,
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
