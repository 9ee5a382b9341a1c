//! Control commands: what the backend asks every gateway to do, as JSON.
//!
//! The same object is the body of `POST /api/<op>` and the payload
//! published on the control channel (`tidings:control` unless configured):
//!
//! ```text
//! {"op":"disconnect","user":"42","code":4003,"reason":"password changed"}
//! {"op":"subscribe","user":"42","channel":"/app/group/7"}
//! {"op":"unsubscribe","user":"42","channel":"/app/group/7"}
//! {"op":"refresh","user":"42"}
//! ```
//!
//! Each names its target with `user` (every socket of that user) or `conn`
//! (one connection id), exactly one of them.

use serde::{Deserialize, Serialize};
use tidings_core::ChannelName;

/// The default control channel.
pub const DEFAULT_CONTROL_CHANNEL: &str = "tidings:control";

/// Close code of a disconnect when none is given: the client may reconnect.
pub const CLOSE_DISCONNECTED: u16 = tidings_core::protocol::close::DISCONNECTED;
/// Close code of a disconnect meaning "do not reconnect" (a revoked session).
pub const CLOSE_REVOKED: u16 = tidings_core::protocol::close::REVOKED;

/// The longest close reason (a close frame's payload is at most 125 bytes,
/// two of them the code).
pub const MAX_REASON_LEN: usize = 123;

/// The longest control command accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// Which sockets a command acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every socket of this user, on every gateway.
    User(String),
    /// The one connection with this id.
    Conn(String),
}

/// A validated control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the target's sockets with `code` and `reason`.
    Disconnect {
        /// Whose sockets.
        target: Target,
        /// [`CLOSE_DISCONNECTED`] (the default), [`CLOSE_REVOKED`], or
        /// one of 4100–4999 (the backend's own).
        code: u16,
        /// At most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
    /// Subscribe the target's sockets to `channel` (whatever the routing
    /// rules would allow).
    Subscribe {
        /// Whose sockets.
        target: Target,
        /// The channel.
        channel: ChannelName,
    },
    /// Unsubscribe the target's sockets from `channel`, even a channel
    /// joined on connect.
    Unsubscribe {
        /// Whose sockets.
        target: Target,
        /// The channel.
        channel: ChannelName,
    },
    /// Resolve the target's identity again (the backend changed their
    /// groups or revoked their session): the user's cached identity is
    /// forgotten and the sockets are closed with
    /// `tidings_core::protocol::close::IDENTITY_CHANGED` (4004), so that
    /// they reconnect and are resolved afresh (their channels follow).
    Refresh {
        /// Whose sockets.
        target: Target,
    },
}

/// Why a command was refused. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn bad(msg: impl Into<String>) -> CommandError {
    CommandError(msg.into())
}

/// The wire form: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(i64),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    }))
}

/// The operations, as named in `op` and in `POST /api/<op>`.
pub const OPS: [&str; 4] = ["disconnect", "subscribe", "unsubscribe", "refresh"];

impl Command {
    /// Parses and validates a command (`{"op":...}`).
    pub fn parse(json: &[u8]) -> Result<Command, CommandError> {
        Self::parse_as(None, json)
    }

