//! One WebSocket session: one task per connection.
//!
//! The task owns the connection and loops over a `select!` of what can
//! happen to a socket, in priority order: shutdown, RPC answers, deliveries
//! from its bounded mailbox (written in batches), client frames (control
//! frames and fragments here; whole messages rate limited by `rate`, then
//! answered by `requests`: subscribe, publish, ...), and the heartbeat timer. Reading is
//! cancel-safe (see `codec`), so racing it against the rest loses nothing.
//! Nothing but the RPC calls themselves runs in other tasks, and an idle
//! socket holds no buffers.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tidings_bridge::{mailbox, mailbox::Next, MailboxReceiver, Outbound};
use tidings_core::{
    protocol::{self, close, ClientFrame, ErrorCode},
    Identity,
};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::Instrument;

use crate::{
    codec::{check_close, Conn, Frame, OpCode, ReadError, BATCH_BYTES},
    config::deadline_after,
    context::Context,
    rate::{Limited, RateLimiter},
    requests::Requests,
    stats::CloseReason,
};

type Io = crate::direct::SessionIo;

/// What handling a client frame asks of the session.
enum Step {
    /// Go on; write this reply first, if any.
    Reply(Option<Bytes>),
    /// Answer the client's WebSocket ping.
    Pong(Bytes),
    /// Echo the client's close frame; the session ends.
    CloseEcho(Bytes),
    /// Close with this code; the session ends.
    Close(u16, &'static str, CloseReason),
    /// The client answered our ping.
    PongSeen,
}

/// How long a closing socket gets to send its close reply before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Most queued deliveries written in one batch (one system call).
const BATCH_FRAMES: usize = 64;

/// Runs one session to its end: completes the upgrade, then serves the
/// socket inside its tracing span. Arguments are small (shared pointers)
/// because an async function keeps its arguments for its whole life: this
/// future *is* the per-connection memory.
pub(crate) async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    gw: Arc<Context>,
    identity: Arc<Identity>,
    credentials: Arc<http::HeaderMap>,
    peer: std::net::SocketAddr,
    client_ip: std::net::IpAddr,
    slot: crate::limits::Slot,
) {
    let io = match upgrade.await {
        Ok(ws) => ws.into_inner(),
        Err(e) => {
            tracing::debug!(%peer, client = %client_ip, error = %e, "upgrade did not complete");
            return;
        }
    };
    let id = gw.bridge.next_connection_id();
    // `peer` is the TCP peer, `client` the address derived through trusted
    // proxies (the same the per-address limit counts).
    let span =
        tracing::debug_span!("conn", id, %peer, client = %client_ip, user = tracing::field::Empty);
    if let Some(user) = &identity.user {
        span.record("user", user.as_str());
    }
    // RPC calls forward the client's address (X-Forwarded-For).
    let client = std::net::SocketAddr::new(client_ip, peer.port());
    serve_socket(io, id, gw, identity, credentials, client)
        .instrument(span)
        .await;
    drop(slot);
}

async fn serve_socket(
    io: TokioIo<Upgraded>,
    id: u64,
    gw: Arc<Context>,
    identity: Arc<Identity>,
    credentials: Arc<http::HeaderMap>,
    peer: std::net::SocketAddr,
) {
    gw.stats.opened();
    tracing::debug!("socket open");
    let (mailbox, mut mailbox_rx) = mailbox(gw.config.outbound_queue, gw.config.slow_consumer);
    let mut sub = gw.bridge.subscriber_with_id(id, mailbox);
    // fastwebsockets did the handshake; framing is ours (see codec).
    let (io, read) = Io::new(io, &mailbox_rx, &gw.stats);
    let mut conn = Conn::with_read(
        io,
        read,
        gw.config.max_message_size,
        gw.config.frame_timeout,
    );
    let welcome = {
        let plan = gw.router.on_connect(&identity);
        // Join before the welcome: once a client sees `welcome`, whatever is
        // published on its channels reaches it.
        for topic in plan.topics() {
            if let Err(e) = sub.join(topic.clone()).await {
                tracing::warn!(%topic, error = %e, "join on connect is pending until the broker is back");
            }
        }
        protocol::encode_welcome(
            &id.to_string(),
            identity.user.as_deref(),
            &plan.channels,
            &plan.patterns,
        )
    };
    let reason = if timed(gw.config.write_timeout, conn.send(OpCode::Text, welcome)).await {
        gw.stats.frames_out(1);
        conn.io().write_directly(&mailbox_rx);
        let mut session = Session {
            rate: RateLimiter::new(
                gw.config.client_messages_per_sec,
                gw.config.client_message_burst,
                gw.config.rate_limit_close_after,
            ),
            requests: Requests::new(gw.clone(), identity, credentials, peer, sub),
            gw: gw.clone(),
            partial: None,
        };
        session.serve(&mut conn, &mut mailbox_rx, id).await
    } else {
        CloseReason::SlowConsumer
    };
    gw.stats.closed(reason);
    tracing::debug!(reason = reason.as_str(), "socket closed");
}

