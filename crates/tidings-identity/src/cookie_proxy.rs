//! The cookie proxy: ask the web app who the browser's cookies belong to.
//!
//! On an upgrade, the resolver sends one `GET` to the backend's whoami URL
//! carrying the browser's cookies (all of them but the withheld ones, by
//! default the one-time token's `tidings_token`, or only the configured
//! ones) and any configured headers, on a pooled keep-alive client with
//! connect and total timeouts. Nothing of the upgrade's URL (its query, where
//! a one-time token may be) is forwarded. The backend answers with the identity JSON
//! ([`Identity`]'s schema): `{"user": "42", "groups": [...], "channels": [...]}`.
//!
//! | backend answer | outcome |
//! |---|---|
//! | 200, `"user"` set | [`Resolution::Identified`] |
//! | 200, `"user": null` | [`Resolution::Unrecognized`] (next resolver, or the anonymous policy) |
//! | 401, 403 | [`Resolution::Rejected`] with that status |
//! | other status, bad JSON, timeout, unreachable | 503 with `Retry-After` |
//!
//! The warning logged for an invalid answer describes what is wrong (the
//! JSON error's category, line and column, the identity field at fault) but
//! never quotes the answer: a backend that echoes a cookie into a mistyped
//! field must not put it in the logs.
//!
//! Answers are cached for a short TTL keyed by a SHA-256 of the forwarded
//! credentials, and identical concurrent lookups are coalesced: a thousand
//! sockets reconnecting with one cookie cause one backend request.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::{BoxFuture, Identity, IdentityResolver, Rejection, Resolution, UpgradeRequest};

/// How the cookie proxy reaches the backend.
#[derive(Debug, Clone)]
pub struct CookieProxyConfig {
    /// The backend's whoami URL (`http://`), for example
    /// `http://127.0.0.1:8000/tidings/whoami/`.
    pub url: Uri,
    /// Cookie names to forward. Empty: forward the whole `Cookie` header,
    /// less the [`withheld_cookies`](Self::withheld_cookies).
    pub cookies: Vec<String>,
    /// Cookies never forwarded when the whole `Cookie` header is (`cookies`
    /// empty). Default: `tidings_token`, the one-time token's cookie, so a
    /// token meant for the gateway does not reach the backend (list it in
    /// `cookies` to forward it anyway).
    pub withheld_cookies: Vec<String>,
    /// Further request headers to forward as they are (for example
    /// `authorization`).
    pub headers: Vec<HeaderName>,
    /// Longest wait for the TCP connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for the whole answer. Default 2 s.
    pub timeout: Duration,
    /// How long an answer is reused for the same credentials. Zero turns
    /// the cache off (concurrent lookups are still coalesced). Default 5 s.
    pub cache_ttl: Duration,
    /// Most cached answers kept. Default 100,000.
    pub cache_max_entries: usize,
    /// `Retry-After` sent with a 503 when the backend is unavailable.
    /// Default 5 s.
    pub retry_after: Duration,
    /// Largest answer body accepted. Default 64 KiB.
    pub max_body_bytes: usize,
}

