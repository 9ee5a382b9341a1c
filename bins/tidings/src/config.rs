//! Configuration: built-in defaults < TOML file (`--config`) < `TIDINGS_*`
//! environment variables (nested keys joined with `__`).
//!
//! Each crate owns its sections: the types deserialize themselves (unknown
//! keys refused, every key defaulted) and check themselves, naming the key
//! within their section. This module only layers the sources, picks the
//! sections, names each error's key in full with its source (the file or
//! the environment variable), and keeps the few keys of the binary itself
//! (`listen`, `api_key`, `redis_url`, `[log]`, `[api]`).
//!
//! Every key is listed with its default in `docs/configuration.md`.

use std::{net::SocketAddr, path::Path};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};
use tidings_bridge::{RedisConfig, RedisSettings};
use tidings_core::config::Secret;
use tidings_identity::{CookieProxyConfig, IdentitySettings, TokenConfig};
use tidings_pusher::{PusherConfig, PusherSettings};
use tidings_routing::{Router, RoutingSettings};
use tidings_rpc::{RpcConfig, RpcSettings};
use tidings_socketio::{SocketIoConfig, SocketIoSettings};
use tidings_sse::{SseConfig, SseSettings};
use tidings_transport::{LimitsSettings, ShutdownSettings, TransportConfig, WebSocketSettings};

mod kubernetes;
pub(crate) use kubernetes::kubernetes_service_vars;

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
    /// Threads running sockets and the fan-out; 0: one per core.
    pub(crate) worker_threads: usize,
    /// Redis connection tunables (used when `redis_url` is set): tidings-bridge.
    pub(crate) redis: RedisSettings,
    /// Who each socket is: tidings-identity.
    pub(crate) identity: IdentitySettings,
    /// RPC to the backend over the socket: tidings-transport.
    pub(crate) rpc: RpcSettings,
    /// Logging.
    pub(crate) log: LogConfig,
    /// The WebSocket endpoint: tidings-transport.
    pub(crate) websocket: WebSocketSettings,
    /// The Server-Sent Events endpoint: tidings-sse.
    pub(crate) sse: SseSettings,
    /// The Socket.IO endpoint: tidings-socketio.
    pub(crate) socketio: SocketIoSettings,
    /// The Pusher Channels endpoints: tidings-pusher.
    pub(crate) pusher: PusherSettings,
    /// The HTTP publish API.
    pub(crate) api: ApiConfig,
    /// Shutdown behaviour: tidings-transport.
    pub(crate) shutdown: ShutdownSettings,
    /// Connection limits: tidings-transport.
    pub(crate) limits: LimitsSettings,
    /// Channel routing rules: tidings-routing.
    pub(crate) routing: RoutingSettings,
    /// The backend's control (control channel, presence timings): tidings-control.
    pub(crate) control: ControlSettings,
    /// Lifecycle webhooks: tidings-control.
    pub(crate) webhooks: WebhookSettings,
}

/// `[control]`: the control API's channel, this gateway's id, and how
/// presence entries are kept alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ControlSettings {
    /// The pub/sub channel every gateway listens to for commands.
    pub(crate) channel: String,
    /// This gateway's id in connection ids and presence (unset: random).
    pub(crate) gateway_id: Option<String>,
    /// How long a presence entry lives after its last refresh.
    pub(crate) presence_ttl_secs: u64,
    /// How often a gateway refreshes its presence entries.
    pub(crate) presence_refresh_secs: u64,
    /// How long `GET /api/connections` waits for every gateway's answer.
    pub(crate) survey_timeout_ms: u64,
    /// Serve the admin page at `/admin`.
    pub(crate) admin_page: bool,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            channel: tidings_control::DEFAULT_CONTROL_CHANNEL.into(),
            gateway_id: None,
            presence_ttl_secs: 30,
            presence_refresh_secs: 10,
            survey_timeout_ms: tidings_control::DEFAULT_SURVEY_TIMEOUT.as_millis() as u64,
            admin_page: true,
        }
    }
}

