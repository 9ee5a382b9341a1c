//! The listener: HTTP/1.1 connections, WebSocket upgrades, shutdown.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::pin, sync::Arc};

use crate::shared::Shared;
use crate::{rpc::RpcHandler, stats::RejectReason};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tidings_admission::{Admission, AdmissionConfig, Endpoint, Refusal};
use tidings_bridge::Bridge;
use tidings_identity::{Anonymous, IdentityResolver};
use tidings_routing::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::TransportConfig,
    deflate::{self, Deflate, DeflateStats},
    stats::TransportStats,
    tcp::ServerTcp,
    ws, BoxFuture,
};
use tidings_session::Context;

/// The TCP peer of a request, as a request extension: what [`WsService`](crate::WsService)
/// reads by default to learn who is connecting. Insert it where you accept
/// the connection (`req.extensions_mut().insert(PeerAddr(peer))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The response type of every endpoint.
pub type HttpResponse = Response<Full<Bytes>>;

/// Serves the plain HTTP requests that are not WebSocket upgrades
/// (`/api/publish`, `/healthz`, ...). Implemented for async closures
/// `Fn(Request<Incoming>, SocketAddr) -> impl Future<Output = HttpResponse>`.
pub trait HttpHandler: Clone + Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, HttpResponse>;
}

impl<F, Fut> HttpHandler for F
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, HttpResponse> {
        Box::pin(self(req, peer))
    }
}

/// A plain-text response with `status`.
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub(crate) struct Inner {
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) bridge: Bridge,
    pub(crate) stats: Arc<TransportStats>,
    /// Draining, Origin, limits, identity: shared with every adapter.
    pub(crate) admission: Admission,
    /// Cancelled when sockets must go: each session closes with 1012 at its
    /// own moment within the drain spread.
    pub(crate) shutdown: CancellationToken,
    /// What sessions get: a narrow view of the above.
    pub(crate) session: Arc<Context>,
    /// What the sockets that did not negotiate permessage-deflate share.
    pub(crate) plain: Arc<Shared>,
    /// What the sockets that did share (the same settings for all: a
    /// delivery is compressed once for them all).
    pub(crate) deflated: Arc<Shared>,
    pub(crate) deflate_stats: Arc<DeflateStats>,
}

/// The WebSocket side of the gateway: upgrades requests on its path into
/// sessions that speak protocol v1. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.inner.config)
            .field("bridge", &self.inner.bridge)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    config: TransportConfig,
    resolver: Arc<dyn IdentityResolver>,
    router: Router,
    bridge: Bridge,
    rpc: Option<Arc<dyn RpcHandler>>,
    hooks: Option<Arc<dyn tidings_session::SessionHooks>>,
    connection_prefix: String,
}

