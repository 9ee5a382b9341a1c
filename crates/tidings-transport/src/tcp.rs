//! The TCP stream under hyper in [`serve`](crate::server::serve): the
//! `101 Switching Protocols` of an upgrade is held in the kernel
//! (`TCP_CORK`) until the upgraded connection's first write of its own, so
//! that the 101 and the welcome leave in one segment: one transmission, one
//! wake-up of the client and one acknowledgement fewer per connection.
//!
//! The hold ends with the first write or read through this stream after
//! the 101 (an adapter that waits for its client first, such as
//! Engine.IO's upgrade probe, releases it as it starts reading), or when
//! the WebSocket adapter takes the stream for itself and has written its
//! welcome ([`ServerTcp::into_parts`]). The kernel sends corked bytes
//! after 200 ms whatever happens. Elsewhere than on Linux nothing is held.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The start of the response that begins a protocol switch.
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

/// An accepted TCP stream, as hyper serves it (see the module docs).
#[derive(Debug)]
pub(crate) struct ServerTcp {
    stream: TcpStream,
    /// A 101 was written and is held.
    corked: bool,
}

impl ServerTcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            corked: false,
        }
    }

    /// The stream, and whether a 101 is held in it: whoever takes the
    /// stream must then call [`uncork`] once its first bytes are written.
    pub(crate) fn into_parts(self) -> (TcpStream, bool) {
        (self.stream, self.corked)
    }

    /// Ends a hold, if one is on.
    fn release(&mut self) {
        if self.corked {
            self.corked = false;
            uncork(&self.stream);
        }
    }

    /// Holds what follows when `first` starts a 101 (Linux only).
    fn hold_if_switching(&mut self, first: &[u8]) {
        if cfg!(target_os = "linux") && !self.corked && first.starts_with(SWITCHING) {
            self.corked = cork(&self.stream, true);
        }
    }
}

/// Sends what `stream` holds (see [`ServerTcp::into_parts`]).
pub(crate) fn uncork(stream: &TcpStream) {
    cork(stream, false);
}

/// Sets `TCP_CORK`; whether it was set.
#[cfg(target_os = "linux")]
fn cork(stream: &TcpStream, on: bool) -> bool {
    socket2::SockRef::from(stream).set_tcp_cork(on).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn cork(_: &TcpStream, _: bool) -> bool {
    false
}

impl AsyncRead for ServerTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Waiting for the client: whatever is held must reach it first.
        this.release();
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerTcp {
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
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.corked {
            // The upgraded connection's first write: it goes with the 101.
            let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
            if written.is_ready() {
                this.release();
            }
            return written;
        }
        this.hold_if_switching(first);
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.release();
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
