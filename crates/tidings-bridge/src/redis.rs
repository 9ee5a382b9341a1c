//! The Redis pub/sub broker (fred).
//!
//! One process holds a constant number of Redis connections whatever the
//! number of sockets: one for subscriptions and a small pool for commands
//! (`PUBLISH`). Reference counting lives in the [`Bridge`](crate::Bridge)
//! (fred keeps a set, not counts), so this type only turns batches of topics
//! into `SUBSCRIBE`/`PSUBSCRIBE` and back, routes what arrives, and reports
//! connection loss and recovery: the bridge restores every subscription
//! itself on [`Inbound::connection_restored`] and sends `gap` notices.

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::{Client, Pool},
    error::ErrorKind,
    prelude::{ClientLike, EventInterface, PubsubInterface},
    types::{
        config::{
            ClusterDiscoveryPolicy, Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy,
            Server, ServerConfig, UnresponsiveConfig,
        },
        Builder, ConnectHandle, MessageKind, Value,
    },
};
use parking_lot::RwLock;
use tidings_core::{ChannelName, ChannelPattern, Message};
use tokio::sync::broadcast::error::RecvError;

use crate::broker::{BoxFuture, Broker, BrokerError, Inbound, Topic};

/// How the Redis broker connects and recovers.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    pub url: String,
    /// Longest wait for any Redis command (publish, subscribe) before it
    /// fails with [`BrokerError::Timeout`]. Default 2 s.
    pub command_timeout: Duration,
    /// Longest wait for a TCP/TLS connection to be set up. Default 2 s.
    pub connect_timeout: Duration,
    /// Reconnect backoff: first delay. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Reconnect backoff: longest delay between attempts. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Connections in the command (publish) pool. Default 2.
    pub pool_size: usize,
    /// Messages fred may buffer between its reader and the routing loop
    /// before it loses them (counted as `lagged`). Default 8,192 (fred
    /// allocates its event channels at this size up front).
    pub message_buffer: usize,
    /// How often the self-check compares the subscriptions sockets need
    /// with what the subscription connection holds on Redis (and repairs
    /// any difference); it also runs after every reconnect. Zero: only
    /// after reconnects. Default 30 s.
    pub self_check_interval: Duration,
    /// The topology: one server, a master found through Sentinel, or a
    /// Redis Cluster. Default [`RedisMode::Standalone`].
    pub mode: RedisMode,
    /// Cluster: how often the slot map is read and compared with where
    /// each sharded channel is subscribed (a slot that moved, a master
    /// replaced by its replica); what moved is subscribed again on its new
    /// owner. Sentinel: how often the Sentinels are asked for the master;
    /// connections still on an old master are redone on the new one.
    /// Default 1 s.
    pub topology_check_interval: Duration,
    /// Which channels use sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`); `None`:
    /// none (for the gateway: the routing rules' `sharded` option).
    pub sharded: Option<ShardedLookup>,
}

/// Which channels use sharded pub/sub (see [`RedisConfig::sharded`]).
pub type ShardedLookup = Arc<dyn Fn(&ChannelName) -> bool + Send + Sync>;

/// How the gateway reaches Redis (`redis.mode`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// One server, at the URL.
    #[default]
    Standalone,
    /// The master of `service`, as the Sentinels say: the URL names one
    /// Sentinel (its host and port; its user, password, TLS and database
    /// apply to the master and to every Sentinel), `nodes` more Sentinels.
    /// Follows failovers.
    Sentinel {
        /// The Sentinel service (master) name.
        service: String,
        /// More Sentinels, `host:port`.
        nodes: Vec<String>,
    },
    /// A Redis Cluster: the URL names one node (its user, password and TLS
    /// apply to every node; database 0 only), `nodes` more seed nodes; the
    /// others are discovered. Follows failovers and resharding.
    Cluster {
        /// More seed nodes, `host:port`.
        nodes: Vec<String>,
    },
}

impl RedisMode {
    /// `"standalone"`, `"sentinel"` or `"cluster"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Sentinel { .. } => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("pool_size", &self.pool_size)
            .field("message_buffer", &self.message_buffer)
            .field("self_check_interval", &self.self_check_interval)
            .field("mode", &self.mode)
            .field("topology_check_interval", &self.topology_check_interval)
            .field("sharded", &self.sharded.is_some())
            .finish()
    }
}

impl RedisConfig {
    /// The defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            pool_size: 2,
            message_buffer: 8_192,
            self_check_interval: crate::broker::DEFAULT_SELF_CHECK,
            mode: RedisMode::Standalone,
            topology_check_interval: Duration::from_secs(1),
            sharded: None,
        }
    }

    /// Whether `channel` uses sharded pub/sub.
    pub fn is_sharded(&self, channel: &ChannelName) -> bool {
        self.sharded.as_ref().is_some_and(|f| f(channel))
    }
}

