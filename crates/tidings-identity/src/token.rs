//! One-time tokens (seed 001's "uuidCookie").
//!
//! The backend, for a logged-in user, stores a random token with a short TTL:
//! `SET tidings:token:<token> '{"user":"42"}' EX 5` (or a bare user id as the
//! value) and hands the token to the page. The page opens the socket with it
//! (`/ws?token=...`, or a cookie). The gateway redeems it atomically (in
//! Redis, one script that reads and deletes it), so a token works exactly
//! once; expiry is the TTL the backend set. A redemption Redis runs after
//! the gateway has given up on it (Redis frozen, then thawed) does nothing:
//! a client that was answered 503 keeps its token.
//!
//! The store is a trait: [`MemoryTokenStore`] serves a gateway without Redis
//! (the backend mints tokens through the gateway's HTTP API), and with the
//! `redis` feature [`RedisTokenStore`] redeems them in Redis.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{BoxFuture, Identity, IdentityResolver, Rejection, Resolution, UpgradeRequest};

/// Why a token store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where tokens live until redeemed.
pub trait TokenStore: Send + Sync + 'static {
    /// Atomically fetches and deletes `key`: `Some(value)` the first time,
    /// `None` for an unknown, used or expired key.
    fn redeem<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>>;

    /// Stores `value` under `key` for `ttl` (what a backend without direct
    /// access to the store asks the gateway to do).
    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether the store can redeem tokens now (part of `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
}

impl<T: TokenStore + ?Sized> TokenStore for std::sync::Arc<T> {
    fn redeem<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        (**self).redeem(key)
    }

    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).store(key, value, ttl)
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
}

/// An in-process token store: for a gateway without Redis.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    entries: Mutex<HashMap<String, (Instant, Bytes)>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` under `key` for `ttl`.
    pub fn insert(&self, key: impl Into<String>, value: impl Into<Bytes>, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        // Expired entries go whenever the store is written to, so it
        // cannot grow with tokens nobody redeemed.
        entries.retain(|_, (expires, _)| *expires > now);
        entries.insert(key.into(), (now + ttl, value.into()));
    }

    /// How many unexpired tokens are waiting.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.entries
            .lock()
            .values()
            .filter(|(e, _)| *e > now)
            .count()
    }

    /// Whether no unexpired token is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenStore for MemoryTokenStore {
    fn redeem<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        let found = self
            .entries
            .lock()
            .remove(key)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, value)| value);
        Box::pin(async move { Ok(found) })
    }

    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.insert(key, value, ttl);
        Box::pin(async { Ok(()) })
    }
}

/// A Redis token store (Redis 6.2 or later).
///
/// A token is redeemed by one script (`EVAL`) that reads and
/// deletes the key atomically, but only while Redis's clock is before a
/// deadline the gateway sets (three quarters of the pool's command timeout
/// after sending, corrected for the difference between the two clocks): a
/// redemption still waiting in Redis when the gateway has given up on it
/// (Redis frozen, a slow network) finds the deadline passed and leaves the
/// token alone, so a client answered 503 can use its token again. Plain
/// `GETDEL` would spend it for nobody.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisTokenStore {
    client: fred::clients::Pool,
    /// How long the gateway waits for a redemption.
    limit: Duration,
    /// Redis's clock minus ours, in milliseconds, as last measured.
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The script a [`RedisTokenStore`] redeems a token with. `KEYS[1]` is the
/// token's key, `ARGV[1]` the deadline in Unix milliseconds by Redis's
/// clock. Answers `{0, now}` when run after the deadline (nothing done),
/// `{1, now}` when there is no such key, `{2, now, value}` when it took the
/// token; `now` is Redis's clock in Unix milliseconds.
#[cfg(feature = "redis")]
const REDEEM_SCRIPT: &str = r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return {0, now} end
local v = redis.call('GET', KEYS[1])
if not v then return {1, now} end
redis.call('DEL', KEYS[1])
return {2, now, v}"#;

