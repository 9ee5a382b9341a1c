//! One presence suite, run against a real `redis-server` and the in-memory
//! twin: whatever a test here checks, both stores answer the same.

use std::{sync::Arc, time::Duration};

use fred::{
    clients::Pool,
    interfaces::ClientLike,
    types::{
        config::{Config, ReconnectPolicy},
        Builder,
    },
};
use parking_lot::Mutex;
use serde_json::json;
use tidings_control::{
    MemoryPresence, Presence, PresenceChange, PresenceConfig, PresenceEntry, PresenceError,
    PresenceEvent, PresenceKey, PresenceStats, PresenceTracker, RedisPresence,
};
use tidings_core::ChannelName;
use tidings_e2e::redis::{RedisServer, Reply};

async fn pool(server: &RedisServer) -> Pool {
    let config = Config::from_url(&server.url()).expect("url");
    let pool = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .with_connection_config(|c| {
            c.max_command_attempts = 1;
            c.connection_timeout = Duration::from_secs(2);
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1))
        .build_pool(2)
        .expect("pool");
    pool.init().await.expect("connect");
    pool
}

/// The two stores; the Redis one keeps its server alive.
async fn stores() -> Vec<(Arc<dyn Presence>, Option<RedisServer>)> {
    let server = RedisServer::start().await;
    let redis = RedisPresence::new(pool(&server).await);
    vec![
        (Arc::new(MemoryPresence::new()), None),
        (Arc::new(redis), Some(server)),
    ]
}

fn room(n: u32) -> PresenceKey {
    PresenceKey::channel(&ChannelName::new(&format!("/app/room/{n}")).unwrap())
}

fn entry(conn: &str, user: Option<&str>, gateway: &str) -> PresenceEntry {
    PresenceEntry {
        conn: conn.into(),
        user: user.map(str::to_owned),
        gateway: gateway.into(),
        info: json!({ "name": user.unwrap_or("?") }),
        since_ms: 1,
    }
}

const TTL: Duration = Duration::from_secs(30);