impl RedisConfig {
    /// Checks that the URL parses (scheme, host, port, database), without
    /// connecting. The error never contains the password.
    pub fn check_url(&self) -> Result<(), RedisSetupError> {
        fred_config(self).map(|_| ())
    }
}

/// `host:port` as a fred server.
fn server_of(node: &str) -> Option<Server> {
    let (host, port) = node.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| Server::new(host, port))
}

/// Checks a `host:port` list (`redis.nodes`): the first bad entry.
pub fn check_nodes(nodes: &[String]) -> Result<(), String> {
    match nodes.iter().find(|n| server_of(n).is_none()) {
        Some(bad) => Err(format!("{bad:?} is not host:port")),
        None => Ok(()),
    }
}

/// The fred configuration for `config`'s URL and mode.
fn fred_config(config: &RedisConfig) -> Result<Config, RedisSetupError> {
    let mut fred = parse_url(&config.url)?;
    let invalid = |reason: String| RedisSetupError::InvalidUrl {
        url: redact_url(&config.url),
        reason,
    };
    let first = match &fred.server {
        ServerConfig::Centralized { server } => server.clone(),
        _ => return Err(invalid("must name one server".into())),
    };
    let more =
        |nodes: &[String]| -> Result<Vec<Server>, RedisSetupError> {
            let mut hosts = vec![first.clone()];
            for n in nodes {
                hosts.push(server_of(n).ok_or_else(|| {
                    RedisSetupError::InvalidNodes(format!("{n:?} is not host:port"))
                })?);
            }
            Ok(hosts)
        };
    match &config.mode {
        RedisMode::Standalone => {}
        RedisMode::Sentinel { service, nodes } => {
            fred.server = ServerConfig::Sentinel {
                hosts: more(nodes)?,
                service_name: service.clone(),
            };
        }
        RedisMode::Cluster { nodes } => {
            if fred.database.is_some_and(|db| db != 0) {
                return Err(invalid(
                    "a Redis Cluster has database 0 only (drop the /<db> from the URL)".into(),
                ));
            }
            fred.database = None;
            fred.server = ServerConfig::Clustered {
                hosts: more(nodes)?,
                policy: ClusterDiscoveryPolicy::default(),
            };
        }
    }
    Ok(fred)
}

/// The fred configuration for one node of a cluster: `config`'s user,
/// password and TLS, that node only.
pub(crate) fn node_config(config: &RedisConfig, node: &Server) -> Result<Config, RedisSetupError> {
    let mut fred = parse_url(&config.url)?;
    fred.database = None;
    fred.server = ServerConfig::Centralized {
        server: node.clone(),
    };
    Ok(fred)
}

fn parse_url(url: &str) -> Result<Config, RedisSetupError> {
    let redacted = redact_url(url);
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(RedisSetupError::InvalidUrl {
            url: redacted,
            reason: "must start with redis:// or rediss://".into(),
        });
    }
    Config::from_url_centralized(url).map_err(|e| RedisSetupError::InvalidUrl {
        url: redacted.clone(),
        reason: e.details().replace(url, &redacted),
    })
}

/// `redis://user:secret@host/0` shown as `redis://user:***@host/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            } else {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
        }
        _ => url.to_string(),
    }
}

/// Why a Redis broker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not parse (the message never contains the password).
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// fred refused the configuration.
    #[error("cannot set up the Redis client: {0}")]
    Client(String),
    /// An entry of `redis.nodes` is not `host:port`.
    #[error("invalid Redis node: {0}")]
    InvalidNodes(String),
}

