//! Property tests: authorization is total and isolating.
//!
//! Identities are generated with ordinary and hostile values (path tricks,
//! glob and brace characters, empty, `.`/`..`, over-long, control characters,
//! unicode, ids that are prefixes of each other) and checked against channel
//! names that are random or derived from *other* identities' values, with the
//! default rules and with a richer rule set.
//!
//! The runs are deterministic (a fixed seed) unless `PROPTEST_RNG_SEED` is
//! set; `PROPTEST_CASES` raises the number of cases. No regression files are
//! written: a failure prints its minimised input, which belongs in
//! `regressions` below.

use std::collections::BTreeMap;

use proptest::{
    prelude::*,
    test_runner::{FileFailurePersistence, RngSeed},
};
use tidings_core::{ChannelName, ChannelPattern, Identity};
use tidings_routing::{Denied, Router, Rule, MAX_VALUE_LEN};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

fn config() -> ProptestConfig {
    let mut c = ProptestConfig {
        cases: 256,
        // Regression files would land outside tests/; failures are
        // minimised and printed instead.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_some() {
        c.cases = ProptestConfig::default().cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x7469_6469_6e67_7321);
    }
    c
}

// ---------------------------------------------------------------------------
// Rule sets
// ---------------------------------------------------------------------------

fn rule(channel: &str, join: bool, subscribe: bool, publish: bool, anonymous: bool) -> Rule {
    Rule {
        channel: channel.into(),
        join,
        subscribe,
        publish,
        anonymous,
        history: None,
        sharded: false,
        presence: None,
    }
}

/// Every placeholder kind, a pattern rule with and without a placeholder,
/// publish rules, an anonymous rule with a placeholder, and a rule with two
/// placeholders. Every `join` rule is also `subscribe`, so a socket can get
/// back what it joined.
fn rich_rules() -> Vec<Rule> {
    vec![
        rule("/app/broadcast", true, true, false, true),
        rule("/app/user/{user}/notifications", true, true, false, false),
        rule("/app/user/{user}/outbox", false, false, true, false),
        rule("/app/user/{user}/inbox/*", true, true, false, false),
        rule("/app/group/{group}", true, true, true, false),
        rule("/app/session/{session}", true, true, false, true),
        rule("/app/tenant/{attr.tenant}/feed", true, true, false, false),
        rule("/app/room/*", false, true, false, false),
        rule("/app/room/lobby", false, false, true, false),
        rule("/app/lobby/{group}/{attr.team}", false, true, false, false),
        rule("socketio_*", true, false, false, true),
    ]
}

fn defaults() -> Router {
    Router::new(Rule::defaults()).expect("default rules compile")
}

fn rich() -> Router {
    Router::new(rich_rules()).expect("rich rules compile")
}

// ---------------------------------------------------------------------------
// An independent statement of the documented value rule
// ---------------------------------------------------------------------------

/// The documented rule for an identity value put into a template: not empty,
/// at most `MAX_VALUE_LEN` bytes, not `.` or `..`, and no `/`, glob
/// character, brace or control character.
fn safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VALUE_LEN
        && v != "."
        && v != ".."
        && !v
            .chars()
            .any(|c| matches!(c, '/' | '*' | '?' | '[' | ']' | '\\' | '{' | '}') || c.is_control())
}

fn safe_user(id: &Identity) -> Option<&str> {
    id.user.as_deref().filter(|u| safe(u))
}

fn safe_session(id: &Identity) -> Option<&str> {
    id.session.as_deref().filter(|s| safe(s))
}

fn safe_attr<'a>(id: &'a Identity, name: &str) -> Option<&'a str> {
    id.attributes
        .get(name)
        .map(String::as_str)
        .filter(|v| safe(v))
}

fn safe_groups(id: &Identity) -> impl Iterator<Item = &str> {
    id.groups.iter().map(String::as_str).filter(|g| safe(g))
}