fn users(change: &PresenceChange) -> (Vec<String>, Vec<String>) {
    let mut joined: Vec<String> = change
        .joined
        .iter()
        .map(|e| e.user.clone().unwrap())
        .collect();
    let mut left = change.left.clone();
    joined.sort();
    left.sort();
    (joined, left)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
    for (p, _server) in stores().await {
        let k = room(1);
        let c = p
            .add(&k, &[entry("g1-1", Some("anna"), "g1")], TTL)
            .await
            .unwrap();
        assert_eq!(users(&c), (s(&["anna"]), s(&[])), "{}", p.name());
        assert_eq!(c.joined[0].info, json!({"name": "anna"}));
        // A second tab of anna, and bob, in one call.
        let c = p
            .add(
                &k,
                &[
                    entry("g2-1", Some("anna"), "g2"),
                    entry("g2-2", Some("bob"), "g2"),
                ],
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(users(&c), (s(&["bob"]), s(&[])), "{}", p.name());
        let (stats, _) = p.stats(&k).await.unwrap();
        assert_eq!(
            stats,
            PresenceStats {
                connections: 3,
                users: 2
            }
        );
        let (mut list, _) = p.list(&k).await.unwrap();
        list.sort_by(|a, b| a.conn.cmp(&b.conn));
        assert_eq!(
            list.iter().map(|e| e.conn.as_str()).collect::<Vec<_>>(),
            ["g1-1", "g2-1", "g2-2"]
        );
        assert_eq!(list[2], entry("g2-2", Some("bob"), "g2"));

        let c = p.remove(&k, &["g1-1".into()]).await.unwrap();
        assert!(c.is_empty(), "{}: anna still has a tab", p.name());
        let c = p
            .remove(&k, &["g2-1".into(), "unknown".into()])
            .await
            .unwrap();
        assert_eq!(users(&c), (s(&[]), s(&["anna"])));
        // Removing again changes nothing.
        assert!(p.remove(&k, &["g2-1".into()]).await.unwrap().is_empty());
        let (stats, _) = p.stats(&k).await.unwrap();
        assert_eq!((stats.connections, stats.users), (1, 1));
        // Other sets are apart.
        let (stats, _) = p.stats(&room(2)).await.unwrap();
        assert_eq!(stats, PresenceStats::default());
    }
}

#[tokio::test]
async fn anonymous_connections_count_but_never_join() {
    for (p, _server) in stores().await {
        let k = room(1);
        let c = p
            .add(&k, &[entry("a-1", None, "g"), entry("a-2", None, "g")], TTL)
            .await
            .unwrap();
        assert!(c.is_empty(), "{}", p.name());
        let (stats, _) = p.stats(&k).await.unwrap();
        assert_eq!((stats.connections, stats.users), (2, 0));
        assert!(p.remove(&k, &["a-1".into()]).await.unwrap().is_empty());
        let (list, _) = p.list(&k).await.unwrap();
        assert_eq!(list, vec![entry("a-2", None, "g")]);
    }
}

#[tokio::test]
async fn a_refresh_does_not_join_again_and_replaces_the_info() {
    for (p, _server) in stores().await {
        let k = room(3);
        p.add(&k, &[entry("c", Some("u"), "g")], TTL).await.unwrap();
        let mut e = entry("c", Some("u"), "g");
        e.info = json!({"name": "renamed"});
        let c = p.add(&k, &[e.clone()], TTL).await.unwrap();
        assert!(c.is_empty(), "{}", p.name());
        assert_eq!(p.list(&k).await.unwrap().0, vec![e]);
    }
}

#[tokio::test]
async fn entries_of_a_gateway_that_stops_refreshing_expire_and_their_users_leave_once() {
    let ttl = Duration::from_millis(400);
    for (p, _server) in stores().await {
        let k = room(4);
        // g1 lives on; g2 adds two users and dies (never refreshes).
        p.add(&k, &[entry("g1-1", Some("anna"), "g1")], ttl)
            .await
            .unwrap();
        p.add(
            &k,
            &[
                entry("g2-1", Some("bob"), "g2"),
                entry("g2-2", Some("anna"), "g2"),
                entry("g2-3", None, "g2"),
            ],
            ttl,
        )
        .await
        .unwrap();
        let mut left = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(ttl / 4).await;
            let c = p
                .add(&k, &[entry("g1-1", Some("anna"), "g1")], ttl)
                .await
                .unwrap();
            assert!(c.joined.is_empty(), "{}", p.name());
            left.extend(c.left);
        }
        assert_eq!(left, s(&["bob"]), "{}: bob left once, anna stays", p.name());
        let (stats, c) = p.stats(&k).await.unwrap();
        assert!(c.is_empty());
        assert_eq!((stats.connections, stats.users), (1, 1), "{}", p.name());
        let (list, _) = p.list(&k).await.unwrap();
        assert_eq!(list, vec![entry("g1-1", Some("anna"), "g1")]);
    }
}

#[tokio::test]
async fn expired_entries_are_reported_by_whichever_call_comes_first() {
    let ttl = Duration::from_millis(200);
    for (p, _server) in stores().await {
        let (k1, k2) = (room(5), room(6));
        // Keep the set alive with a long-lived entry, so that only the
        // short ones expire.
        p.add(&k1, &[entry("long", Some("z"), "g")], TTL)
            .await
            .unwrap();
        p.add(&k1, &[entry("short", Some("y"), "g")], ttl)
            .await
            .unwrap();
        p.add(&k2, &[entry("long", Some("z"), "g")], TTL)
            .await
            .unwrap();
        p.add(&k2, &[entry("short", Some("y"), "g")], ttl)
            .await
            .unwrap();
        tokio::time::sleep(ttl * 2).await;
        let (list, c) = p.list(&k1).await.unwrap();
        assert_eq!((list.len(), c.left.clone()), (1, s(&["y"])), "{}", p.name());
        let (stats, c) = p.stats(&k2).await.unwrap();
        assert_eq!((stats.connections, c.left), (1, s(&["y"])), "{}", p.name());
        let c = p.remove(&k1, &["long".into()]).await.unwrap();
        assert_eq!(c.left, s(&["z"]));
    }
}

