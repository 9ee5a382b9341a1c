//! WebSocket framing (RFC 6455) for the server side, after the handshake.
//!
//! fastwebsockets does the upgrade handshake; the frames are read and
//! written here, for three reasons: an idle socket must not hold a large
//! read buffer (the reader keeps none while idle and grows only for the
//! frame at hand), every violation must map to its close code (unmasked
//! client frames, bad close frames, oversize frames) and the writer must
//! send several queued frames in one system call without copying their
//! shared payloads.

use std::io::{self, IoSlice};

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One frame from the client, unmasked.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) opcode: OpCode,
    /// RSV1: the first frame of a message compressed with
    /// permessage-deflate (whether that was negotiated is the caller's
    /// to check; on other frames RSV1 is refused here).
    pub(crate) compressed: bool,
    pub(crate) payload: Bytes,
}

/// Why reading failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection ended or failed.
    Io(io::Error),
    /// The peer broke the protocol: close with 1002.
    Protocol(&'static str),
    /// A frame larger than the message limit: close with 1009.
    TooBig,
    /// A frame started arriving but was not complete within the frame
    /// timeout: close with 1008.
    Timeout,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Read buffers larger than this are released once empty.
const KEEP_CAPACITY: usize = 64;
/// Grow the read buffer by at most this much per read.
const GROW_STEP: usize = 16 * 1024;
/// Read at least this much at a time once a frame is being read.
const READ_CHUNK: usize = 512;

/// One WebSocket connection's framing: reads client frames keeping no
/// buffer while idle, writes server frames batching small ones.
pub(crate) struct Conn<S> {
    io: S,
    buf: BytesMut,
    max_frame: usize,
    /// How long a frame may take to arrive once its first byte has.
    frame_timeout: Duration,
    /// When the frame being read must be complete (set by its first byte).
    frame_deadline: Option<Instant>,
    /// Frame headers of the batch being written, back to back.
    heads: Vec<u8>,
    /// Each frame of the batch: where its header ends in `heads`, and its
    /// payload.
    parts: Vec<(usize, Bytes)>,
}

impl<S> Conn<S> {
    /// Framing over `io`, refusing client frames with payloads over
    /// `max_frame` bytes and frames that take longer than `frame_timeout`
    /// to arrive once started.
    pub(crate) fn new(io: S, max_frame: usize, frame_timeout: Duration) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_frame,
            frame_timeout,
            frame_deadline: None,
            heads: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// The I/O underneath.
    pub(crate) fn io(&self) -> &S {
        &self.io
    }

    /// As [`Conn::new`], with `read` already read from the peer.
    pub(crate) fn with_read(io: S, read: Bytes, max_frame: usize, frame_timeout: Duration) -> Self {
        let mut conn = Self::new(io, max_frame, frame_timeout);
        if !read.is_empty() {
            conn.buf = BytesMut::from(&read[..]);
        }
        conn
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Reads until at least `n` bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            // Grow as bytes arrive, not by what a header announces: a
            // client cannot make the server reserve a whole frame up front.
            let want = (n - self.buf.len()).clamp(READ_CHUNK, GROW_STEP);
            self.buf.reserve(want);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(())
    }

    /// Waits for the next frame. Cancel-safe: whatever was read stays
    /// buffered, and the frame is only consumed once complete.
    ///
    /// Waiting for a frame to *start* has no limit (an idle socket is the
    /// heartbeat's business), but once its first byte is in, the whole
    /// frame must arrive within the frame timeout: a half-sent frame would
    /// otherwise hold the socket, its buffer and the pongs behind it.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            // Idle from here on, probably: give the memory back.
            self.buf = BytesMut::new();
        }
        if self.buf.is_empty() {
            self.frame_deadline = None;
            // Wait for the first bytes with a tiny buffer.
            self.buf.reserve(16);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        // Kept across cancellations: the deadline is the frame's, not this
        // call's.
        let deadline = *self.frame_deadline.get_or_insert_with(|| {
            crate::config::deadline_after(Instant::now(), self.frame_timeout)
        });
        // Boxed: the started frame's read and its timer are the largest
        // state of this future, which every idle socket's task keeps room
        // for; a frame being read is rare, an idle socket is not.
        let frame = Box::pin(tokio::time::timeout_at(deadline, self.read_started_frame()))
            .await
            .map_err(|_| ReadError::Timeout)??;
        // The next frame's clock starts with its own first byte.
        self.frame_deadline = None;
        Ok(frame)
    }

    /// The rest of [`Conn::read_frame`], once the frame has begun.
    async fn read_started_frame(&mut self) -> Result<Frame, ReadError> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x30 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ReadError::Protocol("unknown opcode"))?;
        let compressed = b0 & RSV1 != 0;
        // RFC 7692 §6.1: only a message's first frame says it is compressed,
        // and control frames never are.
        if compressed && (opcode.is_control() || opcode == OpCode::Continuation) {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let extra = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extra + 4;
        self.fill(header).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.buf[2..10]);
                u64::from_be_bytes(be)
            }
        };
        if opcode.is_control() {
            if !fin {
                return Err(ReadError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(ReadError::Protocol("control frame over 125 bytes"));
            }
        }
        let len = usize::try_from(len).map_err(|_| ReadError::TooBig)?;
        if len > self.max_frame {
            return Err(ReadError::TooBig);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.buf[2 + extra..header]);
        self.fill(header + len).await?;
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Frame {
            fin,
            opcode,
            compressed,
            payload: payload.freeze(),
        })
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(v) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A batch is written once it holds this much.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// The header bit (in the first byte) of a compressed message's first
/// frame (permessage-deflate).
pub(crate) const RSV1: u8 = 0x40;