/// The Redis pub/sub implementation of [`Broker`].
pub struct RedisBroker {
    subscriber: Client,
    pool: Pool,
    connected: Arc<AtomicBool>,
    /// Patterns subscribed on Redis, to route `pmessage`s (fred does not
    /// pass on which pattern matched).
    patterns: Arc<RwLock<BTreeSet<ChannelPattern>>>,
    /// Tokens of the PINGs that confirm subscriptions.
    tokens: std::sync::atomic::AtomicU64,
    url: String,
    /// The connection tasks of the subscriber and the pool: each ends once
    /// its connections are closed (awaited by [`Broker::close`]).
    connections: parking_lot::Mutex<Vec<ConnectHandle>>,
    /// Bounds each step of [`Broker::close`].
    command_timeout: Duration,
    /// Which channels use sharded pub/sub.
    sharded: Option<ShardedLookup>,
    /// Sentinel mode: a connection to each Sentinel, asked for the master.
    sentinels: Vec<Client>,
    /// Background tasks ended by [`Broker::close`].
    watchers: Vec<tokio::task::AbortHandle>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

pub(crate) fn to_broker_error(e: fred::error::Error) -> BrokerError {
    match e.kind() {
        ErrorKind::Timeout => BrokerError::Timeout,
        _ if e.details().starts_with("NOPERM") => BrokerError::Refused(e.details().to_string()),
        _ => BrokerError::Unavailable(e.details().to_string()),
    }
}

/// The fred builder for `config`: reconnect forever with backoff, command
/// and connect timeouts, unresponsive-connection detection.
pub(crate) fn builder(config: &RedisConfig, subscriber: bool) -> Result<Builder, RedisSetupError> {
    builder_for(config, fred_config(config)?, subscriber)
}

/// [`builder`] for the fred configuration `fred_config`.
pub(crate) fn builder_for(
    config: &RedisConfig,
    mut fred_config: Config,
    subscriber: bool,
) -> Result<Builder, RedisSetupError> {
    // Keep trying when the very first connection fails too (Redis started
    // after the gateway): the reconnect policy then applies from the start.
    fred_config.fail_fast = false;
    let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
    let mut builder = Builder::from_config(fred_config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0, // retry forever
            millis(config.reconnect_min_delay),
            millis(config.reconnect_max_delay),
            2,
        ))
        .set_performance_config(PerformanceConfig {
            default_command_timeout: config.command_timeout,
            // fred sizes all of a client's event channels with this, up
            // front; only the subscriber's messages need the room.
            broadcast_channel_capacity: if subscriber {
                config.message_buffer.max(32)
            } else {
                32
            },
            ..PerformanceConfig::default()
        })
        .set_connection_config(ConnectionConfig {
            connection_timeout: config.connect_timeout,
            internal_command_timeout: config.command_timeout,
            // A connection that stops answering is closed and redone.
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(config.command_timeout * 2),
                interval: Duration::from_millis(500),
            },
            // Commands are not retried after a reconnect: a publish that
            // failed is reported, not repeated twice.
            max_command_attempts: 1,
            ..ConnectionConfig::default()
        });
    Ok(builder)
}

/// A pool of `config.pool_size` command connections with the same
/// settings as the broker's (reconnecting forever with backoff), already
/// connecting. For other Redis commands a gateway needs, such as redeeming
/// one-time tokens. Must be called within a Tokio runtime.
pub fn command_pool(config: &RedisConfig) -> Result<Pool, RedisSetupError> {
    let pool = builder(config, false)?
        .build_pool(config.pool_size.max(1))
        .map_err(|e| RedisSetupError::Client(e.details().to_string()))?;
    drop(pool.connect()); // the task runs on; its handle is not needed
    if let RedisMode::Sentinel { service, nodes } = &config.mode {
        // Follows failovers like the broker's own pool (for the process's
        // lifetime, as the pool's).
        tokio::spawn(watch_sentinels(
            sentinel_clients(config, nodes)?,
            service.clone(),
            None,
            pool.clone(),
            config.topology_check_interval,
        ));
    }
    Ok(pool)
}

impl RedisBroker {
    /// Builds the clients and starts connecting in the background; the
    /// broker reports ready once the subscription connection is up. Must be
    /// called within a Tokio runtime.
    ///
    /// Fails only on a configuration that can never work (a bad URL); an
    /// unreachable server is retried with backoff forever.
    pub fn new(config: RedisConfig, inbound: Inbound) -> Result<Self, RedisSetupError> {
        let fred = fred_config(&config)?;
        let pool_size = config.pool_size;
        Self::with_fred(&config, fred, pool_size, inbound)
    }

    /// A broker on the server(s) of `fred` with `config`'s tunables and a
    /// command pool of `pool_size` (the cluster broker builds one per
    /// node this way).
    pub(crate) fn with_fred(
        config: &RedisConfig,
        fred: Config,
        pool_size: usize,
        inbound: Inbound,
    ) -> Result<Self, RedisSetupError> {
        let redacted = match &fred.server {
            ServerConfig::Centralized { server } if config.mode != RedisMode::Standalone => {
                format!("{} (node {server})", redact_url(&config.url))
            }
            _ => redact_url(&config.url),
        };
        let subscriber = builder_for(config, fred.clone(), true)?
            .build()
            .map_err(|e| RedisSetupError::Client(e.details().to_string()))?;
        let via_sentinels = matches!(fred.server, ServerConfig::Sentinel { .. });
        let pool = builder_for(config, fred, false)?
            .build_pool(pool_size.max(1))
            .map_err(|e| RedisSetupError::Client(e.details().to_string()))?;

        let connected = Arc::new(AtomicBool::new(false));
        let patterns = Arc::new(RwLock::new(BTreeSet::new()));

        // Routing loop: only routing, so it keeps up with fred's reader.
        tokio::spawn(route_messages(
            subscriber.message_rx(),
            inbound.clone(),
            patterns.clone(),
        ));
        // Connection events: readiness, loss and recovery.
        tokio::spawn(watch_connection(
            subscriber.clone(),
            inbound.clone(),
            connected.clone(),
            redacted.clone(),
        ));
        let connections = vec![subscriber.connect(), pool.connect()];
        let mut sentinels = Vec::new();
        let mut watchers = Vec::new();
        if let RedisMode::Sentinel { service, nodes } = &config.mode {
            if via_sentinels {
                sentinels = sentinel_clients(config, nodes)?;
                let watcher = tokio::spawn(watch_sentinels(
                    sentinels.clone(),
                    service.clone(),
                    Some(Subscription {
                        client: subscriber.clone(),
                        inbound: inbound.clone(),
                        connected: connected.clone(),
                    }),
                    pool.clone(),
                    config.topology_check_interval,
                ));
                watchers.push(watcher.abort_handle());
            }
        }
        Ok(Self {
            subscriber,
            pool,
            connected,
            patterns,
            tokens: std::sync::atomic::AtomicU64::new(0),
            url: redacted,
            connections: parking_lot::Mutex::new(connections),
            command_timeout: config.command_timeout,
            sharded: config.sharded.clone(),
            sentinels,
            watchers,
        })
    }