fn valid(channel: &str) -> bool {
    ChannelName::new(channel).is_ok()
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

const HOSTILE: &[&str] = &[
    "42/../7",
    "../7",
    "7/..",
    "*",
    "?",
    "[",
    "]",
    "[a-z]",
    "{",
    "}",
    "{user}",
    "{attr.tenant}",
    "",
    ".",
    "..",
    "...",
    "a..b",
    "/",
    "//",
    "/42",
    "42/",
    "/42/",
    "4\\2",
    "4\n2",
    "\0",
    "\u{7f}",
    "\u{85}",
    "\t",
    " ",
    "4 2",
    "é",
    "ユーザー",
    "🦀",
    "\u{202e}24",
    "\u{200b}",
    "%2F",
    "42%2F..%2F7",
];

/// Ids that are prefixes of each other.
const PREFIXES: &[&str] = &["4", "42", "420", "4200", "0", "00", "a", "ab"];

/// One identity value: ordinary, a prefix of another, hostile, arbitrary
/// unicode (control characters included), around the length limit, or an
/// ordinary value glued to a hostile separator.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9]{1,6}",
        3 => prop::sample::select(PREFIXES).prop_map(String::from),
        4 => prop::sample::select(HOSTILE).prop_map(String::from),
        2 => "(?s).{0,12}",
        1 => (MAX_VALUE_LEN - 2..MAX_VALUE_LEN + 80).prop_map(|n| "7".repeat(n)),
        1 => (MAX_VALUE_LEN / 4 - 2..MAX_VALUE_LEN / 4 + 3).prop_map(|n| "🦀".repeat(n)),
        2 => (
            prop::sample::select(PREFIXES),
            prop::sample::select(&["/", "/../", "*", "?", "[", "]", "{", "}", "\\", "\n", "//", "."][..]),
            prop::sample::select(PREFIXES),
        )
            .prop_map(|(a, sep, b)| format!("{a}{sep}{b}")),
    ]
    .boxed()
}

fn attr_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("tenant".to_owned()),
        3 => Just("team".to_owned()),
        1 => prop::sample::select(&["tenant ", "Tenant", "attr.tenant", "", "x"][..]).prop_map(String::from),
    ]
}

/// A channel-ish string: mostly slash-separated segments, sometimes glob or
/// control characters, sometimes too long.
fn random_channel() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "(/[a-z0-9._*?\\[\\]{}-]{0,6}){1,5}",
        2 => "(?s).{0,20}",
        1 => (500usize..530).prop_map(|n| format!("/{}", "c".repeat(n))),
        2 => prop::sample::select(&[
            "/app/broadcast",
            "/app/broadcast/",
            "/app/user//notifications",
            "/app/user/*/notifications",
            "/app/user/../notifications",
            "/app/room/",
            "/app/room/lobby",
            "/app/room/../user/7/notifications",
            "/app/group/",
            "/app/session/",
            "/app/tenant//feed",
            "socketio_news",
            "socketio_*",
            "",
        ][..])
        .prop_map(String::from),
    ]
    .boxed()
}

fn identity() -> BoxedStrategy<Identity> {
    (
        prop::option::weighted(0.8, value()),
        prop::option::weighted(0.5, value()),
        prop::collection::vec(value(), 0..4),
        prop::collection::vec(random_channel(), 0..3),
        prop::collection::btree_map(attr_key(), value(), 0..3),
    )
        .prop_map(|(user, session, groups, channels, attributes)| Identity {
            user,
            session,
            groups,
            channels,
            attributes,
        })
        .boxed()
}

fn anonymous_identity() -> BoxedStrategy<Identity> {
    identity()
        .prop_map(|mut id| {
            id.user = None;
            id
        })
        .boxed()
}

/// Every value an identity holds.
fn values_of(id: &Identity) -> Vec<String> {
    let mut v: Vec<String> = id.user.iter().chain(id.session.iter()).cloned().collect();
    v.extend(id.groups.iter().cloned());
    v.extend(id.attributes.values().cloned());
    v
}

/// The channels a value would stand in for, in every family of the rules.
fn channels_for(v: &str) -> Vec<String> {
    vec![
        format!("/app/user/{v}/notifications"),
        format!("/app/user/{v}/outbox"),
        format!("/app/user/{v}/inbox/x"),
        format!("/app/user/{v}/inbox/"),
        format!("/app/group/{v}"),
        format!("/app/session/{v}"),
        format!("/app/tenant/{v}/feed"),
        format!("/app/lobby/{v}/{v}"),
        format!("/app/room/{v}"),
    ]
}