struct Session {
    gw: Arc<Context>,
    /// Subscriptions and RPC calls (see `requests`).
    requests: Requests,
    rate: RateLimiter,
    /// A fragmented message being assembled.
    partial: Option<(OpCode, BytesMut)>,
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

/// Where in the drain window connection `id` closes: spread evenly over
/// the window by a hash of the id (ids are sequential, so a multiplicative
/// hash scatters neighbours).
fn spread_offset(id: u64, window: Duration) -> Duration {
    let frac = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    Duration::try_from_secs_f64(window.as_secs_f64() * frac)
        .unwrap_or(window)
        .min(window)
}

impl Session {
    /// The session's loop; returns why it ended.
    async fn serve(
        &mut self,
        conn: &mut Conn<Io>,
        mailbox: &mut MailboxReceiver,
        conn_id: u64,
    ) -> CloseReason {
        let gw = self.gw.clone();
        let cfg = &gw.config;
        let limit = cfg.write_timeout;
        // Deadlines saturate: no configured duration can overflow them.
        let after = |d: Duration| deadline_after(Instant::now(), d);
        let mut next_ping = after(cfg.ping_interval);
        let mut pong_deadline: Option<Instant> = None;
        // At shutdown: this socket's own moment within the drain spread.
        let mut close_at: Option<Instant> = None;
        loop {
            let tick = pong_deadline.map_or(next_ping, |d| d.min(next_ping));
            let step = tokio::select! {
                biased;
                () = gw.shutdown.cancelled(), if close_at.is_none() => {
                    close_at = Some(after(spread_offset(conn_id, cfg.drain_spread)));
                    continue;
                }
                () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                    Step::Close(close::SERVICE_RESTART, "server restarting, reconnect", CloseReason::Shutdown)
                }
                reply = self.requests.next_rpc() => Step::Reply(Some(reply)),
                // Client frames before deliveries: however busy its
                // channels are, a client can always be heard (unsubscribe,
                // close). Its frames are bounded by the rate limit.
                frame = conn.read_frame() => match frame {
                    // Boxed: handling a request is the largest state of
                    // this loop, and keeping it out of line keeps every
                    // idle socket's task small.
                    Ok(frame) => Box::pin(self.on_frame(frame)).await,
                    Err(ReadError::Protocol(why)) => {
                        tracing::debug!(why, "closing on a protocol violation");
                        Step::Close(close::PROTOCOL_ERROR, why, CloseReason::Protocol)
                    }
                    Err(ReadError::TooBig) => {
                        Step::Close(close::MESSAGE_TOO_BIG, "message too big", CloseReason::TooBig)
                    }
                    Err(ReadError::Timeout) => {
                        tracing::debug!("closing on a frame not completed in time");
                        Step::Close(close::POLICY_VIOLATION, "frame not completed in time", CloseReason::Protocol)
                    }
                    Err(ReadError::Io(e)) => {
                        tracing::trace!(error = %e, "read side ended");
                        return CloseReason::Client;
                    }
                },
                next = mailbox.next() => match next {
                    Next::Item(item) => {
                        // Write this delivery and whatever else is already
                        // queued, in one batch (the shared frames are not
                        // copied).
                        let mut n = 0u64;
                        let mut item = Some(item);
                        while let Some(it) = item.take() {
                            match it {
                                Outbound::Deliver(d) => conn.push(OpCode::Text, d.frame().clone()),
                                Outbound::Notice(b) => conn.push(OpCode::Text, b),
                                Outbound::Rest(b) => conn.push_raw(b),
                            }
                            n += 1;
                            if n < BATCH_FRAMES as u64 && conn.pending() < BATCH_BYTES {
                                item = mailbox.try_next();
                            }
                        }
                        if !timed(limit, conn.flush()).await {
                            // The peer stopped reading: a slow consumer.
                            return CloseReason::SlowConsumer;
                        }
                        gw.stats.frames_out(n);
                        continue;
                    }
                    Next::Dropped(n) => Step::Reply(Some(protocol::encode_dropped(n))),
                    Next::Overflowed => Step::Close(close::SLOW_CONSUMER, "slow consumer", CloseReason::SlowConsumer),
                    Next::Closed => return CloseReason::Client,
                },
                () = sleep_until(tick) => {
                    let now = Instant::now();
                    if pong_deadline.is_some_and(|d| now >= d) {
                        tracing::debug!("no pong in time");
                        Step::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout", CloseReason::Heartbeat)
                    } else {
                        if now >= next_ping {
                            if !timed(limit, conn.send(OpCode::Ping, Bytes::from_static(b"tidings"))).await {
                                return CloseReason::SlowConsumer;
                            }
                            next_ping = deadline_after(now, cfg.ping_interval);
                            if pong_deadline.is_none() {
                                pong_deadline = Some(deadline_after(now, cfg.pong_timeout));
                            }
                        }
                        continue;
                    }
                }
            };
            match step {
                Step::Reply(None) => {}
                Step::Reply(Some(reply)) => {
                    if !timed(limit, conn.send(OpCode::Text, reply)).await {
                        return CloseReason::SlowConsumer;
                    }
                    gw.stats.frames_out(1);
                }
                Step::Pong(payload) => {
                    if !timed(limit, conn.send(OpCode::Pong, payload)).await {
                        return CloseReason::SlowConsumer;
                    }
                }
                Step::PongSeen => pong_deadline = None,
                Step::CloseEcho(payload) => {
                    let _ = timed(limit, conn.send(OpCode::Close, payload)).await;
                    return CloseReason::Client;
                }
                Step::Close(code, why, reason) => {
                    if timed(limit, conn.close(code, why)).await {
                        linger(conn).await;
                    }
                    return reason;
                }
            }
        }
    }