    /// Whether `channel` uses sharded pub/sub.
    pub(crate) fn is_sharded(&self, channel: &ChannelName) -> bool {
        self.sharded.as_ref().is_some_and(|f| f(channel))
    }

    /// Whether the subscription connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Topics by kind: classic channels, sharded channels, patterns.
struct Split {
    channels: Vec<String>,
    sharded: Vec<String>,
    patterns: Vec<String>,
}

impl RedisBroker {
    fn split(&self, topics: &[Topic]) -> Split {
        let mut split = Split {
            channels: Vec::new(),
            sharded: Vec::new(),
            patterns: Vec::new(),
        };
        for t in topics {
            match t {
                Topic::Channel(c) if self.is_sharded(c) => split.sharded.push(c.as_str().into()),
                Topic::Channel(c) => split.channels.push(c.as_str().to_string()),
                Topic::Pattern(p) => split.patterns.push(p.as_str().to_string()),
            }
        }
        split
    }

    /// `SSUBSCRIBE`s `channels`, one command each: fred reads one reply
    /// per command, and takes the reply of an `SSUBSCRIBE` (unlike those of
    /// `SUBSCRIBE`) as its answer, so each one resolves once Redis has
    /// taken it (or refused it, with the error). On a Redis Cluster every
    /// channel of one command must be in one slot, and a node answers
    /// `MOVED` for a slot it does not own.
    async fn ssubscribe_each(&self, channels: Vec<String>) -> Result<(), BrokerError> {
        for channel in channels {
            self.subscriber
                .ssubscribe(channel)
                .await
                .map_err(|e| match to_broker_error(e) {
                    BrokerError::Unavailable(why)
                        if why.starts_with("NOPERM") || why.contains("No permissions") =>
                    {
                        BrokerError::Refused(why)
                    }
                    other => other,
                })?;
        }
        Ok(())
    }
}

/// Whether a PING reply carries `token` (`["pong", token]` on a connection
/// in subscribed mode, `token` otherwise).
fn carries(reply: &Value, token: &str) -> bool {
    match reply {
        Value::Array(parts) => parts.last().is_some_and(|p| carries(p, token)),
        Value::String(s) => &**s == token,
        Value::Bytes(b) => &b[..] == token.as_bytes(),
        _ => false,
    }
}

impl RedisBroker {
    fn token(&self) -> String {
        format!("tidings-{}", self.tokens.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `command` (a (P)(UN)SUBSCRIBE) and confirms it with PINGs.
    async fn confirmed(
        &self,
        command: impl std::future::Future<Output = Result<(), fred::error::Error>>,
    ) -> Result<(), BrokerError> {
        let token = self.token();
        // Polled in this order (`biased`), both reach fred's router before
        // it writes the first: they go out together, the PING second.
        let (sent, reply) = tokio::join!(
            biased;
            command,
            self.subscriber.ping::<Value>(Some(token.clone()))
        );
        sent.map_err(to_broker_error)?;
        self.confirm(token, reply).await
    }

    /// Whether Redis really holds `channels` after a confirmed SUBSCRIBE.
    /// fred writes the SUBSCRIBE as soon as it has it: when the confirming
    /// PING reaches it a moment later, a refusal may already have come back
    /// and been dropped (fred has no command waiting for it). So the
    /// publish pool asks `PUBSUB NUMSUB`: a channel nobody holds was not
    /// taken. (Another gateway instance holding a channel refused to this
    /// one is possible only with different Redis users; the self-check
    /// catches that case.) Skipped while the pool is down.
    async fn verify_held(&self, channels: Vec<String>) -> Result<(), BrokerError> {
        if !self.pool.is_connected() {
            return Ok(());
        }
        let Ok(counts) = self
            .pool
            .next()
            .pubsub_numsub::<Vec<Value>, _>(channels.clone())
            .await
        else {
            return Ok(()); // cannot tell: the self-check will
        };
        let missing: Vec<&String> = channels
            .iter()
            .zip(counts.chunks(2))
            .filter(|(_, n)| n.get(1).and_then(Value::as_i64) == Some(0))
            .map(|(c, _)| c)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else if !self.connected.load(Ordering::Acquire) {
            // The connection dropped meanwhile: not a refusal.
            Err(BrokerError::Unavailable(
                "the subscription connection dropped".into(),
            ))
        } else {
            tracing::warn!(
                channels = missing.len(),
                "Redis did not take a subscription (refused)"
            );
            Err(BrokerError::Refused(format!(
                "Redis did not take the subscription to {} (NOPERM: not allowed for the gateway's Redis user?)",
                missing[0]
            )))
        }
    }

    /// fred resolves (P)SUBSCRIBE once written and drops the server's
    /// replies, so a refusal (an ACL's `NOPERM`) would pass unseen. A PING
    /// on the same connection is answered after those replies: an error
    /// reply in between is handed to the PING, and so seen here.
    ///
    /// That error takes the PING's place, so the PING's own answer comes
    /// one reply late and could be taken for the answer to a later PING.
    /// Each PING therefore carries a fresh token, and PINGs are sent until
    /// the answer carrying the last token arrives: every reply up to it
    /// belongs to the command being confirmed.
    ///
    /// The first PING is handed to fred together with the command (see
    /// [`RedisBroker::confirmed`]), so both are written in one go: a
    /// refusal cannot arrive before the PING waits for it.
    async fn confirm(
        &self,
        mut token: String,
        mut reply: Result<Value, fred::error::Error>,
    ) -> Result<(), BrokerError> {
        let mut refused = None;
        for _ in 0..16 {
            match reply {
                Ok(reply) if carries(&reply, &token) => {
                    return match refused {
                        None => Ok(()),
                        Some(e) => Err(e),
                    };
                }
                Ok(_) => {} // the late answer to an earlier PING
                Err(e) if e.kind() == &ErrorKind::Timeout => return Err(BrokerError::Timeout),
                Err(e) => {
                    tracing::warn!(error = %e.details(), "Redis refused a subscription");
                    refused.get_or_insert(match to_broker_error(e) {
                        BrokerError::Unavailable(reason) => BrokerError::Refused(reason),
                        other => other,
                    });
                }
            }
            token = self.token();
            reply = self.subscriber.ping::<Value>(Some(token.clone())).await;
        }
        Err(BrokerError::Unavailable(
            "the subscription connection's replies are out of step".into(),
        ))
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let sharded = self.is_sharded(channel);
        let channel = channel.as_str().to_string();
        Box::pin(async move {
            let client = self.pool.next();
            let sent: Result<i64, _> = if sharded {
                client.spublish(channel, Value::Bytes(payload)).await
            } else {
                client.publish(channel, Value::Bytes(payload)).await
            };
            sent.map_err(to_broker_error)?;
            Ok(())
        })
    }

    fn subscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Split {
                channels,
                sharded,
                patterns,
            } = self.split(topics);
            if !sharded.is_empty() {
                self.ssubscribe_each(sharded).await?;
            }
            // Each command is confirmed on its own, so that at most one
            // refusal is pending when the PING answers.
            if !channels.is_empty() {
                self.confirmed(self.subscriber.subscribe(channels.clone()))
                    .await?;
                self.verify_held(channels).await?;
            }
            if !patterns.is_empty() {
                // Known before the first pmessage can arrive.
                let added: Vec<ChannelPattern> = {
                    let mut known = self.patterns.write();
                    topics
                        .iter()
                        .filter_map(|t| match t {
                            Topic::Pattern(p) if known.insert(p.clone()) => Some(p.clone()),
                            _ => None,
                        })
                        .collect()
                };
                let result = self.confirmed(self.subscriber.psubscribe(patterns)).await;
                if let Err(BrokerError::Refused(_)) = &result {
                    // Not subscribed: no pmessage may be routed to it.
                    let mut known = self.patterns.write();
                    for p in &added {
                        known.remove(p);
                    }
                }
                result?;
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Split {
                channels,
                sharded,
                patterns,
            } = self.split(topics);
            // Never send an empty UNSUBSCRIBE: it would drop everything.
            // Done on Redis once confirmed: the self-check then sees Redis
            // as the bridge does.
            if !sharded.is_empty() {
                self.confirmed(self.subscriber.sunsubscribe(sharded))
                    .await?;
            }
            if !channels.is_empty() {
                self.confirmed(self.subscriber.unsubscribe(channels))
                    .await?;
            }
            if !patterns.is_empty() {
                let result = self.confirmed(self.subscriber.punsubscribe(patterns)).await;
                let mut known = self.patterns.write();
                for t in topics {
                    if let Topic::Pattern(p) = t {
                        known.remove(p);
                    }
                }
                result?;
            }
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.pool.is_connected()
    }

    fn can_subscribe(&self) -> bool {
        // SUBSCRIBE goes over the subscription connection only.
        self.connected.load(Ordering::Acquire)
    }

    fn missing<'a>(&'a self, held: &'a [Topic]) -> BoxFuture<'a, Result<Vec<Topic>, BrokerError>> {
        Box::pin(self.self_check(held))
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// Sends `QUIT` on the subscription connection and on every pool
    /// connection, then waits until their connection tasks have ended (the
    /// connections are closed). Each of the two steps is bounded by the
    /// command timeout: with Redis down or frozen the connections are
    /// dropped instead.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.connected.store(false, Ordering::Release);
            self.watchers
                .iter()
                .for_each(tokio::task::AbortHandle::abort);
            let timeout = self.command_timeout;
            for s in &self.sentinels {
                let _ = tokio::time::timeout(timeout, s.quit()).await;
            }
            let quits = async {
                let (sub, pool) = tokio::join!(self.subscriber.quit(), self.pool.quit());
                if let Err(e) = sub.and(pool) {
                    tracing::debug!(error = %e.details(), "Redis QUIT failed");
                }
            };
            if tokio::time::timeout(timeout, quits).await.is_err() {
                tracing::debug!("Redis QUIT timed out");
            }
            let connections = std::mem::take(&mut *self.connections.lock());
            let aborts: Vec<_> = connections.iter().map(|t| t.abort_handle()).collect();
            let ended = async {
                for task in connections {
                    let _ = task.await;
                }
            };
            if tokio::time::timeout(timeout, ended).await.is_err() {
                tracing::debug!("Redis connections did not close in time; dropping them");
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
            }
            tracing::info!(url = %self.url, "Redis connections closed");
        })
    }
}

/// What one connection holds, from its `CLIENT LIST` line.
struct ClientCounts {
    /// `sub=`: classic channels.
    sub: usize,
    /// `psub=`: patterns.
    psub: usize,
    /// `ssub=`: sharded channels (Redis 7.0.3 and later; 0 before).
    ssub: usize,
    /// `age=`: seconds since it connected.
    age: u64,
}

fn client_counts(line: &str) -> Option<ClientCounts> {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some(ClientCounts {
        sub: field("sub")?.parse().ok()?,
        psub: field("psub")?.parse().ok()?,
        ssub: field("ssub").and_then(|n| n.parse().ok()).unwrap_or(0),
        age: field("age")?.parse().ok()?,
    })
}

impl RedisBroker {
    /// The self-check against Redis, cheap in the usual case: one
    /// `CLIENT LIST ID <subscriber>` on the pool gives how many channels and
    /// patterns the subscription connection holds (a connection under a
    /// second old is left to its restore). When that matches the
    /// bridge's view, nothing is missing. When it holds fewer channels,
    /// `PUBSUB NUMSUB` in batches names the ones nobody holds; when that
    /// cannot name them all (another gateway holds them), every channel is
    /// named (subscribing again is harmless). Fewer patterns: every pattern
    /// is named (Redis cannot list one connection's patterns).
    async fn self_check(&self, held: &[Topic]) -> Result<Vec<Topic>, BrokerError> {
        use fred::interfaces::ClientInterface;
        if !self.pool.is_connected() {
            // Asking would wait for the pool; the next check will do.
            return Ok(Vec::new());
        }
        let Some(id) = self.subscriber.connection_ids().into_values().next() else {
            return Ok(Vec::new()); // not connected: the reconnect restores everything
        };
        let list: String = self
            .pool
            .next()
            .custom(
                fred::types::CustomCommand::new_static("CLIENT", None, false),
                vec!["LIST".to_string(), "ID".to_string(), id.to_string()],
            )
            .await
            .map_err(to_broker_error)?;
        let Some(ClientCounts {
            sub: subs,
            psub: psubs,
            ssub: ssubs,
            age,
        }) = list.lines().find_map(client_counts)
        else {
            // That connection is gone: its reconnect restores everything.
            return Ok(Vec::new());
        };
        if age == 0 {
            // Under a second old: its restore may still be on the way to
            // the bridge. The next check looks again.
            return Ok(Vec::new());
        }
        let (sharded, channels): (Vec<&ChannelName>, Vec<&ChannelName>) = held
            .iter()
            .filter_map(|t| match t {
                Topic::Channel(c) => Some(c),
                Topic::Pattern(_) => None,
            })
            .partition(|c| self.is_sharded(c));
        let patterns = held.len() - channels.len() - sharded.len();
        let mut missing = Vec::new();
        if ssubs < sharded.len() {
            // Redis drops the sharded channels of a slot that moves away
            // (its `sunsubscribe` push is dropped by fred): find them.
            let short = sharded.len() - ssubs;
            let mut nobody = Vec::new();
            for batch in sharded.chunks(256) {
                let names: Vec<String> = batch.iter().map(|c| c.as_str().to_string()).collect();
                let counts: Vec<Value> = self
                    .pool
                    .next()
                    .pubsub_shardnumsub(names)
                    .await
                    .map_err(to_broker_error)?;
                for (c, n) in batch.iter().zip(counts.chunks(2)) {
                    if n.get(1).and_then(Value::as_i64) == Some(0) {
                        nobody.push(Topic::Channel((*c).clone()));
                    }
                }
            }
            if nobody.len() >= short {
                missing.extend(nobody);
            } else {
                missing.extend(sharded.iter().map(|c| Topic::Channel((*c).clone())));
            }
        }
        if subs < channels.len() {
            let short = channels.len() - subs;
            let mut nobody = Vec::new();
            for batch in channels.chunks(256) {
                let names: Vec<String> = batch.iter().map(|c| c.as_str().to_string()).collect();
                let counts: Vec<Value> = self
                    .pool
                    .next()
                    .pubsub_numsub(names)
                    .await
                    .map_err(to_broker_error)?;
                // [name, count, name, count, ...]
                for (c, n) in batch.iter().zip(counts.chunks(2)) {
                    if n.get(1).and_then(Value::as_i64) == Some(0) {
                        nobody.push(Topic::Channel((*c).clone()));
                    }
                }
            }
            if nobody.len() >= short {
                missing.extend(nobody);
            } else {
                missing.extend(channels.iter().map(|c| Topic::Channel((*c).clone())));
            }
        }
        if psubs < patterns {
            missing.extend(
                held.iter()
                    .filter(|t| matches!(t, Topic::Pattern(_)))
                    .cloned(),
            );
        }
        if subs > channels.len() || psubs > patterns || ssubs > sharded.len() {
            tracing::debug!(
                subs,
                psubs,
                channels = channels.len(),
                patterns,
                "self-check: Redis holds more than the sockets need (left to the next unsubscribe)"
            );
        }
        Ok(missing)
    }
}

/// A payload as bytes, whatever type fred decoded it to.
fn payload_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        Value::Double(d) => Some(Bytes::from(d.to_string())),
        Value::Boolean(b) => Some(Bytes::from(b.to_string())),
        Value::Null => Some(Bytes::new()),
        _ => None,
    }
}