    /// Parses the body of `POST /api/<op>`: `op` comes from the path (a
    /// body naming another op is refused).
    pub fn parse_as(op: Option<&str>, json: &[u8]) -> Result<Command, CommandError> {
        if json.len() > MAX_COMMAND_BYTES {
            return Err(bad(format!(
                "a command is at most {MAX_COMMAND_BYTES} bytes"
            )));
        }
        let wire: Wire =
            serde_json::from_slice(json).map_err(|e| bad(format!("invalid command: {e}")))?;
        let op = match (op, wire.op.as_deref()) {
            (Some(path), Some(body)) if path != body => {
                return Err(bad(format!(
                    "\"op\" is {body:?} but the path says {path:?}"
                )))
            }
            (Some(op), _) | (None, Some(op)) => op.to_owned(),
            (None, None) => return Err(bad("\"op\" is missing")),
        };
        let target = match (wire.user, wire.conn) {
            (Some(u), None) => Target::User(check_id("user", u)?),
            (None, Some(c)) => Target::Conn(check_id("conn", c)?),
            _ => return Err(bad("name exactly one of \"user\" and \"conn\"")),
        };
        let channel = |c: Option<String>| -> Result<ChannelName, CommandError> {
            let c = c.ok_or_else(|| bad("\"channel\" is missing"))?;
            ChannelName::new(&c).map_err(|e| bad(format!("\"channel\": {e}")))
        };
        let no = |what: &str, present: bool| -> Result<(), CommandError> {
            if present {
                Err(bad(format!("\"{what}\" has no meaning for \"{op}\"")))
            } else {
                Ok(())
            }
        };
        match op.as_str() {
            "disconnect" => {
                no("channel", wire.channel.is_some())?;
                let code = wire.code.unwrap_or(CLOSE_DISCONNECTED);
                if !(code == CLOSE_DISCONNECTED
                    || code == CLOSE_REVOKED
                    || (4100..=4999).contains(&code))
                {
                    return Err(bad("\"code\" must be 4002, 4003 or within 4100-4999"));
                }
                let reason = wire.reason.unwrap_or_else(|| {
                    if code == CLOSE_REVOKED {
                        "revoked".to_owned()
                    } else {
                        "disconnected by the backend".to_owned()
                    }
                });
                if reason.len() > MAX_REASON_LEN {
                    return Err(bad(format!("\"reason\" is at most {MAX_REASON_LEN} bytes")));
                }
                Ok(Command::Disconnect {
                    target,
                    code,
                    reason,
                })
            }
            "subscribe" | "unsubscribe" => {
                no("code", wire.code.is_some())?;
                no("reason", wire.reason.is_some())?;
                let channel = channel(wire.channel)?;
                Ok(if op == "subscribe" {
                    Command::Subscribe { target, channel }
                } else {
                    Command::Unsubscribe { target, channel }
                })
            }
            "refresh" => {
                no("channel", wire.channel.is_some())?;
                no("code", wire.code.is_some())?;
                no("reason", wire.reason.is_some())?;
                Ok(Command::Refresh { target })
            }
            other => Err(bad(format!(
                "unknown op {other:?}: one of disconnect, subscribe, unsubscribe, refresh"
            ))),
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        match self {
            Command::Disconnect { target, .. }
            | Command::Subscribe { target, .. }
            | Command::Unsubscribe { target, .. }
            | Command::Refresh { target } => target,
        }
    }

    /// The operation's name.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Disconnect { .. } => "disconnect",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Refresh { .. } => "refresh",
        }
    }

    /// The wire form, as published on the control channel.
    pub fn to_json(&self) -> String {
        let mut w = Wire {
            op: Some(self.op().to_owned()),
            ..Wire::default()
        };
        match self.target() {
            Target::User(u) => w.user = Some(u.clone()),
            Target::Conn(c) => w.conn = Some(c.clone()),
        }
        match self {
            Command::Disconnect { code, reason, .. } => {
                w.code = Some(*code);
                w.reason = Some(reason.clone());
            }
            Command::Subscribe { channel, .. } | Command::Unsubscribe { channel, .. } => {
                w.channel = Some(channel.as_str().to_owned());
            }
            Command::Refresh { .. } => {}
        }
        serde_json::to_string(&w).expect("a command serializes")
    }
}

fn check_id(what: &str, id: String) -> Result<String, CommandError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(bad(format!(
            "\"{what}\" must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_and_round_trips() {
        for json in [
            r#"{"op":"disconnect","user":"42","code":4003,"reason":"password changed"}"#,
            r#"{"op":"disconnect","conn":"gw-1"}"#,
            r#"{"op":"subscribe","user":42,"channel":"/app/group/7"}"#,
            r#"{"op":"unsubscribe","user":"42","channel":"/app/group/7"}"#,
            r#"{"op":"refresh","user":"42"}"#,
        ] {
            let c = Command::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(Command::parse(c.to_json().as_bytes()).unwrap(), c);
        }
        let c = Command::parse(br#"{"op":"disconnect","user":"42"}"#).unwrap();
        assert_eq!(
            c,
            Command::Disconnect {
                target: Target::User("42".into()),
                code: CLOSE_DISCONNECTED,
                reason: "disconnected by the backend".into()
            }
        );
        assert_eq!(
            Command::parse_as(Some("refresh"), br#"{"user":"7"}"#).unwrap(),
            Command::Refresh {
                target: Target::User("7".into())
            }
        );
    }

    #[test]
    fn refuses_bad_commands_with_a_reason() {
        for (json, says) in [
            (r#"{"user":"42"}"#, "\"op\" is missing"),
            (r#"{"op":"explode","user":"42"}"#, "unknown op"),
            (r#"{"op":"refresh"}"#, "exactly one"),
            (r#"{"op":"refresh","user":"1","conn":"c"}"#, "exactly one"),
            (r#"{"op":"refresh","user":""}"#, "1 to 256"),
            (r#"{"op":"subscribe","user":"1"}"#, "\"channel\" is missing"),
            (r#"{"op":"subscribe","user":"1","channel":"/a/*"}"#, "glob"),
            (
                r#"{"op":"disconnect","user":"1","code":1000}"#,
                "4002, 4003",
            ),
            (
                r#"{"op":"disconnect","user":"1","channel":"/a"}"#,
                "no meaning",
            ),
            (r#"{"op":"refresh","user":"1","extra":1}"#, "unknown field"),
            (r#"[1,2]"#, "invalid command"),
        ] {
            let e = Command::parse(json.as_bytes()).unwrap_err();
            assert!(e.0.contains(says), "{json}: {e}");
        }
        let long = format!(
            r#"{{"op":"disconnect","user":"1","reason":"{}"}}"#,
            "x".repeat(124)
        );
        assert!(Command::parse(long.as_bytes()).is_err());
        assert!(Command::parse_as(Some("refresh"), br#"{"op":"disconnect","user":"1"}"#).is_err());
    }
}
