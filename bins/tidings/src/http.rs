//! The plain HTTP endpoints: the demo page, health, readiness, publishing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use serde::Deserialize;
use serde_json::value::RawValue;
use tidings_core::{ChannelName, Message};
use tidings_identity::{TokenResolver, TokenStore};
use tidings_transport::{text_response, Gateway, HttpResponse};

use crate::config::Config;

const DEMO_PAGE: &str = include_str!("demo.html");

/// The admin page (`GET /admin`): plain HTML on the API.
const ADMIN_PAGE: &str = include_str!("admin.html");

/// The browser client, `clients/js/tidings.js` (`src/tidings.js` is a symlink
/// to it, so that `cargo package` takes the file into the crate).
const CLIENT_JS: &str = include_str!("tidings.js");

/// FNV-1a of the client, computed at compile time: its ETag changes whenever
/// the file does, also between builds of the same version.
const CLIENT_JS_HASH: u64 = {
    let bytes = CLIENT_JS.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
};

/// Minting one-time tokens (`POST /api/tokens`), when the token resolver is on.
pub(crate) struct Tokens {
    pub(crate) resolver: Arc<TokenResolver>,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) max_ttl: Duration,
}

/// The backend's control API (`/api/disconnect`, ...).
pub(crate) struct Control {
    /// Commands go out on the control channel to every gateway.
    pub(crate) channel: tidings_control::ControlChannel,
    /// A user's connections on every gateway, by asking them.
    pub(crate) surveys: Arc<tidings_control::Surveys>,
    /// Presence on channels whose rule asks for it.
    pub(crate) channels: Arc<tidings_control::PresenceTracker>,
    /// Which channels have presence, and what kind.
    pub(crate) presence_lookup: tidings_control::PresenceLookup,
    /// This gateway's connections.
    pub(crate) registry: Arc<tidings_control::Registry>,
    /// This gateway's id.
    pub(crate) gateway_id: String,
    /// The webhook sender, when on.
    pub(crate) webhooks: Option<Arc<tidings_control::Webhooks>>,
}

/// What the endpoints need.
pub(crate) struct Endpoints {
    pub(crate) control: Option<Control>,
    /// Serve the admin page.
    pub(crate) admin_page: bool,
    pub(crate) gateway: Gateway,
    pub(crate) tokens: Option<Tokens>,
    pub(crate) cookie_proxy: Option<Arc<tidings_identity::CookieProxy>>,
    pub(crate) api_key: Option<String>,
    pub(crate) allow_local_without_key: bool,
    pub(crate) max_body: usize,
    /// Longest wait for a request body once its headers are in
    /// (`websocket.handshake_timeout_secs`, as for the headers).
    pub(crate) body_timeout: Duration,
}

impl Endpoints {
    pub(crate) fn new(
        config: &Config,
        gateway: Gateway,
        tokens: Option<Tokens>,
        cookie_proxy: Option<Arc<tidings_identity::CookieProxy>>,
        control: Option<Control>,
    ) -> Arc<Self> {
        Arc::new(Self {
            control,
            admin_page: config.control.admin_page,
            tokens,
            cookie_proxy,
            api_key: config.api_key.as_ref().map(|k| k.0.trim().to_owned()),
            allow_local_without_key: config.api.allow_local_without_key,
            max_body: config.api.max_body_bytes,
            body_timeout: gateway.config().handshake_timeout,
            gateway,
        })
    }