/// Routes what fred's reader received. Kept to routing only: fred's buffer
/// between its reader and this loop is bounded, and what overflows it is
/// lost (counted, and answered with `gap` notices).
async fn route_messages(
    mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    inbound: Inbound,
    patterns: Arc<RwLock<BTreeSet<ChannelPattern>>>,
) {
    // Redis sends one `pmessage` per matching pattern, back to back, and fred
    // does not say which pattern each one is for. The n-th of such a run goes
    // to the n-th matching pattern (mod their number), so every pattern's
    // subscribers get each message exactly once.
    let mut run: Option<(Bytes, usize)> = None;
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                tracing::error!(lost = n, "Redis messages arrived faster than they could be routed; raise redis.message_buffer");
                inbound.lost("lagged", n);
                run = None;
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let raw_channel = msg.channel.clone().into_inner();
        let Ok(channel) = ChannelName::new(&msg.channel) else {
            inbound.discarded("invalid_channel");
            continue;
        };
        let Some(payload) = payload_bytes(msg.value) else {
            inbound.discarded("unsupported_payload");
            continue;
        };
        let message = Message::new(channel, payload);
        match msg.kind {
            MessageKind::Message | MessageKind::SMessage => {
                run = None;
                inbound.message(&message);
            }
            MessageKind::PMessage => {
                let index = match &mut run {
                    Some((c, n)) if *c == raw_channel => {
                        *n += 1;
                        *n
                    }
                    _ => {
                        run = Some((raw_channel, 0));
                        0
                    }
                };
                let known = patterns.read();
                let matching: Vec<&ChannelPattern> =
                    known.iter().filter(|p| p.matches(&msg.channel)).collect();
                if matching.is_empty() {
                    drop(known);
                    inbound.discarded("no_pattern");
                    continue;
                }
                let pattern = matching[index % matching.len()].clone();
                drop(known);
                inbound.pattern_message(&pattern, &message);
            }
        }
    }
}