#[cfg(feature = "redis")]
impl RedisTokenStore {
    /// Redeems tokens through `pool` (already connected, or connecting with
    /// a reconnect policy: while it is down, redeeming answers 503). A
    /// redemption is waited for as long as the pool's command timeout (2 s
    /// when it has none).
    pub fn new(pool: fred::clients::Pool) -> Self {
        use fred::prelude::ClientLike;
        let timeout = pool.next().perf_config().default_command_timeout;
        Self {
            client: pool,
            limit: if timeout.is_zero() {
                Duration::from_secs(2)
            } else {
                timeout
            },
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// One run of [`REDEEM_SCRIPT`].
    async fn redeem_once(&self, key: &str) -> Result<Redeemed, StoreError> {
        use fred::{
            prelude::ClientLike,
            types::{ClusterHash, CustomCommand, Value},
        };
        use std::sync::atomic::Ordering;
        let unix_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        // Redis may run the script until three quarters of the wait have
        // passed; the last quarter is for its answer to come back.
        let window = i64::try_from((self.limit * 3 / 4).as_millis()).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let sent_ms = unix_ms();
        let deadline = sent_ms
            .saturating_add(self.clock_offset_ms.load(Ordering::Relaxed))
            .saturating_add(window);
        // Routed by the key's slot on a Redis Cluster (fred reads only a
        // `Custom` slot from a custom command; an `Offset` is ignored).
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let eval = CustomCommand::new_static("EVAL", ClusterHash::Custom(slot), false);
        let args: Vec<Value> = vec![REDEEM_SCRIPT.into(), 1.into(), key.into(), deadline.into()];
        let reply: Value = tokio::time::timeout(
            self.limit,
            self.client.next().custom::<Value, _>(eval, args),
        )
        .await
        .map_err(|_| StoreError(format!("Redis did not answer within {:?}", self.limit)))?
        .map_err(|e| StoreError(e.details().to_string()))?;
        let rtt = sent.elapsed();
        let mut reply = reply.into_array().into_iter();
        let (Some(status), Some(now)) = (
            reply.next().and_then(|v| v.as_i64()),
            reply.next().and_then(|v| v.as_i64()),
        ) else {
            return Err(StoreError("unexpected answer to the redeem script".into()));
        };
        // A quick answer tells how far Redis's clock is from ours (within
        // half the round trip).
        if rtt < self.limit / 4 {
            let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
            self.clock_offset_ms
                .store(now - (sent_ms + half), Ordering::Relaxed);
        }
        match status {
            0 => Ok(Redeemed::TooLate {
                quick: rtt < self.limit / 4,
            }),
            1 => Ok(Redeemed::Found(None)),
            2 => match reply.next().as_ref().and_then(Value::as_bytes) {
                Some(value) => Ok(Redeemed::Found(Some(Bytes::copy_from_slice(value)))),
                None => Err(StoreError("unexpected answer to the redeem script".into())),
            },
            _ => Err(StoreError("unexpected answer to the redeem script".into())),
        }
    }
}

/// What one run of the redeem script did.
#[cfg(feature = "redis")]
enum Redeemed {
    /// The key's value (taken), or `None`: no such key.
    Found(Option<Bytes>),
    /// Redis ran it after the deadline and left the key alone; `quick`: its
    /// answer came back at once (so the deadline was missed because Redis's
    /// clock is ahead of ours, not because Redis was slow).
    TooLate { quick: bool },
}

#[cfg(feature = "redis")]
impl RedisTokenStore {
    /// Waits (briefly) for the pool to be connected.
    async fn connected(&self) -> Result<(), StoreError> {
        use fred::prelude::ClientLike;
        if self.client.is_connected() {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(1), self.client.wait_for_connect()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(StoreError("Redis is not connected".into())),
        }
    }
}

#[cfg(feature = "redis")]
impl TokenStore for RedisTokenStore {
    fn is_ready(&self) -> bool {
        use fred::prelude::ClientLike;
        self.client.is_connected()
    }

    fn redeem<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        let late = || StoreError("Redis ran the redemption after its deadline".into());
        Box::pin(async move {
            self.connected().await?;
            match self.redeem_once(key).await? {
                Redeemed::Found(found) => return Ok(found),
                // Too late although Redis answered at once: its clock is
                // ahead of ours, and that answer measured by how much. Once
                // more with the corrected deadline (the token is untouched).
                Redeemed::TooLate { quick: true } => {}
                Redeemed::TooLate { quick: false } => return Err(late()),
            }
            match self.redeem_once(key).await? {
                Redeemed::Found(found) => Ok(found),
                Redeemed::TooLate { .. } => Err(late()),
            }
        })
    }

    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        use fred::prelude::{Expiration, KeysInterface};
        Box::pin(async move {
            self.connected().await?;
            let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            self.client
                .next()
                .set::<(), _, _>(key, value, Some(Expiration::PX(millis)), None, false)
                .await
                .map_err(|e| StoreError(e.details().to_string()))
        })
    }
}

