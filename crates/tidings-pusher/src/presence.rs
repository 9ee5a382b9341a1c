//! Presence channels' members on this gateway: who is on each channel,
//! counted per user (a user with two connections is one member).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tidings_core::ChannelName;

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

    /// `member_added`'s data.
    pub(crate) fn info(&self) -> Value {
        json!({ "user_id": self.user_id, "user_info": self.user_info })
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

/// A channel's members: user id -> (connections, user info).
type Members = HashMap<String, (usize, Value)>;

/// The members of every presence channel of this gateway.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    channels: Mutex<HashMap<ChannelName, Members>>,
}

impl Presence {
    /// `member` joins `channel`: whether it is the user's first connection
    /// there, and the member list (`{"ids", "hash", "count"}`) it sees.
    pub(crate) fn join(&self, channel: &ChannelName, member: &Member) -> (bool, Value) {
        let mut channels = self.channels.lock();
        let members = channels.entry(channel.clone()).or_default();
        let entry = members
            .entry(member.user_id.clone())
            .or_insert((0, member.user_info.clone()));
        entry.0 += 1;
        let first = entry.0 == 1;
        let list = list(members.iter().map(|(id, (_, info))| (id.as_str(), info)));
        (first, list)
    }

    /// A connection of `user` leaves `channel`: whether it was the user's
    /// last there.
    pub(crate) fn leave(&self, channel: &ChannelName, user: &str) -> bool {
        let mut channels = self.channels.lock();
        let Some(members) = channels.get_mut(channel) else {
            return false;
        };
        let mut last = false;
        if let Some(entry) = members.get_mut(user) {
            entry.0 -= 1;
            if entry.0 == 0 {
                members.remove(user);
                last = true;
            }
        }
        if members.is_empty() {
            channels.remove(channel);
        }
        last
    }

    /// The user ids on `channel` here.
    pub(crate) fn users(&self, channel: &ChannelName) -> Vec<String> {
        self.channels
            .lock()
            .get(channel)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_count_per_user() {
        let p = Presence::default();
        let c = ChannelName::new("/pusher/1/presence-a").unwrap();
        let m = Member::parse(r#"{"user_id":7,"user_info":{"name":"Ann"}}"#).unwrap();
        assert_eq!(m.user_id, "7");
        let (first, list) = p.join(&c, &m);
        assert!(first);
        assert_eq!(list["count"], 1);
        assert_eq!(list["hash"]["7"]["name"], "Ann");
        assert!(!p.join(&c, &m).0);
        assert!(!p.leave(&c, "7"));
        assert!(p.leave(&c, "7"));
        assert!(p.users(&c).is_empty());
        assert!(Member::parse(r#"{"user_info":{}}"#).is_none());
    }
}
