//! RPC to the backend over the socket (seed 000): a client sends
//! `{"type":"rpc","id":1,"method":"POST","path":"/api/cart/add","data":{...}}`
//! and the gateway makes that HTTP request to the backend **with the
//! socket's own credentials** (the cookies and headers it upgraded with), so
//! the backend answers for the right session; the answer comes back as
//! `{"type":"rpc_result","id":1,"status":200,"data":{...}}`.
//!
//! This module is the seam: the [`RpcHandler`] trait a socket's calls go
//! through, what a call carries and returns, and [`check_path`], the
//! grammar every RPC path must pass. The HTTP client to the backend
//! (`HttpRpc`, with its configuration) is the `tidings-rpc` crate. A socket
//! has a bounded number of calls in flight ([`RpcHandler::max_in_flight`]);
//! calls run in their own tasks, so a slow backend never delays the
//! socket's deliveries.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tidings_bridge::BoxFuture;
use tidings_core::Identity;

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

/// Makes RPC calls for sockets: the seam between the socket transport and
/// whatever answers the calls. The `tidings` binary plugs in `HttpRpc`
/// from the `tidings-rpc` crate (HTTP to the backend); implement it to
/// route calls elsewhere.
pub trait RpcHandler: Send + Sync + 'static {
    /// The request headers a socket's upgrade carried that this handler
    /// needs later (kept for the socket's lifetime).
    fn credentials(&self, upgrade_headers: &HeaderMap) -> HeaderMap;
    /// Most calls one socket may have in flight.
    fn max_in_flight(&self) -> usize;
    /// Performs one call.
    fn call<'a>(&'a self, call: RpcCall<'a>) -> BoxFuture<'a, Result<RpcReply, RpcError>>;
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
}
