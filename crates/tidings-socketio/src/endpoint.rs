//! The endpoint: Engine.IO's handshake, long-polling (`GET` to receive,
//! `POST` to send) and WebSocket requests under the path prefix.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tidings_admission::{full_body, text, Admission, Admitted, Body, Endpoint, Refusal};
use tidings_session::{BoxFuture, Context, RejectReason};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    config::SocketIoConfig,
    conn,
    engine::{self, EngineError, SEPARATOR},
    store::{self, Inbound, Mode, Shared, Store},
    ws,
};

/// The Socket.IO endpoint of a gateway (see the [crate docs](crate)).
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
}

struct Inner {
    admission: Admission,
    ctx: Arc<Context>,
    config: Arc<SocketIoConfig>,
    store: Arc<Store>,
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo")
            .field("config", &self.inner.config)
            .field("sessions", &self.inner.store.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint for SocketIo {
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> BoxFuture<'static, Response<Body>> {
        let sio = self.clone();
        Box::pin(async move { sio.handle(req, peer).await })
    }
}

/// The query of an Engine.IO request.
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

fn query(uri: &http::Uri) -> Query {
    let mut q = Query {
        eio: None,
        transport: None,
        sid: None,
    };
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "EIO" => q.eio = Some(v.into_owned()),
            "transport" => q.transport = Some(v.into_owned()),
            "sid" => q.sid = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

fn engine_error(e: EngineError) -> Response<Body> {
    let mut res = Response::new(full_body(e.body()));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn plain(body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full_body(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    res
}

impl SocketIo {
    /// The endpoint over a gateway's admission and session context (the
    /// gateway's `admission()` and `context()`).
    pub fn new(admission: Admission, ctx: Arc<Context>, config: SocketIoConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                admission,
                ctx,
                config: Arc::new(config),
                store: Arc::default(),
            }),
        }
    }

    /// The tunables.
    pub fn config(&self) -> &SocketIoConfig {
        &self.inner.config
    }

    /// How many Engine.IO sessions are open.
    pub fn sessions(&self) -> usize {
        self.inner.store.len()
    }

    /// Answers one request under the path prefix from TCP peer `peer`
    /// (from a router of your own: the request must carry hyper's
    /// `OnUpgrade` for the WebSocket transport).
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let origin = req.headers().clone();
        let mut res = self.route(req, peer).await;
        self.cors(&origin, res.headers_mut());
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }

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

