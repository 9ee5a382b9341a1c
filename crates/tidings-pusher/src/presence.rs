//! Presence channels' members: a member from its signed `channel_data`,
//! and member lists counted per user (a user with two connections is one
//! member). The members themselves are in the presence store.

use serde_json::{json, Value};

/// A presence channel's member, from the signed `channel_data`.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The user's id (a number in `channel_data` is taken as its text).
    pub(crate) user_id: String,
    /// What the backend said about the user.
    pub(crate) user_info: Value,
}

impl Member {
    /// Parses `{"user_id": ID, "user_info": {...}}` (also `user_data`'s
    /// `{"id": ID, ...}` of a sign-in).
    pub(crate) fn parse(data: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(data).ok()?;
        let id = v.get("user_id").or_else(|| v.get("id"))?;
        let user_id = match id {
            Value::String(s) if !s.is_empty() && s.len() <= 128 => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(Self {
            user_id,
            user_info: v.get("user_info").cloned().unwrap_or(Value::Null),
        })
    }
}

/// A member list as `subscription_succeeded` gives it,
/// `{"ids": [...], "hash": {id: info}, "count": N}`, from (user, info)
/// pairs (a user with several connections counts once).
pub(crate) fn list<'a>(members: impl Iterator<Item = (&'a str, &'a Value)>) -> Value {
    let mut hash = serde_json::Map::new();
    for (id, info) in members {
        hash.entry(id.to_owned()).or_insert_with(|| info.clone());
    }
    let ids: Vec<&String> = hash.keys().collect();
    json!({ "ids": ids, "hash": hash, "count": hash.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_count_per_user() {
        let m = Member::parse(r#"{"user_id":7,"user_info":{"name":"Ann"}}"#).unwrap();
        assert_eq!(m.user_id, "7");
        let other = Value::Null;
        let l = list([("7", &m.user_info), ("8", &other), ("7", &other)].into_iter());
        assert_eq!(l["count"], 2);
        assert_eq!(l["hash"]["7"]["name"], "Ann");
        assert!(Member::parse(r#"{"user_info":{}}"#).is_none());
        assert!(Member::parse(r#"{"user_id":""}"#).is_none());
    }
}
