//! A fake web-app backend answering the gateway's whoami calls: a real
//! HTTP/1.1 server (hyper) on a free loopback port, in a tokio task.
//!
//! It records every request it receives ([`Call`]: path, `Cookie` header,
//! all headers, arrival time) and answers per a [`Mode`] that can be
//! switched while the gateway runs: identities by cookie value, a fixed JSON
//! body, a bare status, a delay before answering, or no answer at all.
//! [`Backend::stop`] closes the listener and every open connection, so the
//! gateway's next request finds the port refusing connections.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// How the backend answers whoami requests.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with the identity JSON mapped to the first cookie *value* of the
    /// request's `Cookie` header found in the map (any cookie name); 200
    /// `{"user": null}` when none is.
    Users(HashMap<String, Value>),
    /// 200 with this JSON body, whatever the request.
    Json(Value),
    /// This status with a small JSON error body.
    Status(u16),
    /// Waits this long, then answers as the inner mode does.
    Slow(Duration, Box<Mode>),
    /// Accepts the request and never answers.
    Hang,
    /// An RPC target, answering by path: `/api/echo...` 200 with what it got
    /// (`{"ok":true,"method":..,"path":..,"got":<JSON body>}`), `/api/fail`
    /// 500 with an error body, `/api/slow?ms=N` 200 after N ms, anything
    /// else 404.
    Rpc,
}

impl Mode {
    /// [`Mode::Users`] from `(cookie value, identity JSON)` pairs.
    pub fn users<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Mode {
        Mode::Users(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// [`Mode::Slow`]: `delay`, then `then`.
    pub fn slow(delay: Duration, then: Mode) -> Mode {
        Mode::Slow(delay, Box::new(then))
    }
}

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request method.
    pub method: String,
    /// The request path (with the query, if any).
    pub path: String,
    /// The `Cookie` header, if the request had one (several are joined with `; `).
    pub cookie: Option<String>,
    /// Every header, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// When the request arrived.
    pub at: Instant,
}

impl Call {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    mode: Mutex<Mode>,
    calls: Mutex<Vec<Call>>,
}

/// A running fake backend. Stopped on drop.
pub struct Backend {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend answering per `mode` on a free loopback port.
    pub async fn start(mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            calls: Mutex::new(Vec::new()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let state = shared.clone();
        tokio::spawn(async move {
            // Connection tasks live in the set: dropping it (when stopped)
            // aborts them, closing kept-alive connections too.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(state.clone(), req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        Backend { addr, shared, stop }
    }

    /// `http://127.0.0.1:<port>`: a base URL, for example `rpc.url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/whoami`: the gateway's `identity.cookie_proxy.url`.
    pub fn url(&self) -> String {
        format!("http://{}/whoami", self.addr)
    }

    /// Switches how later requests are answered (requests already waiting
    /// in [`Mode::Slow`] answer per the mode they started with).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Every request received so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// How many requests were received so far.
    pub fn call_count(&self) -> usize {
        self.shared.calls.lock().unwrap().len()
    }

    /// The most recent request. Panics if there was none.
    pub fn last_call(&self) -> Call {
        self.calls().pop().expect("the backend received no request")
    }

    /// Forgets the recorded requests.
    pub fn clear_calls(&self) {
        self.shared.calls.lock().unwrap().clear();
    }

    /// Closes the listener and every open connection, and waits until the
    /// port refuses connections.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backend still accepts connections after stop()"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn handle(
    state: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let cookies: Vec<&str> = req
        .headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let method = req.method().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let cookie = (!cookies.is_empty()).then(|| cookies.join("; "));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let call = Call {
        method,
        path,
        cookie,
        headers,
        body,
        at: Instant::now(),
    };
    let cookie = call.cookie.clone();
    let this = call.clone();
    state.calls.lock().unwrap().push(call);
    let mut mode = state.mode.lock().unwrap().clone();
    loop {
        match mode {
            Mode::Slow(delay, then) => {
                tokio::time::sleep(delay).await;
                mode = *then;
            }
            Mode::Hang => std::future::pending::<()>().await,
            Mode::Rpc => return Ok(rpc_answer(&this).await),
            Mode::Json(body) => return Ok(respond(200, &body)),
            Mode::Status(status) => {
                return Ok(respond(
                    status,
                    &json!({"error": "status", "status": status}),
                ))
            }
            Mode::Users(users) => {
                let found = cookie
                    .as_deref()
                    .unwrap_or("")
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find_map(|(_, value)| users.get(value));
                return Ok(respond(200, found.unwrap_or(&json!({"user": null}))));
            }
        }
    }
}

/// [`Mode::Rpc`]'s answer to `call`.
async fn rpc_answer(call: &Call) -> Response<Full<Bytes>> {
    let path = call.path.as_str();
    if path.starts_with("/api/echo") {
        let got: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        respond(
            200,
            &json!({"ok": true, "method": call.method, "path": path, "got": got}),
        )
    } else if path == "/api/fail" {
        respond(
            500,
            &json!({"error": "boom", "detail": "the backend failed"}),
        )
    } else if let Some(ms) = path.strip_prefix("/api/slow?ms=") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        respond(200, &json!({"slow": true}))
    } else {
        respond(404, &json!({"error": "not found"}))
    }
}

fn respond(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}
