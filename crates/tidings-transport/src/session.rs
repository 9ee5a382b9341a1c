//! One WebSocket session: a reader task and a writer task around a bounded
//! outbound queue.
//!
//! - The **reader** owns the read half and the socket's [`Subscriber`]. It
//!   assembles fragmented messages (enforcing the total size limit itself),
//!   answers requests, and forwards the pong and close replies the WebSocket
//!   layer owes the peer to the writer. `read_frame` is not cancel-safe, so it
//!   is never raced in a `select!`: the reader runs until the socket ends and
//!   is aborted when the writer is done.
//! - The **writer** owns the write half. It writes control replies first,
//!   then deliveries from the mailbox, pings on schedule, and closes the
//!   socket on heartbeat timeout, overflow or shutdown.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use fastwebsockets::WebSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tidings_bridge::{mailbox, mailbox::Next, MailboxReceiver, Outbound, Subscriber};
use tidings_core::{
    protocol::{self, close, ClientFrame, ErrorCode, Request, SenderEnvelope},
    Identity, Message, Topic,
};
use tidings_routing::Denied;
use tokio::{
    io::{ReadHalf, WriteHalf},
    sync::mpsc,
    time::{sleep_until, timeout, Instant},
};
use tracing::Instrument;

use serde_json::value::RawValue;

use crate::{
    codec::{check_close, FrameReader, FrameWriter, OpCode, ReadError, BATCH_BYTES},
    rpc::{RpcCall, RpcError},
    server::Inner,
    stats::CloseReason,
};

type Io = TokioIo<Upgraded>;

