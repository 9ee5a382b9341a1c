//! RPC to the backend over the socket (seed 000): a client sends
//! `{"type":"rpc","id":1,"method":"POST","path":"/api/cart/add","data":{...}}`
//! and the gateway makes that HTTP request to the backend **with the
//! socket's own credentials** (the cookies and headers it upgraded with), so
//! the backend answers for the right session; the answer comes back as
//! `{"type":"rpc_result","id":1,"status":200,"data":{...}}`.
//!
//! Only configured path prefixes are allowed, each call has a timeout, and a
//! socket has a bounded number of calls in flight. Calls run in their own
//! tasks, so a slow backend never delays the socket's deliveries.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tidings_bridge::BoxFuture;
use tidings_core::Identity;

/// How the gateway calls the backend for RPC.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// The backend's base URL (`http://127.0.0.1:8000`); the client's path
    /// is appended to it.
    pub base_url: Uri,
    /// Path prefixes clients may call (`/api/`). A path outside all of them
    /// is refused with `forbidden`.
    pub allowed_paths: Vec<String>,
    /// Methods clients may use. Default GET, POST, PUT, PATCH, DELETE.
    pub allowed_methods: Vec<Method>,
    /// Longest wait for the backend's answer. Default 10 s.
    pub timeout: Duration,
    /// Most calls one socket may have in flight. Default 4.
    pub max_in_flight: usize,
    /// Largest answer body passed back. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Request headers of the upgrade forwarded with each call (the
    /// socket's credentials). Default `cookie` and `authorization`.
    pub forward_headers: Vec<HeaderName>,
}

impl RpcConfig {
    /// The defaults, for the backend at `base_url`, allowing `allowed_paths`.
    pub fn new(base_url: Uri, allowed_paths: Vec<String>) -> Self {
        Self {
            base_url,
            allowed_paths,
            allowed_methods: vec![
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ],
            timeout: Duration::from_secs(10),
            max_in_flight: 4,
            max_response_bytes: 1024 * 1024,
            forward_headers: vec![header::COOKIE, header::AUTHORIZATION],
        }
    }
}

/// Why an RPC could not produce an answer from the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The method or path is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The backend did not answer in time.
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend could not be reached or its answer could not be read.
    #[error("the backend is unavailable")]
    Unavailable,
}

/// The backend's answer: status and body.
#[derive(Debug, Clone)]
pub struct RpcReply {
    /// The HTTP status.
    pub status: u16,
    /// The body bytes.
    pub body: Bytes,
}

/// One call a socket asked for.
#[derive(Debug)]
pub struct RpcCall<'a> {
    /// The method, as the client sent it.
    pub method: &'a str,
    /// The path, as the client sent it.
    pub path: &'a str,
    /// The JSON body, if any.
    pub body: Option<Bytes>,
    /// The socket's identity.
    pub identity: &'a Identity,
    /// The socket's forwarded credentials.
    pub credentials: &'a HeaderMap,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

/// Makes RPC calls for sockets. Implement it to route calls elsewhere; the
/// gateway uses [`HttpRpc`] when configured.
pub trait RpcHandler: Send + Sync + 'static {
    /// The request headers a socket's upgrade carried that this handler
    /// needs later (kept for the socket's lifetime).
    fn credentials(&self, upgrade_headers: &HeaderMap) -> HeaderMap;
    /// Most calls one socket may have in flight.
    fn max_in_flight(&self) -> usize;
    /// Performs one call.
    fn call<'a>(&'a self, call: RpcCall<'a>) -> BoxFuture<'a, Result<RpcReply, RpcError>>;
}

/// RPC over HTTP to the backend, on a pooled keep-alive client.
pub struct HttpRpc {
    config: RpcConfig,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for HttpRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRpc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpRpc {
    /// An RPC client for `config`. Must be called within a Tokio runtime.
    pub fn new(config: RpcConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(5))));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { config, client }
    }

    /// The absolute URI for a client path, if the path is allowed.
    fn target(&self, path: &str) -> Result<Uri, RpcError> {
        let path_only = path.split('?').next().unwrap_or(path);
        if let Err(why) = check_path(path) {
            return Err(RpcError::Forbidden(format!(
                "path not allowed for rpc: {why}"
            )));
        }
        if !self.config.allowed_paths.iter().any(|prefix| {
            // Whole segments: `/api` admits `/api/x`, not `/api-admin`.
            path_only.starts_with(prefix.as_str())
                && (prefix.ends_with('/')
                    || path_only.len() == prefix.len()
                    || path_only.as_bytes()[prefix.len()] == b'/')
        }) {
            return Err(RpcError::Forbidden(format!(
                "path not allowed for rpc (allowed: {})",
                self.config.allowed_paths.join(", ")
            )));
        }
        let base = self.config.base_url.to_string();
        let base = base.trim_end_matches('/');
        format!("{base}{path}")
            .parse()
            .map_err(|_| RpcError::Forbidden("path is not a valid URI path".into()))
    }
}

