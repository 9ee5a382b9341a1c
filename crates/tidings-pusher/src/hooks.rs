//! Webhooks in Pusher's format, and the presence sink that produces the
//! channel and member ones.
//!
//! Each app's webhooks are `tidings_control::Webhooks` senders (a bounded
//! queue, batches, retries with back-off; a dead backend never makes a
//! socket wait) signed as Pusher signs them
//! (`tidings_control::WebhookSigning::Pusher`): `X-Pusher-Key` and
//! `X-Pusher-Signature`, the HMAC-SHA256 hex of the body under the app's
//! secret. The body is `{"time_ms":...,"events":[{"name":...},...]}`.
//!
//! `channel_occupied` / `channel_vacated` come from every channel's
//! subscriptions set (`PresenceKey::subscriptions`, one entry per Pusher
//! connection on any gateway), `member_added` / `member_removed` from the
//! presence channels' member sets: the store reports a set's first and
//! last entry (or user) once, to the gateway whose call saw it, so each is
//! sent once for the whole cluster, and an entry of a gateway that died is
//! reported when it expires. `client_event` is sent by the gateway that
//! received the event.

use std::{collections::HashMap, sync::Arc};

use serde_json::{json, Value};
use tidings_bridge::Bridge;
use tidings_control::{
    presence_publisher, PresenceChange, PresenceKey, PresenceLookup, PresenceSink, WebhookConfig,
    WebhookEvent, WebhookSigning, Webhooks,
};
use tidings_core::ChannelName;

use crate::config::{AppWebhook, PusherConfig};

/// Every app's webhook senders.
#[derive(Default)]
pub(crate) struct Hooks {
    by_app: HashMap<String, Vec<(AppWebhook, Arc<Webhooks>)>>,
}

impl Hooks {
    /// Starts the senders of every app's webhooks (on the current tokio
    /// runtime). A webhook whose URL is invalid is logged and skipped
    /// (`PusherSettings::apply` refuses it before).
    pub(crate) fn start(config: &PusherConfig) -> Self {
        let mut by_app: HashMap<String, Vec<_>> = HashMap::new();
        for app in &config.apps {
            for w in &app.webhooks {
                let started = w.url.parse().map_err(|_| "not a URL").and_then(|url| {
                    let mut c = WebhookConfig::new(url, app.secret.expose());
                    c.signing = WebhookSigning::Pusher {
                        key: app.key.clone(),
                    };
                    Webhooks::start(c)
                });
                match started {
                    Ok(sender) => by_app
                        .entry(app.id.clone())
                        .or_default()
                        .push((w.clone(), sender)),
                    Err(e) => {
                        tracing::error!(app = %app.id, url = %w.url, error = e, "pusher webhook not started")
                    }
                }
            }
        }
        Self { by_app }
    }

    /// Whether app `app` has a webhook for events named `name`.
    pub(crate) fn wants(&self, app: &str, name: &str) -> bool {
        self.by_app
            .get(app)
            .is_some_and(|hooks| hooks.iter().any(|(w, _)| w.wants(name)))
    }

    /// Queues `event` (`{"name": ..., ...}`) for app `app`'s webhooks that
    /// want it; never waits.
    pub(crate) fn send(&self, app: &str, event: Value) {
        let Some(hooks) = self.by_app.get(app) else {
            return;
        };
        let name = event["name"].as_str().unwrap_or("");
        for (w, sender) in hooks {
            if w.wants(name) {
                sender.send(WebhookEvent::Json(event.clone()));
            }
        }
    }
}

/// The sink of the Pusher adapter's presence tracker: presence channels'
/// joins and leaves are published on the channels (every gateway turns
/// them into `pusher_internal:member_added` / `member_removed`) and sent
/// as `member_added` / `member_removed` webhooks; subscriptions sets'
/// first and last entries as `channel_occupied` / `channel_vacated`.
pub(crate) fn sink(
    bridge: Bridge,
    config: Arc<PusherConfig>,
    hooks: Arc<Hooks>,
) -> Arc<dyn PresenceSink> {
    let lookup: PresenceLookup = {
        let config = config.clone();
        Arc::new(move |c: &ChannelName| {
            config
                .pusher_channel(c.as_str())
                .filter(|(_, name)| name.starts_with("presence-"))
                .map(|_| tidings_routing::PresenceMode::Full)
        })
    };
    let publisher = presence_publisher(bridge, lookup);
    Arc::new(move |key: &PresenceKey, change: PresenceChange| {
        if let Some(channel) = key.as_subscriptions() {
            let Some((app, name)) = config.pusher_channel(channel) else {
                return;
            };
            if !change.joined.is_empty() {
                hooks.send(app, json!({ "name": "channel_occupied", "channel": name }));
            }
            if !change.left.is_empty() {
                hooks.send(app, json!({ "name": "channel_vacated", "channel": name }));
            }
            return;
        }
        if let Some((app, name)) = key
            .as_channel()
            .and_then(|c| config.pusher_channel(c))
            .filter(|(_, name)| name.starts_with("presence-"))
        {
            for e in &change.joined {
                if let Some(user) = &e.user {
                    hooks.send(
                        app,
                        json!({ "name": "member_added", "channel": name, "user_id": user }),
                    );
                }
            }
            for user in &change.left {
                hooks.send(
                    app,
                    json!({ "name": "member_removed", "channel": name, "user_id": user }),
                );
            }
        }
        publisher.changed(key, change);
    })
}