#[tokio::test]
async fn a_set_nobody_refreshes_is_forgotten_silently() {
    let ttl = Duration::from_millis(200);
    for (p, server) in stores().await {
        let k = room(7);
        p.add(&k, &[entry("c", Some("u"), "g")], ttl).await.unwrap();
        if let Some(server) = &server {
            let mut r = server.client().await;
            let keys = match r.cmd(&["KEYS", "*"]).await {
                Reply::Array(v) => v.len(),
                other => panic!("{other:?}"),
            };
            assert_eq!(keys, 3, "a set is three keys");
        }
        tokio::time::sleep(ttl * 2).await;
        let (stats, c) = p.stats(&k).await.unwrap();
        assert_eq!(stats, PresenceStats::default(), "{}", p.name());
        assert!(c.is_empty(), "{}", p.name());
        if let Some(server) = &server {
            let mut r = server.client().await;
            assert_eq!(
                r.cmd(&["DBSIZE"]).await.as_int(),
                Some(0),
                "Redis expired the keys"
            );
        }
    }
}

#[tokio::test]
async fn bad_ids_are_refused_before_anything_is_stored() {
    for (p, _server) in stores().await {
        let k = room(8);
        let bad = [
            entry("", Some("u"), "g"),
            entry("c", Some(""), "g"),
            entry("c", Some("a\nb"), "g"),
            entry(&"x".repeat(129), Some("u"), "g"),
        ];
        for e in bad {
            let err = p
                .add(&k, &[entry("ok", Some("v"), "g"), e], TTL)
                .await
                .unwrap_err();
            assert!(matches!(err, PresenceError::Invalid(_)), "{err:?}");
        }
        let (stats, _) = p.stats(&k).await.unwrap();
        assert_eq!(stats, PresenceStats::default(), "{}", p.name());
    }
}

#[tokio::test]
async fn a_tracker_keeps_its_entries_alive_and_reports_joins_and_leaves() {
    let config = PresenceConfig {
        ttl: Duration::from_millis(400),
        refresh: Duration::from_millis(100),
    };
    for (p, _server) in stores().await {
        type Seen = Arc<Mutex<Vec<(PresenceKey, PresenceEvent)>>>;
        let seen: Seen = Arc::default();
        let sink = {
            let seen = seen.clone();
            move |k: &PresenceKey, c: PresenceChange| {
                seen.lock()
                    .extend(PresenceEvent::of(&c).into_iter().map(|e| (k.clone(), e)))
            }
        };
        let live = PresenceTracker::new(p.clone(), config, Arc::new(sink.clone())).unwrap();
        let dying = PresenceTracker::new(p.clone(), config, Arc::new(sink)).unwrap();
        let refresher = live.spawn_refresher();
        let dying_refresher = dying.spawn_refresher();
        let k = room(9);
        live.join(&k, entry("l-1", Some("anna"), "live"))
            .await
            .unwrap();
        dying
            .join(&k, entry("d-1", Some("bob"), "dying"))
            .await
            .unwrap();
        // Three TTLs later both are still there: refreshed.
        tokio::time::sleep(config.ttl * 3).await;
        let stats = live.stats(&k).await.unwrap();
        assert_eq!((stats.connections, stats.users), (2, 2), "{}", p.name());
        // The dying gateway stops refreshing (SIGKILL: no goodbye).
        dying_refresher.abort();
        drop(dying);
        tokio::time::sleep(config.ttl + config.refresh * 3).await;
        let stats = live.stats(&k).await.unwrap();
        assert_eq!((stats.connections, stats.users), (1, 1), "{}", p.name());
        live.leave(&k, "l-1").await.unwrap();
        let events: Vec<String> = seen
            .lock()
            .iter()
            .map(|(_, e)| match e {
                PresenceEvent::Join(e) => format!("join {}", e.user.as_deref().unwrap()),
                PresenceEvent::Leave { user } => format!("leave {user}"),
            })
            .collect();
        assert_eq!(
            events,
            ["join anna", "join bob", "leave bob", "leave anna"],
            "{}",
            p.name()
        );
        assert!(live.local_sets().is_empty());
        refresher.abort();
    }
}

