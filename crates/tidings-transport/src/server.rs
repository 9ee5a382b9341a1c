//! The listener: HTTP/1.1 connections, WebSocket upgrades, shutdown.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::pin, sync::Arc};

use crate::{
    limits::LimitHit,
    rpc::RpcHandler,
    stats::{IdentityOutcome, RejectReason},
};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tidings_bridge::Bridge;
use tidings_identity::{Anonymous, IdentityResolver, Rejection, Resolution, UpgradeRequest};
use tidings_routing::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::TransportConfig, stats::TransportStats, ws, BoxFuture};
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
    pub(crate) resolver: Arc<dyn IdentityResolver>,
    pub(crate) bridge: Bridge,
    pub(crate) stats: Arc<TransportStats>,
    pub(crate) rpc: Option<Arc<dyn RpcHandler>>,
    /// The (empty) credentials of every socket when RPC is off.
    pub(crate) no_credentials: Arc<http::HeaderMap>,
    /// Cancelled when draining begins: readiness off, upgrades refused.
    pub(crate) draining: CancellationToken,
    /// Cancelled when sockets must go: each session closes with 1012 at its
    /// own moment within the drain spread.
    pub(crate) shutdown: CancellationToken,
    /// Live connection counts for the limits.
    pub(crate) counts: Arc<crate::limits::Counts>,
    pub(crate) sessions: TaskTracker,
    /// What sessions get: a narrow view of the above.
    pub(crate) session: Arc<Context>,
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
        Gateway {
            inner: Arc::new(Inner {
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
                config: Arc::new(config),
                resolver: self.resolver,
                bridge: self.bridge,
                stats,
                rpc: self.rpc,
                no_credentials: Arc::default(),
                draining: CancellationToken::new(),
                shutdown,
                counts: Arc::default(),
                sessions: TaskTracker::new(),
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
        self.inner.draining.is_cancelled()
    }

    /// Begins draining: `/readyz` turns not ready and new upgrades are
    /// refused with 503; open sockets stay.
    pub fn begin_drain(&self) {
        self.inner.draining.cancel();
    }

    /// Closes every socket (with 1012, spread over `drain_spread`) and
    /// refuses new upgrades.
    pub fn shutdown(&self) {
        self.inner.draining.cancel();
        self.inner.shutdown.cancel();
    }

    /// Waits until every session has ended (after [`Gateway::shutdown`]).
    pub async fn wait_sessions(&self) {
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
    }

    /// Whether `origin` may open a socket, given the request's `Host`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let allowed = &self.inner.config.allowed_origins;
        if allowed.iter().any(|a| a == "*") {
            return true;
        }
        if !allowed.is_empty() {
            return allowed
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        }
        // Same origin only: the Origin's host and port must be the Host's
        // (a missing port is the scheme's default).
        same_origin(origin, host)
    }

    /// Answers a request on the WebSocket path from TCP peer `peer`:
    /// refuses it with a clear status, or switches protocols and starts a
    /// session. The request must carry hyper's `OnUpgrade` in its
    /// extensions (hyper and axum put it there); its body is not read.
    /// [`Gateway::service`] wraps this in a `tower` service.
    pub async fn upgrade<B>(&self, mut req: Request<B>, peer: SocketAddr) -> HttpResponse {
        let stats = &self.inner.stats;
        let refuse = |status, why: &str, reason: RejectReason| {
            stats.rejected(reason);
            tracing::debug!(%peer, status = %status, reason = why, "upgrade refused");
            text_response(status, format!("{why}\n"))
        };
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            let mut res = refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket only",
                RejectReason::NotUpgrade,
            );
            res.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return res;
        }
        // HTTP/1.0 has no upgrade mechanism (RFC 6455 requires HTTP/1.1):
        // hyper would answer 101 and then close the connection. Refuse it
        // before anything else is looked at.
        if req.version() < http::Version::HTTP_11 {
            return refuse(
                StatusCode::BAD_REQUEST,
                "WebSocket needs HTTP/1.1; this request is HTTP/1.0",
                RejectReason::BadHandshake,
            );
        }
        if self.is_shutting_down() {
            let mut res = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
                RejectReason::ShuttingDown,
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return res;
        }
        // One browser request carries at most one Origin: two are forged,
        // and whichever one a check read, the other could be the real one.
        if req
            .headers()
            .get_all(header::ORIGIN)
            .iter()
            .nth(1)
            .is_some()
        {
            return refuse(
                StatusCode::FORBIDDEN,
                "more than one Origin header",
                RejectReason::Origin,
            );
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            if !origin.to_str().is_ok_and(|o| self.origin_allowed(o, host)) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "origin not allowed",
                    RejectReason::Origin,
                );
            }
        }
        let limits = &self.inner.config.limits;
        let client_ip = limits.client_ip(peer.ip(), req.headers());
        let mut slot = match self.inner.counts.admit(limits, client_ip) {
            Ok(slot) => slot,
            Err(LimitHit::Total) => {
                let mut res = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server at connection capacity",
                    RejectReason::LimitTotal,
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return res;
            }
            Err(_) => {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                    RejectReason::LimitPerIp,
                )
            }
        };
        // Positions a reconnecting client sends (`since`): malformed ones
        // are refused here, before any credential is spent.
        let since = match since_param(req.uri(), self.inner.config.max_subscriptions) {
            Ok(since) => since,
            Err(why) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid since parameter: {why}"),
                    RejectReason::BadHandshake,
                )
            }
        };
        // A broken handshake is refused before any credential is looked
        // at (a one-time token must not be spent on it).
        let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("bad WebSocket handshake: {e}"),
                    RejectReason::BadHandshake,
                )
            }
        };
        // The resolver gets the real TCP peer (to decide whether to believe
        // headers a proxy sets) and, separately, the client address derived
        // through the trusted proxies' X-Forwarded-For.
        let parts = UpgradeRequest {
            headers: req.headers().clone(),
            uri: req.uri().clone(),
            peer,
            client_ip,
        };
        let started = std::time::Instant::now();
        let resolution = self.inner.resolver.resolve(&parts).await;
        let took = started.elapsed();
        let identity = match resolution {
            Resolution::Identified(identity) => {
                let outcome = if identity.is_anonymous() {
                    IdentityOutcome::Anonymous
                } else {
                    IdentityOutcome::User
                };
                stats.identity(outcome, took);
                identity
            }
            Resolution::Unrecognized => {
                stats.identity(IdentityOutcome::Refused, took);
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "no credentials",
                    RejectReason::Identity,
                );
            }
            Resolution::Rejected(Rejection {
                status,
                reason,
                retry_after,
            }) => {
                let unavailable = status == StatusCode::SERVICE_UNAVAILABLE;
                stats.identity(
                    if unavailable {
                        IdentityOutcome::Unavailable
                    } else {
                        IdentityOutcome::Refused
                    },
                    took,
                );
                let mut res = refuse(
                    status,
                    &reason,
                    if unavailable {
                        RejectReason::IdentityUnavailable
                    } else {
                        RejectReason::Identity
                    },
                );
                if let Some(after) = retry_after {
                    res.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(after.as_secs().max(1)),
                    );
                }
                return res;
            }
        };
        if let Some(user) = &identity.user {
            if slot.for_user(limits, user).is_err() {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this user",
                    RejectReason::LimitPerUser,
                );
            }
        }
        // What RPC calls will carry: only what the handler asks to keep
        // (and nothing at all, not even an allocation, without RPC).
        let credentials = match &self.inner.rpc {
            Some(rpc) => Arc::new(rpc.credentials(&parts.headers)),
            None => self.inner.no_credentials.clone(),
        };
        self.inner.sessions.spawn(ws::run(
            fut,
            self.inner.session.clone(),
            self.inner.config.clone(),
            Arc::new(identity),
            credentials,
            since,
            parts.peer,
            parts.client_ip,
            slot,
        ));
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

