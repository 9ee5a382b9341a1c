//! The WebSocket adapter: one task per connection, driving a
//! [`tidings_session::Session`].
//!
//! The task owns the connection and loops over a `select!` of what can
//! happen to a socket, in priority order: shutdown, client frames (control
//! frames and fragments here; whole messages go to the session), the
//! session's next event (RPC answers, deliveries from its bounded mailbox,
//! written in batches), and the heartbeat timer. Reading is cancel-safe (see
//! `codec`) and so is the session's `next_event`, so racing them loses
//! nothing. Subscriptions, the rate limit, routing checks, RPC and recovery
//! are the session's; this file is framing, heartbeats and closing.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tidings_core::{protocol::close, Identity};
use tidings_session::{Batch, CloseReason, End, Output, Positions, Session};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::Instrument;

use tidings_admission::Admitted;
use tidings_session::Context;

use crate::{
    codec::{check_close, Conn, Frame, OpCode, ReadError, BATCH_BYTES},
    config::deadline_after,
    deflate::{self, Deflate, InflateError},
};

type Io = crate::direct::SessionIo;
use crate::shared::Shared;

/// What handling a client frame asks of the connection.
enum Step {
    /// Go on; write these first, if any.
    Write,
    /// Send our heartbeat ping.
    Ping,
    /// Answer the client's WebSocket ping.
    Pong(Bytes),
    /// Echo the client's close frame; the connection ends.
    CloseEcho(Bytes),
    /// Close with this code; the connection ends.
    Close(u16, std::borrow::Cow<'static, str>, CloseReason),
    /// The client answered our ping.
    PongSeen,
}

impl From<End> for Step {
    fn from(end: End) -> Self {
        match end {
            End::Close { code, text, reason } => Step::Close(code, text, reason),
            End::Gone => Step::Close(close::GOING_AWAY, "going away".into(), CloseReason::Client),
        }
    }
}

/// How long a closing socket gets to send its close reply before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Most queued deliveries written in one batch (one system call).
const BATCH_FRAMES: usize = 64;

/// What opening a connection needs, as the upgrade handler hands it over.
pub(crate) struct Opening {
    pub(crate) upgrade: fastwebsockets::upgrade::UpgradeFut,
    pub(crate) gw: Arc<Context>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) since: Box<Positions>,
    pub(crate) admitted: Admitted,
}

/// Serves one connection to its end: completes the upgrade, opens the
/// session, writes the welcome, then serves the socket ([`serve`]).
///
/// One task, small for its whole life. A task keeps room for the largest
/// state its future ever has, so everything opening needs (the upgrade,
/// the admission's answer, the session's joins and history reads) lives in
/// two boxes, `opening` and the opening's own future, both freed once the
/// socket is open: what an idle socket keeps is the serving loop and the
/// [`WsSession`] box. (Spawning a second task for the serving loop would
/// do the same at the cost of a spawn per connection.)
pub(crate) async fn run(opening: Box<Opening>) {
    let Some((ws, slot, span)) = Box::pin(upgrade_and_open(opening)).await else {
        return;
    };
    serve(ws, slot).instrument(span).await;
}

/// The upgrade completed and the session opened: the socket, its place
/// under the connection limits and its span; `None` when the upgrade did
/// not complete or the peer did not take the welcome.
async fn upgrade_and_open(
    opening: Box<Opening>,
) -> Option<(Box<WsSession>, tidings_admission::Slot, tracing::Span)> {
    let Opening {
        upgrade,
        gw,
        shared,
        since,
        admitted,
    } = *opening;
    let (peer, client_ip) = (admitted.peer, admitted.client_ip);
    let io = match upgrade.await {
        Ok(ws) => ws.into_inner(),
        Err(e) => {
            tracing::debug!(%peer, client = %client_ip, error = %e, "upgrade did not complete");
            return None;
        }
    };
    let id = gw.bridge.next_connection_id();
    // `peer` is the TCP peer, `client` the address derived through trusted
    // proxies (the same the per-address limit counts).
    let span =
        tracing::debug_span!("conn", id, %peer, client = %client_ip, user = tracing::field::Empty);
    if let Some(user) = &admitted.identity.user {
        span.record("user", user.as_str());
    }
    // RPC calls forward the client's address (X-Forwarded-For).
    let client = admitted.client();
    let Admitted {
        identity,
        credentials,
        slot,
        ..
    } = admitted;
    let ws = open(io, id, gw, shared, identity, credentials, since, client)
        .instrument(span.clone())
        .await?;
    Some((ws, slot, span))
}

