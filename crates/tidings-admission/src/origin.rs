//! The Origin policy: which web pages may open a connection (and, for
//! adapters with HTTP actions, send them) with the visitor's cookies.

use http::{header, HeaderMap};

/// Whether `origin` may connect, given the allowed list and the request's
/// `Host`: any with `"*"` in the list; those listed when the list is not
/// empty; otherwise the same origin only (the Origin's host and port must
/// be the `Host` header's, a missing port being the scheme's default).
pub fn allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    same_origin(origin, host)
}

/// Why a request's Origin is refused, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    /// More than one `Origin` header: forged (a browser sends one).
    Several,
    /// An Origin the policy does not allow.
    NotAllowed,
}

impl OriginError {
    /// The refusal text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Several => "more than one Origin header",
            Self::NotAllowed => "origin not allowed",
        }
    }
}

/// Checks the `Origin` of a request against `allowed_origins`. Requests
/// without one (non-browser clients) pass: Origin protects browsers'
/// cookies.
pub fn check(allowed_origins: &[String], headers: &HeaderMap) -> Result<(), OriginError> {
    // One browser request carries at most one Origin: two are forged,
    // and whichever one a check read, the other could be the real one.
    if headers.get_all(header::ORIGIN).iter().nth(1).is_some() {
        return Err(OriginError::Several);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin
            .to_str()
            .is_ok_and(|o| allowed(allowed_origins, o, host))
        {
            return Err(OriginError::NotAllowed);
        }
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port
/// as the `Host` header, ports defaulting to the origin scheme's.
pub fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let split = |a: &str| -> Option<(String, u16)> {
        // [v6]:port, [v6], name:port, name
        let (name, port) = if let Some(rest) = a.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            (format!("[{v6}]"), after.strip_prefix(':'))
        } else {
            match a.rsplit_once(':') {
                Some((n, p)) => (n.to_string(), Some(p)),
                None => (a.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        Some((name.to_ascii_lowercase(), port))
    };
    match (split(authority), split(host)) {
        (Some(o), Some(h)) => o == h,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_normalises_default_ports() {
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(same_origin("https://example.com", Some("example.com")));
        assert!(same_origin("https://example.com", Some("example.com:443")));
        assert!(same_origin("http://Example.COM", Some("example.com:80")));
        assert!(same_origin("http://[::1]:8080", Some("[::1]:8080")));
        assert!(!same_origin("https://example.com", Some("example.com:80")));
        assert!(!same_origin(
            "http://127.0.0.1:8081",
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin("http://evil.example", Some("example.com")));
        assert!(!same_origin("null", Some("example.com")));
        assert!(!same_origin("http://example.com", None));
        assert!(!same_origin("ftp://example.com", Some("example.com")));
    }

    #[test]
    fn lists_and_wildcards() {
        let list = vec!["https://app.example/".to_owned()];
        assert!(allowed(&list, "https://APP.example", None));
        assert!(!allowed(
            &list,
            "https://other.example",
            Some("other.example")
        ));
        assert!(allowed(&["*".to_owned()], "http://x", None));
        let mut h = HeaderMap::new();
        h.append(header::ORIGIN, "https://app.example".parse().unwrap());
        assert_eq!(check(&list, &h), Ok(()));
        h.append(header::ORIGIN, "https://app.example".parse().unwrap());
        assert_eq!(check(&list, &h), Err(OriginError::Several));
        assert_eq!(check(&[], &HeaderMap::new()), Ok(()));
    }
}
