//! Lifecycle webhooks: signed HTTP POSTs to the backend, from a bounded
//! queue that never makes a socket wait.
//!
//! [`Webhooks::send`] puts an event in the queue and returns at once; when
//! the queue is full the event is dropped and counted. A dispatcher takes
//! up to [`WebhookConfig::batch`] queued events into one POST, with at most
//! [`WebhookConfig::concurrency`] POSTs in flight, each retried up to
//! [`WebhookConfig::max_attempts`] times with a doubling backoff.
//!
//! The body is `{"time_ms":<ms>,"events":[...]}`; the headers
//! `X-Tidings-Timestamp: <unix seconds>` and
//! `X-Tidings-Signature: sha256=<hex>` carry the HMAC-SHA256, under the
//! shared secret, of `<timestamp>.<body>` (see docs/control.md for how a
//! backend verifies it). With [`WebhookSigning::Pusher`] the same body
//! (whose events are then Pusher's, sent with [`WebhookEvent::Json`]) is
//! signed as Pusher Channels signs its webhooks: `X-Pusher-Key: <key>` and
//! `X-Pusher-Signature: <hex of HMAC-SHA256(secret, body)>`.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::hmac::{hex, hmac_sha256};

/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "x-tidings-signature";
/// The header with the timestamp the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-tidings-timestamp";
/// Pusher's signature header ([`WebhookSigning::Pusher`]).
pub const PUSHER_SIGNATURE_HEADER: &str = "x-pusher-signature";
/// Pusher's app key header ([`WebhookSigning::Pusher`]).
pub const PUSHER_KEY_HEADER: &str = "x-pusher-key";

/// How a POST is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WebhookSigning {
    /// `X-Tidings-Timestamp` and `X-Tidings-Signature: sha256=<hex>` of
    /// `<timestamp>.<body>` (the default).
    #[default]
    Tidings,
    /// As Pusher Channels signs: `X-Pusher-Key: <key>` and
    /// `X-Pusher-Signature: <hex>` of the body.
    Pusher {
        /// The app key sent in `X-Pusher-Key`.
        key: String,
    },
}

/// How webhooks are sent.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Where to POST (`http://` only).
    pub url: Uri,
    /// The shared secret the signature is made with. Never logged.
    pub secret: String,
    /// Most events waiting to be sent; more are dropped and counted.
    /// Default 10,000.
    pub queue: usize,
    /// Most events in one POST. Default 100.
    pub batch: usize,
    /// Most POSTs in flight. Default 4.
    pub concurrency: usize,
    /// Longest wait for one answer. Default 5 s.
    pub timeout: Duration,
    /// Attempts per POST, the first included. Default 4.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time, at most 30 s.
    /// Default 500 ms.
    pub backoff: Duration,
    /// How POSTs are signed. Default [`WebhookSigning::Tidings`].
    pub signing: WebhookSigning,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("signing", &self.signing)
            .finish()
    }
}

impl WebhookConfig {
    /// The defaults, posting to `url` signed with `secret`.
    pub fn new(url: Uri, secret: impl Into<String>) -> Self {
        Self {
            url,
            secret: secret.into(),
            queue: 10_000,
            batch: 100,
            concurrency: 4,
            timeout: Duration::from_secs(5),
            max_attempts: 4,
            backoff: Duration::from_millis(500),
            signing: WebhookSigning::Tidings,
        }
    }

