//! Micro-benchmarks of channel authorization: what a socket joins on
//! connect, and a subscribe request that is granted or refused.
//!
//! `cargo bench -p tidings-routing`; see `docs/benchmarks.md`.

use std::{collections::BTreeMap, hint::black_box};

use criterion::{criterion_main, Criterion};
use tidings_core::Identity;
use tidings_routing::{Router, Rule};

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

/// Twenty rules of every kind: literal, per user, per group, per session,
/// per attribute, two placeholders, and patterns.
fn twenty_rules() -> Vec<Rule> {
    vec![
        rule("/app/broadcast", true, true, false, true),
        rule("/app/status", true, true, false, true),
        rule("/app/user/{user}/notifications", true, true, false, false),
        rule("/app/user/{user}/presence", true, true, false, false),
        rule("/app/user/{user}/outbox", false, false, true, false),
        rule("/app/user/{user}/inbox/*", true, true, false, false),
        rule("/app/group/{group}", true, true, false, false),
        rule("/app/group/{group}/chat", false, true, true, false),
        rule("/app/session/{session}", true, true, false, true),
        rule("/app/tenant/{attr.tenant}/feed", true, true, false, false),
        rule("/app/tenant/{attr.tenant}/alerts", true, true, false, false),
        rule(
            "/app/tenant/{attr.tenant}/team/{attr.team}",
            true,
            true,
            false,
            false,
        ),
        rule("/app/lobby/{group}/{attr.team}", false, true, false, false),
        rule("/app/room/*", false, true, false, false),
        rule("/app/room/lobby", false, false, true, false),
        rule("/app/report/{user}/*", false, true, false, false),
        rule("/app/news/sports", false, true, false, true),
        rule("/app/news/weather", false, true, false, true),
        rule("/app/admin/{attr.role}", false, true, false, false),
        rule("socketio_*", true, false, false, true),
    ]
}

/// A typical logged-in socket: a user id, a session, two groups, two
/// attributes and one channel granted by the backend.
fn typical() -> Identity {
    Identity {
        user: Some("4217".into()),
        session: Some("s-8f3a2c".into()),
        groups: vec!["staff".into(), "ops".into()],
        channels: vec!["/app/report/9".into()],
        attributes: BTreeMap::from([
            ("tenant".into(), "acme".into()),
            ("team".into(), "blue".into()),
        ]),
    }
}

fn bench(c: &mut Criterion) {
    let defaults = Router::new(Rule::defaults()).unwrap();
    let twenty = Router::new(twenty_rules()).unwrap();
    assert_eq!(twenty.rules().count(), 20);
    let id = typical();

    let mut g = c.benchmark_group("on_connect");
    g.bench_function("defaults", |b| {
        b.iter(|| defaults.on_connect(black_box(&id)))
    });
    g.bench_function("20_rules", |b| b.iter(|| twenty.on_connect(black_box(&id))));
    g.finish();

    let hit = "/app/user/4217/notifications";
    let miss = "/app/user/4218/notifications";
    for router in [&defaults, &twenty] {
        assert!(router.may_subscribe(&id, hit).is_ok());
        assert!(router.may_subscribe(&id, miss).is_err());
    }
    let mut g = c.benchmark_group("may_subscribe");
    for (name, router) in [("defaults", &defaults), ("20_rules", &twenty)] {
        g.bench_function(format!("{name}/hit"), |b| {
            b.iter(|| router.may_subscribe(black_box(&id), black_box(hit)))
        });
        g.bench_function(format!("{name}/miss"), |b| {
            b.iter(|| router.may_subscribe(black_box(&id), black_box(miss)))
        });
    }
    // A hit on a late rule (the 14th, a pattern): most rules are expanded first.
    let late = "/app/room/42";
    assert!(twenty.may_subscribe(&id, late).is_ok());
    g.bench_function("20_rules/hit_late_pattern", |b| {
        b.iter(|| twenty.may_subscribe(black_box(&id), black_box(late)))
    });
    g.finish();
}

// `criterion_group!` defines an undocumented `pub fn`; keep it out of the
// crate root.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