/// `[webhooks]`: lifecycle webhooks to the backend (off unless `url` is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WebhookSettings {
    /// Where to POST (`http://`). Unset: no webhooks.
    pub(crate) url: Option<String>,
    /// The HMAC-SHA256 key (at least 16 bytes); required with `url`.
    pub(crate) secret: Option<Secret>,
    /// Most events waiting; more are dropped and counted.
    pub(crate) queue: usize,
    /// Most events per POST.
    pub(crate) batch: usize,
    /// Most POSTs in flight.
    pub(crate) concurrency: usize,
    /// Longest wait for one answer.
    pub(crate) timeout_ms: u64,
    /// Attempts per POST, the first included.
    pub(crate) max_attempts: u32,
    /// Wait before the first retry (doubled each time, at most 30 s).
    pub(crate) backoff_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            queue: 10_000,
            batch: 100,
            concurrency: 4,
            timeout_ms: 5_000,
            max_attempts: 4,
            backoff_ms: 500,
        }
    }
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
pub(crate) struct ApiConfig {
    /// With no `api_key`, accept publishes from loopback peers that came
    /// through no proxy.
    pub(crate) allow_local_without_key: bool,
    /// Largest request body accepted.
    pub(crate) max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            redis_url: None,
            worker_threads: 0,
            redis: RedisSettings::default(),
            identity: IdentitySettings::default(),
            rpc: RpcSettings::default(),
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            websocket: WebSocketSettings::default(),
            sse: SseSettings::default(),
            socketio: SocketIoSettings::default(),
            pusher: PusherSettings::default(),
            api: ApiConfig {
                allow_local_without_key: true,
                max_body_bytes: 1024 * 1024,
            },
            shutdown: ShutdownSettings::default(),
            limits: LimitsSettings::default(),
            routing: RoutingSettings::default(),
            control: ControlSettings::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// The most worker threads `worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// A configuration that cannot be used, naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{}", describe_load_error(.0))]
    Load(Box<figment::Error>),
    #[error("config key `{key}`{origin}: {reason}")]
    Invalid {
        /// The full dotted key.
        key: String,
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

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
            origin: String::new(),
        }
    }

    /// A crate's error, its key placed under `section` ("" for a key of
    /// the whole file).
    fn section(section: &str) -> impl Fn(tidings_core::config::ConfigError) -> Self + '_ {
        move |e| {
            let e = e.within(section);
            Self::invalid(e.key(), e.reason())
        }
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
    matches!(key, "api_key" | "redis_url" | "webhooks.secret")
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then the environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // Secrets are taken from the environment byte for byte: figment
        // would read an all-digit key as a number (and round it).
        // Variables Kubernetes sets for a Service named `tidings` (or
        // `tidings-*`) are not configuration: skip those exact shapes, and
        // still refuse any other unknown `TIDINGS_*` as a typo.
        let kubernetes: Vec<String> = kubernetes_service_vars()
            .into_iter()
            .map(|name| name["TIDINGS_".len()..].to_owned())
            .collect();
        let kubernetes: Vec<&str> = kubernetes.iter().map(String::as_str).collect();
        fig = fig.merge(
            Env::prefixed("TIDINGS_")
                .split("__")
                .ignore(&["api_key", "redis_url"])
                .ignore(&kubernetes),
        );
        let mut config: Config = fig.extract()?;
        if let Ok(raw) = std::env::var("TIDINGS_API_KEY") {
            config.api_key = Some(Secret(raw));
        }
        if let Ok(raw) = std::env::var("TIDINGS_REDIS_URL") {
            config.redis_url = Some(Secret(raw));
        }
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason, .. } => {
                let env_var = format!("TIDINGS_{}", key.replace('.', "__").to_ascii_uppercase());
                let origin = if is_secret(&key) && std::env::var_os(&env_var).is_some() {
                    format!(" (from environment variable {env_var})")
                } else {
                    fig.find_metadata(&key)
                        .map(|md| match &md.source {
                            Some(figment::Source::File(f)) => {
                                format!(" (from file {})", f.display())
                            }
                            _ if md.name.contains("environment") => {
                                format!(" (from environment variable {env_var})")
                            }
                            _ => " (the built-in default)".to_string(),
                        })
                        .unwrap_or_default()
                };
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

    /// Checks every section (the first problem found is reported).
    fn validate(&self) -> Result<(), ConfigError> {
        if self.api.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "api.max_body_bytes",
                "must be at least 1",
            ));
        }
        if let Some(key) = &self.api_key {
            if key.expose().trim().len() < 16 {
                return Err(ConfigError::invalid(
                    "api_key",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::invalid(
                "worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
            ));
        }
        if let Some(url) = &self.redis_url {
            if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
        }
        let transport = self.transport()?;
        self.sse(&transport)?;
        self.socketio(&transport)?;
        self.pusher(&transport)?;
        self.router()?;
        self.redis()?;
        self.identity
            .validate()
            .map_err(ConfigError::section("identity"))?;
        self.rpc()?;
        self.presence()?;
        self.webhooks()?;
        let c = &self.control;
        if tidings_core::ChannelName::new(&c.channel).is_err() {
            return Err(ConfigError::invalid(
                "control.channel",
                "must be a valid channel name (no glob characters, no control characters)",
            ));
        }
        if let Some(id) = &c.gateway_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError::invalid(
                    "control.gateway_id",
                    "must be 1 to 64 letters, digits, `_` or `-`",
                ));
            }
        }
        Ok(())
    }

    /// The presence timings (`control.presence_*`).
    pub(crate) fn presence(&self) -> Result<tidings_control::PresenceConfig, ConfigError> {
        let c = tidings_control::PresenceConfig {
            ttl: std::time::Duration::from_secs(self.control.presence_ttl_secs),
            refresh: std::time::Duration::from_secs(self.control.presence_refresh_secs),
        };
        c.validate().map_err(|_| {
            ConfigError::invalid(
                "control.presence_refresh_secs",
                "must be at least 1 and less than control.presence_ttl_secs",
            )
        })?;
        Ok(c)
    }

    /// How long a survey of every gateway (`GET /api/connections`) waits.
    pub(crate) fn survey_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        match self.control.survey_timeout_ms {
            10..=60_000 => Ok(std::time::Duration::from_millis(
                self.control.survey_timeout_ms,
            )),
            _ => Err(ConfigError::invalid(
                "control.survey_timeout_ms",
                "must be 10 to 60000 (milliseconds)",
            )),
        }
    }

    /// The webhook sender's configuration, if `webhooks.url` is set.
    pub(crate) fn webhooks(&self) -> Result<Option<tidings_control::WebhookConfig>, ConfigError> {
        let w = &self.webhooks;
        let Some(url) = &w.url else {
            return Ok(None);
        };
        let uri = url
            .parse::<http::Uri>()
            .map_err(|e| ConfigError::invalid("webhooks.url", e.to_string()))?;
        let Some(secret) = &w.secret else {
            return Err(ConfigError::invalid(
                "webhooks.secret",
                "is required when webhooks.url is set",
            ));
        };
        let mut c = tidings_control::WebhookConfig::new(uri, secret.expose());
        c.queue = w.queue;
        c.batch = w.batch;
        c.concurrency = w.concurrency;
        c.timeout = std::time::Duration::from_millis(w.timeout_ms.max(1));
        c.max_attempts = w.max_attempts;
        c.backoff = std::time::Duration::from_millis(w.backoff_ms);
        c.validate().map_err(|why| {
            let key = why.split_whitespace().next().unwrap_or("webhooks.url");
            let key = key.split(',').next().unwrap_or(key).to_owned();
            ConfigError::invalid(&key, why)
        })?;
        Ok(Some(c))
    }

    /// The Redis broker's configuration, if `redis_url` is set.
    pub(crate) fn redis(&self) -> Result<Option<RedisConfig>, ConfigError> {
        let Some(url) = &self.redis_url else {
            if self.redis.mode != tidings_bridge::ModeName::Standalone {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "required with redis.mode = \"sentinel\" or \"cluster\": the URL of one Sentinel or one cluster node (TIDINGS_REDIS_URL)",
                ));
            }
            return Ok(None);
        };
        let config = self
            .redis
            .to_config(url.expose())
            .map_err(ConfigError::section("redis"))?;
        config
            .check_url()
            .map_err(|e| ConfigError::invalid("redis_url", e.to_string()))?;
        Ok(Some(config))
    }

    /// The cookie proxy's configuration, if the resolver is used.
    pub(crate) fn cookie_proxy(&self) -> Result<Option<CookieProxyConfig>, ConfigError> {
        self.identity
            .cookie_proxy_config()
            .map_err(ConfigError::section("identity"))
    }

    /// The token resolver's configuration, if the resolver is used.
    pub(crate) fn token(&self) -> Result<Option<TokenConfig>, ConfigError> {
        self.identity
            .token_config()
            .map_err(ConfigError::section("identity"))
    }

    /// The transport tunables (`[websocket]`, `[shutdown]`, `[limits]`).
    pub(crate) fn transport(&self) -> Result<TransportConfig, ConfigError> {
        TransportConfig::from_settings(&self.websocket, &self.shutdown, &self.limits)
            .map_err(ConfigError::section(""))
    }

    /// The SSE endpoint's tunables (`[sse]`; the write timeout and the
    /// drain window are the WebSockets'), if it is on.
    pub(crate) fn sse(&self, t: &TransportConfig) -> Result<Option<SseConfig>, ConfigError> {
        if !self.sse.enabled {
            return Ok(None);
        }
        let mut c = SseConfig {
            write_timeout: t.write_timeout,
            body_timeout: t.handshake_timeout,
            drain_spread: t.drain_spread,
            ..SseConfig::default()
        };
        self.sse
            .apply(&mut c)
            .map_err(ConfigError::section("sse"))?;
        if c.path == t.ws_path {
            return Err(ConfigError::invalid(
                "sse.path",
                "must differ from websocket.path",
            ));
        }
        Ok(Some(c))
    }

    /// The Socket.IO endpoint's tunables (`[socketio]`; the write timeout
    /// and the drain window are the WebSockets'), if it is on.
    pub(crate) fn socketio(
        &self,
        t: &TransportConfig,
    ) -> Result<Option<SocketIoConfig>, ConfigError> {
        if !self.socketio.enabled {
            return Ok(None);
        }
        let mut c = SocketIoConfig {
            write_timeout: t.write_timeout,
            body_timeout: t.handshake_timeout,
            drain_spread: t.drain_spread,
            ..SocketIoConfig::default()
        };
        self.socketio
            .apply(&mut c)
            .map_err(ConfigError::section("socketio"))?;
        if t.ws_path.starts_with(&c.path)
            || (self.sse.enabled && self.sse.path.starts_with(&c.path))
        {
            return Err(ConfigError::invalid(
                "socketio.path",
                "must not be a prefix of websocket.path or sse.path",
            ));
        }
        Ok(Some(c))
    }

    /// The Pusher endpoints' tunables (`[pusher]`; the write timeout and
    /// the drain window are the WebSockets'), if they are on.
    pub(crate) fn pusher(&self, t: &TransportConfig) -> Result<Option<PusherConfig>, ConfigError> {
        if !self.pusher.enabled {
            return Ok(None);
        }
        let mut c = PusherConfig {
            write_timeout: t.write_timeout,
            drain_spread: t.drain_spread,
            ..PusherConfig::default()
        };
        self.pusher
            .apply(&mut c)
            .map_err(ConfigError::section("pusher"))?;
        let taken = |p: &str| {
            p.starts_with(tidings_pusher::SOCKET_PREFIX)
                || p.starts_with(tidings_pusher::API_PREFIX)
        };
        if taken(&t.ws_path)
            || (self.sse.enabled && taken(&self.sse.path))
            || (self.socketio.enabled && taken(&self.socketio.path))
        {
            return Err(ConfigError::invalid(
                "pusher.enabled",
                "websocket.path, sse.path and socketio.path must not be under /app/ or /apps/",
            ));
        }
        Ok(Some(c))
    }

    /// The RPC client's configuration, if RPC is on.
    pub(crate) fn rpc(&self) -> Result<Option<RpcConfig>, ConfigError> {
        self.rpc.to_config().map_err(ConfigError::section("rpc"))
    }

    /// The compiled routing rules.
    pub(crate) fn router(&self) -> Result<Router, ConfigError> {
        self.routing
            .router()
            .map_err(ConfigError::section("routing"))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