    /// Checks the URL (an `http://` URL with a host), the secret (at least
    /// 16 bytes; 8 for [`WebhookSigning::Pusher`], whose secret is the
    /// app's) and the sizes (at least 1).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.url.scheme_str() != Some("http") || self.url.host().is_none() {
            return Err("webhooks.url must be an http:// URL");
        }
        match &self.signing {
            WebhookSigning::Tidings if self.secret.len() < 16 => {
                return Err("webhooks.secret must be at least 16 bytes");
            }
            WebhookSigning::Pusher { .. } if self.secret.len() < 8 => {
                return Err("the app secret must be at least 8 bytes");
            }
            WebhookSigning::Pusher { key } if HeaderValue::from_str(key).is_err() => {
                return Err("the app key must be a valid header value");
            }
            _ => {}
        }
        if self.queue == 0 || self.batch == 0 || self.concurrency == 0 || self.max_attempts == 0 {
            return Err("webhooks.queue, batch, concurrency and max_attempts must be at least 1");
        }
        Ok(())
    }
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A socket was accepted (its identity resolved).
    Connect {
        /// The connection id.
        conn: String,
        /// The user, `null` for an anonymous visitor.
        user: Option<String>,
        /// The gateway holding it.
        gateway: String,
        /// When, in ms since the Unix epoch.
        time_ms: u64,
    },
    /// A socket closed.
    Disconnect {
        /// The connection id.
        conn: String,
        /// The user, `null` for an anonymous visitor.
        user: Option<String>,
        /// The gateway that held it.
        gateway: String,
        /// The close code.
        code: u16,
        /// Why (`client closed`, `disconnected by the backend`, ...).
        reason: String,
        /// When, in ms since the Unix epoch.
        time_ms: u64,
    },
    /// A channel got its first subscriber on any gateway.
    ChannelOccupied {
        /// The channel.
        channel: String,
        /// When, in ms since the Unix epoch.
        time_ms: u64,
    },
    /// A channel lost its last subscriber on every gateway (or the
    /// gateways holding them stopped refreshing).
    ChannelVacated {
        /// The channel.
        channel: String,
        /// When, in ms since the Unix epoch.
        time_ms: u64,
    },
    /// An event given as JSON, sent as is (another wire's webhooks, such as
    /// Pusher's `{"name":"channel_occupied","channel":"..."}`).
    #[serde(untagged)]
    Json(serde_json::Value),
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters of a [`Webhooks`] sender.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Events dropped because the queue was full (or the sender closed).
    pub dropped: AtomicU64,
    /// Events the backend acknowledged (a 2xx).
    pub delivered: AtomicU64,
    /// Events given up on after every attempt, or refused with a 4xx.
    pub failed: AtomicU64,
    /// POSTs retried.
    pub retries: AtomicU64,
}

/// The signature header value for `body` sent at `timestamp` (unix
/// seconds): `sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(body.len() + 21);
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    format!("sha256={}", hex(&hmac_sha256(secret, &signed)))
}

