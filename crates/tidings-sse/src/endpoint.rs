//! The endpoint: `GET` opens an event stream, `POST` carries an action into
//! one, `OPTIONS` answers CORS preflights.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tidings_admission::{text, Admission, Body, Endpoint, Refusal};
use tidings_identity::{Resolution, UpgradeRequest};
use tidings_session::{parse_positions, BoxFuture, Context, Positions, RejectReason};
use tracing::Instrument;

use crate::{
    config::SseConfig,
    queue::{self, TrySendError},
    registry::{secret, Entry, Registry},
    stream::{self, EventBody, Start},
};

/// The header an action names its stream with: `<connection>.<token>`,
/// both from the stream's first event.
pub const SESSION_HEADER: &str = "tidings-session";

/// The Server-Sent Events endpoint of a gateway (see the [crate docs](crate)).
/// Mount it on [`SseConfig::path`] (the WebSocket crate's `Mounts::at`), or
/// call [`Sse::handle`] from a router of your own.
#[derive(Clone)]
pub struct Sse {
    inner: Arc<Inner>,
}

struct Inner {
    admission: Admission,
    ctx: Arc<Context>,
    config: Arc<SseConfig>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse")
            .field("config", &self.inner.config)
            .field("streams", &self.inner.registry.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint for Sse {
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, Response<Body>> {
        let sse = self.clone();
        Box::pin(async move { sse.handle(req, peer).await })
    }
}

impl Sse {
    /// The endpoint over a gateway's admission and session context (from
    /// the gateway's `admission()` and `context()`): the same
    /// limits, draining, identity and routing as its WebSockets.
    pub fn new(admission: Admission, ctx: Arc<Context>, config: SseConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                admission,
                ctx,
                config: Arc::new(config),
                registry: Arc::default(),
            }),
        }
    }

    /// The tunables.
    pub fn config(&self) -> &SseConfig {
        &self.inner.config
    }

    /// How many streams are open.
    pub fn streams(&self) -> usize {
        self.inner.registry.len()
    }

    /// Answers one request from TCP peer `peer`, whatever its path.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut res = match *req.method() {
            Method::GET => self.open(req.map(|_| ()), peer).await,
            Method::POST => self.action(req, peer).await,
            Method::OPTIONS => self.preflight(req.headers()),
            _ => {
                let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or OPTIONS\n");
                res.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, OPTIONS"),
                );
                res
            }
        };
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }

    /// CORS for a cross-origin page the Origin policy allows.
    fn cors(&self, req: &HeaderMap, res: &mut HeaderMap) {
        if let Some(origin) = req.get(header::ORIGIN) {
            if self.inner.admission.check_origin(req).is_ok() {
                res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                res.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            res.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        if self.inner.admission.check_origin(headers).is_err() {
            return text(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
        let mut res = text(StatusCode::NO_CONTENT, "");
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, last-event-id, tidings-session"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        self.cors(headers, h);
        res
    }

    /// `GET`: admission, then the stream.
    async fn open(&self, req: Request<()>, peer: SocketAddr) -> Response<Body> {
        let inner = &self.inner;
        let refused = |r: Refusal| r.response(tidings_admission::full_body);
        let ticket = match inner.admission.check(req.headers(), peer) {
            Ok(t) => t,
            Err(r) => return refused(r),
        };
        let max = inner.ctx.config.max_subscriptions;
        let (mut since, channels) = match query(req.uri(), max, inner.config.max_query_channels) {
            Ok(q) => q,
            Err(why) => {
                return refused(ticket.refuse(
                    StatusCode::BAD_REQUEST,
                    why,
                    RejectReason::BadHandshake,
                ))
            }
        };
        // The browser sends back the last `id:` it saw: the positions this
        // stream handed out. A malformed one is not refused (the browser
        // would give up for good): the stream starts without it and says
        // so.
        let mut bad_last_event_id = None;
        if let Some(v) = req.headers().get("last-event-id") {
            match v
                .to_str()
                .map_err(|_| "not text".to_owned())
                .and_then(|t| parse_positions(t, max))
            {
                Ok(p) => since.extend(p),
                Err(why) => bad_last_event_id = Some(why),
            }
        }
        let (parts, ()) = req.into_parts();
        let admitted = match ticket.admit(parts.headers.clone(), parts.uri).await {
            Ok(a) => a,
            Err(r) => return refused(r),
        };
        let id = inner.ctx.bridge.next_connection_id();
        let token = secret();
        let (actions_tx, actions_rx) = queue::actions(inner.config.action_queue);
        inner.registry.insert(
            id,
            Entry {
                token: token.clone(),
                user: admitted.identity.user.as_deref().map(Arc::from),
                actions: actions_tx,
            },
        );
        let span = tracing::debug_span!(
            "sse",
            id,
            peer = %admitted.peer,
            client = %admitted.client_ip,
            user = tracing::field::Empty
        );
        if let Some(user) = &admitted.identity.user {
            span.record("user", user.as_str());
        }
        let (tx, rx) = queue::pipe(4);
        inner.admission.sessions().spawn(
            stream::run(
                inner.ctx.clone(),
                inner.config.clone(),
                inner.registry.clone(),
                admitted,
                Start {
                    id,
                    token,
                    since,
                    channels,
                    bad_last_event_id,
                },
                actions_rx,
                tx,
            )
            .instrument(span),
        );
        let mut res = Response::new(EventBody { rx }.boxed());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        // Proxies must pass events through as they come: nginx buffers
        // responses unless told not to.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.cors(&parts.headers, h);
        res
    }

    /// `POST`: one protocol v1 request into the stream the
    /// `Tidings-Session` header names, from the same origin rules and the
    /// same identity.
    async fn action<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut res = self.action_inner(req, peer).await;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }

    async fn action_inner<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &self.inner;
        let (parts, body) = req.into_parts();
        let fail = |status, code: &str, message: &str| {
            let mut res = json(
                status,
                &serde_json::json!({"error": code, "message": message}),
            );
            self.cors(&parts.headers, res.headers_mut());
            res
        };
        if let Err(e) = inner.admission.check_origin(&parts.headers) {
            return fail(StatusCode::FORBIDDEN, "forbidden", e.as_str());
        }
        let Some(session) = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the Tidings-Session header (connection.token, from the stream's first event) is required",
            );
        };
        // Unknown stream, bad token, malformed header: one answer, so that
        // none says which streams exist.
        let entry = session
            .split_once('.')
            .and_then(|(id, token)| {
                let id = id.strip_prefix(&*inner.ctx.connection_prefix).unwrap_or(id);
                Some((id.parse::<u64>().ok()?, token))
            })
            .and_then(|(id, token)| inner.registry.get(id, token));
        let Some(entry) = entry else {
            return fail(
                StatusCode::FORBIDDEN,
                "forbidden",
                "unknown stream or wrong token",
            );
        };
        // The identity again: credentials this request carries must still
        // be the stream's user (a cookie logged out, or now another
        // user's, is refused). A request without credentials relies on the
        // stream's secret alone (a one-time token cannot be shown twice).
        let check = UpgradeRequest {
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
            peer,
            client_ip: inner.admission.client_ip(peer, &parts.headers),
        };
        match inner.admission.recheck(&check).await {
            Resolution::Identified(who) => {
                if who.user.is_some() && who.user.as_deref() != entry.user.as_deref() {
                    return fail(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "these credentials are not the stream's user",
                    );
                }
            }
            Resolution::Unrecognized => {}
            Resolution::Rejected(r) => {
                return fail(r.status, "identity", &r.reason);
            }
        }
        let max = inner.config.max_action_bytes;
        let read =
            tokio::time::timeout(inner.config.body_timeout, Limited::new(body, max).collect())
                .await;
        let payload = match read {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    &format!("body larger than {max} bytes, or not readable"),
                )
            }
            Err(_) => {
                return fail(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "body not received in time",
                )
            }
        };
        match entry.actions.try_send(payload) {
            Ok(()) => {
                let mut res = json(StatusCode::ACCEPTED, &serde_json::json!({"accepted": true}));
                self.cors(&parts.headers, res.headers_mut());
                res
            }
            Err(TrySendError::Full) => fail(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many actions waiting for this stream",
            ),
            Err(TrySendError::Closed) => fail(
                StatusCode::FORBIDDEN,
                "forbidden",
                "unknown stream or wrong token",
            ),
        }
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut res = text(status, v.to_string());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The stream's query: `since` (positions, as for WebSockets) and the
/// `channel` parameters (at most `max_channels`).
fn query(
    uri: &http::Uri,
    max_positions: usize,
    max_channels: usize,
) -> Result<(Positions, Vec<String>), String> {
    let mut since = None;
    let mut channels = Vec::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "since" => {
                if since.is_some() {
                    return Err("invalid since parameter: given more than once".into());
                }
                since = Some(
                    parse_positions(&v, max_positions)
                        .map_err(|e| format!("invalid since parameter: {e}"))?,
                );
            }
            "channel" => {
                if channels.iter().any(|c| *c == v) {
                    continue;
                }
                if channels.len() == max_channels {
                    return Err(format!("at most {max_channels} channel parameters"));
                }
                channels.push(v.into_owned());
            }
            _ => {}
        }
    }
    Ok((since.unwrap_or_default(), channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_and_bounded() {
        let uri: http::Uri = "/sse?channel=%2Fa&channel=%2Fb&channel=%2Fa&since=%7B%7D"
            .parse()
            .unwrap();
        let (since, channels) = query(&uri, 8, 2).unwrap();
        assert!(since.is_empty());
        assert_eq!(channels, ["/a", "/b"]);
        let uri: http::Uri = "/sse?channel=a&channel=b&channel=c".parse().unwrap();
        assert!(query(&uri, 8, 2).is_err());
        let uri: http::Uri = "/sse?since=nope".parse().unwrap();
        assert!(query(&uri, 8, 2).unwrap_err().contains("since"));
    }
}