/// Whether `path` (with its query) is in the conservative grammar RPC
/// paths must follow, so that no server, proxy or framework that decodes
/// or normalises it (percent-decoding, Unicode normalisation, overlong
/// UTF-8, dot-segment removal, `;` parameters, backslashes) can read it as
/// another path:
///
/// - the path starts with `/` and is made of segments of ASCII letters,
///   digits and `-._~` only: no `%` escapes, no other character, nothing
///   outside ASCII;
/// - no segment is empty (`//`; a single trailing `/` is fine) and none
///   starts with `.` (so no `.`, `..`, `...` or hidden names);
/// - the optional query, after the first `?`, is made of printable ASCII
///   other than `#`, `\` and space, and its `%` escapes are complete
///   (`%` and two hex digits, not `%25`).
///
/// The reason why not, otherwise.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let Some(rest) = path_only.strip_prefix('/') else {
        return Err("it must start with `/`");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            // `/` alone, or one trailing `/`, is fine; `//` is not.
            if i == last && (i == 0 || !segments[i - 1].is_empty()) {
                continue;
            }
            return Err("empty path segments (`//`) are not allowed");
        }
        if seg.starts_with('.') {
            return Err("a path segment may not start with `.` (no `.` or `..` segments)");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(
                "path segments may hold only ASCII letters, digits and `-._~` (no escapes, no other characters)",
            );
        }
    }
    if let Some(query) = query {
        let bytes = query.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if !(b.is_ascii_graphic()) || matches!(b, b'#' | b'\\') {
                return Err("the query may hold only printable ASCII, without `#` or `\\`");
            }
            if b == b'%' {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                match hex {
                    Some(h) if !h.eq_ignore_ascii_case(b"25") => i += 2,
                    _ => return Err("the query has an incomplete or double `%` escape"),
                }
            }
            i += 1;
        }
    }
    Ok(())
}

