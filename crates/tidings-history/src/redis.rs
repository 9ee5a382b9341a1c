//! The Redis history: Redis Streams and the `tidings` function library.

use std::fmt;

use bytes::Bytes;
use fred::{
    clients::Pool,
    error::{Error as FredError, ErrorKind},
    interfaces::{ClientLike, FunctionInterface},
    types::{ClusterHash, CustomCommand, Value},
};
use tidings_core::ChannelName;

use crate::{
    check_since, BoxFuture, History, HistoryError, HistoryOptions, Publication, Recovery,
    StreamPosition,
};

/// The key prefix unless told otherwise.
pub const DEFAULT_PREFIX: &str = "tidings:history:";

/// The name of the Redis function library (`FUNCTION LOAD REPLACE`).
pub const LIBRARY_NAME: &str = "tidings";

/// The Lua source of the function library, with `__TIDINGS_PREFIX__` where
/// the key prefix goes (see [`RedisHistory::library`]).
pub const FUNCTION_LIBRARY: &str = include_str!("tidings.lua");

const PREFIX_PLACEHOLDER: &str = "__TIDINGS_PREFIX__";

/// Channel histories in Redis (7.0 or later, no module), through the
/// functions of the `tidings` library, which it installs with
/// `FUNCTION LOAD REPLACE` (at [`RedisHistory::install`], and again
/// whenever Redis answers that a function is missing, for example after a
/// restart without persistence).
pub struct RedisHistory {
    pool: Pool,
    prefix: String,
    library: Bytes,
}

impl fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHistory")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Which function of the library to call.
#[derive(Clone, Copy)]
enum Function {
    Publish,
    Position,
    Recover,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Self::Publish => "tidings_publish",
            Self::Position => "tidings_position",
            Self::Recover => "tidings_recover",
        }
    }
}

impl RedisHistory {
    /// Histories under the [`DEFAULT_PREFIX`], through `pool` (its
    /// connections pipeline concurrent calls).
    pub fn new(pool: Pool) -> Self {
        Self::with_prefix(pool, DEFAULT_PREFIX).expect("the default prefix is valid")
    }