impl GatewayBuilder {
    /// Sets the transport tunables.
    pub fn config(mut self, config: TransportConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets who decides the sockets' identities (default: [`Anonymous`]).
    pub fn resolver(mut self, resolver: Arc<dyn IdentityResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Sets the routing rules (default: [`tidings_routing::Rule::defaults`]).
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Enables RPC to the backend over the socket (default: off; `rpc`
    /// frames get `rpc_disabled`).
    pub fn rpc(mut self, rpc: Arc<dyn RpcHandler>) -> Self {
        self.rpc = Some(rpc);
        self
    }

    /// Plugs the backend's control into every session (the control
    /// registry, presence, webhooks: `tidings-control`'s hooks). Default:
    /// none.
    pub fn hooks(mut self, hooks: Arc<dyn tidings_session::SessionHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// What connection ids start with (default: nothing): `<gateway id>-`
    /// makes them unique across gateways (see `SessionHooks`).
    pub fn connection_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.connection_prefix = prefix.into();
        self
    }

    /// Builds the gateway.
    pub fn build(self) -> Gateway {
        // Out-of-range values (a zero interval, a duration no deadline can
        // hold) are brought into range, never panicked on.
        let config = self.config.clamped();
        let router = Arc::new(self.router);
        let stats = Arc::new(TransportStats::default());
        let shutdown = CancellationToken::new();
        let admission = Admission::new(
            AdmissionConfig {
                allowed_origins: config.allowed_origins.clone(),
                limits: config.limits.clone(),
            },
            self.resolver,
            stats.clone(),
            self.rpc.clone(),
        );
        let config = Arc::new(config);
        let deflate_stats = Arc::new(DeflateStats::default());
        let shared = |deflate| {
            Arc::new(Shared {
                config: config.clone(),
                stats: stats.clone(),
                deflate,
            })
        };
        let plain = shared(None);
        let deflated = shared(Some(Deflate {
            threshold: config.deflate_threshold,
            stats: deflate_stats.clone(),
        }));
        Gateway {
            inner: Arc::new(Inner {
                plain,
                deflated,
                deflate_stats,
                session: Arc::new(Context {
                    config: config.session_config(),
                    router,
                    bridge: self.bridge.clone(),
                    stats: stats.clone(),
                    rpc: self.rpc.clone(),
                    hooks: self.hooks,
                    connection_prefix: Arc::from(self.connection_prefix),
                    shutdown: shutdown.clone(),
                }),
                config,
                bridge: self.bridge,
                stats,
                admission,
                shutdown,
            }),
        }
    }
}

impl Gateway {
    /// A builder over `bridge`, with default config, the [`Anonymous`]
    /// resolver and the default routing rules.
    pub fn builder(bridge: Bridge) -> GatewayBuilder {
        GatewayBuilder {
            config: TransportConfig::default(),
            resolver: Arc::new(Anonymous),
            #[allow(clippy::expect_used)]
            router: Router::new(tidings_routing::Rule::defaults())
                .expect("default rules are valid"),
            bridge,
            rpc: None,
            hooks: None,
            connection_prefix: String::new(),
        }
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    /// The permessage-deflate counters.
    pub fn deflate_stats(&self) -> &DeflateStats {
        &self.inner.deflate_stats
    }

    /// The bridge sessions subscribe through.
    pub fn bridge(&self) -> &Bridge {
        &self.inner.bridge
    }

    /// The transport tunables.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Whether draining has begun (readiness is off, upgrades are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.admission.is_draining()
    }

    /// Begins draining: `/readyz` turns not ready and new upgrades are
    /// refused with 503; open sockets stay.
    pub fn begin_drain(&self) {
        self.inner.admission.begin_drain();
    }

    /// Closes every socket (with 1012, spread over `drain_spread`) and
    /// refuses new upgrades.
    pub fn shutdown(&self) {
        self.inner.admission.begin_drain();
        self.inner.shutdown.cancel();
    }

    /// Waits until every session has ended (after [`Gateway::shutdown`]).
    pub async fn wait_sessions(&self) {
        let sessions = self.inner.admission.sessions();
        sessions.close();
        sessions.wait().await;
    }

    /// The admission every connection of this gateway passes, whatever its
    /// wire format: adapters built beside the WebSocket one (Server-Sent
    /// Events, ...) admit through it too, so limits and draining are shared.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// What sessions of this gateway share (routing, bridge, counters, RPC,
    /// the shutdown signal): adapters built beside the WebSocket one open
    /// their sessions over it.
    pub fn context(&self) -> &Arc<Context> {
        &self.inner.session
    }

    /// Answers a request on the WebSocket path from TCP peer `peer`:
    /// refuses it with a clear status, or switches protocols and starts a
    /// session. The request must carry hyper's `OnUpgrade` in its
    /// extensions (hyper and axum put it there); its body is not read.
    /// [`Gateway::service`] wraps this in a `tower` service.
    pub async fn upgrade<B>(&self, mut req: Request<B>, peer: SocketAddr) -> HttpResponse {
        let admission = &self.inner.admission;
        let refused = |r: Refusal| r.response(Full::new);
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            let mut res = refused(admission.refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket only",
                RejectReason::NotUpgrade,
                peer,
            ));
            res.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return res;
        }
        // HTTP/1.0 has no upgrade mechanism (RFC 6455 requires HTTP/1.1):
        // hyper would answer 101 and then close the connection. Refuse it
        // before anything else is looked at.
        if req.version() < http::Version::HTTP_11 {
            return refused(admission.refuse(
                StatusCode::BAD_REQUEST,
                "WebSocket needs HTTP/1.1; this request is HTTP/1.0",
                RejectReason::BadHandshake,
                peer,
            ));
        }
        // Draining, Origin, the total and per-address limits.
        let ticket = match admission.check(req.headers(), peer) {
            Ok(ticket) => ticket,
            Err(r) => return refused(r),
        };
        // Positions a reconnecting client sends (`since`): malformed ones
        // are refused here, before any credential is spent.
        let since = match since_param(req.uri(), self.inner.config.max_subscriptions) {
            Ok(since) => since,
            Err(why) => {
                return refused(ticket.refuse(
                    StatusCode::BAD_REQUEST,
                    format!("invalid since parameter: {why}"),
                    RejectReason::BadHandshake,
                ))
            }
        };
        // A broken handshake is refused before any credential is looked
        // at (a one-time token must not be spent on it).
        let (mut response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(e) => {
                return refused(ticket.refuse(
                    StatusCode::BAD_REQUEST,
                    format!("bad WebSocket handshake: {e}"),
                    RejectReason::BadHandshake,
                ))
            }
        };
        // Identity, the per-user limit, RPC credentials.
        let admitted = match ticket.admit(req.headers().clone(), req.uri().clone()).await {
            Ok(admitted) => admitted,
            Err(r) => return refused(r),
        };
        // permessage-deflate, when enabled and offered (see `deflate`).
        let shared = if self.inner.config.permessage_deflate
            && deflate::negotiate(req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS))
        {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(deflate::RESPONSE),
            );
            &self.inner.deflated
        } else {
            &self.inner.plain
        };
        admission.sessions().spawn(ws::run(Box::new(ws::Opening {
            upgrade: fut,
            gw: self.inner.session.clone(),
            shared: shared.clone(),
            since,
            admitted,
        })));
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::new(Bytes::new()))
    }
}

