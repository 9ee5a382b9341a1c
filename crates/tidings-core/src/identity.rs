//! Who a socket is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The identity of one socket, as an identity resolver established it.
///
/// Every field is data the web application vouched for; the gateway never
/// invents one. An identity with no [`user`](Identity::user) is an anonymous
/// visitor.
///
/// Its JSON form is the schema a backend answers with (see
/// `docs/identity.md`):
///
/// ```
/// use tidings_core::Identity;
/// let id: Identity = serde_json::from_str(
///     r#"{"user": "42", "groups": ["staff"], "channels": ["/app/report/7"]}"#,
/// ).unwrap();
/// assert_eq!(id.user.as_deref(), Some("42"));
/// assert!(!id.is_anonymous());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    /// The user id, or `None` for an anonymous visitor. In JSON a string or
    /// a number (`"42"` or `42`); `null` or `""` mean anonymous.
    #[serde(deserialize_with = "string_or_number")]
    pub user: Option<String>,
    /// The backend's session id, when it shares one (for per-session channels).
    #[serde(deserialize_with = "string_or_number")]
    pub session: Option<String>,
    /// Groups the user belongs to (for per-group channels).
    pub groups: Vec<String>,
    /// Extra exact channels the backend grants this socket: joined on
    /// connect, and open to subscription.
    pub channels: Vec<String>,
    /// Free attributes, usable as `{attr.NAME}` in channel templates.
    pub attributes: BTreeMap<String, String>,
}

impl Identity {
    /// An anonymous visitor: no user, no session, no groups.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// An identity for `user` with nothing else.
    pub fn user(user: impl Into<String>) -> Self {
        Self {
            user: Some(user.into()),
            ..Self::default()
        }
    }

    /// Whether this is an anonymous visitor (no user id).
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }
}

/// `"42"`, `42` or `null`, as an optional string.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(i64),
        Uint(u64),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        // An empty id is no id: the visitor is anonymous.
        Some(Raw::Text(s)) if s.is_empty() => None,
        Some(Raw::Text(s)) => Some(s),
        Some(Raw::Int(n)) => Some(n.to_string()),
        Some(Raw::Uint(n)) => Some(n.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_may_be_numbers() {
        let id: Identity = serde_json::from_str(r#"{"user": 42, "session": "s"}"#).unwrap();
        assert_eq!(id.user.as_deref(), Some("42"));
        let id: Identity = serde_json::from_str(r#"{"user": null}"#).unwrap();
        assert!(id.is_anonymous());
        let id: Identity = serde_json::from_str(r#"{"user": ""}"#).unwrap();
        assert!(id.is_anonymous(), "an empty user id is anonymous");
        assert!(serde_json::from_str::<Identity>(r#"{"user": 4.5}"#).is_err());
        assert!(serde_json::from_str::<Identity>(r#"{"user": ["x"]}"#).is_err());
    }
}