#[tokio::test]
async fn redis_presence_survives_a_script_flush_and_reports_an_outage() {
    let mut server = RedisServer::start().await;
    let p = RedisPresence::new(pool(&server).await);
    let k = room(10);
    p.add(&k, &[entry("c", Some("u"), "g")], TTL).await.unwrap();
    let [c, e, u] = p.keys(&k);
    assert_eq!(
        (c.as_str(), e.as_str(), u.as_str()),
        (
            "tidings:presence:{ch:/app/room/10}:c",
            "tidings:presence:{ch:/app/room/10}:e",
            "tidings:presence:{ch:/app/room/10}:u"
        )
    );
    let mut r = server.client().await;
    assert_eq!(r.cmd(&["SCRIPT", "FLUSH"]).await.as_str(), Some("OK"));
    // EVALSHA answers NOSCRIPT; the store falls back to EVAL.
    let (stats, _) = p.stats(&k).await.unwrap();
    assert_eq!(stats.connections, 1);
    server.kill().await;
    let err = p.stats(&k).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn counting_a_large_set_does_not_list_it() {
    let server = RedisServer::start().await;
    let p = RedisPresence::new(pool(&server).await);
    let k = room(11);
    let entries: Vec<PresenceEntry> = (0..10_000)
        .map(|i| entry(&format!("g-{i}"), Some(&format!("u{}", i % 5_000)), "g"))
        .collect();
    for chunk in entries.chunks(500) {
        p.add(&k, chunk, TTL).await.unwrap();
    }
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let (stats, _) = p.stats(&k).await.unwrap();
        assert_eq!((stats.connections, stats.users), (10_000, 5_000));
    }
    let per_call = started.elapsed() / 100;
    // ZCOUNT and HLEN: a listing of 10,000 entries would be megabytes.
    assert!(
        per_call < Duration::from_millis(20),
        "stats took {per_call:?}"
    );
}

