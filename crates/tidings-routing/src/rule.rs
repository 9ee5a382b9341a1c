//! Rules and the router that evaluates them.

use serde::{Deserialize, Serialize};
use tidings_core::{ChannelError, ChannelName, ChannelPattern, Identity, Topic};

use crate::template::{self, Template};

/// One routing rule, as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The channel template, for example `/app/user/{user}/notifications`.
    pub channel: String,
    /// Joined automatically on connect.
    #[serde(default)]
    pub join: bool,
    /// May be subscribed to on request.
    #[serde(default)]
    pub subscribe: bool,
    /// Clients may publish on it.
    #[serde(default)]
    pub publish: bool,
    /// Applies to anonymous visitors too (otherwise only to logged-in users).
    #[serde(default)]
    pub anonymous: bool,
    /// Keep a history of the channels this rule covers: every publication
    /// through the gateway gets an offset and is kept for replay (see
    /// [`Router::history_for`]). Left out: no history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<RuleHistory>,
    /// The channels this rule covers use Redis **sharded** pub/sub
    /// (`SSUBSCRIBE`; publishers must use `SPUBLISH`), which on a Redis
    /// Cluster scales with the number of nodes (see [`Router::sharded_for`]).
    /// Exact templates only: a pattern rule cannot be sharded. Left out:
    /// classic pub/sub.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sharded: bool,
    /// Presence on the channels this rule covers (see
    /// [`Router::presence_for`]): `true` or `"full"` (who is there, with
    /// `join` and `leave` events), `"counts"` (how many, nothing else).
    /// Left out or `false`: none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "presence_mode"
    )]
    pub presence: Option<PresenceMode>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What presence a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceMode {
    /// Who is on the channel (users, with their public info), and `join`
    /// and `leave` events to its subscribers.
    Full,
    /// How many connections and users are on the channel; no list, no
    /// events (flat cost, for large channels).
    Counts,
}

fn presence_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PresenceMode>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Flag(bool),
        Mode(PresenceMode),
    }
    Ok(match Written::deserialize(d)? {
        Written::Flag(true) => Some(PresenceMode::Full),
        Written::Flag(false) => None,
        Written::Mode(m) => Some(m),
    })
}

/// The most publications one channel's history may keep.
pub const MAX_HISTORY_SIZE: u64 = 10_000;

/// The longest a history may be kept after its last publication (7 days).
pub const MAX_HISTORY_TTL_SECS: u64 = 7 * 86_400;

/// A rule's `history = { size = N, ttl_secs = S }`: keep the last `size`
/// publications of each channel for `ttl_secs` seconds after the channel's
/// last publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleHistory {
    /// How many publications to keep per channel (1 to [`MAX_HISTORY_SIZE`]).
    pub size: u64,
    /// How long to keep them after the channel's last publication, in whole
    /// seconds (1 to [`MAX_HISTORY_TTL_SECS`]).
    pub ttl_secs: u64,
}

impl RuleHistory {
    /// The history the default user notification rule keeps: 100
    /// publications for 10 minutes.
    pub const DEFAULT_NOTIFICATIONS: RuleHistory = RuleHistory {
        size: 100,
        ttl_secs: 600,
    };

    fn check(&self) -> Result<(), String> {
        if !(1..=MAX_HISTORY_SIZE).contains(&self.size) {
            return Err(format!(
                "history size must be between 1 and {MAX_HISTORY_SIZE}, not {}",
                self.size
            ));
        }
        if !(1..=MAX_HISTORY_TTL_SECS).contains(&self.ttl_secs) {
            return Err(format!(
                "history ttl_secs must be between 1 and {MAX_HISTORY_TTL_SECS}, not {}",
                self.ttl_secs
            ));
        }
        Ok(())
    }
}