/// The channels to ask about for `a`: derived from another identity's
/// values (and from `a`'s own, to cover the granted side), `a`'s explicit
/// grants, and random ones.
fn candidates(a: &Identity, b: &Identity, random: &[String]) -> Vec<String> {
    let mut out: Vec<String> = random.to_vec();
    for v in values_of(b).iter().chain(values_of(a).iter()) {
        out.extend(channels_for(v));
    }
    // Cross products: a's group with b's team and the other way round.
    for g in a.groups.iter().chain(b.groups.iter()) {
        for t in a.attributes.values().chain(b.attributes.values()) {
            out.push(format!("/app/lobby/{g}/{t}"));
        }
    }
    out.extend(a.channels.iter().cloned());
    out.extend(b.channels.iter().cloned());
    out
}

// ---------------------------------------------------------------------------
// What the router grants
// ---------------------------------------------------------------------------

/// Whether `id` gets `channel` in any way: joined on connect, subscribable or
/// publishable.
fn granted(router: &Router, id: &Identity, channel: &str) -> bool {
    router
        .on_connect(id)
        .channels
        .iter()
        .any(|c| c.as_str() == channel)
        || router.may_subscribe(id, channel).is_ok()
        || router.may_publish(id, channel).is_ok()
}

/// For a channel of a per-identity family, whether `id` holds the value(s) it
/// names (`None` when the channel belongs to no per-identity family).
fn owns(id: &Identity, channel: &str) -> Option<bool> {
    if let Some(rest) = channel.strip_prefix("/app/user/") {
        return Some(safe_user(id).is_some_and(|u| {
            rest == format!("{u}/notifications")
                || rest == format!("{u}/outbox")
                || rest.starts_with(&format!("{u}/inbox/"))
        }));
    }
    if let Some(rest) = channel.strip_prefix("/app/group/") {
        return Some(safe_groups(id).any(|g| g == rest));
    }
    if let Some(rest) = channel.strip_prefix("/app/session/") {
        return Some(safe_session(id) == Some(rest));
    }
    if let Some(rest) = channel.strip_prefix("/app/tenant/") {
        return Some(safe_attr(id, "tenant").is_some_and(|t| rest == format!("{t}/feed")));
    }
    if let Some(rest) = channel.strip_prefix("/app/lobby/") {
        return Some(
            safe_attr(id, "team")
                .is_some_and(|t| safe_groups(id).any(|g| rest == format!("{g}/{t}"))),
        );
    }
    None
}

/// Reference model of `may_subscribe` under [`rich_rules`].
fn model_subscribe(id: &Identity, channel: &str) -> bool {
    if !valid(channel) {
        return false;
    }
    if id.channels.iter().any(|g| g == channel) || channel == "/app/broadcast" {
        return true;
    }
    if safe_session(id).is_some_and(|s| channel == format!("/app/session/{s}")) {
        return true;
    }
    if id.is_anonymous() {
        return false;
    }
    if channel.starts_with("/app/room/") {
        return true;
    }
    if channel.starts_with("/app/user/") && owns(id, channel) == Some(true) {
        // The outbox is publish-only.
        return safe_user(id).is_some_and(|u| channel != format!("/app/user/{u}/outbox"));
    }
    owns(id, channel) == Some(true)
}

/// Reference model of `may_publish` under [`rich_rules`].
fn model_publish(id: &Identity, channel: &str) -> bool {
    if id.is_anonymous() || !valid(channel) {
        return false;
    }
    channel == "/app/room/lobby"
        || safe_user(id).is_some_and(|u| channel == format!("/app/user/{u}/outbox"))
        || safe_groups(id).any(|g| channel == format!("/app/group/{g}"))
}

