//! One connection's session, whatever its wire format.
//!
//! A wire adapter (WebSocket, Server-Sent Events, ...) owns the socket and
//! its framing, and drives a [`Session`]: it hands over each whole client
//! message ([`Session::on_message`]), waits for the next thing to send
//! ([`Session::next_event`], cancel-safe, to race against its reads and
//! timers) and lets the session turn it into frames
//! ([`Session::on_event`]). The session owns everything else: the
//! subscriptions and the bounded mailbox, the rate limit, the routing
//! checks, RPC calls, and the seam between history replay and live
//! messages. Its output is protocol v1 frames ([`Output::Frame`], for this
//! connection alone) and shared deliveries ([`Output::Delivery`], encoded
//! once per message for every recipient); the adapter writes them in its
//! own framing.

use std::{any::Any, borrow::Cow, collections::HashMap, sync::Arc};

use bytes::Bytes;
use tidings_bridge::{mailbox, mailbox::Next, GapNotice, MailboxReceiver, Outbound, Subscriber};
use tidings_core::{
    protocol::{self, close, ClientFrame, ErrorCode, PositionReport},
    ChannelName, Delivery, Identity, Topic,
};
use tidings_history::StreamPosition;

use crate::{
    context::Context,
    control::{ControlHandle, ControlRequest, SessionInfo},
    rate::{Limited, RateLimiter},
    recovery::{From, Verdict},
    requests::Requests,
    stats::CloseReason,
};

/// Something for the adapter to write.
#[derive(Debug, Clone)]
pub enum Output {
    /// A protocol v1 frame for this connection alone (a reply, a notice, a
    /// replayed message).
    Frame(Bytes),
    /// A live message, shared with every recipient: its protocol v1 frame
    /// is [`Delivery::frame`]; an adapter with another encoding encodes it
    /// once per message, not per connection.
    Delivery(Arc<Delivery>),
    /// Bytes already framed for the wire, to write as they are before
    /// anything else: the end of a frame the adapter's direct writer (see
    /// `tidings_bridge::DirectWrite`) could not finish. Only an adapter
    /// that turned direct writes on gets these.
    Raw(Bytes),
}

impl Output {
    /// The protocol v1 frame.
    pub fn frame(&self) -> &Bytes {
        match self {
            Self::Frame(b) | Self::Raw(b) => b,
            Self::Delivery(d) => d.frame(),
        }
    }
}

/// How a session ends, when it is the session that ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Close the connection with this close code and text (WebSocket close
    /// codes; other wire formats map them).
    Close {
        /// The close code (see `protocol::close`).
        code: u16,
        /// The close text (the backend's own when it disconnects).
        text: Cow<'static, str>,
        /// What the counters record.
        reason: CloseReason,
    },
    /// Nothing more can come (the bridge is gone): end quietly.
    Gone,
}

/// Something that happened to a session while the adapter was waiting: see
/// [`Session::next_event`].
#[derive(Debug)]
pub struct Event(EventKind);

#[derive(Debug)]
enum EventKind {
    Rpc(Bytes),
    Mailbox(Next),
    Control(ControlRequest),
}

/// Client positions sent on connect: channel -> last position. See
/// [`parse_positions`].
pub type Positions = HashMap<ChannelName, StreamPosition>;

/// Most frames and bytes one [`Session::on_event`] hands out (the adapter's
/// write batch).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Most queued deliveries taken at once.
    pub frames: usize,
    /// Stop taking more once this many bytes are out.
    pub bytes: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            frames: 64,
            bytes: 64 * 1024,
        }
    }
}

/// One connection's session. See the [module docs](self).
pub struct Session {
    ctx: Arc<Context>,
    id: u64,
    requests: Requests,
    mailbox: MailboxReceiver,
    rate: RateLimiter,
    /// The backend's requests, when the gateway has hooks.
    control: Option<Control>,
}