/// Follows the subscription connection: ready once connected; on any
/// connection error (fred reports only connection-level errors here), not
/// ready and `connection_lost`; on every (re)connect, `connection_restored`,
/// after which the bridge re-subscribes everything. A periodic check
/// catches an error that did not, in the end, drop the connection.
async fn watch_connection(
    client: Client,
    inbound: Inbound,
    connected: Arc<AtomicBool>,
    url: String,
) {
    let mut reconnects = client.reconnect_rx();
    let mut errors = client.error_rx();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ever_connected = false;
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    tracing::info!(url = %url, "connected to Redis");
                    if ever_connected {
                        // A new connection means the old one is gone, even
                        // when it went without an error (a server that
                        // closed it, as a Sentinel failover does): messages
                        // may have been missed.
                        inbound.connection_lost();
                    }
                    ever_connected = true;
                    connected.store(true, Ordering::Release);
                    inbound.connection_restored();
                }
                Err(RecvError::Closed) => return,
            },
            r = errors.recv() => match r {
                Ok((error, _)) => {
                    if connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(url = %url, error = %error.details(), "Redis connection lost; reconnecting with backoff");
                    } else {
                        tracing::debug!(url = %url, error = %error.details(), "Redis still unreachable");
                    }
                    inbound.connection_lost();
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = check.tick() => {
                if !connected.load(Ordering::Acquire) && client.is_connected() {
                    ever_connected = true;
                    connected.store(true, Ordering::Release);
                    inbound.connection_restored();
                }
            }
        }
    }
}

