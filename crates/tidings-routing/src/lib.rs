#![doc = include_str!("../README.md")]
//!
//! # Rules
//!
//! Each rule is a channel *template* and what it allows:
//!
//! ```toml
//! [[rules]]
//! channel = "/app/user/{user}/notifications"
//! join = true        # joined automatically on connect
//! subscribe = true   # may be subscribed to on request
//! publish = false    # clients may not publish here
//! anonymous = false  # needs a logged-in user
//! history = { size = 100, ttl_secs = 600 }  # optional: offsets + replay
//! ```
//!
//! Placeholders are filled from the identity: `{user}`, `{session}`,
//! `{group}` (one channel per group) and `{attr.NAME}`. A template whose
//! literal text contains glob characters (`*`, `?`, `[...]`) is a *pattern
//! rule*: joined on connect it becomes a pattern subscription; on request it
//! allows any exact channel the pattern matches.
//!
//! # Safety of identity values
//!
//! An identity value can never change what a template means: a value that is
//! empty, longer than [`MAX_VALUE_LEN`] bytes, `.` or `..`, or contains `/`,
//! a glob character (`* ? [ ] \`), `{`, `}` or a control character makes
//! every rule using it not apply to that identity (the rule grants nothing).
//! A user id `42/../7` therefore gets no user channel at all, rather than
//! somebody else's.

pub mod config;
mod rule;
mod template;

pub use config::RoutingSettings;
pub use rule::{
    Access, Denied, Plan, PresenceMode, Router, Rule, RuleError, RuleHistory, MAX_HISTORY_SIZE,
    MAX_HISTORY_TTL_SECS,
};
pub use template::MAX_VALUE_LEN;