    /// One client frame: control frames, fragments, whole messages.
    async fn on_frame(&mut self, frame: Frame) -> Step {
        let max = self.gw.config.max_message_size;
        let invalid_utf8 = Step::Close(
            close::INVALID_PAYLOAD,
            "invalid UTF-8",
            CloseReason::Protocol,
        );
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Step::Close(
                        close::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                        CloseReason::Protocol,
                    );
                }
                if !frame.fin {
                    // Each fragment costs a token (the whole message costs
                    // one more when complete): fragments are frames to read.
                    if let Err(Some(close)) = self.rate_limit() {
                        return close;
                    }
                    self.partial = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                    return Step::Reply(None);
                }
                if frame.opcode == OpCode::Text && std::str::from_utf8(&frame.payload).is_err() {
                    return invalid_utf8;
                }
                self.handle(frame.opcode, &frame.payload).await
            }
            OpCode::Continuation => {
                let Some((_, buf)) = self.partial.as_mut() else {
                    return Step::Close(
                        close::PROTOCOL_ERROR,
                        "continuation frame without a message",
                        CloseReason::Protocol,
                    );
                };
                if buf.len() + frame.payload.len() > max {
                    return Step::Close(
                        close::MESSAGE_TOO_BIG,
                        "message too big",
                        CloseReason::TooBig,
                    );
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    // Empty ones included: a stream of them grows nothing
                    // but still has to be read, so it is rate limited.
                    if let Err(Some(close)) = self.rate_limit() {
                        return close;
                    }
                    return Step::Reply(None);
                }
                let Some((opcode, buf)) = self.partial.take() else {
                    return Step::Reply(None);
                };
                if opcode == OpCode::Text && std::str::from_utf8(&buf).is_err() {
                    return invalid_utf8;
                }
                self.handle(opcode, &buf).await
            }
            OpCode::Close => match check_close(&frame.payload) {
                Ok(()) => Step::CloseEcho(frame.payload),
                Err((code, why)) => Step::Close(code, why, CloseReason::Protocol),
            },
            OpCode::Ping => {
                // Pings cost a write each: they count against the rate
                // limit like messages (over it, they go unanswered).
                match self.rate_limit() {
                    Ok(()) => Step::Pong(frame.payload),
                    Err(step) => step.unwrap_or(Step::Reply(None)),
                }
            }
            // Pongs count too (unsolicited ones are frames to read like any
            // other); over the limit one is still taken as an answer.
            OpCode::Pong => match self.rate_limit() {
                Err(Some(close)) => close,
                _ => Step::PongSeen,
            },
        }
    }

    /// Takes a token for one client message, ping, pong or non-final
    /// fragment. `Err(None)`: over
    /// the limit, refuse this one; `Err(Some(close))`: over it too long.
    fn rate_limit(&mut self) -> Result<(), Option<Step>> {
        match self.rate.take(&self.gw.stats) {
            Ok(()) => Ok(()),
            Err(Limited::Refuse) => Err(None),
            Err(Limited::Close) => Err(Some(Step::Close(
                close::POLICY_VIOLATION,
                "rate limit exceeded",
                CloseReason::RateLimited,
            ))),
        }
    }

    /// Handles one complete client message.
    async fn handle(&mut self, opcode: OpCode, payload: &[u8]) -> Step {
        self.gw.stats.frame_in();
        if let Err(close) = self.rate_limit() {
            if let Some(close) = close {
                return close;
            }
            let id = ClientFrame::parse(payload).ok().and_then(|f| f.id);
            return Step::Reply(Some(protocol::encode_error(
                ErrorCode::RateLimited,
                &format!(
                    "at most {} messages per second",
                    self.gw.config.client_messages_per_sec
                ),
                id.as_deref(),
            )));
        }
        if opcode == OpCode::Binary {
            return Step::Reply(Some(protocol::encode_error(
                ErrorCode::BinaryUnsupported,
                "protocol v1 uses JSON text frames only",
                None,
            )));
        }
        Step::Reply(match ClientFrame::parse(payload) {
            Ok(frame) => self.requests.request(frame).await,
            Err(e) => Some(protocol::encode_error(e.code, &e.message, e.id.as_deref())),
        })
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
