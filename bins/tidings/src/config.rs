//! Configuration: built-in defaults < TOML file (`--config`) < `TIDINGS_*`
//! environment variables (nested keys joined with `__`).
//!
//! Every key is listed with its default in `docs/configuration.md`.

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tidings_bridge::{RedisConfig, SlowConsumerPolicy};
use tidings_identity::{CookieProxyConfig, TokenConfig};
use tidings_routing::{Router, Rule};
use tidings_transport::{IpNet, Limits, RpcConfig, TransportConfig};

/// A secret string: never printed, serialized as `"<redacted>"`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // An environment value of digits arrives as a number: take it as text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i128),
            U(u128),
            F(f64),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::U(u) => u.to_string(),
            Scalar::F(f) => f.to_string(),
        }))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Address and port to listen on.
    pub(crate) listen: SocketAddr,
    /// Bearer key for `POST /api/publish`. Unset: only local processes may publish.
    pub(crate) api_key: Option<Secret>,
    /// Redis URL (`redis://` or `rediss://`). Unset: the in-process broker.
    pub(crate) redis_url: Option<Secret>,
    /// Redis connection tunables (used when `redis_url` is set).
    pub(crate) redis: RedisTuning,
    /// Who each socket is.
    pub(crate) identity: IdentityConfig,
    /// RPC to the backend over the socket.
    pub(crate) rpc: RpcSection,
    /// Logging.
    pub(crate) log: LogConfig,
    /// The WebSocket endpoint.
    pub(crate) websocket: WsConfig,
    /// The HTTP publish API.
    pub(crate) api: ApiConfig,
    /// Shutdown behaviour.
    pub(crate) shutdown: ShutdownConfig,
    /// Connection limits.
    pub(crate) limits: LimitsConfig,
    /// Channel routing rules.
    pub(crate) routing: RoutingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// Filter directives (RUST_LOG syntax); `RUST_LOG` wins when set.
    pub(crate) level: String,
    /// `text` or `json`.
    pub(crate) format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WsConfig {
    pub(crate) path: String,
    pub(crate) ping_interval_secs: f64,
    pub(crate) pong_timeout_secs: f64,
    pub(crate) max_message_bytes: usize,
    pub(crate) outbound_queue: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) write_timeout_secs: f64,
    pub(crate) handshake_timeout_secs: f64,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) max_subscriptions: usize,
    pub(crate) client_messages_per_sec: f64,
    pub(crate) client_message_burst: u32,
}

/// RPC to the backend over the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RpcSection {
    /// The backend's base URL (`http://...`). Unset: RPC is off.
    pub(crate) url: Option<String>,
    /// Path prefixes clients may call.
    pub(crate) allowed_paths: Vec<String>,
    pub(crate) timeout_secs: f64,
    pub(crate) max_in_flight: usize,
    /// Upgrade request headers forwarded with every call.
    pub(crate) forward_headers: Vec<String>,
}

/// Identity resolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityConfig {
    /// Resolvers tried in order. Empty: every socket is anonymous.
    pub(crate) resolvers: Vec<ResolverKind>,
    /// What a socket no resolver recognises may do.
    pub(crate) anonymous: Anonymous,
    /// The cookie proxy.
    pub(crate) cookie_proxy: CookieProxySection,
    /// One-time tokens.
    pub(crate) token: TokenSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResolverKind {
    CookieProxy,
    Token,
}