/// Reference model of `on_connect` under [`rich_rules`]: rule order, then
/// value order, then explicit grants, without duplicates, over-long names
/// left out.
fn model_plan(id: &Identity) -> (Vec<String>, Vec<String>) {
    let mut channels: Vec<String> = Vec::new();
    let mut patterns: Vec<String> = Vec::new();
    let push = |v: &mut Vec<String>, s: String| {
        if s.len() <= tidings_core::channel::MAX_CHANNEL_LEN && !v.contains(&s) {
            v.push(s);
        }
    };
    push(&mut channels, "/app/broadcast".into());
    let user = !id.is_anonymous();
    if let (true, Some(u)) = (user, safe_user(id)) {
        push(&mut channels, format!("/app/user/{u}/notifications"));
        push(&mut patterns, format!("/app/user/{u}/inbox/*"));
    }
    if user {
        for g in safe_groups(id) {
            push(&mut channels, format!("/app/group/{g}"));
        }
    }
    if let Some(s) = safe_session(id) {
        push(&mut channels, format!("/app/session/{s}"));
    }
    if let (true, Some(t)) = (user, safe_attr(id, "tenant")) {
        push(&mut channels, format!("/app/tenant/{t}/feed"));
    }
    push(&mut patterns, "socketio_*".into());
    for g in &id.channels {
        if valid(g) {
            push(&mut channels, g.clone());
        }
    }
    (channels, patterns)
}

