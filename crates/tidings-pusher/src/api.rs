//! Pusher's HTTP API under `/apps/{id}/`: triggering events (`events`,
//! `batch_events`), querying channels (`channels`, `channels/{name}`,
//! `channels/{name}/users`) and closing a user's connections
//! (`users/{id}/terminate_connections`), every request signed with the
//! app's secret.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use tidings_admission::{full_body, Body};
use tidings_control::{Command, PresenceKey, Target};
use tidings_core::{protocol::SenderEnvelope, ChannelName, Message};

use crate::{
    config::{App, PusherConfig},
    shared::{user_key, Inner},
    sign, wire,
};

/// Most channels one event goes to (Pusher's limit).
const MAX_CHANNELS: usize = 100;
/// Most events in one batch (Pusher's limit).
const MAX_BATCH: usize = 10;
/// Longest wait for a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON response.
fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    let mut res = Response::new(full_body(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// An error response: `{"error": why}`.
fn error(status: StatusCode, why: impl std::fmt::Display) -> Response<Body> {
    reply(status, &json!({ "error": why.to_string() }))
}

/// One event to trigger.
#[derive(Deserialize)]
struct Trigger {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Trigger>,
}

/// Answers one API request; `rest` is the path after `/apps/`.
pub(crate) async fn handle<B>(inner: &Inner, req: Request<B>, rest: &str) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cfg = &inner.config;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(app) = cfg.app_by_id(id).cloned() else {
        return error(StatusCode::NOT_FOUND, "unknown app");
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let limit = cfg.max_event_bytes * (MAX_BATCH + 1) + 64 * 1024;
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = sign::check_request(
        &app,
        method.as_str(),
        &path,
        &query,
        &body,
        now,
        cfg.timestamp_window.as_secs(),
    ) {
        tracing::debug!(app = %app.id, error = %e, "pusher API request refused");
        return error(StatusCode::UNAUTHORIZED, e);
    }
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match (&method, tail) {
        (&Method::POST, "events") => match serde_json::from_slice::<Trigger>(&body) {
            Ok(t) => match trigger(inner, &app, t).await {
                Ok(()) => reply(StatusCode::OK, &json!({})),
                Err((status, why)) => error(status, why),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, format!("bad event: {e}")),
        },
        (&Method::POST, "batch_events") => match serde_json::from_slice::<Batch>(&body) {
            Ok(b) if b.batch.len() > MAX_BATCH => error(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_BATCH} events per batch"),
            ),
            Ok(b) => {
                // Checked whole before any is published.
                for t in &b.batch {
                    if let Err((status, why)) = check(cfg, &app, t) {
                        return error(status, why);
                    }
                }
                for t in b.batch {
                    if let Err((status, why)) = trigger(inner, &app, t).await {
                        return error(status, why);
                    }
                }
                reply(StatusCode::OK, &json!({ "batch": [] }))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, format!("bad batch: {e}")),
        },
        (&Method::GET, "channels") => {
            let prefix = param("filter_by_prefix").unwrap_or("");
            let user_count = param("info").is_some_and(|i| i.split(',').any(|x| x == "user_count"));
            let mut channels = serde_json::Map::new();
            for (tidings, _) in inner.occupied() {
                let Some((a, name)) = cfg.pusher_channel(tidings.as_str()) else {
                    continue;
                };
                if a != app.id || !name.starts_with(prefix) {
                    continue;
                }
                let mut info = json!({});
                if user_count && name.starts_with("presence-") {
                    info["user_count"] = users_on(inner, &tidings).await.len().into();
                }
                channels.insert(name.to_owned(), info);
            }
            reply(StatusCode::OK, &json!({ "channels": channels }))
        }
        (&Method::GET, t) if t.starts_with("channels/") => {
            let rest = &t["channels/".len()..];
            let (name, users) = match rest.strip_suffix("/users") {
                Some(n) => (n, true),
                None => (rest, false),
            };
            let Some(tidings) = cfg.tidings_channel(&app.id, name) else {
                return error(StatusCode::BAD_REQUEST, "invalid channel name");
            };
            if users {
                if !name.starts_with("presence-") {
                    return error(StatusCode::BAD_REQUEST, "only presence channels have users");
                }
                let users: Vec<Value> = users_on(inner, &tidings)
                    .await
                    .into_iter()
                    .map(|id| json!({ "id": id }))
                    .collect();
                return reply(StatusCode::OK, &json!({ "users": users }));
            }
            // Every gateway's, from the presence store.
            let tracker = &inner.tracker;
            let count = match tracker.stats(&PresenceKey::subscriptions(&tidings)).await {
                Ok(s) => s.connections,
                Err(e) => return unavailable(e),
            };
            let mut info = json!({ "occupied": count > 0, "subscription_count": count });
            if name.starts_with("presence-") {
                match tracker.stats(&PresenceKey::channel(&tidings)).await {
                    Ok(s) => info["user_count"] = s.users.into(),
                    Err(e) => return unavailable(e),
                }
            }
            reply(StatusCode::OK, &info)
        }
        (&Method::POST, t) if t.starts_with("users/") => {
            let Some(user) = t["users/".len()..].strip_suffix("/terminate_connections") else {
                return error(StatusCode::NOT_FOUND, "not found");
            };
            if user.is_empty() || user.len() > 128 || user.contains('/') {
                return error(StatusCode::BAD_REQUEST, "invalid user id");
            }
            terminate(inner, &app, user).await
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The presence store did not answer: 503.
fn unavailable(e: tidings_control::PresenceError) -> Response<Body> {
    tracing::warn!(error = %e, "pusher API: presence store unavailable");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the presence store is not available",
    )
}

/// Closes `user`'s signed-in connections of `app`: on every gateway
/// through the control channel when it is started, else on this one.
async fn terminate(inner: &Inner, app: &App, user: &str) -> Response<Body> {
    let command = Command::Disconnect {
        target: Target::User(user_key(&app.id, user)),
        // The connection closes with Pusher's 4009 whatever the code.
        code: tidings_control::command::CLOSE_DISCONNECTED,
        reason: "terminated by the app".into(),
    };
    match &inner.control {
        Some(control) => {
            if let Err(e) = control.publish(&command).await {
                tracing::warn!(error = %e, "pusher terminate_connections not published");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the broker is not available",
                );
            }
        }
        None => {
            inner.users.apply(&command);
        }
    }
    reply(StatusCode::OK, &json!({}))
}

/// The users on a presence channel, on every gateway sharing the store.
async fn users_on(inner: &Inner, channel: &ChannelName) -> Vec<String> {
    match inner
        .tracker
        .store()
        .list(&PresenceKey::channel(channel))
        .await
    {
        Ok((entries, _)) => {
            let users: BTreeSet<String> = entries.into_iter().filter_map(|e| e.user).collect();
            users.into_iter().collect()
        }
        Err(e) => {
            tracing::warn!(channel = %channel, error = %e, "presence list failed");
            Vec::new()
        }
    }
}

/// The channels of an event, checked.
/// A refused request: its status and why.
type Refused = (StatusCode, String);

fn check(cfg: &PusherConfig, app: &App, t: &Trigger) -> Result<Vec<String>, Refused> {
    let bad = |why: String| Err((StatusCode::BAD_REQUEST, why));
    if t.name.is_empty() || t.name.len() > 200 {
        return bad("the event name must be 1 to 200 characters".into());
    }
    if t.name.starts_with("pusher:") || t.name.starts_with("pusher_internal:") {
        return bad("event names starting with pusher: are reserved".into());
    }
    if t.data.get().len() > cfg.max_event_bytes {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event data above {} bytes", cfg.max_event_bytes),
        ));
    }
    if let Some(s) = &t.socket_id {
        if !valid_socket_id(s) {
            return bad(format!("invalid socket_id {s:?}"));
        }
    }
    let mut channels: Vec<String> = t.channels.clone().unwrap_or_default();
    if let Some(c) = &t.channel {
        channels.push(c.clone());
    }
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return bad(format!("give 1 to {MAX_CHANNELS} channels"));
    }
    for c in &channels {
        if cfg.tidings_channel(&app.id, c).is_none() {
            return bad(format!("invalid channel name {c:?}"));
        }
    }
    Ok(channels)
}

/// Whether `s` is a socket id, `<digits>.<digits>`.
fn valid_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() + b.len() <= 40
            && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    })
}

/// Publishes one event on its channels, for every subscriber but
/// `socket_id`'s connection.
async fn trigger(inner: &Inner, app: &App, t: Trigger) -> Result<(), Refused> {
    let cfg = &inner.config;
    let channels = check(cfg, app, &t)?;
    let payload = wire::payload(&t.name, &t.data, None);
    let bytes = match &t.socket_id {
        Some(s) => {
            let raw = RawValue::from_string(payload)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad data: {e}")))?;
            SenderEnvelope::wrap_excluding(None, s, &raw)
        }
        None => Bytes::from(payload),
    };
    for c in channels {
        let Some(channel) = cfg.tidings_channel(&app.id, &c) else {
            continue;
        };
        if let Err(e) = inner
            .ctx
            .bridge
            .publish(Message::new(channel, bytes.clone()))
            .await
        {
            tracing::warn!(error = %e, "pusher API publish failed");
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker is not available".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids() {
        assert!(valid_socket_id("123.456"));
        assert!(!valid_socket_id("123."));
        assert!(!valid_socket_id("a.1"));
        assert!(!valid_socket_id("1.2.3"));
    }
}