    async fn route<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let q = query(req.uri());
        if req.method() == Method::OPTIONS {
            if self.inner.admission.check_origin(req.headers()).is_err() {
                return text(StatusCode::FORBIDDEN, "origin not allowed\n");
            }
            let mut res = text(StatusCode::NO_CONTENT, "");
            res.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            res.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            return res;
        }
        if q.eio.as_deref() != Some("4") {
            return engine_error(EngineError::UnsupportedVersion);
        }
        let websocket = match q.transport.as_deref() {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return engine_error(EngineError::UnknownTransport),
        };
        let method = req.method().clone();
        match (websocket, q.sid, method) {
            (false, None, Method::GET) => self.handshake(req, peer, false).await,
            (false, None, _) => engine_error(EngineError::BadHandshakeMethod),
            (true, None, Method::GET) => self.handshake(req, peer, true).await,
            (true, Some(sid), Method::GET) => self.upgrade(req, &sid).await,
            (false, Some(sid), Method::GET) => self.poll(&sid).await,
            (false, Some(sid), Method::POST) => self.post(req, &sid).await,
            _ => engine_error(EngineError::BadRequest),
        }
    }

    /// A new session: admission (the same as every wire's), then the open
    /// packet, over long-polling or a WebSocket.
    async fn handshake<B>(
        &self,
        mut req: Request<B>,
        peer: SocketAddr,
        websocket: bool,
    ) -> Response<Body>
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
        let upgrade = if websocket {
            if !fastwebsockets::upgrade::is_upgrade_request(&req) {
                return refused(ticket.refuse(
                    StatusCode::BAD_REQUEST,
                    "transport=websocket needs a WebSocket upgrade",
                    RejectReason::BadHandshake,
                ));
            }
            match fastwebsockets::upgrade::upgrade(&mut req) {
                Ok(pair) => Some(pair),
                Err(e) => {
                    return refused(ticket.refuse(
                        StatusCode::BAD_REQUEST,
                        format!("bad WebSocket handshake: {e}"),
                        RejectReason::BadHandshake,
                    ))
                }
            }
        } else {
            None
        };
        let admitted = match ticket.admit(req.headers().clone(), req.uri().clone()).await {
            Ok(a) => a,
            Err(r) => return refused(r),
        };
        let cfg = &inner.config;
        let sid = store::sid();
        let open = engine::open_packet(
            &sid,
            !websocket,
            cfg.ping_interval.as_millis(),
            cfg.ping_timeout.as_millis(),
            cfg.max_payload,
        );
        let shared = self.start(sid, admitted, websocket);
        match upgrade {
            Some((response, fut)) => {
                inner.admission.sessions().spawn(ws::serve(
                    fut,
                    shared,
                    Some(open),
                    cfg.max_payload,
                    cfg.write_timeout,
                ));
                response.map(|_| full_body(Bytes::new()))
            }
            None => plain(open),
        }
    }

    /// Registers a session and spawns its task.
    fn start(&self, sid: Arc<str>, admitted: Admitted, websocket: bool) -> Arc<Shared> {
        let inner = &self.inner;
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(inner.ctx.config.outbound_queue.max(16));
        let shared = Arc::new(Shared {
            sid,
            inbound: in_tx,
            out_tx,
            outbound: tokio::sync::Mutex::new(out_rx),
            mode: parking_lot::Mutex::new(if websocket {
                Mode::WebSocket
            } else {
                Mode::Polling
            }),
            closed: Default::default(),
        });
        inner.store.insert(shared.clone());
        let span = tracing::debug_span!(
            "socketio",
            sid = %shared.sid,
            peer = %admitted.peer,
            client = %admitted.client_ip,
            user = tracing::field::Empty
        );
        if let Some(user) = &admitted.identity.user {
            span.record("user", user.as_str());
        }
        inner.admission.sessions().spawn(
            conn::run(
                shared.clone(),
                inner.store.clone(),
                inner.ctx.clone(),
                inner.config.clone(),
                admitted,
                in_rx,
            )
            .instrument(span),
        );
        shared
    }

    /// A WebSocket upgrading a long-polling session.
    async fn upgrade<B>(&self, mut req: Request<B>, sid: &str) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(shared) = self.inner.store.get(sid) else {
            return engine_error(EngineError::UnknownSid);
        };
        if shared.mode() != Mode::Polling || !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return engine_error(EngineError::BadRequest);
        }
        let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(_) => return engine_error(EngineError::BadRequest),
        };
        let cfg = &self.inner.config;
        self.inner.admission.sessions().spawn(ws::serve(
            fut,
            shared,
            None,
            cfg.max_payload,
            cfg.write_timeout,
        ));
        response.map(|_| full_body(Bytes::new()))
    }

    /// A long-poll: the packets waiting, or the next one.
    async fn poll(&self, sid: &str) -> Response<Body> {
        let Some(shared) = self.inner.store.get(sid) else {
            return engine_error(EngineError::UnknownSid);
        };
        if shared.mode() == Mode::WebSocket {
            return engine_error(EngineError::BadRequest);
        }
        // One poll at a time: a second one is an error, and ends the
        // session (as the Engine.IO reference server does).
        let Ok(mut rx) = shared.outbound.try_lock() else {
            let _ = shared.inbound.try_send(Inbound::Gone);
            return engine_error(EngineError::BadRequest);
        };
        let first = tokio::select! {
            biased;
            p = rx.recv() => p,
            () = shared.closed.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else {
            return plain(engine::packet(engine::CLOSE));
        };
        let max = self.inner.config.max_payload;
        let mut body = first.to_vec();
        while body.len() < max {
            match rx.try_recv() {
                Ok(p) => {
                    body.push(SEPARATOR);
                    body.extend_from_slice(&p);
                }
                Err(_) => break,
            }
        }
        plain(body)
    }

    /// A long-polling POST: packets from the client.
    async fn post<B>(&self, req: Request<B>, sid: &str) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(shared) = self.inner.store.get(sid) else {
            return engine_error(EngineError::UnknownSid);
        };
        if shared.mode() == Mode::WebSocket {
            return engine_error(EngineError::BadRequest);
        }
        let max = self.inner.config.max_payload;
        let read = tokio::time::timeout(
            self.inner.config.body_timeout,
            Limited::new(req.into_body(), max).collect(),
        )
        .await;
        let body = match read {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                // Beyond maxPayload: the reference server closes the session.
                let _ = shared.inbound.try_send(Inbound::Gone);
                let mut res = text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
                *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return res;
            }
            Err(_) => return engine_error(EngineError::BadRequest),
        };
        let packets = match engine::split_payload(&body) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(why, "closing on a bad polling payload");
                let _ = shared.inbound.try_send(Inbound::Gone);
                return engine_error(EngineError::BadRequest);
            }
        };
        for p in packets {
            if shared.inbound.send(Inbound::Packet(p)).await.is_err() {
                return engine_error(EngineError::UnknownSid);
            }
        }
        let mut res = plain("ok");
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        res
    }
}