/// The webhook sender. Cheap to share (`Arc`).
pub struct Webhooks {
    tx: mpsc::Sender<WebhookEvent>,
    stats: Arc<WebhookStats>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts the sender's dispatcher (on the current tokio runtime).
    pub fn start(config: WebhookConfig) -> Result<Arc<Self>, &'static str> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue);
        let stats = Arc::new(WebhookStats::default());
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        tokio::spawn(dispatch(Arc::new(config), client, rx, stats.clone()));
        Ok(Arc::new(Self { tx, stats }))
    }

    /// Queues `event`; never waits. Returns `false` (and counts it) when
    /// the queue is full.
    pub fn send(&self, event: WebhookEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Events waiting in the queue.
    pub fn queued_now(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn dispatch(
    config: Arc<WebhookConfig>,
    client: HttpClient,
    mut rx: mpsc::Receiver<WebhookEvent>,
    stats: Arc<WebhookStats>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut events = Vec::with_capacity(config.batch.min(16));
        if rx.recv_many(&mut events, config.batch).await == 0 {
            return; // every sender is gone
        }
        let (config, client, stats) = (config.clone(), client.clone(), stats.clone());
        tokio::spawn(async move {
            deliver(&config, &client, &events, &stats).await;
            drop(permit);
        });
    }
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: &'a [WebhookEvent],
}

enum Outcome {
    Delivered,
    Retry(String),
    Refused(StatusCode),
}

async fn deliver(
    config: &WebhookConfig,
    client: &HttpClient,
    events: &[WebhookEvent],
    stats: &WebhookStats,
) {
    let n = events.len() as u64;
    let mut backoff = config.backoff;
    for attempt in 1..=config.max_attempts {
        match post(config, client, events).await {
            Outcome::Delivered => {
                stats.delivered.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Outcome::Refused(status) => {
                tracing::warn!(target: "tidings::webhooks", %status, events = n, "the webhook backend refused a POST; not retried");
                stats.failed.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Outcome::Retry(why) if attempt < config.max_attempts => {
                tracing::debug!(target: "tidings::webhooks", attempt, error = %why, "webhook POST failed; retrying");
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Outcome::Retry(why) => {
                tracing::warn!(target: "tidings::webhooks", attempts = attempt, error = %why, events = n, "webhook POST failed; events dropped");
                stats.failed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

async fn post(config: &WebhookConfig, client: &HttpClient, events: &[WebhookEvent]) -> Outcome {
    let now = now_ms();
    let body = serde_json::to_vec(&Body {
        time_ms: now,
        events,
    })
    .expect("events serialize");
    let req = Request::builder()
        .method(Method::POST)
        .uri(config.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "tidings-webhooks");
    let req = match &config.signing {
        WebhookSigning::Tidings => {
            let timestamp = now / 1000;
            let sig = signature(config.secret.as_bytes(), timestamp, &body);
            req.header(TIMESTAMP_HEADER, timestamp)
                .header(SIGNATURE_HEADER, sig)
        }
        WebhookSigning::Pusher { key } => {
            let sig = hex(&hmac_sha256(config.secret.as_bytes(), &body));
            req.header(PUSHER_KEY_HEADER, key.as_str())
                .header(PUSHER_SIGNATURE_HEADER, sig)
        }
    };
    let req = req
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    match tokio::time::timeout(config.timeout, client.request(req)).await {
        Err(_) => Outcome::Retry("timed out".into()),
        Ok(Err(e)) => Outcome::Retry(e.to_string()),
        Ok(Ok(resp)) => {
            let status = resp.status();
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Retry(format!("status {status}"))
            } else {
                Outcome::Refused(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = signature(b"0123456789abcdef", 100, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature(b"0123456789abcdef", 101, b"{}"));
        assert_ne!(a, signature(b"0123456789abcdef", 100, b"{ }"));
        assert_eq!(
            a,
            format!(
                "sha256={}",
                hex(&hmac_sha256(b"0123456789abcdef", b"100.{}"))
            )
        );
    }

    #[test]
    fn events_serialize_with_their_name() {
        let e = WebhookEvent::Disconnect {
            conn: "g-1".into(),
            user: Some("42".into()),
            gateway: "g".into(),
            code: 4003,
            reason: "revoked".into(),
            time_ms: 7,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "disconnect");
        assert_eq!(v["code"], 4003);
        let o = WebhookEvent::ChannelOccupied {
            channel: "/a".into(),
            time_ms: 1,
        };
        assert_eq!(
            serde_json::to_value(&o).unwrap()["event"],
            "channel_occupied"
        );
        let j = WebhookEvent::Json(serde_json::json!({"name": "channel_vacated", "channel": "c"}));
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"channel":"c","name":"channel_vacated"}"#
        );
    }

    #[test]
    fn config_is_checked_and_secret_never_printed() {
        let c = WebhookConfig::new(
            "http://127.0.0.1:1/hook".parse().unwrap(),
            "s3cret-s3cret-s3cret",
        );
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("s3cret"));
        let short = WebhookConfig::new("http://127.0.0.1:1/".parse().unwrap(), "short");
        assert!(short.validate().is_err());
        let https = WebhookConfig::new("https://x/".parse().unwrap(), "0123456789abcdef");
        assert!(https.validate().is_err());
        let mut pusher = WebhookConfig::new("http://127.0.0.1:1/".parse().unwrap(), "app-secret");
        assert!(pusher.validate().is_err());
        pusher.signing = WebhookSigning::Pusher { key: "k".into() };
        assert!(pusher.validate().is_ok());
    }
}