impl CookieProxyConfig {
    /// The defaults, for the whoami `url`.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            cookies: Vec::new(),
            withheld_cookies: vec!["tidings_token".into()],
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(5),
            cache_max_entries: 100_000,
            retry_after: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Why a cookie proxy cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CookieProxyError {
    /// The URL is not an absolute `http://` URL.
    #[error("the whoami URL must be an absolute http:// URL, got {0}")]
    InvalidUrl(String),
}

/// Counters of what the cookie proxy did.
#[derive(Debug, Default)]
pub struct CookieProxyStats {
    /// Requests sent to the backend.
    pub backend_requests: AtomicU64,
    /// Lookups answered from the cache.
    pub cache_hits: AtomicU64,
    /// Lookups that waited for an identical lookup in flight.
    pub coalesced: AtomicU64,
    /// Lookups that ended with 503 (backend unavailable).
    pub unavailable: AtomicU64,
}

type Key = [u8; 32];

/// One lookup in flight, shared by every identical lookup meanwhile.
type Flight = Arc<OnceCell<Result<Answer, String>>>;

/// An answer worth reusing.
#[derive(Clone)]
enum Answer {
    Identified(Identity),
    Anonymous,
    Refused(StatusCode),
}

/// The cookie proxy resolver. Cheap to share (`Arc`).
pub struct CookieProxy {
    config: CookieProxyConfig,
    client: Client<HttpConnector, Empty<Bytes>>,
    cache: Arc<Mutex<HashMap<Key, (Instant, Answer)>>>,
    inflight: Mutex<HashMap<Key, Flight>>,
    last_sweep: Mutex<Instant>,
    stats: CookieProxyStats,
}

impl fmt::Debug for CookieProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieProxy")
            .field("url", &self.config.url)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl CookieProxy {
    /// A cookie proxy with `config`. Must be called within a Tokio runtime.
    pub fn new(config: CookieProxyConfig) -> Result<Self, CookieProxyError> {
        if config.url.scheme_str() != Some("http") || config.url.authority().is_none() {
            return Err(CookieProxyError::InvalidUrl(config.url.to_string()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        let cache: Arc<Mutex<HashMap<Key, (Instant, Answer)>>> = Arc::default();
        if !config.cache_ttl.is_zero() {
            // Expired answers go within a TTL even when no new lookup comes
            // (a gateway full of idle sockets holds no stale cache).
            let weak = Arc::downgrade(&cache);
            let ttl = config.cache_ttl;
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ttl);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(cache) = weak.upgrade() else { return };
                    let mut cache = cache.lock();
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    if cache.is_empty() {
                        cache.shrink_to_fit();
                    }
                }
            });
        }
        Ok(Self {
            config,
            client,
            cache,
            inflight: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
            stats: CookieProxyStats::default(),
        })
    }

    /// What this resolver has done so far.
    pub fn stats(&self) -> &CookieProxyStats {
        &self.stats
    }