    /// Routes one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/") => demo_page(),
            (&Method::GET | &Method::HEAD, "/admin") if self.admin_page => admin_page(),
            (&Method::GET | &Method::HEAD, "/tidings.js") => client_js(&req),
            (&Method::GET | &Method::HEAD, "/healthz") => text_response(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz") => self.readyz(),
            (&Method::POST, "/api/publish") => self.publish(req, peer).await,
            (&Method::POST, "/api/tokens") => self.mint_token(req, peer).await,
            (
                &Method::POST,
                path @ ("/api/disconnect" | "/api/subscribe" | "/api/unsubscribe" | "/api/refresh"),
            ) => {
                let op = path.trim_start_matches("/api/").to_owned();
                self.command(req, peer, &op).await
            }
            (&Method::GET, "/api/connections") => self.connections(req, peer).await,
            (&Method::GET, "/api/presence") => self.presence(req, peer).await,
            (&Method::GET, "/admin/state") => self.admin_state(&req, peer),
            (&Method::GET, "/metrics") => {
                if let Err(why) = self.authorize(&req, peer) {
                    return unauthorized(why);
                }
                let internal = usize::from(self.control.is_some());
                let surveys = self.control.as_ref().map(|c| c.surveys.stats());
                let body = crate::metrics::render(
                    &self.gateway,
                    self.cookie_proxy.as_deref(),
                    surveys,
                    internal,
                );
                let mut res = text_response(StatusCode::OK, body);
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            (&Method::GET | &Method::HEAD, "/favicon.ico") => {
                let mut res = text_response(StatusCode::NO_CONTENT, "");
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                );
                res
            }
            (
                _,
                "/" | "/tidings.js" | "/healthz" | "/readyz" | "/api/publish" | "/api/tokens"
                | "/api/disconnect" | "/api/subscribe" | "/api/unsubscribe" | "/api/refresh"
                | "/api/connections" | "/api/presence" | "/metrics",
            ) => {
                let mut res = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed",
                );
                let allow = if matches!(req.uri().path(), "/api/connections" | "/api/presence") {
                    "GET"
                } else if req.uri().path().starts_with("/api/") {
                    "POST"
                } else if req.uri().path() == "/metrics" {
                    "GET"
                } else {
                    "GET, HEAD"
                };
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                res
            }
            _ => text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn readyz(&self) -> HttpResponse {
        if self.gateway.is_shutting_down() {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        } else if !self.gateway.bridge().history_ready() {
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "history unavailable (its Redis function library is not loaded yet)\n",
            )
        } else if !self.gateway.bridge().is_ready() {
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} broker unavailable\n",
                    self.gateway.bridge().broker_name()
                ),
            )
        } else if self.tokens.as_ref().is_some_and(|t| !t.store.is_ready()) {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "token store unavailable\n")
        } else {
            text_response(StatusCode::OK, "ready\n")
        }
    }

    /// Whether the request may publish; the error response if not.
    fn authorize(&self, req: &Request<Incoming>, peer: SocketAddr) -> Result<(), &'static str> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme name is case-insensitive (RFC 9110 11.1).
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| &v[7..])
            })
            .map(str::trim);
        match (&self.api_key, bearer) {
            (Some(key), Some(given)) if constant_time_eq(key.as_bytes(), given.as_bytes()) => {
                Ok(())
            }
            (Some(_), _) => Err("a valid `Authorization: Bearer <api_key>` header is required"),
            (None, _) => {
                let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
                    .iter()
                    .any(|h| req.headers().contains_key(*h));
                // `::ffff:127.0.0.1` (a dual-stack listener) is loopback too.
                if self.allow_local_without_key
                    && peer.ip().to_canonical().is_loopback()
                    && !proxied
                {
                    Ok(())
                } else {
                    Err("no api_key is configured, so only local processes may publish; set TIDINGS_API_KEY")
                }
            }
        }
    }

    async fn publish(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        if let Err(why) = self.authorize(&req, peer) {
            return unauthorized(why);
        }
        let body = match self.json_body(req).await {
            Ok(body) => body,
            Err(res) => return res,
        };
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PublishBody {
            channel: String,
            data: Box<RawValue>,
            /// A connection id that must not receive it (the sender's).
            #[serde(default)]
            exclude: Option<String>,
        }
        let parsed: PublishBody = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    &format!("body must be {{\"channel\": string, \"data\": any JSON}}: {e}"),
                )
            }
        };
        let channel = match ChannelName::new(&parsed.channel) {
            Ok(c) => c,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, "invalid_channel", &e.to_string())
            }
        };
        let payload = match &parsed.exclude {
            Some(conn) if conn.is_empty() || conn.len() > 128 => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    "\"exclude\" must be a connection id of 1 to 128 bytes",
                )
            }
            Some(conn) => {
                tidings_core::protocol::SenderEnvelope::wrap_excluding(None, conn, &parsed.data)
            }
            None => Bytes::from(String::from(Box::<str>::from(parsed.data))),
        };
        match self
            .gateway
            .bridge()
            .publish_with_position(Message::new(channel, payload))
            .await
        {
            Ok(None) => json_response(StatusCode::ACCEPTED, r#"{"status":"accepted"}"#.into()),
            // A channel with history: where the publication is in it.
            Ok(Some(position)) => json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({
                    "status": "accepted",
                    "offset": position.offset,
                    "epoch": position.epoch,
                })
                .to_string(),
            ),
            Err(e @ tidings_bridge::BrokerError::Refused(_)) => {
                json_error(StatusCode::FORBIDDEN, "forbidden", &e.to_string())
            }
            Err(e) => unavailable("broker_unavailable", &e.to_string()),
        }
    }
}

