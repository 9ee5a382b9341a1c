//! Tidings embedded in an axum app.
//!
//! The app has its own routes and state: `POST /login` starts a session
//! (an in-memory store, a cookie), `GET /api/hello` greets the logged-in
//! user, `POST /api/notify/{user}` sends another user a notification. The
//! Tidings WebSocket endpoint is mounted on `/ws` in the same
//! [`axum::Router`], and knows who a socket is by reading the app's own
//! session cookie from the app's own session store ([`SessionResolver`]).
//! App routes publish through the gateway's [`Bridge`], so a notification
//! reaches the recipient's open sockets at once.
//!
//! `docs/embedding.md` walks through it; `src/main.rs` runs it;
//! `tests/app.rs` drives it with real WebSocket clients.
//!
//! The login takes a user name and no password: it stands for whatever
//! authentication your app really has.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Path, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use parking_lot::RwLock;
use serde::Deserialize;
use tidings_bridge::Bridge;
use tidings_core::{ChannelName, Message};
use tidings_identity::{
    BoxFuture, Identity, IdentityResolver, Rejection, Resolution, UpgradeRequest,
};
use tidings_transport::{http::Extensions, Gateway};

/// The name of the app's session cookie.
pub const SESSION_COOKIE: &str = "app_session";

/// The app's session store: session id to user name, in memory.
/// Cheap to clone (clones share the store).
#[derive(Debug, Clone, Default)]
pub struct Sessions(Arc<RwLock<HashMap<String, String>>>);

impl Sessions {
    /// Starts a session for `user`; returns its (random, unguessable) id.
    pub fn create(&self, user: &str) -> String {
        let mut bytes = [0u8; 16];
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.0.write().insert(id.clone(), user.to_string());
        id
    }

    /// The user of session `id`, if it exists.
    pub fn user(&self, id: &str) -> Option<String> {
        self.0.read().get(id).cloned()
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        self.0.write().remove(id);
    }
}

/// The value of cookie `name` in `headers`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Tidings' identity seam, answered from the app's own sessions: the
/// socket is the user whose session cookie it carries; no valid session,
/// no socket (401).
#[derive(Debug, Clone)]
pub struct SessionResolver {
    /// The app's session store.
    pub sessions: Sessions,
}

impl IdentityResolver for SessionResolver {
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            let Some(id) = req.cookie(SESSION_COOKIE) else {
                return Resolution::Rejected(Rejection::unauthorized("log in first"));
            };
            match self.sessions.user(id) {
                Some(user) => Resolution::Identified(Identity::user(user)),
                None => Resolution::Rejected(Rejection::unauthorized("session unknown or ended")),
            }
        })
    }
}

/// The app's state: its sessions, and the gateway it publishes through.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The session store (shared with the [`SessionResolver`]).
    pub sessions: Sessions,
    /// The Tidings gateway mounted on `/ws`.
    pub gateway: Gateway,
}

impl AppState {
    /// The user logged in on this request, if any.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        cookie(headers, SESSION_COOKIE).and_then(|id| self.sessions.user(id))
    }
}

/// The TCP peer as axum's `into_make_service_with_connect_info` records it.
fn connect_info_peer(ext: &Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// The app's state over `bridge`: an empty session store, and a gateway
/// whose resolver reads it (default transport settings and routing rules:
/// a user joins `/app/broadcast` and `/app/user/{user}/notifications`).
pub fn state(bridge: Bridge) -> AppState {
    let sessions = Sessions::default();
    let gateway = Gateway::builder(bridge)
        .resolver(Arc::new(SessionResolver {
            sessions: sessions.clone(),
        }))
        .build();
    AppState { sessions, gateway }
}

/// The app's routes, with Tidings on `/ws`. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the WebSocket
/// endpoint reads the peer address from axum's `ConnectInfo`.
pub fn app(state: AppState) -> Router {
    let ws = state.gateway.service().peer_from(connect_info_peer);
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/hello", get(hello))
        .route("/api/notify/{user}", post(notify))
        .route_service("/ws", ws)
        .with_state(state)
}

/// Serves the app on `listener` until `shutdown` resolves, then closes
/// every socket (1012), waits for the sessions and closes the broker.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gateway = state.gateway.clone();
    let router = app(state);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    // axum's graceful shutdown waits for HTTP requests; upgraded sockets
    // belong to the gateway, which closes them itself.
    gateway.shutdown();
    let grace = gateway.config().shutdown_grace;
    let _ = tokio::time::timeout(grace, gateway.wait_sessions()).await;
    gateway.bridge().close().await;
    Ok(())
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

/// `POST /login {"user":"alice"}`: starts a session, sets the cookie.
async fn login(State(state): State<AppState>, Json(login): Json<Login>) -> Response {
    let user = login.user.trim();
    // The name becomes part of channel names: keep it plain.
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            "user: 1 to 64 letters, digits, _ or -\n",
        )
            .into_response();
    }
    let id = state.sessions.create(user);
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"),
        )],
        format!("logged in as {user}\n"),
    )
        .into_response()
}

/// `POST /logout`: ends the session (open sockets stay until they close).
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.remove(id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; Max-Age=0"),
        )],
        "logged out\n",
    )
        .into_response()
}

/// `GET /api/hello`: an app route that knows the session.
async fn hello(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.user(&headers) {
        Some(user) => format!("hello, {user}\n").into_response(),
        None => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
    }
}

/// `POST /api/notify/{user}` with any JSON body: publishes
/// `{"from": <sender>, "data": <body>}` on the recipient's
/// `/app/user/{user}/notifications` channel, through the gateway's bridge.
async fn notify(
    State(state): State<AppState>,
    Path(to): Path<String>,
    headers: HeaderMap,
    Json(data): Json<serde_json::Value>,
) -> Response {
    let Some(from) = state.user(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
    };
    let Ok(channel) = ChannelName::new(&format!("/app/user/{to}/notifications")) else {
        return (StatusCode::BAD_REQUEST, "invalid user\n").into_response();
    };
    let payload = serde_json::json!({ "from": from, "data": data }).to_string();
    match state
        .gateway
        .bridge()
        .publish(Message::new(channel, payload))
        .await
    {
        Ok(()) => (StatusCode::ACCEPTED, "sent\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "publish failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}