/// Whether `origin` (`scheme://host[:port]`) names the same host and port
/// as the `Host` header, ports defaulting to the origin scheme's.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let split = |a: &str| -> Option<(String, u16)> {
        // [v6]:port, [v6], name:port, name
        let (name, port) = if let Some(rest) = a.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            (format!("[{v6}]"), after.strip_prefix(':'))
        } else {
            match a.rsplit_once(':') {
                Some((n, p)) => (n.to_string(), Some(p)),
                None => (a.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        Some((name.to_ascii_lowercase(), port))
    };
    match (split(authority), split(host)) {
        (Some(o), Some(h)) => o == h,
        _ => false,
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
        conns.spawn(async move {
            let ws_path = gateway.inner.config.ws_path.clone();
            let timeout = gateway.inner.config.handshake_timeout;
            // The same WebSocket service an embedding router mounts.
            let ws = gateway.service();
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let mut ws = ws.clone();
                let http = http.clone();
                let is_ws = req.uri().path() == ws_path;
                async move {
                    Ok::<_, Infallible>(if is_ws {
                        req.extensions_mut().insert(PeerAddr(peer));
                        match tower_service::Service::call(&mut ws, req).await {
                            Ok(res) => res,
                            Err(never) => match never {},
                        }
                    } else {
                        http.call(req, peer).await
                    })
                }
            });
            let mut conn = pin!(http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), svc)
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

#[cfg(test)]
mod origin_tests {
    use super::same_origin;

    #[test]
    fn same_origin_normalises_default_ports() {
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(same_origin("https://example.com", Some("example.com")));
        assert!(same_origin("https://example.com", Some("example.com:443")));
        assert!(same_origin("http://Example.COM", Some("example.com:80")));
        assert!(same_origin("http://[::1]:8080", Some("[::1]:8080")));
        assert!(!same_origin("https://example.com", Some("example.com:80")));
        assert!(!same_origin(
            "http://127.0.0.1:8081",
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin("http://evil.example", Some("example.com")));
        assert!(!same_origin("null", Some("example.com")));
        assert!(!same_origin("http://example.com", None));
        assert!(!same_origin("ftp://example.com", Some("example.com")));
    }
}