/// The session opened and the welcome written; `None` when the peer did
/// not take the welcome in time (the socket is closed and counted).
#[allow(clippy::too_many_arguments)]
async fn open(
    io: TokioIo<Upgraded>,
    id: u64,
    gw: Arc<Context>,
    shared: Arc<Shared>,
    identity: Arc<Identity>,
    credentials: Arc<http::HeaderMap>,
    since: Box<Positions>,
    peer: std::net::SocketAddr,
) -> Option<Box<WsSession>> {
    gw.stats.opened();
    tracing::debug!("socket open");
    // fastwebsockets did the handshake; framing is ours (see codec).
    let mut out = Vec::new();
    let session = Box::pin(Session::open_with_id(
        gw.clone(),
        id,
        identity,
        credentials,
        peer,
        &since,
        &mut out,
    ))
    .await;
    drop(since);
    // The TCP stream is shared with the fan-out, which writes deliveries
    // to it directly once the welcome is out (see `direct`).
    let (io, read, corked) = Io::new(io, session.mailbox(), &shared);
    let mut conn = Conn::with_read(
        io,
        read,
        shared.config.max_message_size,
        shared.config.frame_timeout,
    );
    let welcome = out.len() as u64;
    let written = write_all(
        &mut conn,
        &mut out,
        shared.config.write_timeout,
        shared.deflate.as_ref(),
    )
    .await;
    if corked {
        // The 101 and the welcome leave together.
        conn.io().uncork();
    }
    if !written {
        let mut session = session;
        session.finish(close::SLOW_CONSUMER, CloseReason::SlowConsumer.as_str());
        gw.stats.closed(CloseReason::SlowConsumer);
        tracing::debug!(reason = CloseReason::SlowConsumer.as_str(), "socket closed");
        return None;
    }
    gw.stats.frames_out(welcome);
    conn.io().write_directly(session.mailbox());
    // The opening's frames were written: an idle socket keeps no room
    // for them (the first batch of its own makes what it needs).
    drop(out);
    Some(Box::new(WsSession {
        gw,
        shared,
        session,
        conn,
        partial: None,
        out: Vec::new(),
    }))
}

/// Serves an open socket to its end. Everything the socket keeps is in
/// `ws` (one box); `slot`, its place under the connection limits, is
/// given back at the end.
async fn serve<S: Send + 'static>(mut ws: Box<WsSession>, slot: S) {
    let reason = ws.serve().await;
    ws.session.finish(reason.code(), reason.as_str());
    ws.gw.stats.closed(reason);
    tracing::debug!(reason = reason.as_str(), "socket closed");
    drop(slot);
}

/// Writes and empties `out` (one flush); false when the peer did not take
/// it in time. With `deflate` (negotiated), deliveries go compressed (once
/// per message, for every socket) when large enough.
async fn write_all(
    conn: &mut Conn<Io>,
    out: &mut Vec<Output>,
    limit: Duration,
    deflate: Option<&Deflate>,
) -> bool {
    if out.is_empty() {
        return true;
    }
    for o in out.drain(..) {
        match o {
            Output::Frame(b) => conn.push(OpCode::Text, b),
            Output::Delivery(d) => match deflate {
                Some(deflate) => {
                    let (payload, compressed) = deflate.payload(&d);
                    if compressed {
                        deflate.stats.wrote(d.frame().len(), payload.len());
                    }
                    conn.push_frame(OpCode::Text, compressed, payload.clone());
                }
                None => conn.push(OpCode::Text, d.frame().clone()),
            },
            // The end of a frame the fan-out started: first, as it is.
            Output::Raw(b) => conn.push_raw(b),
        }
    }
    timed(limit, conn.flush()).await
}

struct WsSession {
    gw: Arc<Context>,
    shared: Arc<Shared>,
    session: Session,
    conn: Conn<Io>,
    /// A fragmented message being assembled (whether it is compressed).
    partial: Option<(OpCode, bool, BytesMut)>,
    /// Frames to write (reused).
    out: Vec<Output>,
}

