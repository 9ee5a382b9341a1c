//! Pusher's signatures: channel authorizations (`key:hex(hmac)`), user
//! sign-in, and the HTTP API's request signing.

use std::collections::BTreeMap;

use md5::{Digest as _, Md5};

use crate::config::App;

/// HMAC-SHA256 and hex, as the webhooks sign (one implementation).
pub(crate) use tidings_control::{hex, hmac_sha256};

/// Lowercase hex MD5 of `body` (the API's `body_md5`).
pub(crate) fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `hex(hmac(secret, text))`.
pub(crate) fn sign(app: &App, text: &str) -> String {
    hex(&hmac_sha256(
        app.secret.expose().as_bytes(),
        text.as_bytes(),
    ))
}

/// Whether `auth` (`key:signature`) is `app`'s signature of `text`
/// (`socket_id:channel`, with `:channel_data` for presence; or
/// `socket_id::user::user_data` for sign-in).
pub(crate) fn check_auth(app: &App, auth: &str, text: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    key == app.key && same(signature.as_bytes(), sign(app, text).as_bytes())
}

/// Why an API request is refused (HTTP 401 unless said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiAuthError {
    /// A required parameter is missing.
    Missing(&'static str),
    /// `auth_key` is not the app's key.
    WrongKey,
    /// `auth_version` is not `1.0`.
    Version,
    /// `auth_timestamp` is not within the window.
    Timestamp,
    /// `body_md5` does not match the body.
    BodyMd5,
    /// `auth_signature` is wrong.
    Signature,
}

impl std::fmt::Display for ApiAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(p) => write!(f, "missing {p}"),
            Self::WrongKey => f.write_str("unknown auth_key"),
            Self::Version => f.write_str("auth_version must be 1.0"),
            Self::Timestamp => {
                f.write_str("auth_timestamp is too far from the server's time (check the clock)")
            }
            Self::BodyMd5 => f.write_str("body_md5 does not match the body"),
            Self::Signature => f.write_str("invalid signature"),
        }
    }
}

/// Checks a signed API request: `method`, `path`, the decoded query pairs,
/// the body, and the current time (Unix seconds) with the timestamp
/// window.
pub(crate) fn check_request(
    app: &App,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now: u64,
    window: u64,
) -> Result<(), ApiAuthError> {
    let mut params: BTreeMap<String, &str> = BTreeMap::new();
    let mut signature = None;
    for (k, v) in query {
        if k == "auth_signature" {
            signature = Some(v.as_str());
        } else {
            params.insert(k.to_ascii_lowercase(), v);
        }
    }
    let get = |k: &'static str| params.get(k).copied().ok_or(ApiAuthError::Missing(k));
    let signature = signature.ok_or(ApiAuthError::Missing("auth_signature"))?;
    if get("auth_key")? != app.key {
        return Err(ApiAuthError::WrongKey);
    }
    if get("auth_version")? != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let ts: u64 = get("auth_timestamp")?
        .parse()
        .map_err(|_| ApiAuthError::Timestamp)?;
    if ts.abs_diff(now) > window {
        return Err(ApiAuthError::Timestamp);
    }
    if !body.is_empty() {
        let md5 = get("body_md5")?;
        if !same(md5.as_bytes(), md5_hex(body).as_bytes()) {
            return Err(ApiAuthError::BodyMd5);
        }
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("{method}\n{path}\n{}", query.join("&"));
    if same(signature.as_bytes(), sign(app, &text).as_bytes()) {
        Ok(())
    } else {
        Err(ApiAuthError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::config::Secret;

    fn app() -> App {
        App {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: Secret::new("7ad3773142a6692b25b8"),
            client_events: false,
            webhooks: Vec::new(),
        }
    }

    #[test]
    fn channel_authorization_matches_pushers_docs() {
        // The example of Pusher's authorization docs.
        let a = app();
        let auth =
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(check_auth(&a, auth, "1234.1234:private-foobar"));
        assert!(!check_auth(&a, auth, "1234.1235:private-foobar"));
        assert!(!check_auth(&a, "nope", "1234.1234:private-foobar"));
    }

    #[test]
    fn api_requests_are_checked() {
        let a = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = md5_hex(body);
        let mut q = vec![
            ("auth_key".to_owned(), a.key.clone()),
            ("auth_timestamp".to_owned(), "1353088179".to_owned()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            ("body_md5".to_owned(), md5.clone()),
        ];
        let text = format!(
            "POST\n/apps/3/events\nauth_key={}&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}",
            a.key
        );
        q.push(("auth_signature".to_owned(), sign(&a, &text)));
        let check = |q: &[(String, String)], body: &[u8], now| {
            check_request(&a, "POST", "/apps/3/events", q, body, now, 600)
        };
        assert_eq!(check(&q, body, 1353088179 + 10), Ok(()));
        assert_eq!(
            check(&q, body, 1353088179 + 601),
            Err(ApiAuthError::Timestamp)
        );
        assert_eq!(check(&q, b"{}", 1353088179), Err(ApiAuthError::BodyMd5));
        let mut bad = q.clone();
        bad.last_mut().unwrap().1.replace_range(0..1, "x");
        assert_eq!(check(&bad, body, 1353088179), Err(ApiAuthError::Signature));
        assert_eq!(
            check(&q[1..], body, 1353088179),
            Err(ApiAuthError::Missing("auth_key"))
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
