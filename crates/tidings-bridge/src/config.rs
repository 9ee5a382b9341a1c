//! The `[redis]` configuration section (connection tunables; the URL itself
//! is a secret the application passes in).

use serde::{Deserialize, Serialize};
use tidings_core::config::{non_negative_secs, positive_secs, ConfigError};

use crate::{redis::check_nodes, RedisConfig, RedisMode};

/// `redis.mode`: how the gateway reaches Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// One server, at `redis_url`.
    #[default]
    Standalone,
    /// The master of `redis.sentinel_service`, found through the Sentinel
    /// at `redis_url` (and `redis.nodes`).
    Sentinel,
    /// A Redis Cluster: `redis_url` is one node, `redis.nodes` more seeds.
    Cluster,
}

/// The `[redis]` section: tunables of the Redis broker. Unknown keys are
/// refused; left out, a key takes the [`RedisConfig::new`] default.
///
/// To add a key: a field here, its default in `Default`, and one line in
/// [`RedisSettings::to_config`] that checks it and sets the
/// [`RedisConfig`] field (errors name the key as written in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Longest wait for a Redis command (publish, subscribe), in seconds.
    pub command_timeout_secs: f64,
    /// Longest wait to set up a connection, in seconds.
    pub connect_timeout_secs: f64,
    /// Longest delay between reconnect attempts, in seconds (backoff starts
    /// at 0.1 s).
    pub reconnect_max_delay_secs: f64,
    /// Connections in the publish pool (1 to 64).
    pub pool_size: usize,
    /// Messages buffered between the Redis reader and the router (1,024 to
    /// 16,777,216).
    pub message_buffer: usize,
    /// Seconds between self-checks of the subscriptions against Redis (0:
    /// only after reconnects).
    pub self_check_interval_secs: f64,
    /// `standalone`, `sentinel` or `cluster`.
    pub mode: ModeName,
    /// Sentinel: more Sentinels; cluster: more seed nodes (`host:port`
    /// each; `redis_url` names the first, and its credentials and TLS apply
    /// to all).
    pub nodes: Vec<String>,
    /// Sentinel: the service (master) name. Required with `mode =
    /// "sentinel"`, refused otherwise.
    pub sentinel_service: Option<String>,
    /// Cluster: seconds between reads of the slot map (a moved slot or a
    /// promoted replica is followed within about this time).
    pub topology_check_interval_secs: f64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        let r = RedisConfig::new("");
        Self {
            command_timeout_secs: r.command_timeout.as_secs_f64(),
            connect_timeout_secs: r.connect_timeout.as_secs_f64(),
            reconnect_max_delay_secs: r.reconnect_max_delay.as_secs_f64(),
            pool_size: r.pool_size,
            message_buffer: r.message_buffer,
            self_check_interval_secs: r.self_check_interval.as_secs_f64(),
            mode: ModeName::Standalone,
            nodes: Vec::new(),
            sentinel_service: None,
            topology_check_interval_secs: r.topology_check_interval.as_secs_f64(),
        }
    }
}

impl RedisSettings {
    /// The broker's configuration for `url` with these tunables. The URL is
    /// not checked here (see [`RedisConfig::check_url`]): errors name only
    /// this section's keys, and never the URL.
    pub fn to_config(&self, url: impl Into<String>) -> Result<RedisConfig, ConfigError> {
        let mut config = RedisConfig::new(url);
        config.command_timeout = positive_secs("command_timeout_secs", self.command_timeout_secs)?;
        config.connect_timeout = positive_secs("connect_timeout_secs", self.connect_timeout_secs)?;
        config.reconnect_max_delay =
            positive_secs("reconnect_max_delay_secs", self.reconnect_max_delay_secs)?;
        if !(1..=64).contains(&self.pool_size) {
            return Err(ConfigError::new(
                "pool_size",
                format!("must be between 1 and 64, got {}", self.pool_size),
            ));
        }
        config.pool_size = self.pool_size;
        if !(1024..=16 * 1024 * 1024).contains(&self.message_buffer) {
            return Err(ConfigError::new(
                "message_buffer",
                format!(
                    "must be between 1024 and 16777216, got {}",
                    self.message_buffer
                ),
            ));
        }
        config.message_buffer = self.message_buffer;
        config.self_check_interval =
            non_negative_secs("self_check_interval_secs", self.self_check_interval_secs)?;
        config.topology_check_interval = positive_secs(
            "topology_check_interval_secs",
            self.topology_check_interval_secs,
        )?;
        check_nodes(&self.nodes).map_err(|e| ConfigError::new("nodes", e))?;
        config.mode = match (self.mode, &self.sentinel_service) {
            (ModeName::Sentinel, Some(service)) if !service.trim().is_empty() => {
                RedisMode::Sentinel {
                    service: service.clone(),
                    nodes: self.nodes.clone(),
                }
            }
            (ModeName::Sentinel, _) => {
                return Err(ConfigError::new(
                    "sentinel_service",
                    "required with mode = \"sentinel\": the name of the master the Sentinels watch (SENTINEL MASTERS lists them)",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    "sentinel_service",
                    "only used with mode = \"sentinel\"",
                ))
            }
            (ModeName::Cluster, None) => RedisMode::Cluster {
                nodes: self.nodes.clone(),
            },
            (ModeName::Standalone, None) => {
                if !self.nodes.is_empty() {
                    return Err(ConfigError::new(
                        "nodes",
                        "only used with mode = \"sentinel\" or \"cluster\" (a standalone server is redis_url alone)",
                    ));
                }
                RedisMode::Standalone
            }
        };
        Ok(config)
    }