impl RpcHandler for HttpRpc {
    fn credentials(&self, upgrade_headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in &self.config.forward_headers {
            for value in upgrade_headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }

    fn max_in_flight(&self) -> usize {
        self.config.max_in_flight.max(1)
    }

    fn call<'a>(&'a self, call: RpcCall<'a>) -> BoxFuture<'a, Result<RpcReply, RpcError>> {
        Box::pin(async move {
            let method = Method::from_bytes(call.method.to_ascii_uppercase().as_bytes())
                .ok()
                .filter(|m| self.config.allowed_methods.contains(m))
                .ok_or_else(|| {
                    RpcError::Forbidden(format!("method {:?} not allowed for rpc", call.method))
                })?;
            let uri = self.target(call.path)?;
            let mut builder = Request::builder().method(method).uri(uri);
            for (name, value) in call.credentials {
                builder = builder.header(name, value);
            }
            builder = builder.header(header::ACCEPT, "application/json");
            if let Ok(v) = HeaderValue::from_str(&call.peer.ip().to_string()) {
                builder = builder.header("x-forwarded-for", v);
            }
            let body = match call.body {
                Some(body) => {
                    builder = builder.header(header::CONTENT_TYPE, "application/json");
                    Full::new(body)
                }
                None => Full::new(Bytes::new()),
            };
            let request = builder.body(body).map_err(|_| RpcError::Unavailable)?;
            let exchange = async {
                let response = self.client.request(request).await.map_err(|e| {
                    tracing::debug!(error = %e, "rpc: backend unreachable");
                    RpcError::Unavailable
                })?;
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), self.config.max_response_bytes)
                    .collect()
                    .await
                    .map_err(|_| RpcError::Unavailable)?
                    .to_bytes();
                Ok(RpcReply { status, body })
            };
            tokio::time::timeout(self.config.timeout, exchange)
                .await
                .map_err(|_| RpcError::Timeout(self.config.timeout))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass_the_grammar() {
        for good in [
            "/",
            "/api",
            "/api/",
            "/api/cart/add",
            "/api/items/42/",
            "/api/v1.2/file_name-x~y",
            "/api/x?page=2&q=caf%C3%A9+au+lait",
            "/api/x?a=%2e%2e/b&c=d?e",
            "/api/x?",
        ] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
    }

    /// Removes dot segments (RFC 3986 section 5.2.4), as servers do.
    fn remove_dot_segments(path: &str) -> String {
        let mut out: Vec<&str> = Vec::new();
        for seg in path.split('/').skip(1) {
            match seg {
                "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        format!("/{}", out.join("/"))
    }

    proptest::proptest! {
        /// Whatever a client sends, an accepted path is plain ASCII with
        /// nothing left to decode or normalise: percent-decoding, Unicode
        /// normalisation (all of which leave ASCII alone) and dot-segment
        /// removal all give back the same path, so it stays under the
        /// allowed prefix.
        #[test]
        fn accepted_paths_have_nothing_to_normalise(
            tail in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "Z", "0", "-", "_", "~", ".", "..", "/", "//", "%", "%2e", "%2E",
                    "%2f", "%c0%ae", "%25", "\\", ";", ":", "?", "#", " ", "\u{ff0e}",
                    "\u{2025}", "\u{ff0f}", "\u{e9}", "\u{0}", "\t", "x", "api", "admin",
                ]),
                0..12,
            ),
        ) {
            let path = format!("/api/{}", tail.concat());
            if check_path(&path).is_ok() {
                let path_only = path.split('?').next().unwrap_or(&path);
                proptest::prop_assert!(path.is_ascii());
                proptest::prop_assert!(!path_only.contains('%'));
                proptest::prop_assert!(!path_only.contains(';'));
                proptest::prop_assert!(!path_only.contains('\\'));
                proptest::prop_assert_eq!(remove_dot_segments(path_only), path_only);
                proptest::prop_assert!(path_only.starts_with("/api/"));
            }
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let rpc = HttpRpc {
            config: RpcConfig::new(
                Uri::from_static("http://127.0.0.1:8000"),
                vec!["/api".into()],
            ),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        assert!(rpc.target("/api").is_ok());
        assert!(rpc.target("/api/x").is_ok());
        assert!(rpc.target("/api?x=1").is_ok());
        assert!(matches!(
            rpc.target("/api-admin"),
            Err(RpcError::Forbidden(_))
        ));
    }

    #[test]
    fn paths_are_confined_to_the_allowed_prefixes() {
        let rpc = HttpRpc {
            config: RpcConfig::new(
                Uri::from_static("http://127.0.0.1:8000"),
                vec!["/api/".into()],
            ),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        assert_eq!(
            rpc.target("/api/cart?x=1").unwrap().to_string(),
            "http://127.0.0.1:8000/api/cart?x=1"
        );
        for bad in [
            "/admin/",
            "api/x",
            "//evil.example/api/",
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/x/..",
            "/api/./x",
            "/api\\x",
            "/api/x#frag",
            "/api/ x",
            "/api/%2F..%2Fadmin",
            "/ap",
            "/api/..?x=1",
            "/api/..;/admin",
            "/api/%252e%252e/admin",
            "/api-admin",
            "/api/x/..?",
            "/api//x",
            // Unicode a normalising backend reads as dots or slashes.
            "/api/\u{ff0e}\u{ff0e}/admin",
            "/api/\u{2025}/admin",
            "/api/\u{ff0e}\u{ff0e}\u{ff0f}admin",
            "/api/caf\u{e9}",
            // Overlong and UTF-8 escapes of `.` and `/`.
            "/api/%c0%ae%c0%ae/admin",
            "/api/%e0%80%ae%e0%80%ae/admin",
            "/api/%ef%bc%8e%ef%bc%8e/admin",
            "/api/%c0%af",
            "/api/%41",
            "/api/.../x",
            "/api/.env",
            "/api/x;y",
            "/api/x:y",
            "/api/x?a#b",
            "/api/x?a=%",
            "/api/x?a=%2",
            "/api/x?a=%zz",
            "/api/x?a=%252e",
            "/api/x?caf\u{e9}",
            "/api/x?a b",
        ] {
            assert!(
                matches!(rpc.target(bad), Err(RpcError::Forbidden(_))),
                "{bad} must be refused"
            );
        }
    }
}
