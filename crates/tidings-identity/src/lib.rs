#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`UpgradeRequest`]: the parts of the upgrade request a resolver may read.
//! - [`IdentityResolver`]: the trait; [`Resolution`] and [`Rejection`]: its answers.
//! - [`Anonymous`]: the resolver that treats every socket as an anonymous
//!   visitor (the zero-setup default).
//! - [`cookie_proxy`]: asks the web app who the browser's cookies belong to,
//!   with a short cache and coalescing of identical lookups.
//! - [`token`]: one-time tokens the backend stored (in Redis, or in the
//!   gateway's memory), redeemed once.
//! - [`config`]: the `[identity]` configuration section, deserializing and
//!   checking itself.
//! - [`chain`]: resolvers tried in order, and the policy for visitors none
//!   of them recognises.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod chain;
pub mod config;
pub mod cookie_proxy;
pub mod token;

pub use chain::{AnonymousPolicy, Chain};
pub use config::{CookieProxySettings, IdentitySettings, ResolverKind, TokenSettings};
pub use cookie_proxy::{CookieProxy, CookieProxyConfig};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use token::RedisTokenStore;
pub use token::{MemoryTokenStore, TokenConfig, TokenResolver, TokenStore};

use std::{
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    time::Duration,
};

use http::{HeaderMap, StatusCode, Uri};

pub use tidings_core::Identity;

/// A boxed, sendable future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The parts of a WebSocket upgrade request a resolver may read.
///
/// Its `Debug` output never shows header values, so cookies and tokens
/// cannot reach a log through it.
#[derive(Clone)]
pub struct UpgradeRequest {
    /// The request headers (Cookie, Authorization, Origin, ...).
    pub headers: HeaderMap,
    /// The request URI (path and query).
    pub uri: Uri,
    /// The TCP peer's address: the machine that opened this connection to
    /// the gateway (a reverse proxy, when there is one). Never taken from a
    /// header: decide whether to believe headers such as
    /// `X-Forwarded-User` from this.
    pub peer: SocketAddr,
    /// The client's address as the gateway derived it for its limits: the
    /// TCP peer's address, or, when the peer is one of the transport's
    /// trusted proxies, the rightmost `X-Forwarded-For` entry that is not
    /// itself a trusted proxy. Informational (logs, rate limits, forwarding
    /// to a backend); it is only as trustworthy as the proxies are.
    pub client_ip: IpAddr,
}

impl fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("path", &self.uri.path())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("peer", &self.peer)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

impl UpgradeRequest {
    /// A request from the TCP peer `peer`, whose client address is the
    /// peer's own (no trusted proxy in between).
    pub fn new(headers: HeaderMap, uri: Uri, peer: SocketAddr) -> Self {
        Self {
            headers,
            uri,
            client_ip: peer.ip().to_canonical(),
            peer,
        }
    }

    /// The value of cookie `name`, from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.uri
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A refused upgrade: the HTTP status and a reason safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status the upgrade is answered with.
    pub status: StatusCode,
    /// A short reason for the response body and logs. Must never contain a
    /// credential.
    pub reason: String,
    /// When set, sent as `Retry-After` (whole seconds).
    pub retry_after: Option<Duration>,
}

impl Rejection {
    /// A rejection with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// 401: no valid credentials.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403: credentials valid, access refused.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
    }

    /// 503 with `Retry-After`: the identity source is unavailable.
    pub fn unavailable(reason: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

/// What a resolver concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The socket is this identity.
    Identified(Identity),
    /// The request carries nothing this resolver understands; ask the next one.
    Unrecognized,
    /// Refuse the upgrade.
    Rejected(Rejection),
}

/// Decides who a socket is, from its upgrade request.
///
/// Called once per upgrade, before the WebSocket handshake completes; a
/// rejection answers the upgrade with its HTTP status. Implementations must
/// never log credential values.
pub trait IdentityResolver: Send + Sync + 'static {
    /// Resolves the identity behind `req`.
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution>;
}

/// Every socket is an anonymous visitor. The zero-setup default: what an
/// anonymous socket may do is then up to the routing rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl IdentityResolver for Anonymous {
    fn resolve<'a>(&'a self, _req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async { Resolution::Identified(Identity::anonymous()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cookie: &str, uri: &str) -> UpgradeRequest {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, cookie.parse().unwrap());
        UpgradeRequest::new(
            headers,
            uri.parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        )
    }

    #[test]
    fn cookies_and_query() {
        let r = req("a=1; sessionid=abc; b=2", "/ws?token=xyz&x");
        assert_eq!(r.cookie("sessionid"), Some("abc"));
        assert_eq!(r.cookie("missing"), None);
        assert_eq!(r.query_param("token"), Some("xyz"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.query_param("y"), None);
    }

    #[test]
    fn debug_hides_header_values() {
        let r = req("sessionid=secret-value", "/ws");
        let s = format!("{r:?}");
        assert!(!s.contains("secret-value"), "{s}");
        assert!(s.contains("cookie"));
    }
}