    /// The headers to forward, or `None` when the request carries none of
    /// the credentials this proxy forwards.
    fn credentials(&self, req: &UpgradeRequest) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let mut out = Vec::new();
        if self.config.cookies.is_empty() {
            // Browsers send one Cookie header; HTTP/1 allows several.
            let withheld = &self.config.withheld_cookies;
            let joined: Vec<&[u8]> = req
                .headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .map(<[u8]>::trim_ascii)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
                    !withheld.iter().any(|w| w.as_bytes() == name.trim_ascii())
                })
                .collect();
            if !joined.is_empty() {
                let value = HeaderValue::from_bytes(&joined.join(&b"; "[..])).ok()?;
                out.push((header::COOKIE, value));
            }
        } else {
            let picked: Vec<String> = self
                .config
                .cookies
                .iter()
                .filter_map(|name| req.cookie(name).map(|v| format!("{name}={v}")))
                .collect();
            if !picked.is_empty() {
                out.push((
                    header::COOKIE,
                    HeaderValue::from_str(&picked.join("; ")).ok()?,
                ));
            }
        }
        for name in &self.config.headers {
            for value in req.headers.get_all(name) {
                out.push((name.clone(), value.clone()));
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn key(credentials: &[(HeaderName, HeaderValue)]) -> Key {
        let mut h = Sha256::new();
        for (name, value) in credentials {
            h.update(name.as_str().as_bytes());
            h.update([0]);
            h.update(value.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }

    fn cached(&self, key: &Key) -> Option<Answer> {
        if self.config.cache_ttl.is_zero() {
            return None;
        }
        let mut cache = self.cache.lock();
        match cache.get(key) {
            Some((at, answer)) if at.elapsed() < self.config.cache_ttl => Some(answer.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: Key, answer: &Answer) {
        if self.config.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock();
        let ttl = self.config.cache_ttl;
        // Sweep expired answers now and then, so the cache holds about one
        // TTL's worth of users rather than everyone ever seen.
        let mut last_sweep = self.last_sweep.lock();
        if last_sweep.elapsed() >= ttl {
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            *last_sweep = Instant::now();
        }
        drop(last_sweep);
        if cache.len() >= self.config.cache_max_entries {
            // Drop what expired; if that is not enough, start over rather
            // than grow (a cache miss costs one backend request).
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= self.config.cache_max_entries {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), answer.clone()));
    }

    /// Forgets every cached answer that identified `user` (the control
    /// API's `refresh` and revoking `disconnect`): that user's next
    /// connection asks the backend again, so a revoked session cannot come
    /// back from the cache. Returns how many answers were forgotten.
    pub fn forget_user(&self, user: &str) -> usize {
        let mut cache = self.cache.lock();
        let before = cache.len();
        cache.retain(|_, (_, answer)| {
            !matches!(answer, Answer::Identified(id) if id.user.as_deref() == Some(user))
        });
        before - cache.len()
    }

    async fn lookup(
        &self,
        key: Key,
        credentials: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Answer, String> {
        if let Some(answer) = self.cached(&key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(answer);
        }
        let (cell, leader) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(cell) => (cell.clone(), false),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    inflight.insert(key, cell.clone());
                    (cell, true)
                }
            }
        };
        if !leader {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        // If the leader's socket goes away mid-request, a waiter takes over.
        let result = cell
            .get_or_init(|| async {
                let result = self.ask_backend(credentials).await;
                if let Ok(answer) = &result {
                    self.remember(key, answer);
                }
                result
            })
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock();
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        result
    }

    /// One backend request. `Err` carries a reason safe to log (never a
    /// credential).
    async fn ask_backend(
        &self,
        credentials: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Answer, String> {
        self.stats.backend_requests.fetch_add(1, Ordering::Relaxed);
        let mut builder =
            Request::get(self.config.url.clone()).header(header::ACCEPT, "application/json");
        for (name, value) in credentials {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("backend unreachable: {}", error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.config.max_body_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the backend's answer failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| format!("backend did not answer within {:?}", self.config.timeout))??;
        match status {
            StatusCode::OK => {
                // Never `{e}`: serde_json's messages quote the offending
                // value, which may be a credential the backend echoed.
                let identity: Identity = serde_json::from_slice(&body).map_err(|e| {
                    format!(
                        "backend answered 200 with invalid identity JSON: {}",
                        describe_invalid(&body, &e)
                    )
                })?;
                Ok(if identity.is_anonymous() {
                    Answer::Anonymous
                } else {
                    Answer::Identified(identity)
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Answer::Refused(status)),
            other => Err(format!("backend answered {other}")),
        }
    }
}

/// Why `body` is not an identity, without quoting any of it: the JSON
/// error's category and position, and the identity field at fault when one
/// can be named.
fn describe_invalid(body: &[u8], e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "malformed JSON",
        Category::Eof => "truncated JSON",
        Category::Data => "a value of the wrong type",
        Category::Io => "unreadable JSON",
    };
    let mut out = format!("{what} at line {} column {}", e.line(), e.column());
    if e.classify() == Category::Data {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => {
                if let Some(field) = faulty_field(&map) {
                    out.push_str(&format!(" (field `{field}`)"));
                }
            }
            Ok(_) => out.push_str(" (the answer is not a JSON object)"),
            Err(_) => {}
        }
    }
    out
}

/// The first identity field of `map` that does not have its schema's type.
/// Only the schema's own field names are returned, never a key of the
/// answer.
fn faulty_field(map: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
    const FIELDS: [&str; 5] = ["user", "session", "groups", "channels", "attributes"];
    FIELDS.into_iter().find(|field| {
        map.get(*field).is_some_and(|value| {
            let alone = serde_json::Value::Object(
                [((*field).to_owned(), value.clone())].into_iter().collect(),
            );
            serde_json::from_value::<Identity>(alone).is_err()
        })
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl IdentityResolver for CookieProxy {
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            let Some(credentials) = self.credentials(req) else {
                return Resolution::Unrecognized;
            };
            let key = Self::key(&credentials);
            match self.lookup(key, credentials).await {
                Ok(Answer::Identified(identity)) => Resolution::Identified(identity),
                Ok(Answer::Anonymous) => Resolution::Unrecognized,
                Ok(Answer::Refused(status)) => Resolution::Rejected(Rejection::new(
                    status,
                    "the backend refused these credentials",
                )),
                Err(reason) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = %self.config.url, %reason, "identity backend unavailable");
                    Resolution::Rejected(Rejection::unavailable(
                        "the identity backend is unavailable",
                        self.config.retry_after,
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> String {
        let e = serde_json::from_str::<Identity>(body).unwrap_err();
        describe_invalid(body.as_bytes(), &e)
    }

    #[test]
    fn invalid_answers_are_described_without_their_values() {
        let d = invalid(r#"{"user": "42", "groups": "SECRET-cookie-value"}"#);
        assert!(!d.contains("SECRET"), "{d}");
        assert!(d.contains("field `groups`"), "{d}");
        assert!(d.contains("wrong type"), "{d}");
        let d = invalid(r#"{"user": {"SECRET": 1}}"#);
        assert!(!d.contains("SECRET") && d.contains("field `user`"), "{d}");
        let d = invalid(r#"["42", "s", "SECRET"]"#);
        assert!(
            !d.contains("SECRET") && d.contains("not a JSON object"),
            "{d}"
        );
        let d = invalid(r#"{"groups": ["SECRET"#);
        assert!(!d.contains("SECRET") && d.contains("truncated"), "{d}");
        let d = invalid(r#"{"user": SECRET}"#);
        assert!(!d.contains("SECRET") && d.contains("malformed"), "{d}");
    }

    fn proxy(withheld: &[&str], cookies: &[&str]) -> CookieProxy {
        let mut config = CookieProxyConfig::new(Uri::from_static("http://127.0.0.1:9/whoami"));
        config.withheld_cookies = withheld.iter().map(|s| (*s).to_owned()).collect();
        config.cookies = cookies.iter().map(|s| (*s).to_owned()).collect();
        config.cache_ttl = Duration::ZERO;
        CookieProxy::new(config).unwrap()
    }

    fn forwarded(proxy: &CookieProxy, cookie: &str) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        let req = UpgradeRequest::new(
            headers,
            Uri::from_static("/ws?token=abc"),
            "127.0.0.1:1".parse().unwrap(),
        );
        proxy.credentials(&req).map(|c| {
            assert_eq!(c.len(), 1);
            c[0].1.to_str().unwrap().to_owned()
        })
    }

    #[tokio::test]
    async fn the_token_cookie_is_withheld_unless_listed() {
        let p = proxy(&["tidings_token"], &[]);
        assert_eq!(
            forwarded(&p, "sessionid=s1; tidings_token=t1;theme=dark").as_deref(),
            Some("sessionid=s1; theme=dark")
        );
        assert_eq!(
            forwarded(&p, "tidings_token=t1"),
            None,
            "nothing left to forward"
        );
        let p = proxy(&[], &[]);
        assert_eq!(
            forwarded(&p, "sessionid=s1; tidings_token=t1").as_deref(),
            Some("sessionid=s1; tidings_token=t1")
        );
        let p = proxy(&["tidings_token"], &["tidings_token"]);
        assert_eq!(
            forwarded(&p, "sessionid=s1; tidings_token=t1").as_deref(),
            Some("tidings_token=t1"),
            "a cookie listed explicitly is forwarded"
        );
    }
}