/// A tracker whose entries are kept elsewhere (the user index: the registry
/// has every session) keeps no copy, yet refreshes them from its source,
/// part by part, and removes them at a graceful shutdown.
/// With events on, the script publishes a channel's join and leave events
/// itself, atomically with the change: nothing a gateway does after its
/// call (or fails to do, killed) can lose one. Entries that expire are
/// announced by whichever call drops them; a channel without events gets
/// none from the store.
#[tokio::test]
async fn the_script_publishes_join_and_leave_events_with_the_change() {
    let server = RedisServer::start().await;
    let events_on = "/app/room/1";
    let p = RedisPresence::new(pool(&server).await)
        .with_events(Arc::new(move |c: &str| c == events_on));
    let mut on = server.client().await.subscribe(events_on).await;
    let mut off = server.client().await.subscribe("/app/room/2").await;
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>| {
        let got = rx.try_recv().ok();
        got.map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
    };
    let settle = || tokio::time::sleep(Duration::from_millis(100));

    // Anna's first connection joins; her second does not join again.
    let c = p
        .add(
            &room(1),
            &[entry("g-1", Some("anna"), "g")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(c.published && c.joined.len() == 1);
    p.add(
        &room(1),
        &[entry("g-2", Some("anna"), "g")],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    settle().await;
    assert_eq!(
        next(&mut on),
        Some(json!({"__tidings_presence": "join", "user": "anna", "info": {"name": "anna"}}))
    );
    assert_eq!(next(&mut on), None, "one join per user");

    // Bob's entry expires; the next call, whoever makes it, announces it.
    p.add(
        &room(1),
        &[entry("g-3", Some("b/ob"), "g")],
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (stats, change) = p.stats(&room(1)).await.unwrap();
    assert_eq!(
        (stats.users, change.left.clone()),
        (1, vec!["b/ob".to_owned()])
    );
    assert!(change.published);
    settle().await;
    assert_eq!(next(&mut on).unwrap()["user"], "b/ob");
    assert_eq!(
        next(&mut on),
        Some(json!({"__tidings_presence": "leave", "user": "b/ob"}))
    );

    // Anna leaves with her last connection.
    p.remove(&room(1), &["g-1".to_owned(), "g-2".to_owned()])
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        next(&mut on),
        Some(json!({"__tidings_presence": "leave", "user": "anna"}))
    );

    // A channel the store does not publish for: the change is the
    // gateway's to announce.
    let c = p
        .add(
            &room(2),
            &[entry("g-4", Some("cleo"), "g")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(!c.published && c.joined.len() == 1);
    settle().await;
    assert_eq!(next(&mut off), None);
}

/// How many scripts `server` has run (0 without one).
async fn script_calls(server: Option<&RedisServer>) -> i64 {
    match server {
        Some(server) => {
            let mut r = server.client().await;
            r.command_calls(&["evalsha", "eval"]).await
        }
        None => 0,
    }
}

/// Adding to many sets in one go (the Redis store: one script call for all
/// of them) answers each set's change as its own `add` would, in order:
/// joins the first time, none on a refresh, a set that expired forgotten;
/// and the sets' entries are there, with their expiry.
#[tokio::test]
async fn many_sets_at_once_answer_each_as_its_own_add() {
    let ttl = Duration::from_millis(400);
    for (p, server) in stores().await {
        let sets = vec![
            (room(101), vec![entry("g1-1", Some("u1"), "g1")]),
            (
                room(102),
                vec![
                    entry("g1-2", Some("u2"), "g1"),
                    entry("g1-3", Some("u2"), "g1"),
                ],
            ),
            (room(9), vec![entry("g1-4", None, "g1")]),
            (room(103), vec![]),
        ];
        let before = script_calls(server.as_ref()).await;
        let changes: Vec<PresenceChange> = p
            .add_many(&sets, ttl)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if server.is_some() {
            assert_eq!(
                script_calls(server.as_ref()).await - before,
                1,
                "one script call"
            );
        }
        let joined: Vec<Vec<String>> = changes
            .iter()
            .map(|c| c.joined.iter().map(|e| e.conn.clone()).collect())
            .collect();
        assert_eq!(
            joined,
            vec![s(&["g1-1"]), s(&["g1-2"]), vec![], vec![]],
            "{}: a user joins with its first connection",
            p.name()
        );
        for (key, entries) in &sets {
            let (mut list, _) = p.list(key).await.unwrap();
            list.sort_by(|a, b| a.conn.cmp(&b.conn));
            assert_eq!(&list, entries, "{}: {key}", p.name());
        }
        if let Some(server) = &server {
            let mut r = server.client().await;
            let ms = r
                .int(&[b"PTTL", b"tidings:presence:{ch:/app/room/102}:c"])
                .await;
            assert!(
                (1..=400).contains(&ms),
                "the set expires with its entries: {ms}"
            );
        }
        // A refresh joins nobody; u1's set, not refreshed, expires.
        tokio::time::sleep(ttl / 2).await;
        let refresh = vec![sets[1].clone(), sets[2].clone()];
        for c in p.add_many(&refresh, ttl).await {
            assert!(c.unwrap().is_empty(), "{}", p.name());
        }
        tokio::time::sleep(ttl * 3 / 4).await;
        let again = vec![
            sets[1].clone(),
            (room(101), vec![entry("g1-9", Some("u1"), "g1")]),
        ];
        let changes: Vec<PresenceChange> = p
            .add_many(&again, ttl)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(changes[0].is_empty(), "{}: u2 refreshed in time", p.name());
        assert_eq!(
            (users(&changes[1]).0, changes[1].left.clone()),
            (s(&["u1"]), vec![]),
            "{}: u1's set expired with its entry, forgotten silently (as a set \
             nobody refreshes is), and a new entry joined",
            p.name()
        );
    }
}

/// A refresh of a large set goes in calls of at most 64 entries (Redis runs
/// a script whole: a 500-entry call held every other client about 4 ms),
/// and every entry is refreshed.
#[tokio::test]
async fn a_large_sets_refresh_goes_in_small_calls() {
    let config = PresenceConfig {
        ttl: Duration::from_secs(30),
        refresh: Duration::from_secs(10),
    };
    for (p, server) in stores().await {
        let tracker = PresenceTracker::new(
            p.clone(),
            config,
            Arc::new(|_: &PresenceKey, _: PresenceChange| {}),
        )
        .unwrap();
        let k = room(77);
        for i in 0..150 {
            let user = format!("u{i}");
            tracker
                .join(&k, entry(&format!("g-{i}"), Some(&user), "g"))
                .await
                .unwrap();
        }
        let before = script_calls(server.as_ref()).await;
        assert_eq!(tracker.refresh_all().await, 0, "{}", p.name());
        if server.is_some() {
            assert_eq!(
                script_calls(server.as_ref()).await - before,
                3,
                "150 entries: calls of 64, 64 and 22"
            );
        }
        let stats = tracker.stats(&k).await.unwrap();
        assert_eq!(stats.connections, 150, "{}", p.name());
    }
}