/// Where the token is read from, and under which key prefix it is stored.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Cookie carrying the token (`None`: not read from a cookie). Default
    /// `tidings_token`.
    pub cookie: Option<String>,
    /// Query parameter carrying the token (`None`: not read from the
    /// query). Default `token`.
    pub query: Option<String>,
    /// Key prefix in the store. Default `tidings:token:`.
    pub prefix: String,
    /// `Retry-After` with the 503 sent while the store is unavailable.
    pub retry_after: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            cookie: Some("tidings_token".into()),
            query: Some("token".into()),
            prefix: "tidings:token:".into(),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// The one-time token resolver.
pub struct TokenResolver {
    config: TokenConfig,
    store: std::sync::Arc<dyn TokenStore>,
}

impl fmt::Debug for TokenResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A new random token: 32 bytes from the operating system's generator, as
/// 64 hex characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokens are 16 to 256 characters of `A-Z a-z 0-9 - _ .` (UUIDs,
/// `secrets.token_urlsafe()`), so nothing else reaches the store.
fn well_formed(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The stored value: the identity JSON, or a bare user id.
fn parse_value(value: &[u8]) -> Option<Identity> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.starts_with('{') {
        serde_json::from_str(text).ok()
    } else if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .ok()
            .map(Identity::user)
    } else if text.is_empty() {
        None
    } else {
        Some(Identity::user(text))
    }
}

impl TokenResolver {
    /// A resolver redeeming tokens from `store`.
    pub fn new(config: TokenConfig, store: std::sync::Arc<dyn TokenStore>) -> Self {
        Self { config, store }
    }

    /// The store key for `token`.
    pub fn key(&self, token: &str) -> String {
        format!("{}{token}", self.config.prefix)
    }

    fn token<'r>(&self, req: &'r UpgradeRequest) -> Option<&'r str> {
        let from_query = self
            .config
            .query
            .as_deref()
            .and_then(|q| req.query_param(q));
        from_query.or_else(|| self.config.cookie.as_deref().and_then(|c| req.cookie(c)))
    }
}

impl IdentityResolver for TokenResolver {
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            let Some(token) = self.token(req) else {
                return Resolution::Unrecognized;
            };
            if !well_formed(token) {
                return Resolution::Rejected(Rejection::unauthorized("malformed token"));
            }
            let key = self.key(token);
            match self.store.redeem(&key).await {
                Ok(Some(value)) => match parse_value(&value) {
                    Some(identity) => Resolution::Identified(identity),
                    None => {
                        tracing::warn!("a redeemed token held neither identity JSON nor a user id");
                        Resolution::Rejected(Rejection::unauthorized("invalid token"))
                    }
                },
                Ok(None) => {
                    Resolution::Rejected(Rejection::unauthorized("unknown, used or expired token"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token store unavailable");
                    Resolution::Rejected(Rejection::unavailable(
                        "the token store is unavailable",
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

    #[test]
    fn minted_tokens_are_well_formed_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn memory_store_redeems_once_and_expires() {
        let store = MemoryTokenStore::new();
        store.insert("k1", "42", Duration::from_secs(60));
        store.insert("k2", "43", Duration::from_millis(1));
        assert_eq!(
            store.redeem("k1").await.unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(store.redeem("k1").await.unwrap(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.redeem("k2").await.unwrap(), None);
    }

    #[test]
    fn token_shapes() {
        assert!(well_formed("0b9c6f1e-4a8e-4a36-9f0e-2a1f3c0a9d11"));
        assert!(well_formed("Zm9vYmFyYmF6cXV4cXV1eA_-"));
        assert!(!well_formed("short"));
        assert!(!well_formed("has space in it 1234567"));
        assert!(!well_formed("glob*chars*are*not*ok*12"));
        assert!(!well_formed(&"a".repeat(257)));
    }

    #[test]
    fn stored_values() {
        assert_eq!(parse_value(b"42"), Some(Identity::user("42")));
        assert_eq!(parse_value(b"\"42\""), Some(Identity::user("42")));
        let id = parse_value(br#"{"user": 7, "groups": ["staff"]}"#).unwrap();
        assert_eq!(id.user.as_deref(), Some("7"));
        assert_eq!(id.groups, vec!["staff".to_string()]);
        assert_eq!(parse_value(b""), None);
        assert_eq!(parse_value(b"{not json"), None);
        assert_eq!(parse_value(&[0xff, 0xfe]), None);
    }
}
