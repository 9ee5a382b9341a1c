//! One Engine.IO session's task: the heartbeat (pings every
//! `pingInterval`, a pong within `pingTimeout`), the Socket.IO packets,
//! and the `tidings_session::Session` opened at the Socket.IO connect.

use std::sync::Arc;

use bytes::Bytes;
use tidings_admission::Admitted;
use tidings_core::protocol::close;
use tidings_session::{Batch, CloseReason, Context, End, Event, Output, Positions, Session};
use tokio::{
    sync::mpsc,
    time::{sleep_until, timeout, Instant},
};

use crate::{
    config::SocketIoConfig,
    engine::{self, CLOSE, MESSAGE, NOOP, PING, PONG, UPGRADE},
    sio::{self, Packet},
    store::{Inbound, Shared, Store},
};

/// Runs one session to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    store: Arc<Store>,
    ctx: Arc<Context>,
    cfg: Arc<SocketIoConfig>,
    admitted: Admitted,
    inbound: mpsc::Receiver<Inbound>,
) {
    ctx.stats.opened();
    tracing::debug!("socket.io session open");
    let mut c = Conn {
        ctx: ctx.clone(),
        cfg,
        out: shared.out_tx.clone(),
        session: None,
        admitted: Some(admitted),
        outs: Vec::new(),
        id: ctx.bridge.next_connection_id(),
    };
    let reason = c.serve(inbound).await;
    // The gateway's hooks (the disconnect webhook) hear of it.
    if let Some(session) = c.session.as_mut() {
        session.finish(reason.code(), reason.as_str());
    }
    shared.closed.cancel();
    store.remove(&shared.sid);
    ctx.stats.closed(reason);
    tracing::debug!(reason = reason.as_str(), "socket.io session closed");
    // The admission slot goes with `c`.
    drop(c);
}

struct Conn {
    ctx: Arc<Context>,
    cfg: Arc<SocketIoConfig>,
    out: mpsc::Sender<Bytes>,
    session: Option<Session>,
    /// Until the Socket.IO connect (the slot stays with it after).
    admitted: Option<Admitted>,
    outs: Vec<Output>,
    id: u64,
}

/// What a step of the loop asks.
enum Step {
    Go,
    End(End),
    Quit(CloseReason),
}