/// The positions in the `since` query parameter (empty without one).
fn since_param(uri: &http::Uri, max: usize) -> Result<Box<tidings_session::Positions>, String> {
    let Some(query) = uri.query() else {
        return Ok(Box::default());
    };
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "since" {
            if found.is_some() {
                return Err("given more than once".into());
            }
            found = Some(v);
        }
    }
    match found {
        None => Ok(Box::default()),
        Some(v) => tidings_session::parse_positions(&v, max).map(Box::new),
    }
}

/// Serves HTTP/1.1 on `listener` until `signal` resolves: upgrades on the
/// WebSocket path go to `gateway`, everything else to `http`.
///
/// On `signal` it turns readiness off and refuses new upgrades, waits the
/// readiness delay, stops accepting, closes every socket with 1012 (spread
/// over the drain window), lets
/// in-flight HTTP requests finish, and returns once all are done or the
/// configured `shutdown_grace` has passed.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    http: impl HttpHandler,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, gateway, Mounts::default(), http, signal).await
}

/// The endpoints of other wire adapters (Server-Sent Events, ...) that
/// [`serve_with`] routes to, by path, before the plain HTTP handler.
#[derive(Clone, Default)]
pub struct Mounts {
    routes: Vec<(String, bool, Arc<dyn Endpoint>)>,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(p, prefix, _)| (p, prefix)))
            .finish()
    }
}

impl Mounts {
    /// No mounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes requests for exactly `path` to `endpoint`.
    pub fn at(mut self, path: impl Into<String>, endpoint: Arc<dyn Endpoint>) -> Self {
        self.routes.push((path.into(), false, endpoint));
        self
    }

    /// Routes requests for every path starting with `prefix` to `endpoint`.
    pub fn under(mut self, prefix: impl Into<String>, endpoint: Arc<dyn Endpoint>) -> Self {
        self.routes.push((prefix.into(), true, endpoint));
        self
    }

    fn find(&self, path: &str) -> Option<&Arc<dyn Endpoint>> {
        self.routes
            .iter()
            .find(|(p, prefix, _)| {
                if *prefix {
                    path.starts_with(p.as_str())
                } else {
                    path == p
                }
            })
            .map(|(_, _, e)| e)
    }
}

/// [`serve`], with the endpoints of other wire adapters mounted beside the
/// WebSocket path: requests on a mounted path go to its endpoint (whose
/// response may stream), the WebSocket path to `gateway`, everything else
/// to `http`.
pub async fn serve_with(
    listener: TcpListener,
    gateway: Gateway,
    mounts: Mounts,
    http: impl HttpHandler,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mounts = Arc::new(mounts);
    let conns = TaskTracker::new();
    let stop_http = CancellationToken::new();
    let mut signal = pin!(signal);
    // Set when the signal came: keep accepting (health checks, and the
    // refusals of new upgrades) until then, while readiness is off.
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let stop = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut signal, if stop_at.is_none() => {
                let delay = gateway.inner.config.drain_readiness_delay;
                tracing::info!(
                    sockets = gateway.stats().current(),
                    readiness_delay_secs = delay.as_secs_f64(),
                    "draining: not ready, refusing new sockets"
                );
                gateway.begin_drain();
                stop_at = Some(tokio::time::Instant::now() + delay);
                continue;
            }
            () = stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let http = http.clone();
        let stop = stop_http.clone();
        let mounts = mounts.clone();
        conns.spawn(async move {
            let ws_path = gateway.inner.config.ws_path.clone();
            let timeout = gateway.inner.config.handshake_timeout;
            // The same WebSocket service an embedding router mounts.
            let ws = gateway.service();
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let mut ws = ws.clone();
                let http = http.clone();
                let is_ws = req.uri().path() == ws_path;
                let mounted = mounts.find(req.uri().path()).cloned();
                async move {
                    Ok::<_, Infallible>(if is_ws {
                        req.extensions_mut().insert(PeerAddr(peer));
                        match tower_service::Service::call(&mut ws, req).await {
                            Ok(res) => res.map(BodyExt::boxed),
                            Err(never) => match never {},
                        }
                    } else if let Some(endpoint) = mounted {
                        endpoint.call(req, peer).await
                    } else {
                        http.call(req, peer).await.map(BodyExt::boxed)
                    })
                }
            });
            let mut conn = pin!(http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(ServerTcp::new(stream)), svc)
                .with_upgrades());
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(%peer, error = %e, "http connection ended");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let grace = gateway.inner.config.shutdown_grace;
    tracing::info!(
        sockets = gateway.stats().current(),
        spread_secs = gateway.inner.config.drain_spread.as_secs_f64(),
        grace_secs = grace.as_secs_f64(),
        "closing sockets (1012), spread over the drain window"
    );
    gateway.shutdown();
    stop_http.cancel();
    conns.close();
    let all_done = async {
        conns.wait().await;
        gateway.wait_sessions().await;
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            remaining = gateway.stats().current(),
            "shutdown grace elapsed; dropping the rest"
        );
    }
    Ok(())
}