/// One client per Sentinel (the URL's host first, then `nodes`), with the
/// URL's credentials and TLS, already connecting.
fn sentinel_clients(
    config: &RedisConfig,
    nodes: &[String],
) -> Result<Vec<Client>, RedisSetupError> {
    let first = match parse_url(&config.url)?.server {
        ServerConfig::Centralized { server } => server,
        _ => return Ok(Vec::new()),
    };
    let mut clients = Vec::new();
    for server in std::iter::once(first).chain(nodes.iter().filter_map(|n| server_of(n))) {
        let mut fred = node_config(config, &server)?;
        fred.fail_fast = false;
        let client = builder_for(config, fred, false)?
            .build()
            .map_err(|e| RedisSetupError::Client(e.details().to_string()))?;
        drop(client.connect());
        clients.push(client);
    }
    Ok(clients)
}

/// The master's address as the first Sentinel that answers says.
async fn master_by_sentinels(sentinels: &[Client], service: &str) -> Option<(String, u16)> {
    for s in sentinels.iter().filter(|s| s.is_connected()) {
        let cmd = fred::types::CustomCommand::new_static("SENTINEL", None, false);
        let reply: Result<Value, _> = s
            .custom(
                cmd,
                vec!["GET-MASTER-ADDR-BY-NAME".to_string(), service.to_string()],
            )
            .await;
        if let Ok(Value::Array(parts)) = reply {
            let host = parts.first().and_then(Value::as_string);
            let port = parts
                .get(1)
                .and_then(Value::as_string)
                .and_then(|p| p.parse::<u16>().ok());
            if let (Some(host), Some(port)) = (host, port) {
                return Some((host, port));
            }
        }
    }
    None
}