/// The longest header of a server frame.
pub(crate) const MAX_HEADER: usize = 10;

/// Writes the header of an unmasked, final server frame of `len` payload
/// bytes into `into`; returns its length.
pub(crate) fn server_header(opcode: OpCode, len: usize, into: &mut [u8; MAX_HEADER]) -> usize {
    into[0] = 0x80 | opcode.bits();
    if len < 126 {
        into[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        into[1] = 126;
        into[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        into[1] = 127;
        into[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    fn header(opcode: OpCode, compressed: bool, len: usize, into: &mut Vec<u8>) {
        let mut head = [0u8; MAX_HEADER];
        let n = server_header(opcode, len, &mut head);
        if compressed {
            head[0] |= RSV1;
        }
        into.extend_from_slice(&head[..n]);
    }

    /// Adds raw bytes (the end of a frame already started) to the batch.
    pub(crate) fn push_raw(&mut self, bytes: Bytes) {
        self.parts.push((self.heads.len(), bytes));
    }

    /// Adds a frame to the batch. The payload is not copied: the batch
    /// holds the (shared) bytes, and [`Conn::flush`] hands the kernel the
    /// headers and payloads in one vectored write.
    pub(crate) fn push(&mut self, opcode: OpCode, payload: Bytes) {
        self.push_frame(opcode, false, payload);
    }

    /// As [`Conn::push`], with RSV1 set when `compressed` (a
    /// permessage-deflate message, in one frame).
    pub(crate) fn push_frame(&mut self, opcode: OpCode, compressed: bool, payload: Bytes) {
        Self::header(opcode, compressed, payload.len(), &mut self.heads);
        self.parts.push((self.heads.len(), payload));
    }

    /// Writes the batch.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.parts.is_empty() {
            let mut slices = Vec::with_capacity(self.parts.len() * 2);
            let mut start = 0;
            for (end, payload) in &self.parts {
                slices.push(IoSlice::new(&self.heads[start..*end]));
                if !payload.is_empty() {
                    slices.push(IoSlice::new(payload));
                }
                start = *end;
            }
            let mut bufs = &mut slices[..];
            while !bufs.is_empty() {
                let n = self.io.write_vectored(bufs).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
            // Nothing is kept between batches: an idle socket holds no
            // write buffers.
            self.parts = Vec::new();
            self.heads = Vec::new();
        }
        self.io.flush().await
    }

    /// Writes one frame now.
    pub(crate) async fn send(&mut self, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        self.push(opcode, payload);
        self.flush().await
    }

    /// Writes a close frame with `code` and `reason`.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.send(OpCode::Close, Bytes::from(payload)).await?;
        self.io.shutdown().await
    }
}

/// Checks a client's close frame payload; the close code to answer with.
/// `Ok(payload to echo)` for a valid one.
pub(crate) fn check_close(payload: &[u8]) -> Result<(), (u16, &'static str)> {
    match payload.len() {
        0 => Ok(()),
        1 => Err((1002, "close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err((1002, "invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err((1007, "invalid UTF-8 in close reason"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
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

    #[tokio::test]
    async fn reads_masked_frames_and_releases_the_buffer() {
        let big = vec![b'x'; 3000];
        let mut wire = masked(true, 1, b"hello");
        wire.extend(masked(true, 1, &big));
        wire.extend(masked(true, 9, b"p"));
        let mut r = Conn::new(&wire[..], 4096, T);
        let f = r.read_frame().await.unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Text, &b"hello"[..]));
        let f = r.read_frame().await.unwrap();
        assert_eq!(f.payload.len(), 3000);
        assert!(f.payload.iter().all(|b| *b == b'x'));
        drop(f);
        let f = r.read_frame().await.unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Ping, &b"p"[..]));
        assert!(r.buf.capacity() <= 4096);
        assert!(matches!(r.read_frame().await, Err(ReadError::Io(_))));
    }

    #[tokio::test]
    async fn violations() {
        let unmasked = [0x81u8, 0x01, b'a'];
        let mut r = Conn::new(&unmasked[..], 100, T);
        assert!(matches!(r.read_frame().await, Err(ReadError::Protocol(_))));
        // RSV2 and RSV3 are never allowed; RSV1 only on a data message's
        // first frame (the session checks it was negotiated).
        for bad in [
            masked(true, 0x21, b"a"),
            masked(true, 0x11, b"a"),
            masked(true, 0x49, b"a"),
            masked(true, 0x40, b"a"),
        ] {
            assert!(matches!(
                Conn::new(&bad[..], 100, T).read_frame().await,
                Err(ReadError::Protocol(_))
            ));
        }
        let rsv1 = masked(false, 0x41, b"a");
        let f = Conn::new(&rsv1[..], 100, T).read_frame().await.unwrap();
        assert!(f.compressed && !f.fin && f.opcode == OpCode::Text);
        let plain = masked(true, 0x01, b"a");
        assert!(
            !Conn::new(&plain[..], 100, T)
                .read_frame()
                .await
                .unwrap()
                .compressed
        );
        let ping_frag = masked(false, 9, b"a");
        assert!(matches!(
            Conn::new(&ping_frag[..], 100, T).read_frame().await,
            Err(ReadError::Protocol(_))
        ));
        let big = masked(true, 1, &[b'a'; 200]);
        assert!(matches!(
            Conn::new(&big[..], 100, T).read_frame().await,
            Err(ReadError::TooBig)
        ));
        let op = masked(true, 3, b"");
        assert!(matches!(
            Conn::new(&op[..], 100, T).read_frame().await,
            Err(ReadError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn a_started_frame_must_complete_within_the_frame_timeout() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = Conn::new(server, 100, Duration::from_millis(50));
        let wire = masked(true, 1, b"hello");
        client.write_all(&wire).await.unwrap();
        let f = r.read_frame().await.unwrap();
        assert_eq!(&f.payload[..], b"hello");
        // Half a frame, and nothing more: the read gives up.
        client.write_all(&wire[..4]).await.unwrap();
        assert!(matches!(r.read_frame().await, Err(ReadError::Timeout)));
    }

    #[test]
    fn close_payloads() {
        assert!(check_close(b"").is_ok());
        assert!(check_close(&[0x03, 0xE8]).is_ok());
        assert_eq!(check_close(&[0x03]).unwrap_err().0, 1002);
        assert_eq!(check_close(&[0x03, 0xED]).unwrap_err().0, 1002); // 1005
        assert_eq!(check_close(&[0x03, 0xE8, 0xFF]).unwrap_err().0, 1007);
    }

    #[tokio::test]
    async fn writes_headers_for_every_length() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let mut out = Vec::new();
            let payload = vec![7u8; len];
            let mut w = Conn::new(&mut out, 0, T);
            w.send(OpCode::Text, Bytes::from(payload)).await.unwrap();
            assert_eq!(out[0], 0x81);
            let (hdr, n) = match out[1] {
                126 => (4, usize::from(u16::from_be_bytes([out[2], out[3]]))),
                127 => (
                    10,
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, usize::from(n)),
            };
            assert_eq!(n, len);
            assert_eq!(out.len(), hdr + len);
        }
    }
}