impl Endpoints {
    /// The body of a JSON request, or the error response.
    async fn json_body(&self, req: Request<Incoming>) -> Result<Bytes, HttpResponse> {
        // A JSON content type forces a CORS preflight, so no foreign web page
        // can make a visitor's browser call the API.
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json",
            ));
        }
        // A declared length over the limit is refused on the header alone,
        // before a byte of the body is read (or waited for).
        if req.body().size_hint().lower() > self.max_body as u64 {
            return Err(too_large(self.max_body));
        }
        // A client that declares a body must send it in time: a stalled one
        // would otherwise hold the connection (and its task) for good.
        let read = Limited::new(req.into_body(), self.max_body).collect();
        let Ok(read) = tokio::time::timeout(self.body_timeout, read).await else {
            return Err(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {} s",
                    self.body_timeout.as_secs_f64()
                ),
            ));
        };
        match read {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(self.max_body)),
            Err(_) => Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read the request body",
            )),
        }
    }

    /// The control API's preamble: the request is authorized and the control
    /// API is on (404 `control_disabled` otherwise).
    fn control_api(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<&Control, Box<HttpResponse>> {
        if let Err(why) = self.authorize(req, peer) {
            return Err(Box::new(unauthorized(why)));
        }
        self.control.as_ref().ok_or_else(|| {
            Box::new(json_error(
                StatusCode::NOT_FOUND,
                "control_disabled",
                "the control API is off",
            ))
        })
    }

    /// `POST /api/<op>`: a control command, published on the control
    /// channel so that every gateway (this one too) applies it.
    async fn command(&self, req: Request<Incoming>, peer: SocketAddr, op: &str) -> HttpResponse {
        let control = match self.control_api(&req, peer) {
            Ok(control) => control,
            Err(res) => return *res,
        };
        let body = match self.json_body(req).await {
            Ok(body) => body,
            Err(res) => return res,
        };
        let command = match tidings_control::Command::parse_as(Some(op), &body) {
            Ok(c) => c,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_command", &e.0),
        };
        match control.channel.publish(&command).await {
            Ok(()) => json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({"status": "accepted", "op": command.op()}).to_string(),
            ),
            Err(e) => unavailable("broker_unavailable", &e.to_string()),
        }
    }

    /// `GET /api/connections?user=<id>`: the user's connections on every
    /// gateway (a survey: each live gateway answers from its registry).
    async fn connections(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let control = match self.control_api(&req, peer) {
            Ok(control) => control,
            Err(res) => return *res,
        };
        let Some(user) = query_value(&req, "user") else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "name the user: /api/connections?user=<id>",
            );
        };
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "a user id is 1 to 256 bytes without control characters",
            );
        }
        match control.surveys.connections(&user).await {
            Ok(answer) => {
                let mut body = serde_json::json!({
                    "user": user,
                    "connections": answer.connections.iter().map(|c| serde_json::json!({
                        "conn": c.conn,
                        "gateway": c.gateway,
                        "since_ms": c.since_ms,
                    })).collect::<Vec<_>>(),
                    "gateways": answer.answered.len(),
                });
                if !answer.missing.is_empty() {
                    body["missing"] = serde_json::json!(answer.missing);
                }
                json_response(StatusCode::OK, body.to_string())
            }
            Err(e) => unavailable("broker_unavailable", &e.to_string()),
        }
    }

    /// `GET /api/presence?channel=<name>`: who is on a channel with
    /// presence, on every gateway (counts only for `presence = "counts"`).
    async fn presence(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let control = match self.control_api(&req, peer) {
            Ok(control) => control,
            Err(res) => return *res,
        };
        let channel = query_value(&req, "channel").and_then(|c| ChannelName::new(&c).ok());
        let Some(channel) = channel else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "name a valid channel: /api/presence?channel=<name>",
            );
        };
        let Some(mode) = (control.presence_lookup)(&channel) else {
            return json_error(
                StatusCode::NOT_FOUND,
                "no_presence",
                "no routing rule keeps presence on this channel",
            );
        };
        let key = tidings_control::PresenceKey::channel(&channel);
        let stats = match control.channels.stats(&key).await {
            Ok(s) => s,
            Err(e) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "presence_unavailable",
                    &e.to_string(),
                )
            }
        };
        let mut body = serde_json::json!({
            "channel": channel.as_str(),
            "connections": stats.connections,
            "users": stats.users,
        });
        if mode == tidings_routing::PresenceMode::Full {
            match control.channels.list(&key).await {
                Ok(entries) => {
                    let mut members: Vec<serde_json::Value> = entries
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "conn": e.conn,
                                "user": e.user,
                                "info": e.info,
                                "gateway": e.gateway,
                            })
                        })
                        .collect();
                    members.sort_by(|a, b| a["conn"].as_str().cmp(&b["conn"].as_str()));
                    body["members"] = serde_json::Value::Array(members);
                }
                Err(e) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "presence_unavailable",
                        &e.to_string(),
                    )
                }
            }
        }
        json_response(StatusCode::OK, body.to_string())
    }

    /// `GET /admin/state`: this gateway at a glance, for the admin page:
    /// its id, its connections (at most 500), its channels with their
    /// local subscriber counts, the webhook counters.
    fn admin_state(&self, req: &Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        if let Err(why) = self.authorize(req, peer) {
            return unauthorized(why);
        }
        let Some(control) = &self.control else {
            return json_error(
                StatusCode::NOT_FOUND,
                "control_disabled",
                "the control API is off",
            );
        };
        let hub = self.gateway.bridge().hub();
        let mut channels: Vec<serde_json::Value> = hub
            .topics()
            .iter()
            .filter(|t| **t != tidings_core::Topic::Channel(control.channel.channel().clone()))
            .take(500)
            .map(|t| {
                let presence = match t {
                    tidings_core::Topic::Channel(c) => (control.presence_lookup)(c),
                    tidings_core::Topic::Pattern(_) => None,
                };
                serde_json::json!({
                    "topic": t.to_string(),
                    "subscribers": hub.subscriber_count(t),
                    "presence": presence,
                })
            })
            .collect();
        channels.sort_by(|a, b| a["topic"].as_str().cmp(&b["topic"].as_str()));
        let webhooks = control.webhooks.as_ref().map(|w| {
            use std::sync::atomic::Ordering::Relaxed;
            let s = w.stats();
            serde_json::json!({
                "queued": s.queued.load(Relaxed),
                "delivered": s.delivered.load(Relaxed),
                "failed": s.failed.load(Relaxed),
                "dropped": s.dropped.load(Relaxed),
                "retries": s.retries.load(Relaxed),
            })
        });
        json_response(
            StatusCode::OK,
            serde_json::json!({
                "gateway": control.gateway_id,
                "connections": control.registry.len(),
                "users": control.registry.users(),
                "sockets": control.registry.describe(500),
                "channels": channels,
                "webhooks": webhooks,
            })
            .to_string(),
        )
    }

    /// `POST /api/tokens`: stores a one-time token for an identity, for
    /// backends that do not write to Redis themselves (or run without it).
    async fn mint_token(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        if let Err(why) = self.authorize(&req, peer) {
            return unauthorized(why);
        }
        let Some(tokens) = &self.tokens else {
            return json_error(
                StatusCode::NOT_FOUND,
                "tokens_disabled",
                "the token resolver is not enabled (identity.resolvers)",
            );
        };
        let body = match self.json_body(req).await {
            Ok(body) => body,
            Err(res) => return res,
        };
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MintBody {
            identity: tidings_core::Identity,
            #[serde(default = "default_ttl")]
            ttl_secs: f64,
        }
        fn default_ttl() -> f64 {
            5.0
        }
        let parsed: MintBody = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    &format!(
                    "body must be {{\"identity\": {{\"user\": ...}}, \"ttl_secs\": number}}: {e}"
                ),
                )
            }
        };
        if !(parsed.ttl_secs.is_finite() && parsed.ttl_secs > 0.0) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "ttl_secs must be positive",
            );
        }
        let ttl = Duration::from_secs_f64(parsed.ttl_secs.min(1e6)).min(tokens.max_ttl);
        let token = tidings_identity::token::new_token();
        let value = serde_json::to_vec(&parsed.identity).expect("identities serialize");
        match tokens
            .store
            .store(&tokens.resolver.key(&token), Bytes::from(value), ttl)
            .await
        {
            Ok(()) => json_response(
                StatusCode::CREATED,
                serde_json::json!({"token": token, "expires_in": ttl.as_secs_f64()}).to_string(),
            ),
            Err(e) => unavailable("store_unavailable", &e.to_string()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, body: String) -> HttpResponse {
    let mut res = http::Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn json_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    json_response(status, body)
}

/// 503 with `Retry-After: 1`: Redis (the broker or the token store) is
/// down; the caller may retry.
fn unavailable(code: &str, message: &str) -> HttpResponse {
    let mut res = json_error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

fn too_large(max: usize) -> HttpResponse {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("body larger than {max} bytes"),
    )
}

fn unauthorized(message: &str) -> HttpResponse {
    let mut res = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn demo_page() -> HttpResponse {
    html_page(DEMO_PAGE)
}

/// `GET /admin`: the page holds no data; what it shows comes from the API,
/// with the key the visitor types.
fn admin_page() -> HttpResponse {
    let mut res = html_page(ADMIN_PAGE);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    res
}

fn html_page(page: &'static str) -> HttpResponse {
    let mut res = http::Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The ETag of `/tidings.js`: the gateway's version and the file's hash.
fn client_js_etag() -> String {
    format!("\"{}-{CLIENT_JS_HASH:016x}\"", env!("CARGO_PKG_VERSION"))
}

/// `GET /tidings.js`: the browser client, revalidated by ETag (`304` when
/// `If-None-Match` names it).
fn client_js(req: &Request<Incoming>) -> HttpResponse {
    let etag = client_js_etag();
    let matches = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    let mut res = if matches {
        let mut res = http::Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let mut res = http::Response::new(Full::new(Bytes::from_static(CLIENT_JS.as_bytes())));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        res.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res
    };
    // A public file: pages on other origins may import it as a module
    // (module scripts are fetched with CORS).
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    let h = res.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("an ETag is ASCII"),
    );
    // Cached, and revalidated on each use (a 304 when unchanged), so an
    // upgraded gateway serves its new client at once.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-cache"),
    );
    res
}

/// `%XX` and `+` decoding of a query value; `None` when it is not UTF-8.
fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The first value of `name` in the request's query, decoded.
fn query_value(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| percent_decode(v))
    })
}