fn names(plan: &tidings_routing::Plan) -> (Vec<String>, Vec<String>) {
    (
        plan.channels
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        plan.patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Totality: every question gets an answer, and a request is refused as
    /// an invalid channel exactly when the name is not a valid channel name.
    #[test]
    fn answers_are_total(a in identity(), random in prop::collection::vec(random_channel(), 0..8)) {
        for router in [defaults(), rich()] {
            let _ = router.on_connect(&a);
            for c in candidates(&a, &Identity::anonymous(), &random) {
                for result in [router.may_subscribe(&a, &c), router.may_publish(&a, &c)] {
                    match result {
                        Ok(name) => prop_assert_eq!(name.as_str(), c.as_str()),
                        Err(Denied::InvalidChannel(e)) => {
                            prop_assert_eq!(ChannelName::new(&c).unwrap_err(), e)
                        }
                        Err(Denied::NotAllowed) => prop_assert!(valid(&c), "{c:?}"),
                    }
                }
            }
        }
    }

    /// (a) Isolation: no identity is granted (joined, subscribable or
    /// publishable) a user, group, session or attribute channel of a value it
    /// does not hold, unless its identity lists that exact channel.
    #[test]
    fn isolation(
        a in identity(),
        b in identity(),
        random in prop::collection::vec(random_channel(), 0..6),
    ) {
        for (label, router) in [("defaults", defaults()), ("rich", rich())] {
            for c in candidates(&a, &b, &random) {
                if a.channels.contains(&c) {
                    continue;
                }
                if let Some(own) = owns(&a, &c) {
                    prop_assert!(
                        own || !granted(&router, &a, &c),
                        "[{}] {:?} was granted {:?}, which it does not own",
                        label, a, c
                    );
                }
            }
        }
    }

    /// (a) The headline case: B's notification channel is never A's when
    /// their user ids differ, however the ids look (prefixes included).
    #[test]
    fn never_another_users_notifications(a in value(), b in value()) {
        prop_assume!(a != b);
        let ida = Identity::user(a.clone());
        let channel = format!("/app/user/{b}/notifications");
        for router in [defaults(), rich()] {
            prop_assert!(!granted(&router, &ida, &channel), "user {a:?} got {channel:?}");
        }
    }

    /// (b) Consistency: whatever a socket joins on connect it may also
    /// subscribe to again (both rule sets have subscribe on every join rule).
    #[test]
    fn joined_channels_are_subscribable(a in identity()) {
        for router in [defaults(), rich()] {
            let plan = router.on_connect(&a);
            for c in &plan.channels {
                prop_assert_eq!(router.may_subscribe(&a, c.as_str()), Ok(c.clone()));
            }
            // Plans carry no duplicates.
            let mut seen = std::collections::HashSet::new();
            prop_assert!(plan.channels.iter().all(|c| seen.insert(c.clone())));
            let mut seen = std::collections::HashSet::new();
            prop_assert!(plan.patterns.iter().all(|p| seen.insert(p.clone())));
        }
    }

    /// (c) Anonymous visitors get exactly what the rules marked `anonymous`
    /// give them: dropping every other rule changes nothing.
    #[test]
    fn anonymous_gets_only_anonymous_rules(
        a in anonymous_identity(),
        b in identity(),
        random in prop::collection::vec(random_channel(), 0..6),
    ) {
        for rules in [Rule::defaults(), rich_rules()] {
            let full = Router::new(rules.clone()).unwrap();
            let anon_only = Router::new(rules.into_iter().filter(|r| r.anonymous).collect()).unwrap();
            prop_assert_eq!(full.on_connect(&a), anon_only.on_connect(&a));
            for c in candidates(&a, &b, &random) {
                prop_assert_eq!(full.may_subscribe(&a, &c), anon_only.may_subscribe(&a, &c), "{:?}", c);
                prop_assert_eq!(full.may_publish(&a, &c), anon_only.may_publish(&a, &c), "{:?}", c);
            }
        }
        // With the defaults that is the broadcast channel plus explicit grants.
        let plan = defaults().on_connect(&Identity { channels: vec![], ..a.clone() });
        prop_assert_eq!(plan.channels, vec![ChannelName::new("/app/broadcast").unwrap()]);
    }

    /// (d) Substitution never builds a path trick, a glob or an empty
    /// segment: channels the rules produce (explicit grants left out) have no
    /// `.` or `..` segment, no `//`, no glob, brace or control character; a
    /// pattern's only glob character is the template's own `*`; and an
    /// unsafe value yields nothing at all in its slot.
    #[test]
    fn substitution_is_inert(a in identity()) {
        let a = Identity { channels: vec![], ..a };
        for router in [defaults(), rich()] {
            let plan = router.on_connect(&a);
            let produced = plan
                .channels
                .iter()
                .map(ChannelName::as_str)
                .chain(plan.patterns.iter().map(ChannelPattern::as_str));
            for s in produced {
                prop_assert!(!s.contains("//"), "{s:?}");
                prop_assert!(!s.contains('{') && !s.contains('}'), "{s:?}");
                prop_assert!(!s.chars().any(char::is_control), "{s:?}");
                prop_assert!(!s.split('/').any(|seg| seg == "." || seg == ".."), "{s:?}");
            }
            for c in &plan.channels {
                prop_assert!(!c.as_str().chars().any(tidings_core::channel::is_glob_char), "{c:?}");
            }
            for p in &plan.patterns {
                let globs: Vec<char> = p.as_str().chars().filter(|&c| tidings_core::channel::is_glob_char(c)).collect();
                prop_assert_eq!(globs, vec!['*'], "{:?}", p);
                prop_assert!(p.as_str().ends_with('*'), "{p:?}");
            }
            // An unsafe user id gets no user channel; unsafe groups get none.
            if safe_user(&a).is_none() {
                prop_assert!(!plan.channels.iter().any(|c| c.as_str().starts_with("/app/user/")));
                prop_assert!(!plan.patterns.iter().any(|p| p.as_str().starts_with("/app/user/")));
            }
            for g in a.groups.iter().filter(|g| !safe(g)) {
                let c = format!("/app/group/{g}");
                prop_assert!(!plan.channels.iter().any(|x| x.as_str() == c));
            }
        }
    }

    /// (e) Publishing: the default rules allow it nowhere; the rich rules
    /// allow it exactly where a publish rule expands to the channel.
    #[test]
    fn publish_only_where_a_publish_rule_expands(
        a in identity(),
        b in identity(),
        random in prop::collection::vec(random_channel(), 0..6),
    ) {
        let d = defaults();
        let r = rich();
        let publish_rules_only = Router::new(
            rich_rules().into_iter().filter(|x| x.publish).collect(),
        ).unwrap();
        for c in candidates(&a, &b, &random) {
            prop_assert!(d.may_publish(&a, &c).is_err(), "{c:?}");
            let allowed = r.may_publish(&a, &c).is_ok();
            prop_assert_eq!(allowed, model_publish(&a, &c), "{:?} on {:?}", a, c);
            prop_assert_eq!(
                r.may_publish(&a, &c), publish_rules_only.may_publish(&a, &c),
                "rules without publish changed the answer for {:?}", c
            );
        }
    }

    /// (f) Explicit grants: with no rules an identity joins exactly the valid
    /// channels it lists (in order, without duplicates), may subscribe to
    /// exactly those, publishes nowhere, and its grants are not another's.
    #[test]
    fn explicit_grants_are_exactly_the_listed_channels(
        a in identity(),
        b in identity(),
        random in prop::collection::vec(random_channel(), 0..6),
    ) {
        let none = Router::new(vec![]).unwrap();
        let mut expected: Vec<ChannelName> = Vec::new();
        for g in &a.channels {
            if let Ok(c) = ChannelName::new(g) {
                if !expected.contains(&c) {
                    expected.push(c);
                }
            }
        }
        let plan = none.on_connect(&a);
        prop_assert_eq!(&plan.channels, &expected);
        prop_assert!(plan.patterns.is_empty());
        for c in candidates(&a, &b, &random) {
            let listed = a.channels.contains(&c) && valid(&c);
            prop_assert_eq!(none.may_subscribe(&a, &c).is_ok(), listed, "{:?}", c);
            prop_assert!(none.may_publish(&a, &c).is_err());
            // b does not get a's grants through a.
            if !b.channels.contains(&c) {
                prop_assert!(none.may_subscribe(&b, &c).is_err(), "{c:?}");
            }
        }
        // With the rules, explicit grants add exactly the listed channels:
        // whatever is in the plan is either rule-made or listed.
        for router in [defaults(), rich()] {
            let without = router.on_connect(&Identity { channels: vec![], ..a.clone() });
            let with = router.on_connect(&a);
            for c in &with.channels {
                prop_assert!(without.channels.contains(c) || expected.contains(c), "{c:?}");
            }
            for c in &expected {
                prop_assert!(with.channels.contains(c), "{c:?}");
            }
            prop_assert_eq!(&with.patterns, &without.patterns);
        }
    }

    /// The rich rules agree with an independent reference model, for
    /// on_connect, may_subscribe and may_publish.
    #[test]
    fn rich_rules_match_the_model(
        a in identity(),
        b in identity(),
        random in prop::collection::vec(random_channel(), 0..6),
    ) {
        let r = rich();
        prop_assert_eq!(names(&r.on_connect(&a)), model_plan(&a));
        for c in candidates(&a, &b, &random) {
            prop_assert_eq!(r.may_subscribe(&a, &c).is_ok(), model_subscribe(&a, &c), "subscribe {:?} for {:?}", c, a);
            prop_assert_eq!(r.may_publish(&a, &c).is_ok(), model_publish(&a, &c), "publish {:?} for {:?}", c, a);
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------

/// A publish flag on a pattern rule is refused, with or without a
/// placeholder, so no client can ever publish on a wildcard.
#[test]
fn publish_on_pattern_rules_is_refused() {
    for channel in [
        "/app/room/*",
        "/app/user/{user}/inbox/*",
        "/app/r?om",
        "/a/[xy]",
    ] {
        let err = Router::new(vec![rule(channel, false, true, true, false)]).unwrap_err();
        assert!(err.reason.contains("pattern"), "{channel}: {err}");
    }
}

/// Inputs that once failed, or that deserve to be checked every run.
#[test]
fn regressions() {
    let r = rich();
    // Prefix ids.
    let four = Identity::user("4");
    assert!(!granted(&r, &four, "/app/user/42/notifications"));
    assert!(!granted(&r, &four, "/app/user/42/inbox/x"));
    assert!(granted(&r, &four, "/app/user/4/inbox/x"));
    // Path tricks in every slot.
    let mut evil = Identity::user("42/../7");
    evil.groups = vec!["..".into(), "staff/../admin".into()];
    evil.session = Some("*".into());
    evil.attributes = BTreeMap::from([("tenant".into(), "a/../b".into())]);
    let plan = r.on_connect(&evil);
    assert_eq!(
        names(&plan),
        (
            vec!["/app/broadcast".to_owned()],
            vec!["socketio_*".to_owned()]
        )
    );
    for c in [
        "/app/user/7/notifications",
        "/app/user/42/../7/notifications",
        "/app/group/admin",
        "/app/session/x",
    ] {
        assert!(!granted(&r, &evil, c), "{c}");
    }
}