    /// Histories under `prefix`: printable ASCII without `'`, `\`, `{` and
    /// `}` (the channel is the hash tag), at most 64 bytes. Every gateway
    /// and backend on one Redis must use the same prefix: the library is
    /// one per Redis server and holds it.
    pub fn with_prefix(pool: Pool, prefix: &str) -> Result<Self, HistoryError> {
        let library = Self::library(prefix)?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            library: Bytes::from(library),
        })
    }

    /// The function library's Lua source for `prefix`, as `FUNCTION LOAD`
    /// takes it (for loading it without a gateway:
    /// `redis-cli -x FUNCTION LOAD REPLACE < tidings.lua`).
    pub fn library(prefix: &str) -> Result<String, HistoryError> {
        let ok = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'\'' | b'\\' | b'{' | b'}'));
        if !ok {
            return Err(HistoryError::InvalidOptions(
                "the key prefix must be at most 64 bytes of printable ASCII without ' \\ { }",
            ));
        }
        Ok(FUNCTION_LIBRARY.replace(PREFIX_PLACEHOLDER, prefix))
    }

    /// The key of `channel`'s stream: `<prefix>{<channel>}:stream`, or
    /// `<prefix>{<tag>}<channel>:stream` for a channel with a Redis hash
    /// tag `{<tag>}` of its own: either way in the channel's own Redis
    /// Cluster slot.
    pub fn stream_key(&self, channel: &ChannelName) -> String {
        format!("{}:stream", self.base_key(channel))
    }

    /// The key of `channel`'s epoch and offset: as [`RedisHistory::stream_key`],
    /// ending in `:meta`.
    pub fn meta_key(&self, channel: &ChannelName) -> String {
        format!("{}:meta", self.base_key(channel))
    }

    fn base_key(&self, channel: &ChannelName) -> String {
        let c = channel.as_str();
        if let Some(open) = c.find('{') {
            if let Some(len) = c[open + 1..].find('}').filter(|&len| len > 0) {
                let tag = &c[open + 1..open + 1 + len];
                return format!("{}{{{tag}}}{c}", self.prefix);
            }
        }
        format!("{}{{{c}}}", self.prefix)
    }

    /// Loads the function library (`FUNCTION LOAD REPLACE`). Calls load it
    /// by themselves when Redis says it is missing; calling this at startup
    /// reports an unsuitable server (older than 7.0, an ACL without
    /// `FUNCTION`) early.
    ///
    /// On a Redis Cluster it is loaded on every master (a replica gets it
    /// from its master); a master that joins later, or one that lost it,
    /// gets it at the first call that finds it missing.
    pub async fn install(&self) -> Result<(), HistoryError> {
        let library = std::str::from_utf8(&self.library)
            .map_err(|_| HistoryError::Protocol("the function library is not UTF-8".into()))?;
        self.pool
            .next()
            .function_load_cluster::<Value, _>(true, library)
            .await
            .map(drop)
            .map_err(map_error)
    }

    /// Loads the function library again whenever the pool reconnects (a
    /// Redis restarted without persistence has lost it, and backends that
    /// publish with `FCALL tidings_publish` need it before the gateway's
    /// own next call would reload it). The task ends with the pool.
    pub fn reinstall_on_reconnect(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        use fred::interfaces::EventInterface;
        let this = std::sync::Arc::downgrade(self);
        let task = self.pool.next().on_reconnect(move |_server| {
            let this = this.clone();
            async move {
                if let Some(history) = this.upgrade() {
                    match history.install().await {
                        Ok(()) => tracing::info!("history: function library loaded again after a reconnect"),
                        Err(e) => tracing::warn!(error = %e, "history: cannot load the function library after a reconnect (the next call retries)"),
                    }
                }
                Ok(())
            }
        });
        tokio::spawn(async move {
            let _ = task.await;
        })
    }

    /// `FCALL <function> 1 <channel> <args...>`, loading the library and
    /// trying once more if Redis does not know the function.
    async fn fcall(
        &self,
        function: Function,
        channel: &ChannelName,
        args: &[Value],
    ) -> Result<Value, HistoryError> {
        let call = || {
            let mut all = Vec::with_capacity(args.len() + 3);
            all.push(Value::from_static_str(function.name()));
            all.push(Value::Integer(1));
            all.push(Value::String(channel.as_str().into()));
            all.extend_from_slice(args);
            // Routed by the channel's slot (fred reads only a `Custom`
            // slot from a custom command; an `Offset` would be ignored).
            let slot = fred::util::redis_keyslot(channel.as_str().as_bytes());
            let cmd = CustomCommand::new_static("FCALL", ClusterHash::Custom(slot), false);
            self.pool.custom::<Value, Value>(cmd, all)
        };
        match call().await {
            Err(e) if is_function_missing(&e) => {
                self.install().await?;
                call().await.map_err(map_error)
            }
            other => other.map_err(map_error),
        }
    }
}

fn is_function_missing(e: &FredError) -> bool {
    e.details().contains("Function not found")
}

fn map_error(e: FredError) -> HistoryError {
    let details = e.details().to_owned();
    match e.kind() {
        ErrorKind::Timeout => HistoryError::Timeout,
        ErrorKind::Unknown | ErrorKind::InvalidArgument | ErrorKind::InvalidCommand => {
            if details.starts_with("NOPERM") {
                HistoryError::Refused(details)
            } else if details.contains("unknown command") || details.contains("unknown subcommand")
            {
                HistoryError::Unsupported(details)
            } else if details.contains("ERR tidings:") || e.kind() != &ErrorKind::Unknown {
                HistoryError::Protocol(details)
            } else {
                // LOADING, BUSY, READONLY, MASTERDOWN, OOM, ...: the server
                // cannot take it now.
                HistoryError::Unavailable(details)
            }
        }
        ErrorKind::Auth => HistoryError::Refused(details),
        ErrorKind::Parse | ErrorKind::Protocol => HistoryError::Protocol(details),
        _ => HistoryError::Unavailable(details),
    }
}