/// What the reader asks of the writer.
enum Control {
    /// A reply frame for this socket (welcome, ack, error, pong).
    Text(Bytes),
    /// The WebSocket pong owed for a client ping.
    Pong(Bytes),
    /// The echo of the client's close frame; the session ends after it.
    CloseEcho(Bytes),
    /// Close the socket with this code.
    Close(u16, &'static str, CloseReason),
    /// The client answered our ping.
    PongSeen,
}

/// How long a closing socket gets to send its close reply before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Room for replies between reader and writer.
const CONTROL_QUEUE: usize = 32;

/// Runs one session to its end.
pub(crate) async fn run(
    ws: WebSocket<Io>,
    gw: Arc<Inner>,
    identity: Identity,
    credentials: http::HeaderMap,
    peer: std::net::SocketAddr,
) {
    let (mailbox, mailbox_rx) = mailbox(gw.config.outbound_queue, gw.config.slow_consumer);
    let sub = gw.bridge.subscriber(mailbox);
    let conn_id = sub.id();
    let span = tracing::debug_span!("conn", id = sub.id(), %peer, user = tracing::field::Empty);
    if let Some(user) = &identity.user {
        span.record("user", user.as_str());
    }
    async move {
        gw.stats.opened();
        tracing::debug!("socket open");
        // fastwebsockets did the handshake; framing is ours (see codec).
        let (rd, wr) = tokio::io::split(ws.into_inner());
        let rd = FrameReader::new(rd, gw.config.max_message_size);
        let wr = FrameWriter::new(wr);

        let (ctrl_tx, ctrl_rx) = mpsc::channel(CONTROL_QUEUE);
        let plan = gw.router.on_connect(&identity);
        // Join before the welcome: once a client sees `welcome`, whatever is
        // published on its channels reaches it.
        let mut sub = sub;
        for topic in plan.topics() {
            if let Err(e) = sub.join(topic.clone()).await {
                tracing::warn!(%topic, error = %e, "join on connect is pending until the broker is back");
            }
        }
        let welcome = protocol::encode_welcome(
            &sub.id().to_string(),
            identity.user.as_deref(),
            &plan.channels,
            &plan.patterns,
        );
        // The writer sends control frames first, so the welcome precedes
        // every delivery.
        let _ = ctrl_tx.try_send(Control::Text(welcome));

        let reader = tokio::spawn(
            Reader {
                rate: TokenBucket::new(
                    gw.config.client_messages_per_sec,
                    gw.config.client_message_burst,
                ),
                rpc_in_flight: Arc::new(AtomicUsize::new(0)),
                gw: gw.clone(),
                identity: Arc::new(identity),
                credentials: Arc::new(credentials),
                peer,
                sub,
                ctrl: ctrl_tx,
                limited_in_a_row: 0,
            }
            .run(rd)
            .in_current_span(),
        );
        let mut reader = AbortOnDrop(reader);
        let reason = write_loop(wr, ctrl_rx, mailbox_rx, &gw, conn_id).await;
        // Let the peer answer our close frame, then tear down.
        let _ = timeout(CLOSE_LINGER, &mut reader.0).await;
        drop(reader);
        gw.stats.closed(reason);
        tracing::debug!(reason = reason.as_str(), "socket closed");
    }
    .instrument(span)
    .await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reader {
    gw: Arc<Inner>,
    identity: Arc<Identity>,
    /// What RPC calls forward (empty unless RPC is on).
    credentials: Arc<http::HeaderMap>,
    peer: std::net::SocketAddr,
    sub: Subscriber,
    ctrl: mpsc::Sender<Control>,
    rate: TokenBucket,
    limited_in_a_row: u32,
    rpc_in_flight: Arc<AtomicUsize>,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Reader {
    async fn run(mut self, mut rd: FrameReader<ReadHalf<Io>>) {
        let max = self.gw.config.max_message_size;
        let mut partial: Option<(OpCode, BytesMut)> = None;
        let violation = |why| Control::Close(close::PROTOCOL_ERROR, why, CloseReason::Protocol);
        loop {
            let frame = match rd.read_frame().await {
                Ok(frame) => frame,
                Err(ReadError::Protocol(why)) => {
                    tracing::debug!(why, "closing on a protocol violation");
                    let _ = self.ctrl.send(violation(why)).await;
                    return;
                }
                Err(ReadError::TooBig) => {
                    let _ = self
                        .ctrl
                        .send(Control::Close(
                            close::MESSAGE_TOO_BIG,
                            "message too big",
                            CloseReason::TooBig,
                        ))
                        .await;
                    return;
                }
                Err(ReadError::Io(e)) => {
                    tracing::trace!(error = %e, "read side ended");
                    return;
                }
            };
            match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        let _ = self
                            .ctrl
                            .send(violation("new message inside a fragmented one"))
                            .await;
                        return;
                    }
                    if frame.fin {
                        if frame.opcode == OpCode::Text
                            && std::str::from_utf8(&frame.payload).is_err()
                        {
                            let _ = self
                                .ctrl
                                .send(Control::Close(
                                    close::INVALID_PAYLOAD,
                                    "invalid UTF-8",
                                    CloseReason::Protocol,
                                ))
                                .await;
                            return;
                        }
                        if !self.handle(frame.opcode, &frame.payload).await {
                            return;
                        }
                    } else {
                        partial = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                    }
                }
                OpCode::Continuation => {
                    let Some((_, buf)) = partial.as_mut() else {
                        let _ = self
                            .ctrl
                            .send(violation("continuation frame without a message"))
                            .await;
                        return;
                    };
                    if buf.len() + frame.payload.len() > max {
                        let _ = self
                            .ctrl
                            .send(Control::Close(
                                close::MESSAGE_TOO_BIG,
                                "message too big",
                                CloseReason::TooBig,
                            ))
                            .await;
                        return;
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let Some((opcode, buf)) = partial.take() else {
                            return;
                        };
                        if opcode == OpCode::Text && std::str::from_utf8(&buf).is_err() {
                            let _ = self
                                .ctrl
                                .send(Control::Close(
                                    close::INVALID_PAYLOAD,
                                    "invalid UTF-8",
                                    CloseReason::Protocol,
                                ))
                                .await;
                            return;
                        }
                        if !self.handle(opcode, &buf).await {
                            return;
                        }
                    }
                }
                OpCode::Close => {
                    let reply = match check_close(&frame.payload) {
                        Ok(()) => Control::CloseEcho(frame.payload),
                        Err((code, why)) => Control::Close(code, why, CloseReason::Protocol),
                    };
                    let _ = self.ctrl.send(reply).await;
                    return;
                }
                OpCode::Ping => {
                    if self.ctrl.send(Control::Pong(frame.payload)).await.is_err() {
                        return;
                    }
                }
                OpCode::Pong => {
                    if self.ctrl.send(Control::PongSeen).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one complete client message. Returns `false` when the writer
    /// is gone and the session is over.
    async fn handle(&mut self, opcode: OpCode, payload: &[u8]) -> bool {
        self.gw.stats.frame_in();
        if !self.rate.take() {
            self.gw.stats.rate_limited();
            self.limited_in_a_row += 1;
            if self.limited_in_a_row >= self.gw.config.rate_limit_close_after {
                let _ = self
                    .ctrl
                    .send(Control::Close(
                        close::POLICY_VIOLATION,
                        "rate limit exceeded",
                        CloseReason::RateLimited,
                    ))
                    .await;
                return false;
            }
            let id = ClientFrame::parse(payload).ok().and_then(|f| f.id);
            let reply = protocol::encode_error(
                ErrorCode::RateLimited,
                &format!(
                    "at most {} messages per second",
                    self.gw.config.client_messages_per_sec
                ),
                id.as_deref(),
            );
            return self.ctrl.send(Control::Text(reply)).await.is_ok();
        }
        self.limited_in_a_row = 0;
        let reply = if opcode == OpCode::Binary {
            protocol::encode_error(
                ErrorCode::BinaryUnsupported,
                "protocol v1 uses JSON text frames only",
                None,
            )
        } else {
            match ClientFrame::parse(payload) {
                Ok(frame) => match self.request(frame).await {
                    Some(reply) => reply,
                    // Answered later (RPC).
                    None => return true,
                },
                Err(e) => protocol::encode_error(e.code, &e.message, e.id.as_deref()),
            }
        };
        self.ctrl.send(Control::Text(reply)).await.is_ok()
    }

    /// Starts an RPC call in its own task; its answer goes to the writer
    /// when it comes, so deliveries never wait for the backend.
    fn rpc(
        &mut self,
        id: Option<Box<RawValue>>,
        method: String,
        path: String,
        data: Option<Box<RawValue>>,
    ) -> Option<Bytes> {
        let Some(handler) = self.gw.rpc.clone() else {
            return Some(protocol::encode_error(
                ErrorCode::RpcDisabled,
                "rpc is not enabled on this gateway",
                id.as_deref(),
            ));
        };
        let limit = handler.max_in_flight();
        if self.rpc_in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.rpc_in_flight.fetch_sub(1, Ordering::AcqRel);
            return Some(protocol::encode_error(
                ErrorCode::TooManyRequests,
                &format!("at most {limit} rpc calls in flight per socket"),
                id.as_deref(),
            ));
        }
        let in_flight = self.rpc_in_flight.clone();
        let identity = self.identity.clone();
        let credentials = self.credentials.clone();
        let peer = self.peer;
        let ctrl = self.ctrl.clone();
        let stats = self.gw.stats.clone();
        tokio::spawn(
            async move {
                let call = RpcCall {
                    method: &method,
                    path: &path,
                    body: data.map(|d| Bytes::from(String::from(Box::<str>::from(d)))),
                    identity: &identity,
                    credentials: &credentials,
                    peer,
                };
                let result = handler.call(call).await;
                stats.rpc(result.is_ok());
                let reply = match result {
                    Ok(r) => protocol::encode_rpc_result(id.as_deref(), r.status, &r.body),
                    Err(e) => {
                        let code = match e {
                            RpcError::Forbidden(_) => ErrorCode::Forbidden,
                            RpcError::Timeout(_) => ErrorCode::RpcTimeout,
                            RpcError::Unavailable => ErrorCode::RpcUnavailable,
                        };
                        protocol::encode_error(code, &e.to_string(), id.as_deref())
                    }
                };
                in_flight.fetch_sub(1, Ordering::AcqRel);
                let _ = ctrl.send(Control::Text(reply)).await;
            }
            .in_current_span(),
        );
        None
    }

    async fn request(&mut self, frame: ClientFrame) -> Option<Bytes> {
        if let Request::Rpc { method, path, data } = frame.request {
            return self.rpc(frame.id, method, path, data);
        }
        Some(self.reply(frame).await)
    }

    async fn reply(&mut self, frame: ClientFrame) -> Bytes {
        let id = frame.id.as_deref();
        let gw = &self.gw;
        let denied = |d: Denied, what: &str| match d {
            Denied::InvalidChannel(e) => {
                protocol::encode_error(ErrorCode::InvalidChannel, &e.to_string(), id)
            }
            Denied::NotAllowed => protocol::encode_error(
                ErrorCode::Forbidden,
                &format!("not allowed to {what} this channel"),
                id,
            ),
        };
        match frame.request {
            Request::Subscribe { channel } => {
                let name = match gw.router.may_subscribe(&self.identity, &channel) {
                    Ok(name) => name,
                    Err(d) => return denied(d, "subscribe to"),
                };
                let topic = Topic::Channel(name);
                if !self.sub.contains(&topic) && self.sub.len() >= gw.config.max_subscriptions {
                    return protocol::encode_error(
                        ErrorCode::TooManySubscriptions,
                        &format!(
                            "at most {} subscriptions per socket",
                            gw.config.max_subscriptions
                        ),
                        id,
                    );
                }
                match self.sub.subscribe(topic).await {
                    Ok(()) => protocol::encode_ack("subscribed", &channel, id),
                    Err(e) => {
                        protocol::encode_error(ErrorCode::BrokerUnavailable, &e.to_string(), id)
                    }
                }
            }
            Request::Unsubscribe { channel } => match tidings_core::ChannelName::new(&channel) {
                Ok(name) => {
                    self.sub.unsubscribe(&Topic::Channel(name));
                    protocol::encode_ack("unsubscribed", &channel, id)
                }
                Err(e) => protocol::encode_error(ErrorCode::InvalidChannel, &e.to_string(), id),
            },
            Request::Publish { channel, data } => {
                let name = match gw.router.may_publish(&self.identity, &channel) {
                    Ok(name) => name,
                    Err(d) => return denied(d, "publish on"),
                };
                // Stamped with the sender; the client cannot forge it.
                let payload = SenderEnvelope::wrap(self.identity.user.as_deref(), &data);
                match gw.bridge.publish(Message::new(name, payload)).await {
                    Ok(()) => protocol::encode_ack("published", &channel, id),
                    Err(e) => {
                        protocol::encode_error(ErrorCode::BrokerUnavailable, &e.to_string(), id)
                    }
                }
            }
            Request::Ping => protocol::encode_pong(id),
            Request::Rpc { .. } => {
                protocol::encode_error(ErrorCode::Internal, "rpc is answered apart", id)
            }
        }
    }
}

/// Runs one write, giving up if the peer does not take it in time.
async fn timed<F: std::future::Future<Output = std::io::Result<()>>>(
    limit: Duration,
    f: F,
) -> bool {
    matches!(timeout(limit, f).await, Ok(Ok(())))
}

/// Most queued deliveries written in one batch (one system call).
const BATCH_FRAMES: usize = 64;

/// Where in the drain window connection `id` closes: spread evenly over
/// the window by a hash of the id (ids are sequential, so a multiplicative
/// hash scatters neighbours).
fn spread_offset(id: u64, window: Duration) -> Duration {
    let frac = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(frac)
}

async fn write_loop(
    mut wr: FrameWriter<WriteHalf<Io>>,
    mut ctrl: mpsc::Receiver<Control>,
    mut mailbox: MailboxReceiver,
    gw: &Inner,
    conn_id: u64,
) -> CloseReason {
    let cfg = &gw.config;
    let limit = cfg.write_timeout;
    let mut next_ping = Instant::now() + cfg.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    // At shutdown: this socket's own moment within the drain spread.
    let mut close_at: Option<Instant> = None;
    macro_rules! close {
        ($code:expr, $why:expr, $reason:expr) => {{
            let _ = timed(limit, wr.close($code, $why)).await;
            return $reason;
        }};
    }
    macro_rules! text {
        ($bytes:expr) => {{
            if !timed(limit, wr.send(OpCode::Text, &$bytes[..])).await {
                // The peer stopped reading: a slow consumer.
                return CloseReason::SlowConsumer;
            }
            gw.stats.frames_out(1);
        }};
    }
    loop {
        tokio::select! {
            biased;
            () = gw.shutdown.cancelled(), if close_at.is_none() => {
                let at = Instant::now() + spread_offset(conn_id, cfg.drain_spread);
                close_at = Some(at);
            }
            () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                close!(close::SERVICE_RESTART, "server restarting, reconnect", CloseReason::Shutdown)
            }
            c = ctrl.recv() => match c {
                Some(Control::Text(b)) => text!(b),
                Some(Control::Pong(p)) => {
                    if !timed(limit, wr.send(OpCode::Pong, &p)).await {
                        return CloseReason::SlowConsumer;
                    }
                }
                Some(Control::CloseEcho(p)) => {
                    let _ = timed(limit, async {
                        wr.send(OpCode::Close, &p).await?;
                        Ok(())
                    })
                    .await;
                    return CloseReason::Client;
                }
                Some(Control::Close(code, why, reason)) => close!(code, why, reason),
                Some(Control::PongSeen) => pong_deadline = None,
                None => return CloseReason::Client,
            },
            next = mailbox.next() => match next {
                Next::Item(item) => {
                    // Write this delivery and whatever else is already
                    // queued, in one batch.
                    let mut n = 0u64;
                    let mut item = Some(item);
                    let mut ok = true;
                    while let Some(it) = item.take() {
                        let bytes = match &it {
                            Outbound::Deliver(d) => d.frame().clone(),
                            Outbound::Notice(b) => b.clone(),
                        };
                        if !timed(limit, wr.push(OpCode::Text, &bytes)).await {
                            ok = false;
                            break;
                        }
                        n += 1;
                        if n < BATCH_FRAMES as u64 && wr.pending() < BATCH_BYTES {
                            item = mailbox.try_next();
                        }
                    }
                    if !ok || !timed(limit, wr.flush()).await {
                        return CloseReason::SlowConsumer;
                    }
                    gw.stats.frames_out(n);
                }
                Next::Dropped(n) => text!(protocol::encode_dropped(n)),
                Next::Overflowed => close!(close::SLOW_CONSUMER, "slow consumer", CloseReason::SlowConsumer),
                Next::Closed => return CloseReason::Client,
            },
            () = sleep_until(pong_deadline.map_or(next_ping, |d| d.min(next_ping))) => {
                if pong_deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::debug!("no pong in time");
                    close!(close::HEARTBEAT_TIMEOUT, "heartbeat timeout", CloseReason::Heartbeat);
                }
                if Instant::now() >= next_ping {
                    if !timed(limit, wr.send(OpCode::Ping, b"tidings")).await {
                        return CloseReason::SlowConsumer;
                    }
                    let now = Instant::now();
                    next_ping = now + cfg.ping_interval;
                    if pong_deadline.is_none() {
                        pong_deadline = Some(now + cfg.pong_timeout);
                    }
                }
            }
        }
    }
}
