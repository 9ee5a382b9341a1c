//! RPC over HTTP to the backend (seed 000): a client sends
//! `{"type":"rpc","id":1,"method":"POST","path":"/api/cart/add","data":{...}}`
//! and the gateway makes that HTTP request to the backend **with the
//! socket's own credentials** (the cookies and headers it upgraded with), so
//! the backend answers for the right session; the answer comes back as
//! `{"type":"rpc_result","id":1,"status":200,"data":{...}}`.
//!
//! Only configured path prefixes are allowed (after the transport's
//! [`check_path`] grammar), each call has a timeout, and a socket has a
//! bounded number of calls in flight.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tidings_session::{
    rpc::{check_path, RpcCall, RpcError, RpcReply},
    BoxFuture, RpcHandler,
};

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