impl Rule {
    /// The default rules, seed 001's layout: everyone joins `/app/broadcast`;
    /// a logged-in user joins `/app/user/{user}/notifications`. Clients
    /// publish nowhere.
    pub fn defaults() -> Vec<Rule> {
        vec![
            Rule {
                channel: "/app/broadcast".into(),
                join: true,
                subscribe: true,
                publish: false,
                anonymous: true,
                history: None,
                sharded: false,
                presence: None,
            },
            Rule {
                channel: "/app/user/{user}/notifications".into(),
                join: true,
                subscribe: true,
                publish: false,
                anonymous: false,
                history: Some(RuleHistory::DEFAULT_NOTIFICATIONS),
                sharded: false,
                presence: None,
            },
        ]
    }
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing rule {index} ({channel:?}): {reason}")]
pub struct RuleError {
    /// The rule's position in the list, from 0.
    pub index: usize,
    /// The rule's template.
    pub channel: String,
    /// What is wrong.
    pub reason: String,
}

/// What a client asks to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe to it.
    Subscribe,
    /// Publish on it.
    Publish,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The channel name is not valid.
    #[error("invalid channel name: {0}")]
    InvalidChannel(#[from] ChannelError),
    /// No rule grants this identity this access to this channel.
    #[error("no rule allows this")]
    NotAllowed,
}

/// What a socket joins on connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Exact channels, in rule order, without duplicates.
    pub channels: Vec<ChannelName>,
    /// Pattern subscriptions, in rule order, without duplicates.
    pub patterns: Vec<ChannelPattern>,
}

impl Plan {
    /// Every topic of the plan.
    pub fn topics(&self) -> impl Iterator<Item = Topic> + '_ {
        self.channels
            .iter()
            .cloned()
            .map(Topic::Channel)
            .chain(self.patterns.iter().cloned().map(Topic::Pattern))
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    rule: Rule,
    template: Template,
}

impl Compiled {
    fn applies_to(&self, identity: &Identity) -> bool {
        self.rule.anonymous || !identity.is_anonymous()
    }
}

/// Evaluates rules for identities. Immutable and cheap to share.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Compiled>,
}