/// Runs one write, giving up if the peer does not take it in time.
async fn timed<F: std::future::Future<Output = std::io::Result<()>>>(
    limit: Duration,
    f: F,
) -> bool {
    matches!(timeout(limit, f).await, Ok(Ok(())))
}

/// After our close frame: read (and discard) until the peer's close reply,
/// an error, or the linger time.
async fn linger(conn: &mut Conn<Io>) {
    let _ = timeout(CLOSE_LINGER, async {
        while let Ok(frame) = conn.read_frame().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

impl WsSession {
    /// The connection's loop; returns why it ended.
    ///
    /// What this future keeps while it waits is what every idle socket
    /// costs: the waits are the four in the `select!` below, and whatever
    /// a step does after it (handle a frame or an event, write, ping,
    /// close) runs in a boxed future of its own.
    async fn serve(&mut self) -> CloseReason {
        let gw = self.gw.clone();
        let cfg = self.shared.config.clone();
        let conn_id = self.session.id();
        let batch = Batch {
            frames: BATCH_FRAMES,
            bytes: BATCH_BYTES,
        };
        // Deadlines saturate: no configured duration can overflow them.
        let after = |d: Duration| deadline_after(Instant::now(), d);
        let mut next_ping = after(cfg.ping_interval);
        let mut pong_deadline: Option<Instant> = None;
        // At shutdown: this socket's own moment within the drain spread.
        let mut close_at: Option<Instant> = None;
        loop {
            // One timer for the heartbeat and the drain: each timer a
            // `select!` names is kept in every idle socket's task.
            let tick = pong_deadline.map_or(next_ping, |d| d.min(next_ping));
            let wake = close_at.map_or(tick, |c| c.min(tick));
            // A socket whose moment to close has come closes, however busy
            // (the timer below only fires when nothing else is ready).
            let step = if close_at.is_some_and(|c| Instant::now() >= c) {
                Step::Close(
                    close::SERVICE_RESTART,
                    "server restarting, reconnect".into(),
                    CloseReason::Shutdown,
                )
            } else {
                tokio::select! {
                    biased;
                    () = gw.shutdown.cancelled(), if close_at.is_none() => {
                        close_at = Some(after(tidings_admission::drain_offset(conn_id, cfg.drain_spread)));
                        continue;
                    }
                    // Client frames before deliveries: however busy its
                    // channels are, a client can always be heard (unsubscribe,
                    // close). Its frames are bounded by the rate limit.
                    frame = self.conn.read_frame() => match frame {
                        // Boxed: handling a request is the largest state of
                        // this loop, and keeping it out of line keeps every
                        // idle socket's task small.
                        Ok(frame) => Box::pin(self.on_frame(frame)).await,
                        Err(ReadError::Protocol(why)) => {
                            tracing::debug!(why, "closing on a protocol violation");
                            Step::Close(close::PROTOCOL_ERROR, why.into(), CloseReason::Protocol)
                        }
                        Err(ReadError::TooBig) => {
                            Step::Close(close::MESSAGE_TOO_BIG, "message too big".into(), CloseReason::TooBig)
                        }
                        Err(ReadError::Timeout) => {
                            tracing::debug!("closing on a frame not completed in time");
                            Step::Close(close::POLICY_VIOLATION, "frame not completed in time".into(), CloseReason::Protocol)
                        }
                        Err(ReadError::Io(e)) => {
                            tracing::trace!(error = %e, "read side ended");
                            return CloseReason::Client;
                        }
                    },
                    event = self.session.next_event() => {
                        // Boxed like requests: a replay may await the history.
                        match Box::pin(self.session.on_event(event, &mut self.out, batch)).await {
                            Ok(()) => Step::Write,
                            Err(End::Gone) => return CloseReason::Client,
                            Err(end) => end.into(),
                        }
                    }
                    () = sleep_until(wake) => {
                        let now = Instant::now();
                        if close_at.is_some_and(|c| now >= c) {
                            Step::Close(close::SERVICE_RESTART, "server restarting, reconnect".into(), CloseReason::Shutdown)
                        } else if pong_deadline.is_some_and(|d| now >= d) {
                            tracing::debug!("no pong in time");
                            Step::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout".into(), CloseReason::Heartbeat)
                        } else if now >= next_ping {
                            // Sent below, once the select's futures are gone
                            // (an await in here would keep them all).
                            next_ping = deadline_after(now, cfg.ping_interval);
                            if pong_deadline.is_none() {
                                pong_deadline = Some(deadline_after(now, cfg.pong_timeout));
                            }
                            Step::Ping
                        } else {
                            continue;
                        }
                    }
                }
            };
            // Whatever the session produced goes out first, in one flush.
            // Boxed like the steps below: one allocation per batch the
            // session writes (what the fan-out writes directly never comes
            // here), and the wait above stays small.
            if !self.out.is_empty() && !Box::pin(self.write_out()).await {
                // The peer stopped reading: a slow consumer.
                return CloseReason::SlowConsumer;
            }
            match step {
                Step::Write => {}
                Step::PongSeen => pong_deadline = None,
                step => {
                    if let Some(reason) = Box::pin(self.control_frame(step)).await {
                        return reason;
                    }
                }
            }
        }
    }

    /// Writes what the session produced (one flush); false when the peer
    /// did not take it in time.
    async fn write_out(&mut self) -> bool {
        let n = self.out.len() as u64;
        let limit = self.shared.config.write_timeout;
        if !write_all(
            &mut self.conn,
            &mut self.out,
            limit,
            self.shared.deflate.as_ref(),
        )
        .await
        {
            return false;
        }
        self.gw.stats.frames_out(n);
        true
    }

    /// Sends a ping, a pong or a close; `Some` when the connection ends.
    async fn control_frame(&mut self, step: Step) -> Option<CloseReason> {
        let limit = self.shared.config.write_timeout;
        let conn = &mut self.conn;
        match step {
            Step::Write | Step::PongSeen => None,
            Step::Ping => (!timed(
                limit,
                conn.send(OpCode::Ping, Bytes::from_static(b"tidings")),
            )
            .await)
                .then_some(CloseReason::SlowConsumer),
            Step::Pong(payload) => (!timed(limit, conn.send(OpCode::Pong, payload)).await)
                .then_some(CloseReason::SlowConsumer),
            Step::CloseEcho(payload) => {
                let _ = timed(limit, conn.send(OpCode::Close, payload)).await;
                Some(CloseReason::Client)
            }
            Step::Close(code, why, reason) => {
                if timed(limit, conn.close(code, &why)).await {
                    linger(conn).await;
                }
                Some(reason)
            }
        }
    }

    /// One client frame: control frames, fragments, whole messages.
    async fn on_frame(&mut self, frame: Frame) -> Step {
        let max = self.shared.config.max_message_size;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                if frame.compressed && self.shared.deflate.is_none() {
                    return Step::Close(
                        close::PROTOCOL_ERROR,
                        "reserved bits set".into(),
                        CloseReason::Protocol,
                    );
                }
                if self.partial.is_some() {
                    return Step::Close(
                        close::PROTOCOL_ERROR,
                        "new message inside a fragmented one".into(),
                        CloseReason::Protocol,
                    );
                }
                if !frame.fin {
                    // Each fragment costs a token (the whole message costs
                    // one more when complete): fragments are frames to read.
                    if let Err(Some(end)) = self.session.take_token() {
                        return end.into();
                    }
                    self.partial = Some((
                        frame.opcode,
                        frame.compressed,
                        BytesMut::from(&frame.payload[..]),
                    ));
                    return Step::Write;
                }
                self.whole(frame.opcode, frame.compressed, &frame.payload)
                    .await
            }
            OpCode::Continuation => {
                let Some((_, _, buf)) = self.partial.as_mut() else {
                    return Step::Close(
                        close::PROTOCOL_ERROR,
                        "continuation frame without a message".into(),
                        CloseReason::Protocol,
                    );
                };
                if buf.len() + frame.payload.len() > max {
                    return Step::Close(
                        close::MESSAGE_TOO_BIG,
                        "message too big".into(),
                        CloseReason::TooBig,
                    );
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    // Empty ones included: a stream of them grows nothing
                    // but still has to be read, so it is rate limited.
                    if let Err(Some(end)) = self.session.take_token() {
                        return end.into();
                    }
                    return Step::Write;
                }
                let Some((opcode, compressed, buf)) = self.partial.take() else {
                    return Step::Write;
                };
                self.whole(opcode, compressed, &buf).await
            }
            OpCode::Close => match check_close(&frame.payload) {
                Ok(()) => Step::CloseEcho(frame.payload),
                Err((code, why)) => Step::Close(code, why.into(), CloseReason::Protocol),
            },
            OpCode::Ping => {
                // Pings cost a write each: they count against the rate
                // limit like messages (over it, they go unanswered).
                match self.session.take_token() {
                    Ok(()) => Step::Pong(frame.payload),
                    Err(end) => end.map_or(Step::Write, Step::from),
                }
            }
            // Pongs count too (unsolicited ones are frames to read like any
            // other); over the limit one is still taken as an answer.
            OpCode::Pong => match self.session.take_token() {
                Err(Some(end)) => end.into(),
                _ => Step::PongSeen,
            },
        }
    }

    /// One whole client message, inflated if compressed and checked, to
    /// the session.
    async fn whole(&mut self, opcode: OpCode, compressed: bool, payload: &[u8]) -> Step {
        let inflated;
        let payload = if compressed {
            let max = self.shared.config.max_message_size;
            match deflate::inflate(payload, max) {
                Ok(bytes) => {
                    if let Some(deflate) = &self.shared.deflate {
                        deflate.stats.inflated();
                    }
                    inflated = bytes;
                    &inflated[..]
                }
                Err(InflateError::TooBig) => {
                    return Step::Close(
                        close::MESSAGE_TOO_BIG,
                        "message too big".into(),
                        CloseReason::TooBig,
                    )
                }
                Err(InflateError::Invalid) => {
                    return Step::Close(
                        close::INVALID_PAYLOAD,
                        "invalid compressed data".into(),
                        CloseReason::Protocol,
                    )
                }
            }
        } else {
            payload
        };
        if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
            return Step::Close(
                close::INVALID_PAYLOAD,
                "invalid UTF-8".into(),
                CloseReason::Protocol,
            );
        }
        self.message(opcode, payload).await
    }

    /// One whole client message, to the session.
    async fn message(&mut self, opcode: OpCode, payload: &[u8]) -> Step {
        match self
            .session
            .on_message(payload, opcode == OpCode::Binary, &mut self.out)
            .await
        {
            Ok(()) => Step::Write,
            Err(end) => end.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use crate::{serve, text_response, Gateway, TransportConfig};

    /// Durations no `Instant` can be pushed by (the heartbeat, the drain
    /// spread) must not panic a session: the socket still works.
    #[tokio::test]
    async fn huge_durations_do_not_panic_a_session() {
        let config = TransportConfig {
            ping_interval: Duration::MAX,
            pong_timeout: Duration::MAX,
            frame_timeout: Duration::MAX,
            drain_spread: Duration::MAX,
            ..TransportConfig::default()
        };
        let gateway = Gateway::builder(tidings_bridge::Bridge::in_process())
            .config(config)
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = |_req, _peer| async { text_response(http::StatusCode::NOT_FOUND, "") };
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(serve(listener, gateway, http, async move {
            stopped.cancelled().await
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // A masked ping with payload "x" (mask 0): its pong proves the
        // session runs (a panicked one drops the connection).
        s.write_all(&[0x89, 0x81, 0, 0, 0, 0, b'x']).await.unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        let pong = [0x8A, 0x01, b'x'];
        while !seen.windows(3).any(|w| w == pong) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .expect("an answer")
                .unwrap();
            assert!(
                n > 0,
                "connection dropped: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
        stop.cancel();
        drop(s);
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    }
}

#[cfg(test)]
mod idle_size {
    use super::*;

    /// The size of the future `f` returns.
    fn future_size<'a, A: 'a, F>(_: &impl FnOnce(&'a mut A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle socket's task keeps is the serving loop's future while
    /// it waits: its four waits and a few deadlines. Handling a frame or
    /// an event, writing, pinging and closing are boxed, and the session's
    /// sources are one wait. A change that puts a large state back in the
    /// loop (an unboxed write, a second wait in `next_event`) fails here
    /// before it shows in the idle-memory benchmark.
    #[test]
    fn an_idle_sockets_serving_loop_stays_small() {
        let next_event = future_size(&Session::next_event);
        let serve = future_size(&WsSession::serve);
        assert!(next_event <= 160, "Session::next_event: {next_event} bytes");
        assert!(serve <= 640, "WsSession::serve: {serve} bytes");
    }
}
