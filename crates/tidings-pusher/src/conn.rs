//! One Pusher WebSocket: `pusher:connection_established`, the client's
//! messages (subscribe, unsubscribe, ping, sign-in, client events), the
//! activity timeout, and the `tidings_session::Session` underneath.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant as StdInstant},
};

use fastwebsockets::{
    upgrade::UpgradeFut, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, value::RawValue};
use tidings_admission::Admitted;
use tidings_control::{Connection, ConnectionInfo, PresenceEntry, PresenceKey, Registration};
use tidings_core::{protocol::SenderEnvelope, ChannelName, Message};
use tidings_session::{Batch, CloseReason, End, Output, Positions, Session};
use tokio::{
    io::WriteHalf,
    sync::{mpsc, Mutex},
    time::{sleep_until, timeout, Instant},
};

use crate::{
    config::App,
    presence::{self, Member},
    shared::{user_key, Inner},
    sign,
    wire::{self, code, ClientMessage, Signin, Subscribe},
};

type Writer = Arc<Mutex<WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>>>;

/// What the connection was opened with.
pub(crate) struct Opening {
    /// The app of the key, if it is known.
    pub(crate) app: Option<App>,
    /// The `protocol` query parameter.
    pub(crate) protocol: Option<String>,
}

/// Serves one Pusher WebSocket to its end.
pub(crate) async fn serve(
    upgrade: UpgradeFut,
    inner: Arc<Inner>,
    opening: Opening,
    admitted: Admitted,
) {
    let mut ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "pusher upgrade did not complete");
            return;
        }
    };
    let cfg = inner.config.clone();
    ws.set_max_message_size(cfg.max_message_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (read, write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let writer: Writer = Arc::new(Mutex::new(write));
    let (in_tx, ws_in) = mpsc::channel::<Option<String>>(16);
    let reader = {
        let writer = writer.clone();
        tokio::spawn(async move {
            loop {
                let frame = read
                    .read_frame(&mut |f| {
                        let writer = writer.clone();
                        async move { writer.lock().await.write_frame(f).await }
                    })
                    .await;
                let text = match frame {
                    Ok(f) if f.opcode == OpCode::Text => {
                        match String::from_utf8(f.payload.to_vec()) {
                            Ok(t) => Some(t),
                            Err(_) => break,
                        }
                    }
                    // A ping or pong (answered by the reader): activity.
                    Ok(f) if matches!(f.opcode, OpCode::Ping | OpCode::Pong) => None,
                    _ => break,
                };
                if in_tx.send(text).await.is_err() {
                    break;
                }
            }
        })
    };
    let (kill, killed) = mpsc::channel(1);
    let mut conn = Conn {
        inner: inner.clone(),
        kill,
        registration: None,
        writer,
        socket_id: String::new(),
        session: None,
        app: None,
        channels: HashMap::new(),
        user: None,
        client_events: (StdInstant::now(), 0),
        outs: Vec::new(),
    };
    let reason = conn.run(opening, admitted, ws_in, killed).await;
    reader.abort();
    conn.registration = None;
    conn.leave_all().await;
    if let Some(s) = conn.session.as_mut() {
        s.finish(1000, reason.as_str());
        inner.ctx.stats.closed(reason);
    }
    tracing::debug!(reason = reason.as_str(), "pusher connection closed");
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn next_event(session: &mut Option<Session>) -> tidings_session::Event {
    match session {
        Some(s) => s.next_event().await,
        None => std::future::pending().await,
    }
}

/// One subscribed channel.
struct Joined {
    tidings: ChannelName,
    /// The member this connection is on a presence channel.
    member: Option<Member>,
}

struct Conn {
    inner: Arc<Inner>,
    /// Tells the connection's task to close (`terminate_connections`).
    kill: mpsc::Sender<()>,
    /// The signed-in user's place in the endpoint's registry.
    registration: Option<Registration>,
    writer: Writer,
    socket_id: String,
    session: Option<Session>,
    app: Option<App>,
    /// Pusher channel -> its Tidings channel.
    channels: HashMap<String, Joined>,
    /// The signed-in user's id (`pusher:signin`).
    user: Option<String>,
    /// Client events this second: (second's start, count).
    client_events: (StdInstant, u32),
    outs: Vec<Output>,
}

/// What a step of the loop asks.
enum Step {
    Go,
    /// Close with this code and reason.
    Close(u16, &'static str, CloseReason),
    /// The client is gone.
    Gone,
}

impl Conn {
    async fn write(&self, bytes: &[u8]) -> bool {
        let mut w = self.writer.lock().await;
        matches!(
            timeout(
                self.inner.config.write_timeout,
                w.write_frame(Frame::text(Payload::Borrowed(bytes)))
            )
            .await,
            Ok(Ok(()))
        )
    }

    async fn close(&self, code: u16, reason: &str) {
        let mut w = self.writer.lock().await;
        let _ = timeout(
            self.inner.config.write_timeout,
            w.write_frame(Frame::close(code, reason.as_bytes())),
        )
        .await;
    }

    async fn run(
        &mut self,
        opening: Opening,
        admitted: Admitted,
        mut ws_in: mpsc::Receiver<Option<String>>,
        mut killed: mpsc::Receiver<()>,
    ) -> CloseReason {
        let refuse = match (&opening.app, opening.protocol.as_deref()) {
            (None, _) => Some((code::APP_UNKNOWN, "App key not in this server")),
            (_, None) => Some((code::NO_PROTOCOL, "No protocol version supplied")),
            (_, Some(p)) if !matches!(p, "5" | "6" | "7") => {
                Some((code::UNSUPPORTED_PROTOCOL, "Unsupported protocol version"))
            }
            _ => None,
        };
        if let Some((c, message)) = refuse {
            let _ = self.write(&wire::error(Some(c), message)).await;
            self.close(c, message).await;
            return CloseReason::Protocol;
        }
        self.app = opening.app;
        let ctx = self.inner.ctx.clone();
        let cfg = self.inner.config.clone();
        let id = ctx.bridge.next_connection_id();
        self.socket_id = format!("{}.{id}", self.inner.tag);
        let mut ignored = Vec::new();
        let mut session = Session::open_with_id(
            ctx.clone(),
            id,
            admitted.identity.clone(),
            admitted.credentials.clone(),
            admitted.client(),
            &Positions::new(),
            &mut ignored,
        )
        .await;
        // The channels the identity joins on connect are for native
        // clients: a Pusher client names its channels itself.
        for channel in ctx.router.on_connect(&admitted.identity).channels {
            session.unsubscribe_authorized(&channel);
        }
        self.session = Some(session);
        ctx.stats.opened();
        tracing::debug!(socket_id = %self.socket_id, "pusher connection open");
        let established = wire::event(
            "pusher:connection_established",
            None,
            &json!({
                "socket_id": self.socket_id,
                "activity_timeout": cfg.activity_timeout.as_secs().max(1),
            }),
        );
        if !self.write(&established).await {
            return CloseReason::SlowConsumer;
        }
        // The admission slot stays for the connection's life.
        let _slot = admitted;
        let mut last_heard = Instant::now();
        let mut pinged: Option<Instant> = None;
        let mut close_at: Option<Instant> = None;
        loop {
            let tick = match pinged {
                Some(at) => at + cfg.pong_timeout,
                None => last_heard + cfg.activity_timeout,
            };
            let step = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled(), if close_at.is_none() => {
                    close_at = Some(Instant::now() + tidings_admission::drain_offset(id, cfg.drain_spread));
                    continue;
                }
                () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                    Step::Close(code::RECONNECT, "server restarting, reconnect", CloseReason::Shutdown)
                }
                Some(()) = killed.recv() => {
                    Step::Close(code::UNAUTHORIZED, "Connection terminated by the app", CloseReason::Backend)
                }
                msg = ws_in.recv() => {
                    last_heard = Instant::now();
                    pinged = None;
                    match msg {
                        None => Step::Gone,
                        Some(None) => Step::Go,
                        Some(Some(text)) => Box::pin(self.message(&text)).await,
                    }
                }
                event = next_event(&mut self.session) => {
                    let Some(session) = self.session.as_mut() else { continue };
                    match Box::pin(session.on_event(event, &mut self.outs, Batch::default())).await {
                        Ok(()) => Step::Go,
                        Err(End::Gone) => Step::Gone,
                        Err(End::Close { reason, .. }) => {
                            // The backend's or the session's close (slow
                            // consumer, rate limit), in Pusher's ranges:
                            // reconnect after a back-off.
                            Step::Close(code::OVER_CAPACITY, "closed by the server", reason)
                        }
                    }
                }
                () = sleep_until(tick) => {
                    if pinged.is_some() {
                        Step::Close(code::PONG_TIMEOUT, "Pong reply not received", CloseReason::Heartbeat)
                    } else {
                        pinged = Some(Instant::now());
                        if self.write(&wire::event("pusher:ping", None, &json!({}))).await {
                            Step::Go
                        } else {
                            Step::Close(code::RECONNECT, "write timed out", CloseReason::SlowConsumer)
                        }
                    }
                }
            };
            if !self.flush().await {
                return CloseReason::SlowConsumer;
            }
            match step {
                Step::Go => {}
                Step::Gone => return CloseReason::Client,
                Step::Close(c, text, reason) => {
                    if c != code::RECONNECT {
                        let _ = self.write(&wire::error(Some(c), text)).await;
                    }
                    self.close(c, text).await;
                    return reason;
                }
            }
        }
    }

    /// Writes what the session produced: live messages of Pusher channels
    /// as Pusher events (the session's own protocol v1 frames mean nothing
    /// to a Pusher client).
    async fn flush(&mut self) -> bool {
        let outs = std::mem::take(&mut self.outs);
        let mut n = 0u64;
        for o in &outs {
            let Output::Delivery(d) = o else { continue };
            if d.excludes(&self.socket_id) {
                continue;
            }
            // A member_added about this connection's own user is not its
            // to see (Pusher tells the others).
            if let Some(user) = wire::joining_user(d.frame()) {
                let own = self.channels.values().any(|j| {
                    j.tidings == *d.channel()
                        && j.member.as_ref().is_some_and(|m| m.user_id == user)
                });
                if own {
                    continue;
                }
            }
            let bytes = wire::delivery_event(&self.inner.config, d);
            if bytes.is_empty() {
                continue;
            }
            if !self.write(bytes).await {
                return false;
            }
            n += 1;
        }
        self.outs = outs;
        self.outs.clear();
        if n > 0 {
            self.inner.ctx.stats.frames_out(n);
        }
        true
    }
}

impl Conn {
    fn app(&self) -> &App {
        self.app.as_ref().expect("an app once open")
    }

    /// Writes `bytes`, or ends the connection when the client does not
    /// take them in time.
    async fn send(&self, bytes: &[u8]) -> Step {
        if self.write(bytes).await {
            Step::Go
        } else {
            Step::Close(
                code::RECONNECT,
                "write timed out",
                CloseReason::SlowConsumer,
            )
        }
    }

    /// One message from the client.
    async fn message(&mut self, text: &str) -> Step {
        let session = self.session.as_mut().expect("open");
        self.inner.ctx.stats.frame_in();
        match session.take_token() {
            Ok(()) => {}
            Err(None) => {
                return self
                    .send(&wire::error(None, "too many messages, slow down"))
                    .await
            }
            Err(Some(_)) => {
                return Step::Close(
                    code::OVER_CAPACITY,
                    "rate limit exceeded",
                    CloseReason::RateLimited,
                )
            }
        }
        let Ok(m) = serde_json::from_str::<ClientMessage<'_>>(text) else {
            return self
                .send(&wire::error(None, "messages must be JSON with an event"))
                .await;
        };
        match m.event.as_str() {
            "pusher:ping" => {
                self.send(&wire::event("pusher:pong", None, &json!({})))
                    .await
            }
            "pusher:pong" => Step::Go,
            "pusher:subscribe" => match wire::data_as::<Subscribe>(m.data) {
                Some(s) => self.subscribe(s).await,
                None => {
                    self.send(&wire::error(None, "pusher:subscribe needs data.channel"))
                        .await
                }
            },
            "pusher:unsubscribe" => {
                #[derive(serde::Deserialize)]
                struct Unsubscribe {
                    channel: String,
                }
                if let Some(u) = wire::data_as::<Unsubscribe>(m.data) {
                    self.unsubscribe(&u.channel).await;
                }
                Step::Go
            }
            "pusher:signin" => match wire::data_as::<Signin>(m.data) {
                Some(s) => self.signin(s).await,
                None => {
                    self.send(&wire::error(None, "pusher:signin needs auth and user_data"))
                        .await
                }
            },
            e if e.starts_with("client-") => {
                self.client_event(m.event.clone(), m.channel, m.data).await
            }
            _ => Step::Go,
        }
    }

    /// `pusher:subscribe`: public channels for anyone, `private-` and
    /// `presence-` with the app's signature.
    async fn subscribe(&mut self, s: Subscribe) -> Step {
        let app = self.app().clone();
        let channel = s.channel;
        let Some(tidings) = self.inner.config.tidings_channel(&app.id, &channel) else {
            return self
                .send(&wire::subscription_error(
                    &channel,
                    "InvalidChannel",
                    "invalid channel name",
                    400,
                ))
                .await;
        };
        if self.channels.contains_key(&channel) {
            return Step::Go;
        }
        let presence = channel.starts_with("presence-");
        let private = presence || channel.starts_with("private-");
        let mut member = None;
        if private {
            let mut signed = format!("{}:{channel}", self.socket_id);
            if presence {
                let Some(data) = s.channel_data.as_deref() else {
                    return self
                        .unauthorized(&channel, "presence channels need channel_data")
                        .await;
                };
                signed.push(':');
                signed.push_str(data);
                match Member::parse(data) {
                    Some(m) => member = Some(m),
                    None => {
                        return self
                            .unauthorized(&channel, "channel_data needs a user_id")
                            .await
                    }
                }
            }
            if !s
                .auth
                .as_deref()
                .is_some_and(|auth| sign::check_auth(&app, auth, &signed))
            {
                return self.unauthorized(&channel, "Invalid signature").await;
            }
        }
        let max = self.inner.ctx.config.max_subscriptions;
        if self.channels.len() >= max {
            return self
                .send(&wire::subscription_error(
                    &channel,
                    "LimitReached",
                    &format!("at most {max} channels per connection"),
                    429,
                ))
                .await;
        }
        let session = self.session.as_mut().expect("open");
        session.subscribe_authorized(tidings.clone()).await;
        self.inner.occupy(&tidings, true);
        let tracker = self.inner.tracker.clone();
        // Every subscription is an entry of the channel's subscriptions
        // set (the API's counts, the occupied and vacated webhooks), under
        // one user: the set's first entry and its last are the channel's.
        let sub = self.entry(Some("*".to_owned()), serde_json::Value::Null);
        if let Err(e) = tracker
            .join(&PresenceKey::subscriptions(&tidings), sub)
            .await
        {
            tracing::warn!(channel = %tidings, error = %e, "subscription count not recorded; the next refresh retries");
        }
        let data = match &member {
            Some(m) => {
                // Across gateways with a shared store: it has every
                // member; the sink publishes join and leave on the channel.
                let key = PresenceKey::channel(&tidings);
                let entry = self.entry(Some(m.user_id.clone()), m.user_info.clone());
                if let Err(e) = tracker.join(&key, entry).await {
                    tracing::warn!(channel = %tidings, error = %e, "presence join failed; the next refresh retries");
                }
                let list = match tracker.store().list(&key).await {
                    Ok((entries, _)) => presence::list(
                        entries
                            .iter()
                            .filter_map(|e| Some((e.user.as_deref()?, &e.info)))
                            .chain(std::iter::once((m.user_id.as_str(), &m.user_info))),
                    ),
                    Err(e) => {
                        tracing::warn!(channel = %tidings, error = %e, "presence list failed");
                        presence::list(std::iter::once((m.user_id.as_str(), &m.user_info)))
                    }
                };
                json!({ "presence": list })
            }
            None => json!({}),
        };
        self.channels
            .insert(channel.clone(), Joined { tidings, member });
        self.send(&wire::event(
            "pusher_internal:subscription_succeeded",
            Some(&channel),
            &data,
        ))
        .await
    }

    /// A refused subscription: `pusher:subscription_error` on the channel
    /// and `pusher:error` 4009.
    async fn unauthorized(&self, channel: &str, why: &str) -> Step {
        tracing::debug!(channel, why, "pusher subscription refused");
        match self
            .send(&wire::subscription_error(channel, "AuthError", why, 401))
            .await
        {
            Step::Go => {
                self.send(&wire::error(
                    Some(code::UNAUTHORIZED),
                    &format!("Connection is unauthorized: {why}"),
                ))
                .await
            }
            other => other,
        }
    }

    /// `pusher:unsubscribe`.
    async fn unsubscribe(&mut self, channel: &str) {
        if let Some(joined) = self.channels.remove(channel) {
            self.leave(joined).await;
        }
    }

    async fn leave(&mut self, joined: Joined) {
        if let Some(s) = self.session.as_mut() {
            s.unsubscribe_authorized(&joined.tidings);
        }
        self.inner.occupy(&joined.tidings, false);
        let tracker = &self.inner.tracker;
        let mut keys = vec![PresenceKey::subscriptions(&joined.tidings)];
        if joined.member.is_some() {
            keys.push(PresenceKey::channel(&joined.tidings));
        }
        for key in keys {
            if let Err(e) = tracker.leave(&key, &self.socket_id).await {
                tracing::debug!(set = %key, error = %e, "presence leave failed; the entry expires");
            }
        }
    }

    /// This connection's entry in a presence set.
    fn entry(&self, user: Option<String>, info: serde_json::Value) -> PresenceEntry {
        PresenceEntry {
            conn: self.socket_id.clone(),
            user,
            gateway: format!("pusher-{}", self.inner.tag),
            info,
            since_ms: now_ms(),
        }
    }

    /// Leaves every channel (at the end).
    pub(crate) async fn leave_all(&mut self) {
        let channels: Vec<Joined> = self.channels.drain().map(|(_, j)| j).collect();
        for joined in channels {
            self.leave(joined).await;
        }
    }

    /// Publishes `payload` (JSON) on `channel` for every subscriber but
    /// this connection.
    async fn publish(&self, channel: &ChannelName, payload: &str) -> bool {
        let Ok(raw) = RawValue::from_string(payload.to_owned()) else {
            return false;
        };
        let bytes = SenderEnvelope::wrap_excluding(None, &self.socket_id, &raw);
        match self
            .inner
            .ctx
            .bridge
            .publish(Message::new(channel.clone(), bytes))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(channel = %channel, error = %e, "pusher publish failed");
                false
            }
        }
    }

    /// `pusher:signin`: the user authentication the backend signed
    /// (`socket_id::user::user_data`).
    async fn signin(&mut self, s: Signin) -> Step {
        let app = self.app().clone();
        let signed = format!("{}::user::{}", self.socket_id, s.user_data);
        let user = Member::parse(&s.user_data).map(|m| m.user_id);
        match user {
            Some(id) if sign::check_auth(&app, &s.auth, &signed) => {
                // terminate_connections finds it by its app and user.
                let handle = Arc::new(Terminate {
                    kill: self.kill.clone(),
                    info: ConnectionInfo {
                        conn: self.socket_id.clone(),
                        user: Some(id.clone()),
                        gateway: format!("pusher-{}", self.inner.tag),
                        since_ms: now_ms(),
                    },
                });
                self.registration = None;
                self.registration = Some(self.inner.users.register(
                    self.socket_id.as_str(),
                    Some(&user_key(&app.id, &id)),
                    handle,
                ));
                self.user = Some(id);
                self.send(&wire::event(
                    "pusher:signin_success",
                    None,
                    &json!({ "user_data": s.user_data }),
                ))
                .await
            }
            _ => {
                self.send(&wire::error(
                    Some(code::UNAUTHORIZED),
                    "Connection is unauthorized: invalid sign-in",
                ))
                .await
            }
        }
    }

    /// A client event: only on a private or presence channel this
    /// connection is on, when the app allows them, rate limited; it goes
    /// to every other subscriber.
    async fn client_event(
        &mut self,
        event: String,
        channel: Option<String>,
        data: Option<&RawValue>,
    ) -> Step {
        let cfg = self.inner.config.clone();
        if !self.app().client_events {
            return self
                .send(&wire::error(
                    None,
                    "To send client events, you must enable this feature in the Settings page of your dashboard.",
                ))
                .await;
        }
        let Some(channel) = channel else {
            return self
                .send(&wire::error(None, "client events need a channel"))
                .await;
        };
        let private = channel.starts_with("private-") || channel.starts_with("presence-");
        let Some(joined) = self.channels.get(&channel).filter(|_| private) else {
            return self
                .send(&wire::error(
                    None,
                    "client events are only for private and presence channels the connection is subscribed to",
                ))
                .await;
        };
        let tidings = joined.tidings.clone();
        let user = joined.member.as_ref().map(|m| m.user_id.clone());
        let now = StdInstant::now();
        if now.duration_since(self.client_events.0) >= Duration::from_secs(1) {
            self.client_events = (now, 0);
        }
        if self.client_events.1 >= cfg.client_events_per_sec {
            return self
                .send(&wire::error(
                    Some(code::CLIENT_EVENT_RATE),
                    "Client event rejected due to rate limit",
                ))
                .await;
        }
        self.client_events.1 += 1;
        let null = RawValue::from_string("null".to_owned()).expect("null is JSON");
        let data = data.unwrap_or(&null);
        if event.len() > 200 || data.get().len() > cfg.max_event_bytes {
            return self
                .send(&wire::error(None, "client event too large"))
                .await;
        }
        let payload = wire::payload(&event, data, user.as_deref());
        self.publish(&tidings, &payload).await;
        let app = &self.app().id;
        if self.inner.hooks.wants(app, "client_event") {
            // Pusher gives the data as a string: a string's text, else the
            // JSON.
            let text = serde_json::from_str::<String>(data.get())
                .unwrap_or_else(|_| data.get().to_owned());
            let mut hook = json!({
                "name": "client_event",
                "channel": channel,
                "event": event,
                "data": text,
                "socket_id": self.socket_id,
            });
            if let Some(u) = user {
                hook["user_id"] = u.into();
            }
            self.inner.hooks.send(app, hook);
        }
        Step::Go
    }
}

/// A signed-in connection as the endpoint's registry sees it: a
/// `disconnect` (`terminate_connections`) closes it.
struct Terminate {
    kill: mpsc::Sender<()>,
    info: ConnectionInfo,
}

impl Connection for Terminate {
    fn disconnect(&self, _code: u16, _reason: &str) {
        let _ = self.kill.try_send(());
    }
    fn subscribe(&self, _channel: &ChannelName) {}
    fn unsubscribe(&self, _channel: &ChannelName) {}
    fn refresh(&self) {}
    fn describe(&self) -> ConnectionInfo {
        self.info.clone()
    }
}
