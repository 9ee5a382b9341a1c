//! The `[identity]` configuration section: which resolvers run, in what
//! order, what anonymous visitors may do, and the settings of the built-in
//! resolvers (`[identity.cookie_proxy]`, `[identity.token]`).

use std::time::Duration;

use http::{HeaderName, Uri};
use serde::{Deserialize, Serialize};
use tidings_core::config::{positive_secs, ConfigError};

use crate::{AnonymousPolicy, CookieProxyConfig, TokenConfig};

/// A built-in resolver, as named in `identity.resolvers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolverKind {
    /// The cookie proxy ([`crate::CookieProxy`]).
    CookieProxy,
    /// One-time tokens ([`crate::TokenResolver`]).
    Token,
}

impl ResolverKind {
    /// The name used in the configuration and in the chain.
    pub fn name(self) -> &'static str {
        match self {
            ResolverKind::CookieProxy => "cookie_proxy",
            ResolverKind::Token => "token",
        }
    }
}

/// The `[identity]` section. Unknown keys are refused; left out, a key
/// takes its default (no resolvers: every socket is anonymous).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Resolvers tried in order. Empty: every socket is anonymous.
    pub resolvers: Vec<ResolverKind>,
    /// What a socket no resolver recognises may do (`allow` or `refuse`).
    pub anonymous: AnonymousPolicy,
    /// The cookie proxy.
    pub cookie_proxy: CookieProxySettings,
    /// One-time tokens.
    pub token: TokenSettings,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            anonymous: AnonymousPolicy::Allow,
            cookie_proxy: CookieProxySettings::default(),
            token: TokenSettings::default(),
        }
    }
}

/// The `[identity.cookie_proxy]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieProxySettings {
    /// The backend's whoami URL (`http://...`). Required when the resolver
    /// is used.
    pub url: Option<String>,
    /// Cookie names to forward; empty: the whole Cookie header.
    pub cookies: Vec<String>,
    /// Further request headers to forward.
    pub headers: Vec<String>,
    /// Longest wait for the TCP connection, in seconds.
    pub connect_timeout_secs: f64,
    /// Longest wait for the whole answer, in seconds.
    pub timeout_secs: f64,
    /// How long an answer is cached, in seconds; 0 turns the cache off.
    pub cache_ttl_secs: f64,
    /// Most cached answers kept.
    pub cache_max_entries: usize,
    /// `Retry-After` given when the backend cannot answer, in seconds.
    pub retry_after_secs: u64,
}

impl Default for CookieProxySettings {
    fn default() -> Self {
        let cp = CookieProxyConfig::new(Uri::from_static("http://127.0.0.1/"));
        Self {
            url: None,
            cookies: Vec::new(),
            headers: Vec::new(),
            connect_timeout_secs: cp.connect_timeout.as_secs_f64(),
            timeout_secs: cp.timeout.as_secs_f64(),
            cache_ttl_secs: cp.cache_ttl.as_secs_f64(),
            cache_max_entries: cp.cache_max_entries,
            retry_after_secs: cp.retry_after.as_secs(),
        }
    }
}

/// The `[identity.token]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// Cookie carrying the token (`""`: none).
    pub cookie: String,
    /// Query parameter carrying the token (`""`: none).
    pub query: String,
    /// Key prefix in the token store.
    pub prefix: String,
    /// Longest lifetime a minted token may be given, in seconds.
    pub max_ttl_secs: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        let tk = TokenConfig::default();
        Self {
            cookie: tk.cookie.unwrap_or_default(),
            query: tk.query.unwrap_or_default(),
            prefix: tk.prefix,
            max_ttl_secs: 60,
        }
    }
}