/// A session's side of the gateway's hooks.
struct Control {
    info: SessionInfo,
    requests: crate::control::Receiver,
    /// What the hooks keep for the session's life (dropped at its end).
    _guard: Box<dyn Any + Send + Sync>,
    /// Set when the backend disconnected it.
    ended_by_backend: Option<Box<(u16, String)>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// Opens a session for an admitted connection: joins the channels its
    /// identity joins on connect, recovers those the client sent a position
    /// for (`since`), and appends the `welcome` frame and the replay to
    /// `out`. Once the client has the welcome, whatever is published on
    /// its channels reaches it.
    pub async fn open(
        ctx: Arc<Context>,
        identity: Arc<Identity>,
        credentials: Arc<http::HeaderMap>,
        peer: std::net::SocketAddr,
        since: &Positions,
        out: &mut Vec<Output>,
    ) -> Self {
        let id = ctx.bridge.next_connection_id();
        Self::open_with_id(ctx, id, identity, credentials, peer, since, out).await
    }

    /// [`Session::open`] with a connection id the adapter already took from
    /// [`Bridge::next_connection_id`](tidings_bridge::Bridge::next_connection_id)
    /// (for its logs).
    pub async fn open_with_id(
        ctx: Arc<Context>,
        id: u64,
        identity: Arc<Identity>,
        credentials: Arc<http::HeaderMap>,
        peer: std::net::SocketAddr,
        since: &Positions,
        out: &mut Vec<Output>,
    ) -> Self {
        let (mailbox_tx, mailbox) = mailbox(ctx.config.outbound_queue, ctx.config.slow_consumer);
        let sub = ctx.bridge.subscriber_with_id(id, mailbox_tx);
        // The id clients and the backend know it by (`welcome`'s `id`).
        let conn: Arc<str> = format!("{}{id}", ctx.connection_prefix).into();
        let control = ctx.hooks.as_ref().map(|hooks| {
            let info = SessionInfo {
                id,
                conn: conn.clone(),
                identity: identity.clone(),
            };
            let (handle, rx): (ControlHandle, _) = ControlHandle::pair(mailbox.waker());
            let guard = hooks.opened(&info, handle);
            Control {
                info,
                requests: rx,
                _guard: guard,
                ended_by_backend: None,
            }
        });
        let mut requests = Requests::new(
            ctx.clone(),
            identity.clone(),
            credentials,
            peer,
            sub,
            mailbox.gate(),
            conn,
        );
        let plan = ctx.router.on_connect(&identity);
        // Join before the welcome (and before any replay): once a client
        // sees `welcome`, whatever is published on its channels reaches it.
        join_all(requests.subscriber(), plan.topics()).await;
        for channel in &plan.channels {
            requests.notify(channel, true);
        }
        let mut replay = Vec::new();
        let mut reports = Vec::new();
        for channel in &plan.channels {
            let from = since
                .get(channel)
                .map_or(From::Now, |p| From::Position(p.clone()));
            if let Some(report) = requests
                .followers
                .start(&ctx, channel, from, &mut replay)
                .await
            {
                reports.push((channel, report));
            }
        }
        let positions: Vec<(&ChannelName, PositionReport<'_>)> =
            reports.iter().map(|(c, r)| (*c, r.as_protocol())).collect();
        out.push(Output::Frame(protocol::encode_welcome(
            &requests.conn,
            identity.user.as_deref(),
            &plan.channels,
            &plan.patterns,
            ctx.bridge.history().is_some(),
            &positions,
        )));
        out.extend(replay.into_iter().map(Output::Frame));
        let rate = RateLimiter::new(
            ctx.config.client_messages_per_sec,
            ctx.config.client_message_burst,
            ctx.config.rate_limit_close_after,
        );
        Self {
            ctx,
            id,
            requests,
            mailbox,
            rate,
            control,
        }
    }

    /// Tells the gateway's hooks the session ended (for the webhooks);
    /// `code` and `reason` are what the adapter closed with, unless the
    /// backend disconnected it. Call it once, at the end.
    pub fn finish(&mut self, code: u16, reason: &str) {
        let (Some(hooks), Some(control)) = (self.ctx.hooks.as_ref(), self.control.as_ref()) else {
            return;
        };
        match control.ended_by_backend.as_deref() {
            Some((code, reason)) => hooks.closed(&control.info, *code, reason),
            None => hooks.closed(&control.info, code, reason),
        }
    }

    /// The connection id (as in `welcome`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection's mailbox: an adapter that writes deliveries to its
    /// socket directly from the fan-out registers its writer here
    /// ([`MailboxReceiver::write_directly`]); deliveries the session must
    /// see first (recovery, `exclude`) are never written directly.
    pub fn mailbox(&self) -> &MailboxReceiver {
        &self.mailbox
    }

    /// The gateway context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Waits for the next thing to send: an RPC answer, a request of the
    /// backend, or the mailbox's next item. Cancel-safe: race it against
    /// reads and timers, then pass what it gives to [`Session::on_event`].
    ///
    /// One wait whatever the source: answers and requests wake the session
    /// through its mailbox ([`MailboxReceiver::next_or_woken`]), so what an
    /// idle socket keeps for this is one small future.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(reply) = self.requests.try_rpc() {
                return Event(EventKind::Rpc(reply));
            }
            if let Some(request) = self.control.as_mut().and_then(|c| c.requests.try_recv()) {
                return Event(EventKind::Control(request));
            }
            if let Some(next) = self.mailbox.next_or_woken().await {
                return Event(EventKind::Mailbox(next));
            }
        }
    }

    /// Turns an event into frames, appended to `out`: an RPC answer, or
    /// the mailbox's item with whatever else is already queued (up to
    /// `batch`), holes filled from the history and replayed duplicates
    /// skipped. `Err`: the session must end.
    pub async fn on_event(
        &mut self,
        event: Event,
        out: &mut Vec<Output>,
        batch: Batch,
    ) -> Result<(), End> {
        match event.0 {
            EventKind::Rpc(reply) => out.push(Output::Frame(reply)),
            EventKind::Control(request) => return self.control(request, out).await,
            EventKind::Mailbox(Next::Item(item)) => {
                let mut bytes = 0usize;
                let mut taken = 0usize;
                let mut item = Some(item);
                while let Some(it) = item.take() {
                    taken += 1;
                    let before = out.len();
                    self.outbound(it, out).await;
                    bytes += out[before..].iter().map(|o| o.frame().len()).sum::<usize>();
                    if taken < batch.frames && bytes < batch.bytes {
                        item = self.mailbox.try_next();
                    }
                }
            }
            EventKind::Mailbox(Next::Dropped(n)) => {
                out.push(Output::Frame(protocol::encode_dropped(n)));
            }
            EventKind::Mailbox(Next::Overflowed) => {
                return Err(End::Close {
                    code: close::SLOW_CONSUMER,
                    text: Cow::Borrowed("slow consumer"),
                    reason: CloseReason::SlowConsumer,
                })
            }
            EventKind::Mailbox(Next::Closed) => return Err(End::Gone),
        }
        Ok(())
    }

    /// A request of the backend.
    async fn control(&mut self, request: ControlRequest, out: &mut Vec<Output>) -> Result<(), End> {
        match request {
            ControlRequest::Disconnect { code, reason } => {
                if let Some(c) = self.control.as_mut() {
                    c.ended_by_backend = Some(Box::new((code, reason.clone())));
                }
                Err(End::Close {
                    code,
                    text: Cow::Owned(reason),
                    reason: CloseReason::Backend,
                })
            }
            ControlRequest::Subscribe(channel) => {
                if let Some(frame) = self.requests.server_subscribe(channel).await {
                    out.push(Output::Frame(frame));
                }
                Ok(())
            }
            ControlRequest::Unsubscribe(channel) => {
                if let Some(frame) = self.requests.server_unsubscribe(&channel) {
                    out.push(Output::Frame(frame));
                }
                Ok(())
            }
        }
    }

    /// One mailbox item into frames.
    async fn outbound(&mut self, item: Outbound, out: &mut Vec<Output>) {
        match item {
            Outbound::Deliver(d) => self.deliver(d, out).await,
            Outbound::Notice(b) => out.push(Output::Frame(b)),
            Outbound::Gap(gap) => self.gap(*gap, out).await,
            Outbound::Rest(b) => out.push(Output::Raw(b)),
        }
    }

    /// A live delivery, through the channel's follower.
    async fn deliver(&mut self, d: Arc<Delivery>, out: &mut Vec<Output>) {
        // A publish that names this connection in `exclude` is not
        // written; its position still counts (no hole is seen).
        let excluded = d.excludes(&self.requests.conn);
        let followers = &mut self.requests.followers;
        match followers.judge(&d) {
            Verdict::Deliver => {
                if d.position().is_some()
                    && d.pattern().is_none()
                    && !followers.follows(d.channel())
                {
                    followers.adopt(&d, &self.ctx);
                }
                if !excluded {
                    out.push(Output::Delivery(d));
                }
            }
            Verdict::Skip => {}
            Verdict::Repair(channel) => {
                let mut replay = Vec::new();
                let recovered = followers.repair(&self.ctx, &channel, &mut replay).await;
                out.extend(replay.into_iter().map(Output::Frame));
                if recovered == Some(false) {
                    out.push(Output::Frame(protocol::encode_gap(
                        std::slice::from_ref(&channel),
                        &[],
                        "not_recovered",
                    )));
                }
                // The replay normally covers this delivery; if the history
                // is behind it, it is the next one.
                if self.requests.followers.judge(&d) == Verdict::Deliver && !excluded {
                    out.push(Output::Delivery(d));
                }
            }
        }
    }

    /// A gap on channels and patterns: followed channels are repaired from
    /// the history; the client is told about the rest.
    async fn gap(&mut self, gap: GapNotice, out: &mut Vec<Output>) {
        let mut unrecovered = Vec::new();
        let mut rest = Vec::new();
        for channel in gap.channels {
            let mut replay = Vec::new();
            match self
                .requests
                .followers
                .repair(&self.ctx, &channel, &mut replay)
                .await
            {
                Some(true) => {}
                Some(false) => unrecovered.push(channel),
                None => rest.push(channel),
            }
            out.extend(replay.into_iter().map(Output::Frame));
        }
        if !rest.is_empty() || !gap.patterns.is_empty() {
            out.push(Output::Frame(protocol::encode_gap(
                &rest,
                &gap.patterns,
                &gap.reason,
            )));
        }
        if !unrecovered.is_empty() {
            out.push(Output::Frame(protocol::encode_gap(
                &unrecovered,
                &[],
                "not_recovered",
            )));
        }
    }

    /// Subscribes to `channel` without the routing rules: for a wire
    /// adapter whose own protocol authorized the subscription (a signed
    /// channel authorization). True when it was not subscribed yet.
    pub async fn subscribe_authorized(&mut self, channel: ChannelName) -> bool {
        self.requests.server_subscribe(channel).await.is_some()
    }

    /// Leaves `channel` (see [`Session::subscribe_authorized`]). True when
    /// it was subscribed.
    pub fn unsubscribe_authorized(&mut self, channel: &ChannelName) -> bool {
        self.requests.server_unsubscribe(channel).is_some()
    }

    /// Takes a rate-limit token for something the client sent that is not
    /// a whole message (a WebSocket ping, pong or fragment). `Err(None)`:
    /// over the limit, ignore it; `Err(Some(end))`: over it too long.
    pub fn take_token(&mut self) -> Result<(), Option<End>> {
        match self.rate.take(&self.ctx.stats) {
            Ok(()) => Ok(()),
            Err(Limited::Refuse) => Err(None),
            Err(Limited::Close) => Err(Some(End::Close {
                code: close::POLICY_VIOLATION,
                text: Cow::Borrowed("rate limit exceeded"),
                reason: CloseReason::RateLimited,
            })),
        }
    }

    /// Handles one whole client message (a protocol v1 JSON request; the
    /// adapter checked it is UTF-8 text when its framing says so), rate
    /// limited, and appends the reply and whatever follows it to `out`.
    /// `binary`: the message came as binary, which protocol v1 refuses.
    pub async fn on_message(
        &mut self,
        payload: &[u8],
        binary: bool,
        out: &mut Vec<Output>,
    ) -> Result<(), End> {
        self.ctx.stats.frame_in();
        if let Err(end) = self.take_token() {
            if let Some(end) = end {
                return Err(end);
            }
            let id = ClientFrame::parse(payload).ok().and_then(|f| f.id);
            out.push(Output::Frame(protocol::encode_error(
                ErrorCode::RateLimited,
                &format!(
                    "at most {} messages per second",
                    self.ctx.config.client_messages_per_sec
                ),
                id.as_deref(),
            )));
            return Ok(());
        }
        if binary {
            out.push(Output::Frame(protocol::encode_error(
                ErrorCode::BinaryUnsupported,
                "protocol v1 uses JSON text frames only",
                None,
            )));
            return Ok(());
        }
        match ClientFrame::parse(payload) {
            Ok(frame) => {
                let mut frames = Vec::new();
                self.requests.request(frame, &mut frames).await;
                out.extend(frames.into_iter().map(Output::Frame));
            }
            Err(e) => out.push(Output::Frame(protocol::encode_error(
                e.code,
                &e.message,
                e.id.as_deref(),
            ))),
        }
        Ok(())
    }
}

