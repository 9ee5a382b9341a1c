//! The Tidings gateway binary: read config, start logging, build the
//! bridge and the gateway, serve until SIGTERM/SIGINT, drain.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use tidings_bridge::{
    tidings_history::{HistoryError, HistoryOptions, RedisHistory},
    Bridge,
};
use tidings_identity::{
    Chain, CookieProxy, MemoryTokenStore, RedisTokenStore, ResolverKind, TokenResolver, TokenStore,
};
use tidings_pusher::Pusher;
use tidings_rpc::HttpRpc;
use tidings_socketio::SocketIo;
use tidings_sse::Sse;
use tidings_transport::{serve_with, Gateway, Mounts};
use tracing_subscriber::EnvFilter;

mod config;
mod http;
mod metrics;

use config::{Config, LogFormat};

/// Tidings: a real-time gateway. Browsers hold WebSockets to it; your app
/// publishes (over Redis or HTTP); exactly the right sockets receive.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (environment variables TIDINGS_* override it).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Print the effective configuration (secrets redacted) and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidings: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            for name in config::kubernetes_service_vars() {
                println!("# ignored {name}: set by Kubernetes for a Service, not configuration");
            }
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_tracing(&config);
            let ignored = config::kubernetes_service_vars();
            if !ignored.is_empty() {
                tracing::info!(
                    "ignoring {}: Kubernetes sets these for a Service named tidings(-*); they are not configuration",
                    ignored.join(", ")
                );
            }
            raise_open_file_limit(&config);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            // 0: tokio's default, one per core (or TOKIO_WORKER_THREADS).
            if config.worker_threads > 0 {
                builder.worker_threads(config.worker_threads);
            }
            let runtime = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tidings: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: through the log when it shows errors (JSON logs
                    // stay JSON), else plainly.
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e}");
                    } else {
                        eprintln!("tidings: {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let transport = config.transport()?;
    let sse = config.sse(&transport)?;
    let socketio = config.socketio(&transport)?;
    let pusher = config.pusher(&transport)?;
    let router = config.router()?;
    let redis = config.redis()?.map(|mut redis| {
        let router = router.clone();
        redis.sharded = Some(Arc::new(move |c: &tidings_core::ChannelName| {
            router.sharded_for(c)
        }));
        redis
    });
    // The history's own command pool (closed with QUIT at shutdown).
    let mut history_pool = None;
    let bridge = match &redis {
        None => Bridge::in_process().with_memory_history(history_lookup(&router)),
        Some(redis) => {
            let pool = tidings_bridge::redis::command_pool(redis)?;
            history_pool = Some((pool.clone(), redis.command_timeout));
            let history = Arc::new(RedisHistory::new(pool));
            let bridge = Bridge::redis(redis.clone())?
                .with_history(history.clone(), history_lookup(&router));
            bridge.set_history_ready(false);
            tokio::spawn(install_history(history, bridge.clone()));
            bridge
        }
    };
    let identity = identity(&config, redis.as_ref())?;
    // The backend's control: every session in the registry (commands and
    // surveys reach it); this gateway in the set of live gateways (surveys
    // ask them all).
    let gateway_id = config
        .control
        .gateway_id
        .clone()
        .unwrap_or_else(tidings_control::random_gateway_id);
    let registry = tidings_control::Registry::new();
    let presence_store: Arc<dyn tidings_control::Presence> = match &history_pool {
        Some((pool, _)) => {
            // The join and leave events of channels with full presence go
            // out from the presence script itself, atomically with the
            // change (a gateway that dies right after cannot lose one);
            // sharded channels' from the gateway, through the bridge.
            let router = router.clone();
            let events: tidings_control::EventChannels = Arc::new(move |c: &str| {
                tidings_core::ChannelName::new(c).is_ok_and(|c| {
                    router.presence_for(&c) == Some(tidings_routing::PresenceMode::Full)
                        && !router.sharded_for(&c)
                })
            });
            Arc::new(tidings_control::RedisPresence::new(pool.clone()).with_events(events))
        }
        None => Arc::new(tidings_control::MemoryPresence::new()),
    };
    let presence_config = config.presence()?;
    let survey_timeout = config.survey_timeout()?;
    let gateways = tidings_control::PresenceTracker::new(
        presence_store.clone(),
        presence_config,
        Arc::new(|_: &tidings_control::PresenceKey, _: tidings_control::PresenceChange| {}),
    )?;
    let _refresher = gateways.spawn_refresher();
    // Presence on the channels whose rule asks for it: join and leave
    // events go out on the channels themselves.
    let presence_lookup: tidings_control::PresenceLookup = {
        let router = router.clone();
        Arc::new(move |c| router.presence_for(c))
    };
    let channel_tracker = tidings_control::PresenceTracker::new(
        presence_store.clone(),
        presence_config,
        tidings_control::presence_publisher(bridge.clone(), presence_lookup.clone()),
    )?;
    let _channel_refresher = channel_tracker.spawn_refresher();
    let webhooks = match config.webhooks()? {
        Some(c) => Some(tidings_control::Webhooks::start(c)?),
        None => None,
    };
    let mut hooks =
        tidings_control::ControlHooks::new(gateway_id.clone(), registry.clone(), webhooks.clone())
            .with_channel_presence(channel_tracker.clone(), presence_lookup.clone());
    // Channel occupied and vacated webhooks: which gateways have
    // subscribers on each channel.
    let mut occupancy = None;
    if let Some(w) = &webhooks {
        let t = tidings_control::PresenceTracker::new(
            presence_store.clone(),
            presence_config,
            tidings_control::occupancy_webhooks(w.clone()),
        )?;
        hooks = hooks.with_occupancy(t.clone());
        occupancy = Some((t.clone(), t.spawn_refresher()));
    }
    if let Some(proxy) = identity.cookie_proxy.clone() {
        registry.set_forget(Arc::new(move |user| {
            proxy.forget_user(user);
        }));
    }
    let mut builder = Gateway::builder(bridge)
        .hooks(Arc::new(hooks))
        .connection_prefix(format!("{gateway_id}-"))
        .config(transport)
        .router(router)
        .resolver(Arc::new(identity.chain));
    if let Some(rpc) = config.rpc()? {
        builder = builder.rpc(Arc::new(HttpRpc::new(rpc)));
    }
    let gateway = builder.build();
    let listener = listen(config.listen).map_err(|e| {
        format!(
            "cannot listen on {}: {e}; choose another address with the config key `listen` (environment variable TIDINGS_LISTEN, for example TIDINGS_LISTEN=127.0.0.1:8081)",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    banner(&config, addr, gateway.bridge().broker_name());
    let control_channel = tidings_core::ChannelName::new(&config.control.channel)?;
    let surveys = tidings_control::Surveys::start(
        gateway.bridge(),
        control_channel.clone(),
        &gateway_id,
        gateways.clone(),
        survey_timeout,
    );
    let (control, _control_task) = tidings_control::ControlChannel::start_with_surveys(
        gateway.bridge(),
        control_channel,
        registry.clone(),
        surveys.clone(),
    )
    .await;
    let endpoints = http::Endpoints::new(
        &config,
        gateway.clone(),
        identity.tokens,
        identity.cookie_proxy,
        Some(http::Control {
            channel: control,
            surveys,
            channels: channel_tracker.clone(),
            presence_lookup,
            registry,
            gateway_id,
            webhooks,
        }),
    );
    let handler = move |req, peer| Arc::clone(&endpoints).handle(req, peer);
    // Other wire formats beside the WebSocket: the same admission (limits,
    // draining, identity) and the same session context.
    let mut mounts = Mounts::new();
    if let Some(sse) = sse {
        let path = sse.path.clone();
        let sse = Sse::new(gateway.admission().clone(), gateway.context().clone(), sse);
        mounts = mounts.at(path, Arc::new(sse));
    }
    if let Some(sio) = socketio {
        let path = sio.path.clone();
        let sio = SocketIo::new(gateway.admission().clone(), gateway.context().clone(), sio);
        mounts = mounts.under(path, Arc::new(sio));
    }
    let mut pusher_endpoint = None;
    if let Some(pusher) = pusher {
        let mut p = Pusher::new(
            gateway.admission().clone(),
            gateway.context().clone(),
            pusher,
        );
        // Presence members and channel counts in the same store as the
        // native presence (with Redis: every gateway's); terminate_connections
        // over the bridge.
        p = p
            .with_presence(presence_store.clone(), presence_config)?
            .with_control()
            .await;
        pusher_endpoint = Some(p.clone());
        let pusher = Arc::new(p);
        mounts = mounts
            .under(tidings_pusher::SOCKET_PREFIX, pusher.clone())
            .under(tidings_pusher::API_PREFIX, pusher);
    }
    serve_with(
        listener,
        gateway.clone(),
        mounts,
        handler,
        shutdown_signal(),
    )
    .await?;
    // The sockets are gone: so are this gateway's presence entries (rather
    // than after their time to live).
    gateways.leave_all().await;
    channel_tracker.leave_all().await;
    if let Some(p) = &pusher_endpoint {
        p.leave_all().await;
    }
    if let Some((t, _)) = &occupancy {
        t.leave_all().await;
    }
    // Last: the sockets are gone; close the broker's connections cleanly
    // (Redis: QUIT on each) rather than let the exit cut them.
    gateway.bridge().close().await;
    if let Some((pool, timeout)) = history_pool {
        use fred::interfaces::ClientLike;
        if tokio::time::timeout(timeout, pool.quit()).await.is_err() {
            tracing::debug!("Redis QUIT on the history pool timed out");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Which channels keep a history: the first routing rule covering the
/// channel decides (see `Router::history_for`).
fn history_lookup(
    router: &tidings_routing::Router,
) -> impl Fn(&tidings_core::ChannelName) -> Option<HistoryOptions> + Send + Sync + 'static {
    let router = router.clone();
    move |channel| {
        let h = router.history_for(channel)?;
        // The rule was validated (size 1..=10000, ttl_secs 1..=7 days).
        HistoryOptions::new(h.size, Duration::from_secs(h.ttl_secs))
            .ok()
            .map(|o| o.with_sharded(router.sharded_for(channel)))
    }
}

/// Loads the history's Redis function library (`FUNCTION LOAD REPLACE`),
/// retrying with backoff while Redis is unreachable (or refuses), like the
/// broker's connection; `/readyz` answers 503 until it is loaded.
async fn install_history(history: Arc<RedisHistory>, bridge: Bridge) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match history.install().await {
            Ok(()) => {
                tracing::info!("history: Redis function library loaded");
                bridge.set_history_ready(true);
                // And again after every reconnect: a Redis restarted
                // without persistence has forgotten it, and backends
                // publishing with FCALL need it at once.
                let _watch = history.reinstall_on_reconnect();
                return;
            }
            Err(e @ (HistoryError::Unsupported(_) | HistoryError::Refused(_))) => {
                // It will never load (Redis before 7.0, or an ACL without
                // FUNCTION LOAD): serve without history rather than never
                // becoming ready.
                tracing::error!(
                    error = %e,
                    "history is off: Redis refused to load the tidings function library \
                     (it needs Redis 7.0 or later and, with ACLs, +function|load); \
                     publications on history channels go out as plain PUBLISH, without offsets"
                );
                bridge.disable_history();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "history: cannot load the Redis function library yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A listener with a deep accept backlog: during a reconnect storm
/// thousands of handshakes arrive at once, and the default (128) makes the
/// kernel drop SYNs, which clients only retry after a second.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The resolver chain, and the token store and resolver when tokens are on.
struct IdentitySetup {
    chain: Chain,
    tokens: Option<http::Tokens>,
    cookie_proxy: Option<Arc<CookieProxy>>,
}

fn identity(
    config: &Config,
    redis: Option<&tidings_bridge::RedisConfig>,
) -> Result<IdentitySetup, Box<dyn std::error::Error>> {
    let mut chain = Chain::new().anonymous(config.identity.anonymous);
    let mut tokens = None;
    let mut cookie_proxy = None;
    for kind in &config.identity.resolvers {
        match kind {
            ResolverKind::CookieProxy => {
                let proxy = Arc::new(CookieProxy::new(
                    config.cookie_proxy()?.expect("listed, so configured"),
                )?);
                cookie_proxy = Some(proxy.clone());
                chain = chain.with("cookie_proxy", proxy);
            }
            ResolverKind::Token => {
                let store: Arc<dyn TokenStore> = match redis {
                    Some(redis) => Arc::new(RedisTokenStore::new(
                        tidings_bridge::redis::command_pool(redis)?,
                    )),
                    None => Arc::new(MemoryTokenStore::new()),
                };
                let resolver = Arc::new(TokenResolver::new(
                    config.token()?.expect("listed, so configured"),
                    store.clone(),
                ));
                chain = chain.with("token", resolver.clone());
                tokens = Some(http::Tokens {
                    resolver,
                    store,
                    max_ttl: config.identity.token.max_ttl(),
                });
            }
        }
    }
    Ok(IdentitySetup {
        chain,
        tokens,
        cookie_proxy,
    })
}

/// The address to print for `addr` in URLs one can open on this machine:
/// an unspecified address (`0.0.0.0`, `::`) is not one, so its loopback
/// counterpart on the same port is given instead.
fn reachable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn banner(config: &Config, addr: std::net::SocketAddr, broker: &str) {
    tracing::info!(
        "Tidings {} listening on http://{addr} (broker: {broker})",
        env!("CARGO_PKG_VERSION")
    );
    let local = reachable(addr);
    let base = format!("http://{local}");
    tracing::info!("  demo page:  {base}/");
    tracing::info!("  websocket:  ws://{local}{}", config.websocket.path);
    if config.sse.enabled {
        tracing::info!("  events:     {base}{}", config.sse.path);
    }
    if config.socketio.enabled {
        tracing::info!("  socket.io:  {base}{}", config.socketio.path);
    }
    if config.pusher.enabled {
        tracing::info!("  pusher:     ws://{local}/app/{{key}}, {base}/apps/{{id}}/events");
    }
    let auth = if config.api_key.is_some() {
        " -H \"Authorization: Bearer $TIDINGS_API_KEY\""
    } else {
        ""
    };
    tracing::info!(
        "  publish:    curl{auth} -H 'Content-Type: application/json' -d '{{\"channel\":\"/app/broadcast\",\"data\":{{\"hello\":\"world\"}}}}' {base}/api/publish"
    );
    if config.api_key.is_none() {
        if config.api.allow_local_without_key {
            tracing::warn!("no api_key set: only local processes (loopback, not proxied) may publish over HTTP");
        } else {
            tracing::warn!("no api_key set and local publishing disabled: the HTTP publish API refuses everyone");
        }
    }
    if !addr.ip().is_loopback() && config.websocket.allowed_origins.iter().any(|o| o == "*") {
        tracing::warn!("listening beyond loopback with allowed_origins = [\"*\"]: any web page can open sockets with your visitors' cookies");
    }
}

/// Raises the open-file soft limit to the hard limit: every socket is a
/// file, and login shells and many service managers start processes with a
/// soft limit of 1,024. Warns when the limit stays below
/// `limits.max_connections`.
fn raise_open_file_limit(config: &Config) {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            if let Some((old, _)) = before.filter(|(old, _)| *old < now) {
                tracing::debug!("raised the open-file soft limit from {old} to {now}");
            }
            let wanted = config.limits.max_connections as u64;
            if now < wanted {
                let msg = format!(
                    "the open-file limit is {now}, below limits.max_connections ({wanted}): sockets beyond it fail to open (raise the hard limit: `ulimit -Hn`, LimitNOFILE= in systemd, --ulimit nofile= in Docker)"
                );
                // A few thousand is a real problem; tens of thousands is
                // usually a default nobody needs to hear about each start.
                if now < 4096 {
                    tracing::warn!("{msg}");
                } else {
                    tracing::debug!("{msg}");
                }
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