impl IdentitySettings {
    /// Checks every key of the resolvers listed (a resolver not listed is
    /// not checked) and that none is listed twice. Keys are named relative
    /// to the section (`cookie_proxy.url`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = Vec::new();
        for r in &self.resolvers {
            if seen.contains(r) {
                return Err(ConfigError::new(
                    "resolvers",
                    format!("{} is listed twice", r.name()),
                ));
            }
            seen.push(*r);
        }
        self.cookie_proxy_config()?;
        self.token_config()?;
        Ok(())
    }

    /// The cookie proxy's configuration, if `resolvers` lists it. The token
    /// cookie is withheld from the backend unless listed in `cookies`.
    pub fn cookie_proxy_config(&self) -> Result<Option<CookieProxyConfig>, ConfigError> {
        if !self.resolvers.contains(&ResolverKind::CookieProxy) {
            return Ok(None);
        }
        let c = &self.cookie_proxy;
        let Some(url) = &c.url else {
            return Err(ConfigError::new(
                "cookie_proxy.url",
                "must be set when identity.resolvers lists cookie_proxy",
            ));
        };
        let mut config = CookieProxyConfig::new(
            http_url(url).map_err(|reason| ConfigError::new("cookie_proxy.url", reason))?,
        );
        config.cookies = c.cookies.clone();
        // The one-time token's cookie is for the gateway, not the backend
        // (forwarded only when listed in `cookies`).
        config.withheld_cookies = Some(&self.token.cookie)
            .filter(|name| !name.is_empty())
            .cloned()
            .into_iter()
            .collect();
        config.headers = header_names("cookie_proxy.headers", &c.headers)?;
        config.connect_timeout =
            positive_secs("cookie_proxy.connect_timeout_secs", c.connect_timeout_secs)?;
        config.timeout = positive_secs("cookie_proxy.timeout_secs", c.timeout_secs)?;
        config.cache_ttl = if c.cache_ttl_secs == 0.0 {
            Duration::ZERO
        } else {
            positive_secs("cookie_proxy.cache_ttl_secs", c.cache_ttl_secs)?
        };
        config.cache_max_entries = c.cache_max_entries.max(1);
        config.retry_after = Duration::from_secs(c.retry_after_secs.max(1));
        Ok(Some(config))
    }

    /// The token resolver's configuration, if `resolvers` lists it.
    pub fn token_config(&self) -> Result<Option<TokenConfig>, ConfigError> {
        if !self.resolvers.contains(&ResolverKind::Token) {
            return Ok(None);
        }
        let t = &self.token;
        if t.cookie.is_empty() && t.query.is_empty() {
            return Err(ConfigError::new(
                "token",
                "set `cookie` or `query` (or both): where does the token come from?",
            ));
        }
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        Ok(Some(TokenConfig {
            cookie: nonempty(&t.cookie),
            query: nonempty(&t.query),
            prefix: t.prefix.clone(),
            ..TokenConfig::default()
        }))
    }
}

impl TokenSettings {
    /// The longest lifetime a minted token may be given (at least 1 s).
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_ttl_secs.max(1))
    }
}

/// `url` parsed, if it is an absolute `http://` URL.
pub(crate) fn http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("must be an absolute http:// URL".into());
    }
    Ok(uri)
}

/// The header names in `names`, or an error naming `key`.
fn header_names(key: &str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ConfigError::new(key, format!("`{h}` is not a header name")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> IdentitySettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_empty_section_is_anonymous_only() {
        let s = read("");
        assert_eq!(s, IdentitySettings::default());
        assert!(s.validate().is_ok());
        assert!(s.cookie_proxy_config().unwrap().is_none());
        assert!(s.token_config().unwrap().is_none());
    }

    #[test]
    fn listed_resolvers_are_built_from_their_sections() {
        let s = read(
            r#"
            resolvers = ["cookie_proxy", "token"]
            anonymous = "refuse"
            [cookie_proxy]
            url = "http://127.0.0.1:3000/whoami"
            headers = ["authorization"]
            cache_ttl_secs = 0
            [token]
            query = ""
            "#,
        );
        assert_eq!(s.anonymous, AnonymousPolicy::Refuse);
        let cp = s.cookie_proxy_config().unwrap().unwrap();
        assert_eq!(cp.url, "http://127.0.0.1:3000/whoami");
        assert_eq!(cp.cache_ttl, Duration::ZERO);
        assert_eq!(cp.withheld_cookies, vec!["tidings_token".to_owned()]);
        let tk = s.token_config().unwrap().unwrap();
        assert_eq!(
            (tk.cookie.as_deref(), tk.query),
            (Some("tidings_token"), None)
        );
    }

    #[test]
    fn errors_name_the_key_within_the_section() {
        let key = |text: &str| read(text).validate().unwrap_err().key().to_owned();
        assert_eq!(key("resolvers = [\"cookie_proxy\"]"), "cookie_proxy.url");
        assert_eq!(
            key("resolvers = [\"cookie_proxy\"]\n[cookie_proxy]\nurl = \"https://x/\""),
            "cookie_proxy.url"
        );
        assert_eq!(
            key("resolvers = [\"cookie_proxy\"]\n[cookie_proxy]\nurl = \"http://x/\"\ntimeout_secs = 0"),
            "cookie_proxy.timeout_secs"
        );
        assert_eq!(
            key("resolvers = [\"cookie_proxy\"]\n[cookie_proxy]\nurl = \"http://x/\"\nheaders = [\"a b\"]"),
            "cookie_proxy.headers"
        );
        assert_eq!(
            key("resolvers = [\"token\"]\n[token]\ncookie = \"\"\nquery = \"\""),
            "token"
        );
        assert_eq!(key("resolvers = [\"token\", \"token\"]"), "resolvers");
        let unknown = toml::from_str::<IdentitySettings>("[token]\nttl = 1").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `ttl`"),
            "{unknown}"
        );
    }
}