impl ResolverKind {
    fn name(self) -> &'static str {
        match self {
            ResolverKind::CookieProxy => "cookie_proxy",
            ResolverKind::Token => "token",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Anonymous {
    Allow,
    Refuse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CookieProxySection {
    /// The backend's whoami URL (`http://...`). Required when the resolver is used.
    pub(crate) url: Option<String>,
    /// Cookie names to forward; empty: the whole Cookie header.
    pub(crate) cookies: Vec<String>,
    /// Further request headers to forward.
    pub(crate) headers: Vec<String>,
    pub(crate) connect_timeout_secs: f64,
    pub(crate) timeout_secs: f64,
    /// 0 turns the cache off.
    pub(crate) cache_ttl_secs: f64,
    pub(crate) cache_max_entries: usize,
    pub(crate) retry_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenSection {
    /// Cookie carrying the token ("" = none).
    pub(crate) cookie: String,
    /// Query parameter carrying the token ("" = none).
    pub(crate) query: String,
    /// Key prefix in Redis (or the in-process store).
    pub(crate) prefix: String,
    /// Longest lifetime `POST /api/tokens` grants.
    pub(crate) max_ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SlowConsumer {
    Close,
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiConfig {
    /// With no `api_key`, accept publishes from loopback peers that came
    /// through no proxy.
    pub(crate) allow_local_without_key: bool,
    /// Largest request body accepted.
    pub(crate) max_body_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownConfig {
    pub(crate) grace_secs: f64,
    /// Not ready (and refusing new sockets) this long before closing any.
    pub(crate) readiness_delay_secs: f64,
    /// Sockets are closed (1012) spread over this window.
    pub(crate) drain_spread_secs: f64,
}

/// Connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) max_connections_per_user: usize,
    /// Proxies whose X-Forwarded-For is believed (addresses or CIDR ranges).
    pub(crate) trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutingConfig {
    pub(crate) rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        let t = TransportConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            redis_url: None,
            redis: {
                let r = RedisConfig::new("");
                RedisTuning {
                    command_timeout_secs: r.command_timeout.as_secs_f64(),
                    connect_timeout_secs: r.connect_timeout.as_secs_f64(),
                    reconnect_max_delay_secs: r.reconnect_max_delay.as_secs_f64(),
                    pool_size: r.pool_size,
                    message_buffer: r.message_buffer,
                    self_check_interval_secs: r.self_check_interval.as_secs_f64(),
                }
            },
            identity: {
                let cp = CookieProxyConfig::new(http::Uri::from_static("http://127.0.0.1/"));
                let tk = TokenConfig::default();
                IdentityConfig {
                    resolvers: Vec::new(),
                    anonymous: Anonymous::Allow,
                    cookie_proxy: CookieProxySection {
                        url: None,
                        cookies: Vec::new(),
                        headers: Vec::new(),
                        connect_timeout_secs: cp.connect_timeout.as_secs_f64(),
                        timeout_secs: cp.timeout.as_secs_f64(),
                        cache_ttl_secs: cp.cache_ttl.as_secs_f64(),
                        cache_max_entries: cp.cache_max_entries,
                        retry_after_secs: cp.retry_after.as_secs(),
                    },
                    token: TokenSection {
                        cookie: tk.cookie.unwrap_or_default(),
                        query: tk.query.unwrap_or_default(),
                        prefix: tk.prefix,
                        max_ttl_secs: 60,
                    },
                }
            },
            rpc: {
                let r = RpcConfig::new(http::Uri::from_static("http://127.0.0.1/"), Vec::new());
                RpcSection {
                    url: None,
                    allowed_paths: Vec::new(),
                    timeout_secs: r.timeout.as_secs_f64(),
                    max_in_flight: r.max_in_flight,
                    forward_headers: r
                        .forward_headers
                        .iter()
                        .map(|h| h.as_str().to_owned())
                        .collect(),
                }
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            websocket: WsConfig {
                path: t.ws_path,
                ping_interval_secs: t.ping_interval.as_secs_f64(),
                pong_timeout_secs: t.pong_timeout.as_secs_f64(),
                max_message_bytes: t.max_message_size,
                outbound_queue: t.outbound_queue,
                slow_consumer: SlowConsumer::Close,
                write_timeout_secs: t.write_timeout.as_secs_f64(),
                handshake_timeout_secs: t.handshake_timeout.as_secs_f64(),
                allowed_origins: t.allowed_origins,
                max_subscriptions: t.max_subscriptions,
                client_messages_per_sec: t.client_messages_per_sec,
                client_message_burst: t.client_message_burst,
            },
            api: ApiConfig {
                allow_local_without_key: true,
                max_body_bytes: 1024 * 1024,
            },
            shutdown: ShutdownConfig {
                grace_secs: t.shutdown_grace.as_secs_f64(),
                readiness_delay_secs: t.drain_readiness_delay.as_secs_f64(),
                drain_spread_secs: t.drain_spread.as_secs_f64(),
            },
            limits: LimitsConfig {
                max_connections: t.limits.max_connections,
                max_connections_per_ip: t.limits.max_connections_per_ip,
                max_connections_per_user: t.limits.max_connections_per_user,
                trusted_proxies: Vec::new(),
            },
            routing: RoutingConfig {
                rules: Rule::defaults(),
            },
        }
    }
}

/// Redis connection tunables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisTuning {
    /// Longest wait for a Redis command (publish, subscribe).
    pub(crate) command_timeout_secs: f64,
    /// Longest wait to set up a connection.
    pub(crate) connect_timeout_secs: f64,
    /// Longest delay between reconnect attempts (backoff starts at 0.1 s).
    pub(crate) reconnect_max_delay_secs: f64,
    /// Connections in the publish pool.
    pub(crate) pool_size: usize,
    /// Messages buffered between the Redis reader and the router.
    pub(crate) message_buffer: usize,
    /// Seconds between self-checks of the subscriptions against Redis (0:
    /// only after reconnects).
    pub(crate) self_check_interval_secs: f64,
}

/// A configuration that cannot be used, naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{}", describe_load_error(.0))]
    Load(Box<figment::Error>),
    #[error("config key `{key}`{origin}: {reason}")]
    Invalid {
        key: &'static str,
        reason: String,
        /// " (from ...)" once known, else empty.
        origin: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// Renders every error figment found as
/// "config key `a.b` (from <source>): <what is wrong>", where the source is
/// the exact environment variable or the file path.
fn describe_load_error(error: &figment::Error) -> String {
    let mut lines = Vec::new();
    for e in error.clone() {
        let mut path = e.path.clone();
        // An unknown field's own name is the key the user wrote.
        if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
        }
        let key = path.join(".");
        let source = match &e.metadata {
            Some(md) if md.name.contains("environment") => {
                format!(
                    "environment variable TIDINGS_{}",
                    path.join("__").to_ascii_uppercase()
                )
            }
            Some(md) => match &md.source {
                Some(figment::Source::File(f)) => format!("file {}", f.display()),
                _ => md.name.to_string(),
            },
            None => "configuration".to_string(),
        };
        // Never echo a secret's value back: for these keys, only say which
        // key was wrong and what was expected.
        let kind = match &e.kind {
            figment::error::Kind::InvalidValue(_, expected) if is_secret(&key) => {
                format!("invalid value, expected {expected}")
            }
            figment::error::Kind::InvalidType(_, expected) if is_secret(&key) => {
                format!("invalid type, expected {expected}")
            }
            figment::error::Kind::Message(_) if is_secret(&key) => "invalid value".to_string(),
            other => other.to_string(),
        };
        lines.push(format!("config key `{key}` (from {source}): {kind}"));
    }
    lines.join("\n")
}

fn is_secret(key: &str) -> bool {
    matches!(key, "api_key" | "redis_url")
}

fn non_negative_secs(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v == 0.0 {
        Ok(Duration::ZERO)
    } else {
        positive_secs(key, v)
    }
}

fn positive_secs(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!("must be a positive number of seconds, got {v}"),
            origin: String::new(),
        })
    }
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then the environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("file {} does not exist", path.display()),
                    origin: String::new(),
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // Secrets are taken from the environment byte for byte: figment
        // would read an all-digit key as a number (and round it).
        fig = fig.merge(
            Env::prefixed("TIDINGS_")
                .split("__")
                .ignore(&["api_key", "redis_url"]),
        );
        let mut config: Config = fig.extract()?;
        if let Ok(raw) = std::env::var("TIDINGS_API_KEY") {
            config.api_key = Some(Secret(raw));
        }
        if let Ok(raw) = std::env::var("TIDINGS_REDIS_URL") {
            config.redis_url = Some(Secret(raw));
        }
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason, .. }
                if is_secret(key)
                    && std::env::var_os(format!("TIDINGS_{}", key.to_ascii_uppercase()))
                        .is_some() =>
            {
                let origin = format!(
                    " (from environment variable TIDINGS_{})",
                    key.to_ascii_uppercase()
                );
                ConfigError::Invalid {
                    key,
                    reason,
                    origin,
                }
            }
            ConfigError::Invalid { key, reason, .. } => {
                let origin = fig
                    .find_metadata(key)
                    .map(|md| match &md.source {
                        Some(figment::Source::File(f)) => format!(" (from file {})", f.display()),
                        _ if md.name.contains("environment") => format!(
                            " (from environment variable TIDINGS_{})",
                            key.replace('.', "__").to_ascii_uppercase()
                        ),
                        _ => " (the built-in default)".to_string(),
                    })
                    .unwrap_or_default();
                ConfigError::Invalid {
                    key,
                    reason,
                    origin,
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ws = &self.websocket;
        if !ws.path.starts_with('/') {
            return Err(ConfigError::Invalid {
                key: "websocket.path",
                reason: "must start with '/'".into(),
                origin: String::new(),
            });
        }
        if !(128..=64 * 1024 * 1024).contains(&ws.max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "websocket.max_message_bytes",
                reason: "must be between 128 and 67108864".into(),
                origin: String::new(),
            });
        }
        if ws.outbound_queue == 0 {
            return Err(ConfigError::Invalid {
                key: "websocket.outbound_queue",
                reason: "must be at least 1".into(),
                origin: String::new(),
            });
        }
        if self.api.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "api.max_body_bytes",
                reason: "must be at least 1".into(),
                origin: String::new(),
            });
        }
        if let Some(key) = &self.api_key {
            if key.0.trim().len() < 16 {
                return Err(ConfigError::Invalid {
                    key: "api_key",
                    reason: "must be at least 16 characters".into(),
                    origin: String::new(),
                });
            }
        }
        if let Some(url) = &self.redis_url {
            if !(url.0.starts_with("redis://") || url.0.starts_with("rediss://")) {
                return Err(ConfigError::Invalid {
                    key: "redis_url",
                    reason: "must start with redis:// or rediss://".into(),
                    origin: String::new(),
                });
            }
        }
        self.transport()?;
        self.router()?;
        self.redis()?;
        self.cookie_proxy()?;
        self.token()?;
        self.rpc()?;
        let t = self.transport()?;
        if t.drain_spread >= t.shutdown_grace {
            return Err(ConfigError::Invalid {
                key: "shutdown.drain_spread_secs",
                reason: format!(
                    "must be shorter than shutdown.grace_secs ({}), or sockets are dropped before their turn",
                    self.shutdown.grace_secs
                ),
                origin: String::new(),
            });
        }
        let mut seen = Vec::new();
        for r in &self.identity.resolvers {
            if seen.contains(r) {
                return Err(ConfigError::Invalid {
                    key: "identity.resolvers",
                    reason: format!("{} is listed twice", r.name()),
                    origin: String::new(),
                });
            }
            seen.push(*r);
        }
        Ok(())
    }

    /// The Redis broker's configuration, if `redis_url` is set.
    pub(crate) fn redis(&self) -> Result<Option<RedisConfig>, ConfigError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let r = &self.redis;
        let mut config = RedisConfig::new(url.0.clone());
        config.command_timeout =
            positive_secs("redis.command_timeout_secs", r.command_timeout_secs)?;
        config.connect_timeout =
            positive_secs("redis.connect_timeout_secs", r.connect_timeout_secs)?;
        config.reconnect_max_delay =
            positive_secs("redis.reconnect_max_delay_secs", r.reconnect_max_delay_secs)?;
        if !(1..=64).contains(&r.pool_size) {
            return Err(ConfigError::Invalid {
                key: "redis.pool_size",
                reason: format!("must be between 1 and 64, got {}", r.pool_size),
                origin: String::new(),
            });
        }
        config.pool_size = r.pool_size;
        if !(1024..=16 * 1024 * 1024).contains(&r.message_buffer) {
            return Err(ConfigError::Invalid {
                key: "redis.message_buffer",
                reason: format!(
                    "must be between 1024 and 16777216, got {}",
                    r.message_buffer
                ),
                origin: String::new(),
            });
        }
        config.message_buffer = r.message_buffer;
        config.self_check_interval = if r.self_check_interval_secs == 0.0 {
            Duration::ZERO
        } else {
            positive_secs("redis.self_check_interval_secs", r.self_check_interval_secs)?
        };
        config.check_url().map_err(|e| ConfigError::Invalid {
            key: "redis_url",
            reason: e.to_string(),
            origin: String::new(),
        })?;
        Ok(Some(config))
    }

    /// The cookie proxy's configuration, if the resolver is used.
    pub(crate) fn cookie_proxy(&self) -> Result<Option<CookieProxyConfig>, ConfigError> {
        if !self.identity.resolvers.contains(&ResolverKind::CookieProxy) {
            return Ok(None);
        }
        let c = &self.identity.cookie_proxy;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            key,
            reason,
            origin: String::new(),
        };
        let Some(url) = &c.url else {
            return Err(invalid(
                "identity.cookie_proxy.url",
                "must be set when identity.resolvers lists cookie_proxy".into(),
            ));
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| invalid("identity.cookie_proxy.url", format!("{e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid(
                "identity.cookie_proxy.url",
                "must be an absolute http:// URL".into(),
            ));
        }
        let mut config = CookieProxyConfig::new(uri);
        config.cookies = c.cookies.clone();
        for h in &c.headers {
            let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                invalid(
                    "identity.cookie_proxy.headers",
                    format!("`{h}` is not a header name"),
                )
            })?;
            config.headers.push(name);
        }
        config.connect_timeout = positive_secs(
            "identity.cookie_proxy.connect_timeout_secs",
            c.connect_timeout_secs,
        )?;
        config.timeout = positive_secs("identity.cookie_proxy.timeout_secs", c.timeout_secs)?;
        config.cache_ttl = if c.cache_ttl_secs == 0.0 {
            Duration::ZERO
        } else {
            positive_secs("identity.cookie_proxy.cache_ttl_secs", c.cache_ttl_secs)?
        };
        config.cache_max_entries = c.cache_max_entries.max(1);
        config.retry_after = Duration::from_secs(c.retry_after_secs.max(1));
        Ok(Some(config))
    }

    /// The token resolver's configuration, if the resolver is used.
    pub(crate) fn token(&self) -> Result<Option<TokenConfig>, ConfigError> {
        if !self.identity.resolvers.contains(&ResolverKind::Token) {
            return Ok(None);
        }
        let t = &self.identity.token;
        if t.cookie.is_empty() && t.query.is_empty() {
            return Err(ConfigError::Invalid {
                key: "identity.token",
                reason: "set `cookie` or `query` (or both): where does the token come from?".into(),
                origin: String::new(),
            });
        }
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        Ok(Some(TokenConfig {
            cookie: nonempty(&t.cookie),
            query: nonempty(&t.query),
            prefix: t.prefix.clone(),
            ..TokenConfig::default()
        }))
    }

    /// The transport tunables.
    pub(crate) fn transport(&self) -> Result<TransportConfig, ConfigError> {
        let ws = &self.websocket;
        Ok(TransportConfig {
            ws_path: ws.path.clone(),
            ping_interval: positive_secs("websocket.ping_interval_secs", ws.ping_interval_secs)?,
            pong_timeout: positive_secs("websocket.pong_timeout_secs", ws.pong_timeout_secs)?,
            max_message_size: ws.max_message_bytes,
            outbound_queue: ws.outbound_queue,
            slow_consumer: match ws.slow_consumer {
                SlowConsumer::Close => SlowConsumerPolicy::Close,
                SlowConsumer::Drop => SlowConsumerPolicy::Drop,
            },
            write_timeout: positive_secs("websocket.write_timeout_secs", ws.write_timeout_secs)?,
            handshake_timeout: positive_secs(
                "websocket.handshake_timeout_secs",
                ws.handshake_timeout_secs,
            )?,
            allowed_origins: ws.allowed_origins.clone(),
            max_subscriptions: ws.max_subscriptions,
            shutdown_grace: positive_secs("shutdown.grace_secs", self.shutdown.grace_secs)?,
            client_messages_per_sec: if ws.client_messages_per_sec.is_finite()
                && ws.client_messages_per_sec > 0.0
            {
                ws.client_messages_per_sec
            } else {
                return Err(ConfigError::Invalid {
                    key: "websocket.client_messages_per_sec",
                    reason: format!(
                        "must be a positive number, got {}",
                        ws.client_messages_per_sec
                    ),
                    origin: String::new(),
                });
            },
            client_message_burst: ws.client_message_burst.max(1),
            drain_readiness_delay: non_negative_secs(
                "shutdown.readiness_delay_secs",
                self.shutdown.readiness_delay_secs,
            )?,
            drain_spread: non_negative_secs(
                "shutdown.drain_spread_secs",
                self.shutdown.drain_spread_secs,
            )?,
            limits: self.limits()?,
            ..TransportConfig::default()
        })
    }

    /// The connection limits.
    fn limits(&self) -> Result<Limits, ConfigError> {
        let l = &self.limits;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            key,
            reason,
            origin: String::new(),
        };
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.max_connections_per_user",
                l.max_connections_per_user,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        let trusted_proxies = l
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .map_err(|e| invalid("limits.trusted_proxies", e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            max_connections_per_user: l.max_connections_per_user,
            trusted_proxies,
        })
    }

    /// The RPC client's configuration, if RPC is on.
    pub(crate) fn rpc(&self) -> Result<Option<RpcConfig>, ConfigError> {
        let r = &self.rpc;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            key,
            reason,
            origin: String::new(),
        };
        let Some(url) = &r.url else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| invalid("rpc.url", format!("{e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid("rpc.url", "must be an absolute http:// URL".into()));
        }
        if r.allowed_paths.is_empty() || r.allowed_paths.iter().any(|p| !p.starts_with('/')) {
            return Err(invalid(
                "rpc.allowed_paths",
                "list the path prefixes clients may call, each starting with `/` (for example [\"/api/\"])".into(),
            ));
        }
        let mut config = RpcConfig::new(uri, r.allowed_paths.clone());
        config.timeout = positive_secs("rpc.timeout_secs", r.timeout_secs)?;
        config.max_in_flight = r.max_in_flight.max(1);
        config.forward_headers = r
            .forward_headers
            .iter()
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid("rpc.forward_headers", format!("`{h}` is not a header name"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(config))
    }

    /// The compiled routing rules.
    pub(crate) fn router(&self) -> Result<Router, ConfigError> {
        Router::new(self.routing.rules.clone()).map_err(|e| ConfigError::Invalid {
            key: "routing.rules",
            reason: e.to_string(),
            origin: String::new(),
        })
    }

    /// The effective configuration as TOML, secrets redacted.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