async fn next_event(session: &mut Option<Session>) -> Event {
    match session {
        Some(s) => s.next_event().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn serve(&mut self, mut inbound: mpsc::Receiver<Inbound>) -> CloseReason {
        let cfg = self.cfg.clone();
        let ctx = self.ctx.clone();
        let connect_by = Instant::now() + cfg.connect_timeout;
        let mut next_ping = Instant::now() + cfg.ping_interval;
        let mut pong_deadline: Option<Instant> = None;
        let mut close_at: Option<Instant> = None;
        loop {
            let mut tick = pong_deadline.map_or(next_ping, |d| d.min(next_ping));
            if self.session.is_none() {
                tick = tick.min(connect_by);
            }
            let step = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled(), if close_at.is_none() => {
                    close_at = Some(Instant::now() + tidings_admission::drain_offset(self.id, cfg.drain_spread));
                    continue;
                }
                () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                    Step::End(End::Close {
                        code: close::SERVICE_RESTART,
                        text: "server restarting, reconnect".into(),
                        reason: CloseReason::Shutdown,
                    })
                }
                msg = inbound.recv() => match msg {
                    None | Some(Inbound::Gone) => Step::Quit(CloseReason::Client),
                    Some(Inbound::Packet(p)) => match p.as_bytes().first().copied() {
                        Some(PONG) => {
                            pong_deadline = None;
                            Step::Go
                        }
                        Some(PING) => {
                            // An Engine.IO 3 style client ping: answered.
                            let mut pong = p.into_bytes();
                            pong[0] = PONG;
                            if self.send(Bytes::from(pong)).await { Step::Go } else { Step::Quit(CloseReason::SlowConsumer) }
                        }
                        Some(CLOSE) => Step::Quit(CloseReason::Client),
                        Some(NOOP | UPGRADE) => Step::Go,
                        Some(MESSAGE) => Box::pin(self.message(&p[1..])).await,
                        _ => {
                            tracing::debug!("closing on a bad Engine.IO packet");
                            Step::Quit(CloseReason::Protocol)
                        }
                    },
                },
                event = next_event(&mut self.session) => {
                    let Some(s) = self.session.as_mut() else { continue };
                    match Box::pin(s.on_event(event, &mut self.outs, Batch::default())).await {
                        Ok(()) => Step::Go,
                        Err(end) => Step::End(end),
                    }
                }
                () = sleep_until(tick) => {
                    let now = Instant::now();
                    if pong_deadline.is_some_and(|d| now >= d) {
                        tracing::debug!("no pong in time");
                        Step::Quit(CloseReason::Heartbeat)
                    } else if self.session.is_none() && now >= connect_by {
                        tracing::debug!("no Socket.IO connect in time");
                        Step::Quit(CloseReason::Protocol)
                    } else {
                        if now >= next_ping {
                            if !self.send(engine::packet(PING)).await {
                                return CloseReason::SlowConsumer;
                            }
                            next_ping = now + cfg.ping_interval;
                            if pong_deadline.is_none() {
                                pong_deadline = Some(now + cfg.ping_timeout);
                            }
                        }
                        continue;
                    }
                }
            };
            if !self.flush().await {
                return CloseReason::SlowConsumer;
            }
            match step {
                Step::Go => {}
                Step::Quit(reason) => {
                    let _ = self.send(engine::packet(CLOSE)).await;
                    return reason;
                }
                Step::End(End::Gone) => return CloseReason::Client,
                Step::End(End::Close { code, text, reason }) => {
                    let frame = serde_json::json!({"type": "close", "code": code, "reason": text});
                    let _ = self
                        .send(sio::frame_packet(&cfg, frame.to_string().as_bytes()))
                        .await;
                    if code != close::SERVICE_RESTART && code != close::GOING_AWAY {
                        // A server disconnect: the client does not come
                        // back by itself.
                        let _ = self.send(Bytes::from_static(b"41")).await;
                    }
                    let _ = self.send(engine::packet(CLOSE)).await;
                    return reason;
                }
            }
        }
    }

    /// One Socket.IO packet.
    async fn message(&mut self, data: &str) -> Step {
        let packet = match sio::parse(data) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(why, "closing on a bad Socket.IO packet");
                return Step::Quit(CloseReason::Protocol);
            }
        };
        match packet {
            Packet::Connect(ns) if ns == "/" => {
                if self.session.is_some() {
                    return Step::Go;
                }
                let Some(a) = self.admitted.as_ref() else {
                    return Step::Go;
                };
                let mut outs = Vec::new();
                let session = Session::open_with_id(
                    self.ctx.clone(),
                    self.id,
                    a.identity.clone(),
                    a.credentials.clone(),
                    a.client(),
                    &Positions::new(),
                    &mut outs,
                )
                .await;
                self.session = Some(session);
                if !self
                    .send(Bytes::from(format!("40{{\"sid\":\"{}\"}}", self.id)))
                    .await
                {
                    return Step::Quit(CloseReason::SlowConsumer);
                }
                self.outs.extend(outs);
                Step::Go
            }
            Packet::Connect(ns) => {
                let refusal = format!(
                    "44{},{{\"message\":\"Invalid namespace\"}}",
                    ns.replace([',', '"', '\\'], "")
                );
                if self.send(Bytes::from(refusal)).await {
                    Step::Go
                } else {
                    Step::Quit(CloseReason::SlowConsumer)
                }
            }
            Packet::Disconnect(ns) if ns == "/" => Step::Quit(CloseReason::Client),
            Packet::Disconnect(_) | Packet::Ack => Step::Go,
            Packet::Event {
                ns,
                ack,
                name,
                args,
            } => {
                let Some(session) = self.session.as_mut() else {
                    return Step::Go;
                };
                if ns != "/" {
                    return Step::Go;
                }
                match sio::request(&name, &args, ack) {
                    Ok(frame) => match session.on_message(&frame, false, &mut self.outs).await {
                        Ok(()) => Step::Go,
                        Err(end) => Step::End(end),
                    },
                    Err(error) => {
                        self.outs.push(Output::Frame(error));
                        Step::Go
                    }
                }
            }
        }
    }

    /// Sends one packet; false when the client does not take it in time.
    async fn send(&self, packet: Bytes) -> bool {
        matches!(
            timeout(self.cfg.write_timeout, self.out.send(packet)).await,
            Ok(Ok(()))
        )
    }

    /// Sends what the session produced.
    async fn flush(&mut self) -> bool {
        let n = self.outs.len() as u64;
        let outs = std::mem::take(&mut self.outs);
        for o in &outs {
            let packet = match o {
                Output::Delivery(d) => sio::delivery_event(&self.cfg, d).clone(),
                Output::Frame(f) => sio::frame_packet(&self.cfg, f),
                // Only for adapters that write deliveries directly; this
                // one never turns that on.
                Output::Raw(_) => continue,
            };
            if !self.send(packet).await {
                return false;
            }
        }
        self.outs = outs;
        self.outs.clear();
        if n > 0 {
            self.ctx.stats.frames_out(n);
        }
        true
    }
}