/// Joins every topic of a connect plan; a join the broker cannot make now
/// stays pending and is made when it is back (the socket then gets a gap).
async fn join_all(sub: &mut Subscriber, topics: impl Iterator<Item = Topic>) {
    for topic in topics {
        if let Err(e) = sub.join(topic.clone()).await {
            tracing::warn!(%topic, error = %e, "join on connect is pending until the broker is back");
        }
    }
}

/// Parses the positions a reconnecting client sends on connect: a JSON
/// object from channel name to `{"offset": N, "epoch": "E"}` (for a
/// WebSocket, the `since` query parameter). At most `max` entries.
///
/// ```
/// let p = tidings_session::parse_positions(r#"{"user.42":{"offset":7,"epoch":"e1"}}"#, 64).unwrap();
/// assert_eq!(p.len(), 1);
/// assert!(tidings_session::parse_positions(r#"{"user.42":{"offset":-1,"epoch":"e1"}}"#, 64).is_err());
/// ```
pub fn parse_positions(text: &str, max: usize) -> Result<Positions, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct At {
        offset: u64,
        epoch: String,
    }
    let map: HashMap<String, At> = serde_json::from_str(text).map_err(|e| {
        format!("positions must be a JSON object of channel -> {{\"offset\": N, \"epoch\": \"E\"}}: {e}")
    })?;
    if map.len() > max {
        return Err(format!("at most {max} positions"));
    }
    let mut out = Positions::with_capacity(map.len());
    for (channel, at) in map {
        let name = ChannelName::new(&channel).map_err(|e| format!("channel {channel:?}: {e}"))?;
        if at.offset > protocol::MAX_OFFSET {
            return Err(format!("channel {channel:?}: the offset is above 2^53 - 1"));
        }
        let position = StreamPosition::new(at.offset, at.epoch);
        position
            .validate()
            .map_err(|e| format!("channel {channel:?}: {e}"))?;
        out.insert(name, position);
    }
    Ok(out)
}
