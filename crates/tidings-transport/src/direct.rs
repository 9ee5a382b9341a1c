//! A session's socket, shared with the fan-out.
//!
//! The fan-out writes a delivery straight to a socket whose queue is empty
//! (one non-blocking `writev`, no task woken; see `tidings_bridge::mailbox`).
//! For that the session's TCP stream lives in an `Arc` that the mailbox
//! holds too, and every write of the session itself goes through the
//! mailbox's [`WriteGate`]: from its first byte until its flush the fan-out
//! writes nothing, and the unwritten end of a frame the fan-out started is
//! written before the session's own bytes. Frames never interleave.
//!
//! A connection that is not a plain TCP stream underneath (none today) is
//! served as before, through hyper's upgraded I/O, with no direct writes.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tidings_bridge::{Direct, DirectWrite, MailboxReceiver, WriteGate};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{codec, shared::Shared, tcp::ServerTcp};

/// The TCP stream, as the fan-out sees it.
pub(crate) struct SharedTcp {
    stream: TcpStream,
    /// The gateway's counters and, when this socket negotiated
    /// permessage-deflate, its settings (shared: nothing per socket).
    shared: Arc<Shared>,
}

impl SharedTcp {
    /// Writes one text frame (RSV1 set when `compressed`) if the socket
    /// takes it now.
    fn try_write(&self, payload: &Bytes, compressed: bool) -> Direct {
        let mut head = [0u8; codec::MAX_HEADER];
        let hlen = codec::server_header(codec::OpCode::Text, payload.len(), &mut head);
        if compressed {
            head[0] |= codec::RSV1;
        }
        let total = hlen + payload.len();
        let bufs = [IoSlice::new(&head[..hlen]), IoSlice::new(payload)];
        match self.stream.try_write_vectored(&bufs) {
            Ok(n) if n == total => {
                self.shared.stats.frames_out(1);
                Direct::Written
            }
            Ok(0) | Err(_) => Direct::NotWritten,
            // Counted by the session when it writes the rest.
            Ok(n) => Direct::Partial(if n >= hlen {
                payload.slice(n - hlen..)
            } else {
                let mut rest = BytesMut::with_capacity(total - n);
                rest.extend_from_slice(&head[n..hlen]);
                rest.extend_from_slice(payload);
                rest.freeze()
            }),
        }
    }
}

impl DirectWrite for SharedTcp {
    /// Deliveries on a channel with history (unless through a pattern) go
    /// through the session's recovery follower, and those naming a
    /// connection to leave out through its `exclude` check: never direct.
    fn takes(&self, delivery: &tidings_core::Delivery) -> bool {
        (delivery.position().is_none() || delivery.pattern().is_some()) && !delivery.has_exclude()
    }

    fn try_write_text(&self, payload: &Bytes) -> Direct {
        self.try_write(payload, false)
    }

    /// Compressed (once per message, for every socket) when this socket
    /// negotiated permessage-deflate and the frame is large enough.
    fn try_write_delivery(&self, delivery: &tidings_core::Delivery) -> Direct {
        let Some(deflate) = &self.shared.deflate else {
            return self.try_write(delivery.frame(), false);
        };
        let (payload, compressed) = deflate.payload(delivery);
        let written = self.try_write(payload, compressed);
        if compressed && !matches!(written, Direct::NotWritten) {
            deflate.stats.wrote(delivery.frame().len(), payload.len());
        }
        written
    }
}

/// The session's I/O.
pub(crate) enum SessionIo {
    /// The TCP stream shared with the fan-out.
    Shared {
        tcp: Arc<SharedTcp>,
        gate: WriteGate,
    },
    /// Anything else, as hyper upgraded it (boxed: rare, and kept out of
    /// every idle session's size).
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl SessionIo {
    /// The I/O of an upgraded connection, the bytes the client sent after
    /// its upgrade request that hyper had already read, and whether the 101
    /// is held in the kernel until the first write ([`SessionIo::uncork`]
    /// must follow it; see `tcp`). With a TCP stream underneath, deliveries
    /// may be written to it directly once [`SessionIo::write_directly`] is
    /// called.
    pub(crate) fn new(
        io: TokioIo<Upgraded>,
        mailbox: &MailboxReceiver,
        shared: &Arc<Shared>,
    ) -> (Self, Bytes, bool) {
        let shared_tcp = |stream| SessionIo::Shared {
            tcp: Arc::new(SharedTcp {
                stream,
                shared: shared.clone(),
            }),
            gate: mailbox.gate(),
        };
        // Served by this crate's listener, or by an embedding one on a
        // plain TCP stream.
        let upgraded = match io.into_inner().downcast::<TokioIo<ServerTcp>>() {
            Ok(parts) => {
                let (stream, corked) = parts.io.into_inner().into_parts();
                return (shared_tcp(stream), parts.read_buf, corked);
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (shared_tcp(parts.io.into_inner()), parts.read_buf, false),
            Err(upgraded) => (
                SessionIo::Upgraded(Box::new(TokioIo::new(upgraded))),
                Bytes::new(),
                false,
            ),
        }
    }

    /// Sends the 101 held until the first write (see `tcp`).
    pub(crate) fn uncork(&self) {
        if let SessionIo::Shared { tcp, .. } = self {
            crate::tcp::uncork(&tcp.stream);
        }
    }

    /// Lets the fan-out write deliveries to this socket directly (after
    /// the welcome: nothing may come before it).
    pub(crate) fn write_directly(&self, mailbox: &MailboxReceiver) {
        if let SessionIo::Shared { tcp, .. } = self {
            mailbox.write_directly(tcp.clone());
        }
    }
}

impl AsyncRead for SessionIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Shared { tcp, .. } => loop {
                ready!(tcp.stream.poll_read_ready(cx))?;
                match tcp.stream.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            SessionIo::Upgraded(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

/// The first byte of a (final, unfragmented) close frame.
const CLOSE_FRAME_START: u8 = 0x88;

/// Writes with `write` once the stream is writable.
fn poll_try(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match write(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return Poll::Ready(other),
        }
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionIo::Shared { tcp, gate } => {
                // After a close frame (always written alone) nothing more
                // may follow: the fan-out stops for good.
                if bufs.first().and_then(|b| b.first()) == Some(&CLOSE_FRAME_START) {
                    gate.close();
                }
                // The end of a frame the fan-out started goes first.
                while let Some(rest) = gate.begin() {
                    let n = ready!(poll_try(&tcp.stream, cx, |s| s.try_write(&rest)))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    gate.wrote_rest(n);
                }
                poll_try(&tcp.stream, cx, |s| s.try_write_vectored(bufs))
            }
            SessionIo::Upgraded(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Shared { gate, .. } => {
                // Every write is handed to the kernel as it is made: the
                // session's write is complete, the fan-out may go on.
                gate.end();
                Poll::Ready(Ok(()))
            }
            SessionIo::Upgraded(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Shared { tcp, .. } => {
                // The stream is shared, so shut its write side down through
                // a duplicate of its descriptor.
                use std::os::fd::AsFd;
                let fd = tcp.stream.as_fd().try_clone_to_owned()?;
                Poll::Ready(std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Write))
            }
            SessionIo::Upgraded(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
