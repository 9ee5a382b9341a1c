//! The endpoint: the WebSocket at `/app/{key}` and the HTTP API under
//! `/apps/{id}/`.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tidings_admission::{full_body, text, Admission, Body, Endpoint, Refusal};
use tidings_control::{
    ControlChannel, MemoryPresence, Presence, PresenceConfig, PresenceError, PresenceTracker,
    Registry,
};
use tidings_core::ChannelName;
use tidings_session::{BoxFuture, Context, RejectReason};
use tracing::Instrument;

use crate::{api, config::PusherConfig, conn, hooks, shared::Inner};

/// Where the WebSocket is: `/app/{key}`.
pub const SOCKET_PREFIX: &str = "/app/";
/// Where the HTTP API is: `/apps/{id}/...`.
pub const API_PREFIX: &str = "/apps/";

/// The Pusher endpoints of a gateway (see the [crate docs](crate)).
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Endpoint for Pusher {
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, Response<Body>> {
        let p = self.clone();
        Box::pin(async move { p.handle(req, peer).await })
    }
}

impl Pusher {
    /// The endpoints over a gateway's admission and session context (the
    /// gateway's `admission()` and `context()`), with presence and
    /// subscription counts in this process and the apps' webhooks started.
    /// Call it on a tokio runtime.
    pub fn new(admission: Admission, ctx: Arc<Context>, config: PusherConfig) -> Self {
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).expect("the operating system's random generator failed");
        let config = Arc::new(config);
        let hooks = Arc::new(hooks::Hooks::start(&config));
        let tracker = tracker(
            &ctx,
            &config,
            &hooks,
            Arc::new(MemoryPresence::new()),
            PresenceConfig::default(),
        )
        .expect("the default presence timings are valid");
        Self {
            inner: Arc::new(Inner {
                admission,
                ctx,
                config,
                tag: u32::from_le_bytes(tag) % 1_000_000_000,
                occupancy: Default::default(),
                tracker,
                hooks,
                users: Registry::new(),
                control: None,
            }),
        }
    }

    /// Keeps presence channels' members and every channel's subscriptions
    /// in `store` (the gateway's presence store: with Redis, shared by
    /// every gateway), so that member lists, `member_added` /
    /// `member_removed`, the channel counts of the HTTP API and the
    /// occupied / vacated webhooks span every gateway. Call it before the
    /// endpoint is cloned (a clone keeps the previous store).
    pub fn with_presence(
        mut self,
        store: Arc<dyn Presence>,
        timings: PresenceConfig,
    ) -> Result<Self, PresenceError> {
        let t = tracker(
            &self.inner.ctx,
            &self.inner.config,
            &self.inner.hooks,
            store,
            timings,
        )?;
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tracker = t;
        }
        Ok(self)
    }

    /// Listens on the configured control channel (`control_channel`, over
    /// the gateway's bridge), so that `terminate_connections` reaches the
    /// user's connections on every gateway; without it, it reaches this
    /// gateway's only. Call it before the endpoint is cloned.
    pub async fn with_control(mut self) -> Self {
        let Ok(channel) = ChannelName::new(&self.inner.config.control_channel) else {
            tracing::error!(channel = %self.inner.config.control_channel, "the pusher control channel is not a channel name");
            return self;
        };
        let (control, _task) =
            ControlChannel::start(&self.inner.ctx.bridge, channel, self.inner.users.clone()).await;
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.control = Some(Arc::new(control));
        }
        self
    }

    /// Removes this gateway's presence and subscription entries from the
    /// store at once (at a graceful shutdown, after the sockets are gone),
    /// rather than after their time to live.
    pub async fn leave_all(&self) {
        self.inner.tracker.leave_all().await;
    }

    /// The tunables.
    pub fn config(&self) -> &PusherConfig {
        &self.inner.config
    }

    /// Answers one request under `/app/` or `/apps/` from TCP peer `peer`
    /// (from a router of your own: the request must carry hyper's
    /// `OnUpgrade` for the WebSocket).
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix(API_PREFIX) {
            return api::handle(&self.inner, req, rest).await;
        }
        match path.strip_prefix(SOCKET_PREFIX) {
            Some(key) if !key.is_empty() && !key.contains('/') => {
                let key = key.to_owned();
                self.socket(req, peer, &key).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// A WebSocket: admission (the same as every wire's), then the
    /// connection. An unknown key or protocol is told in Pusher's way
    /// (`pusher:error` and a 4xxx close) once the WebSocket is up.
    async fn socket<B>(&self, mut req: Request<B>, peer: SocketAddr, key: &str) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &self.inner;
        let refused = |r: Refusal| r.response(full_body);
        let ticket = match inner.admission.check(req.headers(), peer) {
            Ok(t) => t,
            Err(r) => return refused(r),
        };
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return refused(ticket.refuse(
                StatusCode::BAD_REQUEST,
                "this is a WebSocket endpoint",
                RejectReason::BadHandshake,
            ));
        }
        let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(e) => {
                return refused(ticket.refuse(
                    StatusCode::BAD_REQUEST,
                    format!("bad WebSocket handshake: {e}"),
                    RejectReason::BadHandshake,
                ))
            }
        };
        let admitted = match ticket.admit(req.headers().clone(), req.uri().clone()).await {
            Ok(a) => a,
            Err(r) => return refused(r),
        };
        let protocol = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned());
        let opening = conn::Opening {
            app: inner.config.app_by_key(key).cloned(),
            protocol,
        };
        let span = tracing::debug_span!(
            "pusher",
            peer = %admitted.peer,
            client = %admitted.client_ip,
            app = opening.app.as_ref().map_or("", |a| a.id.as_str()),
        );
        inner
            .admission
            .sessions()
            .spawn(conn::serve(fut, inner.clone(), opening, admitted).instrument(span));
        response.map(|_| full_body(Bytes::new()))
    }
}

/// The tracker of presence members and subscriptions over `store`, its
/// refresher started (it ends when the tracker is dropped).
fn tracker(
    ctx: &Context,
    config: &Arc<PusherConfig>,
    hooks: &Arc<hooks::Hooks>,
    store: Arc<dyn Presence>,
    timings: PresenceConfig,
) -> Result<Arc<PresenceTracker>, PresenceError> {
    let t = PresenceTracker::new(
        store,
        timings,
        hooks::sink(ctx.bridge.clone(), config.clone(), hooks.clone()),
    )?;
    drop(t.spawn_refresher());
    Ok(t)
}
