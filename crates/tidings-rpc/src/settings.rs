//! The `[rpc]` section of the configuration file, deserializing and
//! checking itself into an [`RpcConfig`].

use http::{HeaderName, Uri};
use serde::{Deserialize, Serialize};
use tidings_core::config::{positive_secs, ConfigError};

use crate::client::RpcConfig;

/// The `[rpc]` section: calls from clients to the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSettings {
    /// The backend's base URL (`http://...`). Unset: RPC is off.
    pub url: Option<String>,
    /// Path prefixes clients may call, each starting with `/`.
    pub allowed_paths: Vec<String>,
    /// Longest wait for the backend's answer, in seconds.
    pub timeout_secs: f64,
    /// Most calls one socket may have in flight.
    pub max_in_flight: usize,
    /// Upgrade request headers forwarded with every call.
    pub forward_headers: Vec<String>,
}

impl Default for RpcSettings {
    fn default() -> Self {
        let r = RpcConfig::new(Uri::from_static("http://127.0.0.1/"), Vec::new());
        Self {
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
    }
}

impl RpcSettings {
    /// The RPC client's configuration, if `url` is set (RPC is on).
    pub fn to_config(&self) -> Result<Option<RpcConfig>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| ConfigError::new("url", format!("{e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ConfigError::new("url", "must be an absolute http:// URL"));
        }
        if self.allowed_paths.is_empty() || self.allowed_paths.iter().any(|p| !p.starts_with('/')) {
            return Err(ConfigError::new(
                "allowed_paths",
                "list the path prefixes clients may call, each starting with `/` (for example [\"/api/\"])",
            ));
        }
        let mut config = RpcConfig::new(uri, self.allowed_paths.clone());
        config.timeout = positive_secs("timeout_secs", self.timeout_secs)?;
        config.max_in_flight = self.max_in_flight.max(1);
        config.forward_headers = self
            .forward_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    ConfigError::new("forward_headers", format!("`{h}` is not a header name"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_is_off_by_default() {
        assert!(RpcSettings::default().to_config().unwrap().is_none());
    }

    #[test]
    fn keys_are_read() {
        let rpc: RpcSettings =
            toml::from_str("url = \"http://127.0.0.1:8000\"\nallowed_paths = [\"/api/\"]").unwrap();
        let rpc = rpc.to_config().unwrap().unwrap();
        assert_eq!(rpc.allowed_paths, vec!["/api/".to_owned()]);
    }

    #[test]
    fn errors_name_the_key() {
        let rpc = |text: &str| {
            toml::from_str::<RpcSettings>(text)
                .unwrap()
                .to_config()
                .unwrap_err()
                .key()
                .to_owned()
        };
        assert_eq!(rpc("url = \"https://x/\""), "url");
        assert_eq!(rpc("url = \"http://x/\""), "allowed_paths");
        assert_eq!(
            rpc("url = \"http://x/\"\nallowed_paths = [\"/a\"]\nforward_headers = [\"a b\"]"),
            "forward_headers"
        );
    }
}