/// Sentinel mode: asks the Sentinels for the master every `every`, and
/// redoes any connection still on another server (an old master that a
/// `SENTINEL FAILOVER` demoted keeps its clients until the Sentinels
/// reconfigure it, seconds later): the subscription connection's sockets
/// get a `gap` notice when it is back.
/// The subscription connection a Sentinel watcher moves too.
struct Subscription {
    client: Client,
    inbound: Inbound,
    connected: Arc<AtomicBool>,
}

async fn watch_sentinels(
    sentinels: Vec<Client>,
    service: String,
    subscription: Option<Subscription>,
    pool: Pool,
    every: Duration,
) {
    let on = |client: &Client, master: &(String, u16)| {
        client
            .active_connections()
            .iter()
            .all(|s| &*s.host == master.0.as_str() && s.port == master.1)
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(master) = master_by_sentinels(&sentinels, &service).await else {
            continue;
        };
        // The publish pool first: once the subscriptions are back on the
        // new master (and sockets told of the gap), this gateway's
        // publishes go there too.
        for client in pool.clients() {
            if client.is_connected() && !on(client, &master) {
                tracing::info!(
                    "Redis Sentinel names another master; reconnecting a command connection"
                );
                let _ = client.force_reconnection().await;
            }
        }
        let Some(Subscription {
            client: subscriber,
            inbound,
            connected,
        }) = &subscription
        else {
            continue;
        };
        if subscriber.is_connected() && !on(subscriber, &master) {
            tracing::warn!(
                master = %format!("{}:{}", master.0, master.1),
                "Redis Sentinel names another master; reconnecting the subscription connection"
            );
            connected.store(false, Ordering::Release);
            inbound.connection_lost();
            if let Err(e) = subscriber.force_reconnection().await {
                tracing::debug!(error = %e.details(), "Redis reconnect failed; retried with backoff");
            }
        }
    }
}