    /// Checks every key (see [`RedisSettings::to_config`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.to_config("").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_empty_section_gives_the_defaults() {
        let s: RedisSettings = toml::from_str("").unwrap();
        assert_eq!(s, RedisSettings::default());
        let c = s.to_config("redis://127.0.0.1:6379").unwrap();
        let d = RedisConfig::new("");
        assert_eq!(
            (c.command_timeout, c.pool_size, c.message_buffer),
            (d.command_timeout, d.pool_size, d.message_buffer)
        );
    }

    #[test]
    fn keys_are_read_and_checked_by_name() {
        let s: RedisSettings =
            toml::from_str("command_timeout_secs = 0.5\npool_size = 4\n").unwrap();
        let c = s.to_config("redis://127.0.0.1:6379").unwrap();
        assert_eq!(c.command_timeout, Duration::from_millis(500));
        assert_eq!(c.pool_size, 4);
        let zero: RedisSettings = toml::from_str("pool_size = 0").unwrap();
        let e = zero.validate().unwrap_err();
        assert_eq!(
            (e.key(), e.reason()),
            ("pool_size", "must be between 1 and 64, got 0")
        );
        let negative: RedisSettings = toml::from_str("connect_timeout_secs = -1").unwrap();
        assert_eq!(
            negative.validate().unwrap_err().key(),
            "connect_timeout_secs"
        );
        let unknown = toml::from_str::<RedisSettings>("pool = 1").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `pool`"),
            "{unknown}"
        );
    }

    #[test]
    fn modes_need_their_keys() {
        let url = "redis://127.0.0.1:7000";
        let read = |text: &str| toml::from_str::<RedisSettings>(text).unwrap();
        let e = read("mode = \"sentinel\"").validate().unwrap_err();
        assert_eq!(e.key(), "sentinel_service");
        assert!(e.reason().contains("required"), "{}", e.reason());
        let s = read(
            "mode = \"sentinel\"\nsentinel_service = \"mymaster\"\nnodes = [\"127.0.0.1:26380\"]",
        );
        assert_eq!(
            s.to_config(url).unwrap().mode,
            RedisMode::Sentinel {
                service: "mymaster".into(),
                nodes: vec!["127.0.0.1:26380".into()]
            }
        );
        let e = read("sentinel_service = \"x\"").validate().unwrap_err();
        assert_eq!(e.key(), "sentinel_service");
        let e = read("nodes = [\"127.0.0.1:7001\"]").validate().unwrap_err();
        assert_eq!(e.key(), "nodes");
        let e = read("mode = \"cluster\"\nnodes = [\"nope\"]")
            .validate()
            .unwrap_err();
        assert_eq!(
            (e.key(), e.reason()),
            ("nodes", "\"nope\" is not host:port")
        );
        let c = read("mode = \"cluster\"\nnodes = [\"127.0.0.1:7001\"]");
        let config = c.to_config(url).unwrap();
        assert!(config.check_url().is_ok());
        let db = c.to_config("redis://127.0.0.1:7000/2").unwrap();
        assert!(db
            .check_url()
            .unwrap_err()
            .to_string()
            .contains("database 0"));
        let unknown = toml::from_str::<RedisSettings>("mode = \"ring\"").unwrap_err();
        assert!(unknown.to_string().contains("unknown variant"), "{unknown}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let unknown = toml::from_str::<RedisSettings>("pool = 1").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `pool`"),
            "{unknown}"
        );
    }
}