impl Router {
    /// Compiles `rules`, refusing any that cannot work.
    pub fn new(rules: Vec<Rule>) -> Result<Self, RuleError> {
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| {
                let err = |reason: String| RuleError {
                    index,
                    channel: rule.channel.clone(),
                    reason,
                };
                let template = template::parse(&rule.channel).map_err(err)?;
                if !(rule.join || rule.subscribe || rule.publish) {
                    return Err(err("grants nothing: set at least one of join, subscribe, publish".into()));
                }
                if let Some(history) = &rule.history {
                    history.check().map_err(err)?;
                    if rule.presence.is_some() {
                        return Err(err("presence and history on one rule are not supported yet: split the channels".into()));
                    }
                }
                if template.is_pattern && rule.sharded {
                    return Err(err(
                        "sharded = true on a pattern rule: Redis sharded pub/sub has no pattern subscriptions (SSUBSCRIBE takes exact channels); list exact channels or drop `sharded`".into(),
                    ));
                }
                if template.is_pattern && rule.publish {
                    return Err(err(
                        "publish on a pattern rule would let clients publish on any matching channel; list channels instead".into(),
                    ));
                }
                // Check the literal text alone is a valid name or pattern.
                let sample = rule.channel.replace(['{', '}'], "");
                if template.is_pattern {
                    ChannelPattern::new(&sample).map_err(|e| err(e.to_string()))?;
                } else {
                    ChannelName::new(&sample).map_err(|e| err(e.to_string()))?;
                }
                Ok(Compiled { rule, template })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// The rules, as given.
    /// The history of `channel`: the `history` option of the **first** rule
    /// (in configuration order) whose template covers the channel for some
    /// identity (each placeholder standing for one value without `/`; a
    /// pattern rule covers what its glob matches), whatever that rule
    /// grants and whether or not it has the option. `None`: no history.
    ///
    /// It depends on the channel name only, never on who publishes, so
    /// every publisher (a client, the HTTP API, a backend through Redis
    /// using the same size and TTL) agrees on it. Identity grants (channels
    /// named by the identity service) have no rule and so no history,
    /// unless a rule covers them too.
    pub fn history_for(&self, channel: &ChannelName) -> Option<RuleHistory> {
        self.rules
            .iter()
            .find(|c| c.template.covers(channel.as_str()))
            .and_then(|c| c.rule.history)
    }

    /// Whether `channel` uses sharded pub/sub: the `sharded` option of the
    /// **first** rule whose template covers it (as for
    /// [`Router::history_for`]), so every gateway and publisher agrees on
    /// it. Channels no rule covers are classic.
    pub fn sharded_for(&self, channel: &ChannelName) -> bool {
        self.rules
            .iter()
            .find(|c| c.template.covers(channel.as_str()))
            .is_some_and(|c| c.rule.sharded)
    }

    /// The presence of `channel`: the `presence` option of the **first**
    /// rule covering it (as for [`Router::history_for`]). `None`: none.
    pub fn presence_for(&self, channel: &ChannelName) -> Option<PresenceMode> {
        self.rules
            .iter()
            .find(|c| c.template.covers(channel.as_str()))
            .and_then(|c| c.rule.presence)
    }

    /// Every rule, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// What `identity` joins on connect: every `join` rule that applies, plus
    /// the channels the backend granted in the identity itself.
    pub fn on_connect(&self, identity: &Identity) -> Plan {
        let mut plan = Plan::default();
        for c in self
            .rules
            .iter()
            .filter(|c| c.rule.join && c.applies_to(identity))
        {
            for s in c.template.expand(identity) {
                if c.template.is_pattern {
                    if let Ok(p) = ChannelPattern::new(&s) {
                        if !plan.patterns.contains(&p) {
                            plan.patterns.push(p);
                        }
                    }
                } else if let Ok(ch) = ChannelName::new(&s) {
                    if !plan.channels.contains(&ch) {
                        plan.channels.push(ch);
                    }
                }
            }
        }
        for granted in &identity.channels {
            if let Ok(ch) = ChannelName::new(granted) {
                if !plan.channels.contains(&ch) {
                    plan.channels.push(ch);
                }
            }
        }
        plan
    }

    /// Whether `identity` may subscribe to the exact channel `channel`.
    pub fn may_subscribe(&self, identity: &Identity, channel: &str) -> Result<ChannelName, Denied> {
        self.check(identity, channel, Access::Subscribe)
    }

    /// Whether `identity` may publish on the exact channel `channel`.
    pub fn may_publish(&self, identity: &Identity, channel: &str) -> Result<ChannelName, Denied> {
        self.check(identity, channel, Access::Publish)
    }

    /// Whether `identity` has `access` to the exact channel `channel`.
    /// Returns the validated channel name when it does.
    pub fn check(
        &self,
        identity: &Identity,
        channel: &str,
        access: Access,
    ) -> Result<ChannelName, Denied> {
        let name = ChannelName::new(channel)?;
        if access == Access::Subscribe && identity.channels.iter().any(|g| g == channel) {
            return Ok(name);
        }
        let granted = self
            .rules
            .iter()
            .filter(|c| c.applies_to(identity))
            .filter(|c| match access {
                Access::Subscribe => c.rule.subscribe,
                Access::Publish => c.rule.publish,
            })
            .any(|c| {
                c.template.expand(identity).iter().any(|s| {
                    if c.template.is_pattern {
                        ChannelPattern::new(s).is_ok_and(|p| p.matches(channel))
                    } else {
                        s == channel
                    }
                })
            });
        if granted {
            Ok(name)
        } else {
            Err(Denied::NotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Router {
        #[derive(Deserialize)]
        struct File {
            rules: Vec<Rule>,
        }
        let f: File = toml::from_str(toml_text).unwrap();
        Router::new(f.rules).unwrap()
    }

    #[test]
    fn defaults_follow_seed_001() {
        let r = Router::new(Rule::defaults()).unwrap();
        let anon = Identity::anonymous();
        assert_eq!(
            r.on_connect(&anon).channels,
            vec![ChannelName::new("/app/broadcast").unwrap()]
        );
        assert!(r.may_subscribe(&anon, "/app/broadcast").is_ok());
        assert_eq!(
            r.may_subscribe(&anon, "/app/user/1/notifications"),
            Err(Denied::NotAllowed)
        );
        assert_eq!(
            r.may_publish(&anon, "/app/broadcast"),
            Err(Denied::NotAllowed)
        );
        let u = Identity::user("7");
        assert_eq!(
            r.on_connect(&u).channels,
            vec![
                ChannelName::new("/app/broadcast").unwrap(),
                ChannelName::new("/app/user/7/notifications").unwrap()
            ]
        );
        assert_eq!(
            r.may_subscribe(&u, "/app/user/8/notifications"),
            Err(Denied::NotAllowed)
        );
    }

    #[test]
    fn groups_sessions_patterns_and_grants() {
        let r = rules(
            r#"
            [[rules]]
            channel = "/app/group/{group}"
            join = true
            [[rules]]
            channel = "/app/session/{session}"
            join = true
            [[rules]]
            channel = "/app/room/*"
            subscribe = true
            [[rules]]
            channel = "/app/room/lobby"
            publish = true
            [[rules]]
            channel = "socketio_*"
            join = true
            anonymous = true
            "#,
        );
        let mut id = Identity::user("1");
        id.groups = vec!["staff".into(), "ops".into()];
        id.session = Some("s1".into());
        id.channels = vec!["/app/report/9".into()];
        let plan = r.on_connect(&id);
        let names: Vec<&str> = plan.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "/app/group/staff",
                "/app/group/ops",
                "/app/session/s1",
                "/app/report/9"
            ]
        );
        assert_eq!(
            plan.patterns,
            vec![ChannelPattern::new("socketio_*").unwrap()]
        );
        assert!(r.may_subscribe(&id, "/app/room/42").is_ok());
        assert!(r.may_subscribe(&id, "/app/report/9").is_ok());
        assert!(r
            .may_subscribe(&Identity::user("2"), "/app/report/9")
            .is_err());
        assert!(r.may_publish(&id, "/app/room/lobby").is_ok());
        assert!(r.may_publish(&id, "/app/room/42").is_err());
        assert!(matches!(
            r.may_subscribe(&id, "/app/room/*"),
            Err(Denied::InvalidChannel(_))
        ));
        let anon = Identity::anonymous();
        assert!(r.may_subscribe(&anon, "/app/room/1").is_err());
        assert_eq!(r.on_connect(&anon).channels, vec![]);
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = |channel: &str, publish: bool| {
            Router::new(vec![Rule {
                channel: channel.into(),
                join: true,
                subscribe: false,
                publish,
                anonymous: false,
                history: None,
                sharded: false,
                presence: None,
            }])
            .unwrap_err()
        };
        assert!(bad("/a/{who}", false)
            .reason
            .contains("unknown placeholder"));
        assert!(bad("/a/*", true).reason.contains("pattern"));
        assert!(bad("/a/\u{1}", false).reason.contains("control"));
        let none = Router::new(vec![Rule {
            channel: "/a".into(),
            join: false,
            subscribe: false,
            publish: false,
            anonymous: true,
            history: None,
            sharded: false,
            presence: None,
        }]);
        assert!(none.unwrap_err().reason.contains("grants nothing"));
    }

    #[test]
    fn history_is_the_first_covering_rules_option() {
        let r = Router::new(Rule::defaults()).unwrap();
        let ch = |s: &str| ChannelName::new(s).unwrap();
        assert_eq!(
            r.history_for(&ch("/app/user/42/notifications")),
            Some(RuleHistory {
                size: 100,
                ttl_secs: 600
            })
        );
        assert_eq!(r.history_for(&ch("/app/broadcast")), None);
        assert_eq!(r.history_for(&ch("/app/user/4/2/notifications")), None);
        assert_eq!(r.history_for(&ch("/elsewhere")), None);

        let r = rules(
            r#"
            [[rules]]
            channel = "/app/room/lobby"
            publish = true
            [[rules]]
            channel = "/app/room/*"
            subscribe = true
            history = { size = 5, ttl_secs = 60 }
            [[rules]]
            channel = "/app/team/{attr.team}/feed"
            join = true
            history = { size = 10000, ttl_secs = 1 }
            "#,
        );
        // The first covering rule decides, even without the option.
        assert_eq!(r.history_for(&ch("/app/room/lobby")), None);
        assert_eq!(
            r.history_for(&ch("/app/room/7")),
            Some(RuleHistory {
                size: 5,
                ttl_secs: 60
            })
        );
        assert_eq!(
            r.history_for(&ch("/app/team/red/feed")).unwrap().size,
            10000
        );
    }

    #[test]
    fn sharded_is_the_first_covering_rules_option_and_never_on_a_pattern() {
        #[derive(Deserialize, Debug)]
        struct File {
            rules: Vec<Rule>,
        }
        let file: File = toml::from_str(
            r#"
            [[rules]]
            channel = "/app/room/{attr.room}"
            subscribe = true
            sharded = true
            [[rules]]
            channel = "/app/broadcast"
            join = true
            "#,
        )
        .unwrap();
        let r = Router::new(file.rules).unwrap();
        let ch = |s: &str| ChannelName::new(s).unwrap();
        assert!(r.sharded_for(&ch("/app/room/7")));
        assert!(!r.sharded_for(&ch("/app/broadcast")));
        assert!(!r.sharded_for(&ch("/elsewhere")));
        let pattern: File = toml::from_str(
            "[[rules]]\nchannel = \"/app/feed/*\"\nsubscribe = true\nsharded = true\n",
        )
        .unwrap();
        let e = Router::new(pattern.rules).unwrap_err();
        assert!(e.reason.contains("pattern rule"), "{e}");
        assert!(e.reason.contains("sharded"), "{e}");
    }

    #[test]
    fn presence_is_the_first_covering_rules_option() {
        use crate::RoutingSettings;
        let ch = |s: &str| ChannelName::new(s).unwrap();
        let rules: RoutingSettings = toml::from_str(
            r#"
            [[rules]]
            channel = "/app/room/lobby"
            subscribe = true
            presence = "counts"
            [[rules]]
            channel = "/app/room/*"
            subscribe = true
            presence = true
            [[rules]]
            channel = "/app/quiet/*"
            subscribe = true
            presence = false
            "#,
        )
        .unwrap();
        let r = Router::new(rules.rules).unwrap();
        assert_eq!(
            r.presence_for(&ch("/app/room/lobby")),
            Some(PresenceMode::Counts)
        );
        assert_eq!(r.presence_for(&ch("/app/room/7")), Some(PresenceMode::Full));
        assert_eq!(r.presence_for(&ch("/app/quiet/7")), None);
        assert_eq!(r.presence_for(&ch("/elsewhere")), None);
        let both: Result<RoutingSettings, _> = toml::from_str(
            r#"
            [[rules]]
            channel = "/a"
            subscribe = true
            presence = true
            history = { size = 5, ttl_secs = 60 }
            "#,
        );
        assert!(Router::new(both.unwrap().rules)
            .unwrap_err()
            .reason
            .contains("presence and history"));
        let odd: Result<RoutingSettings, _> =
            toml::from_str("[[rules]]\nchannel = \"/a\"\nsubscribe = true\npresence = \"some\"\n");
        assert!(odd.is_err());
    }

    #[test]
    fn bad_history_options_are_refused() {
        let with = |size, ttl_secs| {
            Router::new(vec![Rule {
                channel: "/a/{user}".into(),
                join: true,
                subscribe: false,
                publish: false,
                anonymous: false,
                history: Some(RuleHistory { size, ttl_secs }),
                sharded: false,
                presence: None,
            }])
        };
        assert!(with(1, 1).is_ok());
        assert!(with(MAX_HISTORY_SIZE, MAX_HISTORY_TTL_SECS).is_ok());
        assert!(with(0, 60).unwrap_err().reason.contains("size"));
        assert!(with(MAX_HISTORY_SIZE + 1, 60)
            .unwrap_err()
            .reason
            .contains("size"));
        assert!(with(10, 0).unwrap_err().reason.contains("ttl_secs"));
        assert!(with(10, MAX_HISTORY_TTL_SECS + 1)
            .unwrap_err()
            .reason
            .contains("ttl_secs"));
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct File {
            rules: Vec<Rule>,
        }
        let unknown = toml::from_str::<File>(
            "[[rules]]\nchannel = \"/a\"\njoin = true\nhistory = { size = 1, ttl = 1 }\n",
        )
        .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `ttl`"),
            "{unknown}"
        );
    }

    #[test]
    fn hostile_user_ids_get_nothing() {
        let r = Router::new(Rule::defaults()).unwrap();
        for evil in ["7/../8", "*", "?", "[", "", "a\nb", "..", &"9".repeat(500)] {
            let id = Identity::user(evil);
            assert_eq!(
                r.on_connect(&id).channels,
                vec![ChannelName::new("/app/broadcast").unwrap()],
                "{evil:?}"
            );
            assert!(r.may_subscribe(&id, "/app/user/8/notifications").is_err());
        }
    }
}
