//! One event stream: a task driving a [`Session`] and writing its output as
//! SSE events into the response body, through a small bounded channel (a
//! client that stops reading blocks the channel, and the stream is dropped
//! after the write timeout).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tidings_admission::Admitted;
use tidings_core::protocol::close;
use tidings_session::{Batch, CloseReason, Context, End, Output, Positions, Session};
use tokio::time::{sleep_until, timeout, Instant};

use crate::{
    config::SseConfig,
    event::{delivery_event, push_data, Positions as Ids, HEARTBEAT},
    queue::{ActionReceiver, PipeReader, PipeWriter},
    registry::Registry,
};

/// The response body of a stream: the chunks its task writes.
#[derive(Debug)]
pub(crate) struct EventBody {
    pub(crate) rx: PipeReader,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What a stream starts with, besides its admission.
pub(crate) struct Start {
    pub(crate) id: u64,
    pub(crate) token: Arc<str>,
    pub(crate) since: Positions,
    /// Channels of the `channel` query parameters, with their positions.
    pub(crate) channels: Vec<String>,
    /// Why the `Last-Event-ID` was not used, when it was not.
    pub(crate) bad_last_event_id: Option<String>,
}

/// Removes the stream from the registry when its task ends, however.
struct Registered<'a>(&'a Registry, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// Runs one stream to its end.
pub(crate) async fn run(
    ctx: Arc<Context>,
    config: Arc<SseConfig>,
    registry: Arc<Registry>,
    admitted: Admitted,
    start: Start,
    actions: ActionReceiver,
    tx: PipeWriter,
) {
    let _registered = Registered(&registry, start.id);
    ctx.stats.opened();
    tracing::debug!("event stream open");
    let client = admitted.client();
    let Admitted {
        identity,
        credentials,
        slot,
        ..
    } = admitted;
    let mut out = Vec::new();
    let mut session = Session::open_with_id(
        ctx.clone(),
        start.id,
        identity,
        credentials,
        client,
        &start.since,
        &mut out,
    )
    .await;
    let mut w = Writer {
        tx,
        buf: BytesMut::new(),
        ids: Ids::default(),
        limit: config.write_timeout,
    };
    // First the reconnection delay and the stream's own event: the
    // connection id and the secret its actions must carry.
    w.buf
        .put_slice(format!("retry: {}\n", config.retry.as_millis()).as_bytes());
    // The connection as `welcome` names it (`<gateway id>-<n>` when the
    // gateway has control hooks).
    let hello = format!(
        "{{\"type\":\"sse\",\"connection\":\"{}{}\",\"token\":\"{}\"}}",
        ctx.connection_prefix, start.id, start.token
    );
    push_data(hello.as_bytes(), &mut w.buf);
    w.outputs(&mut out);
    if let Some(why) = &start.bad_last_event_id {
        push_data(
            &tidings_core::protocol::encode_error(
                tidings_core::protocol::ErrorCode::BadRequest,
                &format!("Last-Event-ID not used, nothing recovered: {why}"),
                None,
            ),
            &mut w.buf,
        );
    }
    // The query's channels: subscribed as a client would, so the routing
    // rules decide, with the positions the reconnecting client had.
    for channel in &start.channels {
        // The reply's `id` names the query parameter it answers.
        let mut frame = serde_json::json!({
            "type": "subscribe",
            "channel": channel,
            "id": format!("channel:{channel}"),
        });
        if let Some(p) = tidings_core::ChannelName::new(channel)
            .ok()
            .and_then(|c| start.since.get(&c))
        {
            frame["offset"] = p.offset.into();
            frame["epoch"] = p.epoch.clone().into();
        }
        if let Err(end) = session
            .on_message(frame.to_string().as_bytes(), false, &mut out)
            .await
        {
            w.outputs(&mut out);
            let reason = w.end(end).await;
            finish(&ctx, &mut session, reason, slot);
            return;
        }
        w.outputs(&mut out);
    }
    drop(start);
    let reason = if w.flush().await {
        serve(&ctx, &config, &mut session, &mut w, &mut out, actions).await
    } else {
        CloseReason::SlowConsumer
    };
    finish(&ctx, &mut session, reason, slot);
}

fn finish(
    ctx: &Context,
    session: &mut Session,
    reason: CloseReason,
    slot: tidings_admission::limits::Slot,
) {
    // The gateway's hooks (the disconnect webhook) hear of it.
    session.finish(reason.code(), reason.as_str());
    ctx.stats.closed(reason);
    tracing::debug!(reason = reason.as_str(), "event stream closed");
    drop(slot);
}

/// The stream's loop; returns why it ended.
async fn serve(
    ctx: &Arc<Context>,
    config: &SseConfig,
    session: &mut Session,
    w: &mut Writer,
    out: &mut Vec<Output>,
    mut actions: ActionReceiver,
) -> CloseReason {
    let mut next_beat = Instant::now() + config.heartbeat;
    let mut close_at: Option<Instant> = None;
    let batch = Batch::default();
    loop {
        let ended = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled(), if close_at.is_none() => {
                close_at = Some(Instant::now() + tidings_admission::drain_offset(session.id(), config.drain_spread));
                continue;
            }
            () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                Err(End::Close {
                    code: close::SERVICE_RESTART,
                    text: "server restarting, reconnect".into(),
                    reason: CloseReason::Shutdown,
                })
            }
            () = w.tx.closed() => return CloseReason::Client,
            payload = actions.recv() => Box::pin(session.on_message(&payload, false, out)).await,
            event = session.next_event() => Box::pin(session.on_event(event, out, batch)).await,
            () = sleep_until(next_beat) => {
                w.buf.put_slice(HEARTBEAT);
                next_beat = Instant::now() + config.heartbeat;
                Ok(())
            }
        };
        let n = w.outputs(out);
        match ended {
            Ok(()) => {
                if !w.flush().await {
                    return CloseReason::SlowConsumer;
                }
                ctx.stats.frames_out(n);
            }
            Err(end) => return w.end(end).await,
        }
    }
}

struct Writer {
    tx: PipeWriter,
    buf: BytesMut,
    ids: Ids,
    limit: Duration,
}

impl Writer {
    /// Encodes and empties `out`: each output an event, with an `id:` when
    /// it moved the connection's positions.
    fn outputs(&mut self, out: &mut Vec<Output>) -> u64 {
        let n = out.len() as u64;
        for o in out.drain(..) {
            match o {
                Output::Delivery(d) => {
                    if self.ids.delivery(&d) {
                        self.ids.push_id(&mut self.buf);
                    }
                    self.buf.put_slice(delivery_event(&d));
                }
                Output::Frame(f) => {
                    if self.ids.frame(&f) {
                        self.ids.push_id(&mut self.buf);
                    }
                    push_data(&f, &mut self.buf);
                }
                // Only for adapters that write deliveries directly; this
                // one never turns that on.
                Output::Raw(_) => {}
            }
        }
        n
    }

    /// Writes what is buffered; false when the client did not take it in
    /// time (or is gone).
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let chunk = self.buf.split().freeze();
        matches!(timeout(self.limit, self.tx.send(chunk)).await, Ok(Ok(())))
    }

    /// Ends the stream as the session asks: a `close` event with the code
    /// (the WebSocket close code the session gave), then the end.
    async fn end(&mut self, end: End) -> CloseReason {
        match end {
            End::Gone => CloseReason::Client,
            End::Close { code, text, reason } => {
                let frame = serde_json::json!({"type": "close", "code": code, "reason": text});
                push_data(frame.to_string().as_bytes(), &mut self.buf);
                let _ = self.flush().await;
                reason
            }
        }
    }
}