fn unexpected(what: &str, value: &Value) -> HistoryError {
    HistoryError::Protocol(format!("{what}: {value:?}"))
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::String(s) => Some(s.as_bytes()),
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

fn into_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::String(s) => Some(s.inner().clone()),
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// `[offset, epoch, ...]` from the front of a reply.
fn position_of(reply: &[Value]) -> Result<StreamPosition, HistoryError> {
    let offset = match reply.first() {
        Some(Value::Integer(o)) if *o >= 0 => *o as u64,
        other => return Err(unexpected("offset", other.unwrap_or(&Value::Null))),
    };
    let epoch = reply
        .get(1)
        .and_then(as_bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| unexpected("epoch", reply.get(1).unwrap_or(&Value::Null)))?;
    Ok(StreamPosition::new(offset, epoch))
}

fn array(value: Value, what: &str) -> Result<Vec<Value>, HistoryError> {
    match value {
        Value::Array(v) => Ok(v),
        // An empty Lua table comes back as an empty array or nil.
        Value::Null => Ok(Vec::new()),
        other => Err(unexpected(what, &other)),
    }
}

/// One `XRANGE` entry: `[ "<offset>-0", ["d", payload] ]`.
fn publication_of(entry: Value, epoch: &str) -> Result<Publication, HistoryError> {
    let mut entry = array(entry, "entry")?;
    if entry.len() != 2 {
        return Err(HistoryError::Protocol(format!("entry: {entry:?}")));
    }
    let fields = array(entry.pop().expect("two"), "entry fields")?;
    let id = entry.pop().expect("one");
    let offset = as_bytes(&id)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.strip_suffix("-0"))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| unexpected("entry id", &id))?;
    let mut fields = fields.into_iter();
    let payload = match (fields.next(), fields.next()) {
        (Some(name), Some(value)) if as_bytes(&name) == Some(b"d") => {
            into_bytes(value).ok_or_else(|| HistoryError::Protocol("entry payload".into()))?
        }
        _ => return Err(HistoryError::Protocol("entry fields".into())),
    };
    Ok(Publication {
        offset,
        epoch: epoch.to_owned(),
        payload,
    })
}

fn meta_ttl_arg(opts: &HistoryOptions) -> Value {
    Value::Integer(opts.meta_ttl_secs() as i64)
}

impl History for RedisHistory {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        payload: Bytes,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move {
            let args = [
                Value::Bytes(payload),
                Value::Integer(opts.size() as i64),
                Value::Integer(opts.ttl_secs() as i64),
                meta_ttl_arg(opts),
                Value::from_static_str(if opts.sharded() { "sharded" } else { "" }),
            ];
            // Five arguments only for a sharded channel: the library of an
            // older gateway still loaded elsewhere takes four.
            let args = if opts.sharded() {
                &args[..]
            } else {
                &args[..4]
            };
            let reply = array(
                self.fcall(Function::Publish, channel, args).await?,
                "publish reply",
            )?;
            position_of(&reply)
        })
    }

    fn position<'a>(
        &'a self,
        channel: &'a ChannelName,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move {
            let reply = array(
                self.fcall(Function::Position, channel, &[meta_ttl_arg(opts)])
                    .await?,
                "position reply",
            )?;
            position_of(&reply)
        })
    }

    fn recover<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: &'a StreamPosition,
        limit: u64,
        opts: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        Box::pin(async move {
            check_since(since)?;
            let args = [
                Value::Integer(since.offset as i64),
                Value::String(since.epoch.as_str().into()),
                Value::Integer(limit.min(crate::MAX_OFFSET) as i64),
                meta_ttl_arg(opts),
            ];
            let mut reply = array(
                self.fcall(Function::Recover, channel, &args).await?,
                "recover reply",
            )?;
            let position = position_of(&reply)?;
            if reply.len() != 4 {
                return Err(HistoryError::Protocol(format!("recover reply: {reply:?}")));
            }
            let entries = array(reply.pop().expect("four"), "entries")?;
            let status = reply.pop().expect("three");
            let recovered = match as_bytes(&status) {
                Some(b"recovered") => true,
                Some(b"unrecoverable") => false,
                Some(b"future") => {
                    return Err(HistoryError::FuturePosition {
                        since: since.clone(),
                        current: position,
                    })
                }
                _ => return Err(unexpected("recover status", &status)),
            };
            let publications = entries
                .into_iter()
                .map(|e| publication_of(e, &position.epoch))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Recovery {
                publications,
                position,
                recovered,
            })
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
