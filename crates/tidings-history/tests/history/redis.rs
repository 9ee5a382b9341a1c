//! What only Redis has: restarts with and without persistence, the one
//! documented command from other clients, plain PUBLISH, keys and TTLs.

use std::{collections::HashMap, process::Stdio, time::Duration};

use bytes::Bytes;
use tidings_core::ChannelName;
use tidings_history::{
    History, HistoryError, HistoryOptions, LivePublication, RedisHistory, StreamPosition,
};
use tokio::io::AsyncWriteExt;

use crate::support::{pool, RedisServer, Reply};

fn opts(size: u64) -> HistoryOptions {
    HistoryOptions::new(size, Duration::from_secs(600)).unwrap()
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

/// Retries `position` until the pool has reconnected after a restart.
async fn reconnected(h: &RedisHistory, c: &ChannelName, o: &HistoryOptions) -> StreamPosition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match h.position(c, o).await {
            Ok(p) => return p,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never reconnected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn restart_without_persistence_starts_a_new_epoch() {
    let mut server = RedisServer::start().await;
    let h = RedisHistory::new(pool(&server).await);
    // not installed on purpose: the first call loads the library itself
    let c = ch("/app/broadcast");
    let o = opts(100);
    for i in 0..3 {
        h.publish(&c, Bytes::from(format!("m{i}")), &o)
            .await
            .unwrap();
    }
    let before = h.position(&c, &o).await.unwrap();
    assert_eq!(before.offset, 3);

    server.restart().await;
    // the functions were lost with everything else: they are loaded again
    let now = reconnected(&h, &c, &o).await;
    assert_eq!(now.offset, 0);
    assert_ne!(now.epoch, before.epoch);
    let r = h.recover(&c, &before, 100, &o).await.unwrap();
    assert!(!r.recovered);
    assert_eq!(r.position, now);
    let p = h
        .publish(&c, Bytes::from_static(b"after"), &o)
        .await
        .unwrap();
    assert_eq!(p, StreamPosition::new(1, now.epoch.clone()));
}

#[tokio::test]
async fn restart_with_appendonly_keeps_epoch_and_history() {
    let mut server = RedisServer::start_persistent().await;
    let h = RedisHistory::new(pool(&server).await);
    h.install().await.unwrap();
    let c = ch("/app/user/7/notifications");
    let o = opts(100);
    let mut last = None;
    for i in 1..=3 {
        last = Some(
            h.publish(&c, Bytes::from(format!("m{i}")), &o)
                .await
                .unwrap(),
        );
    }
    let before = last.unwrap();

    server.restart().await;
    let now = reconnected(&h, &c, &o).await;
    assert_eq!(now, before);
    let r = h
        .recover(&c, &StreamPosition::new(1, before.epoch.clone()), 100, &o)
        .await
        .unwrap();
    assert!(r.recovered);
    let got: Vec<(u64, Bytes)> = r
        .publications
        .into_iter()
        .map(|p| (p.offset, p.payload))
        .collect();
    assert_eq!(
        got,
        [
            (2, Bytes::from_static(b"m2")),
            (3, Bytes::from_static(b"m3"))
        ]
    );
    // the function survived in the append-only file, and offsets continue
    let p = h.publish(&c, Bytes::from_static(b"m4"), &o).await.unwrap();
    assert_eq!(p, StreamPosition::new(4, before.epoch));
}

/// Several tasks through the pool and `redis-cli` with the documented
/// one-command publish, all at once: one gap-free order, the same live and
/// replayed, each publisher's own messages in its order.
#[tokio::test]
async fn concurrent_publishers_produce_one_order() {
    const TASKS: usize = 4;
    const PER_TASK: usize = 200;
    const CLI: usize = 200;
    const TOTAL: usize = TASKS * PER_TASK + CLI;
    let server = RedisServer::start().await;
    let h = std::sync::Arc::new(RedisHistory::new(pool(&server).await));
    h.install().await.unwrap();
    let c = ch("/app/room/1");
    let o = opts(TOTAL as u64);
    let epoch = h.position(&c, &o).await.unwrap().epoch;
    let mut live = server.client().await.subscribe(c.as_str()).await;

    let mut script = String::new();
    for i in 0..CLI {
        script.push_str(&format!(
            "FCALL tidings_publish 1 {} cli-{i} {TOTAL} 600\n",
            c.as_str()
        ));
    }
    let mut cli = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    let mut stdin = cli.stdin.take().unwrap();
    let cli_done = tokio::spawn(async move {
        stdin.write_all(script.as_bytes()).await.unwrap();
        drop(stdin);
        assert!(cli.wait().await.unwrap().success());
    });
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let h = h.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..PER_TASK {
                let p = h
                    .publish(&c, Bytes::from(format!("t{t}-{i}")), &o)
                    .await
                    .unwrap();
                offsets.push(p.offset);
            }
            offsets
        }));
    }
    let mut assigned = Vec::new();
    for t in tasks {
        let offsets = t.await.unwrap();
        // one publisher's calls are answered in its order
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assigned.extend(offsets);
    }
    cli_done.await.unwrap();

    let mut live_order = Vec::new();
    for _ in 0..TOTAL {
        let payload = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("live within 10 s")
            .unwrap();
        let (pos, data) = LivePublication::open(&payload).expect("envelope");
        assert_eq!(pos.epoch, epoch);
        live_order.push((pos.offset, Bytes::copy_from_slice(data)));
    }
    // live: offsets 1..=TOTAL, in order, no gap, no duplicate
    let offsets: Vec<u64> = live_order.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=TOTAL as u64).collect::<Vec<_>>());
    // what the tasks were told matches
    assigned.sort_unstable();
    assert_eq!(assigned.len(), TASKS * PER_TASK);
    assigned.dedup();
    assert_eq!(assigned.len(), TASKS * PER_TASK);
    // replay: the same order, the same bytes
    let r = h
        .recover(&c, &StreamPosition::new(0, epoch.clone()), TOTAL as u64, &o)
        .await
        .unwrap();
    assert!(r.recovered);
    let replayed: Vec<(u64, Bytes)> = r
        .publications
        .into_iter()
        .map(|p| (p.offset, p.payload))
        .collect();
    assert_eq!(replayed, live_order);
    // each publisher's messages appear in the order it sent them
    let mut next: HashMap<String, usize> = HashMap::new();
    for (_, data) in &live_order {
        let s = std::str::from_utf8(data).unwrap();
        let (who, i) = s.rsplit_once('-').unwrap();
        let i: usize = i.parse().unwrap();
        let n = next.entry(who.to_owned()).or_default();
        assert_eq!(i, *n, "{who} out of order");
        *n += 1;
    }
    assert_eq!(next["cli"], CLI);
}

/// A plain PUBLISH on a channel with history is delivered as it was sent,
/// without an envelope, and is not in the history.
#[tokio::test]
async fn plain_publish_stays_plain_and_live_only() {
    let server = RedisServer::start().await;
    let h = RedisHistory::new(pool(&server).await);
    let c = ch("/app/broadcast");
    let o = opts(10);
    let p1 = h.publish(&c, Bytes::from_static(b"one"), &o).await.unwrap();
    let mut live = server.client().await.subscribe(c.as_str()).await;
    let mut pubc = server.client().await;
    assert_eq!(
        pubc.int(&[b"PUBLISH", b"/app/broadcast", br#"{"plain":true}"#])
            .await,
        1
    );
    let p2 = h.publish(&c, Bytes::from_static(b"two"), &o).await.unwrap();
    let plain = live.recv().await.unwrap();
    assert_eq!(&plain[..], br#"{"plain":true}"#);
    assert!(LivePublication::open(&plain).is_none());
    let (pos, data) = LivePublication::open(&live.recv().await.unwrap())
        .map(|(p, d)| (p, d.to_vec()))
        .unwrap();
    assert_eq!((pos, data), (p2.clone(), b"two".to_vec()));
    let r = h.recover(&c, &p1, 10, &o).await.unwrap();
    assert_eq!(r.publications.len(), 1, "the plain message is not history");
    assert_eq!(r.position, p2);
}

/// The documented keys, their TTLs, and usage errors from redis-cli.
#[tokio::test]
async fn keys_ttls_and_usage_errors() {
    let server = RedisServer::start().await;
    let h = RedisHistory::new(pool(&server).await);
    let c = ch("/app/user/42/notifications");
    let o = HistoryOptions::new(2, Duration::from_secs(600))
        .unwrap()
        .with_meta_ttl(Duration::from_secs(3600))
        .unwrap();
    for i in 0..3 {
        h.publish(&c, Bytes::from(format!("m{i}")), &o)
            .await
            .unwrap();
    }
    let stream = "tidings:history:{/app/user/42/notifications}:stream";
    let meta = "tidings:history:{/app/user/42/notifications}:meta";
    assert_eq!(h.stream_key(&c), stream);
    assert_eq!(h.meta_key(&c), meta);
    let mut r = server.client().await;
    assert_eq!(
        r.int(&[b"XLEN", stream.as_bytes()]).await,
        2,
        "trimmed exactly"
    );
    let ttl = r.int(&[b"TTL", stream.as_bytes()]).await;
    assert!((1..=600).contains(&ttl), "{ttl}");
    let ttl = r.int(&[b"TTL", meta.as_bytes()]).await;
    assert!((601..=3600).contains(&ttl), "{ttl}");
    assert_eq!(
        r.cmd_bytes(&[b"HGET", meta.as_bytes(), b"offset"]).await,
        Reply::Bulk(Some(b"3".to_vec()))
    );
    // same Cluster slot for both keys and the channel itself
    let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
    assert_eq!(slot(stream), slot(meta));
    assert_eq!(slot(stream), slot(c.as_str()));

    // redis-cli users get a clear error for bad arguments
    for (args, want) in [
        (
            vec![
                &b"FCALL"[..],
                b"tidings_publish",
                b"1",
                b"/c",
                b"x",
                b"0",
                b"60",
            ],
            "size must be at least 1",
        ),
        (
            vec![&b"FCALL"[..], b"tidings_publish", b"1", b"/c", b"x", b"10"],
            "wrong number of arguments",
        ),
        (
            vec![
                &b"FCALL"[..],
                b"tidings_publish",
                b"1",
                b"/c",
                b"x",
                b"ten",
                b"60",
            ],
            "size must be a decimal integer",
        ),
        (
            vec![&b"FCALL"[..], b"tidings_publish", b"0", b"x", b"10", b"60"],
            "expected exactly one key",
        ),
        (
            vec![
                &b"FCALL"[..],
                b"tidings_publish",
                b"1",
                b"/c",
                b"x",
                b"10",
                b"60",
                b"3600",
                b"shard",
            ],
            "the last argument must be the word sharded",
        ),
        (
            vec![
                &b"FCALL"[..],
                b"tidings_publish",
                b"1",
                b"/c",
                b"x",
                b"10",
                b"60",
                b"5",
            ],
            "meta_ttl must be at least ttl",
        ),
    ] {
        match r.cmd_bytes(&args).await {
            Reply::Error(e) => assert!(e.contains(want), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

/// A channel with a hash tag of its own keeps its keys in its own slot (the
/// Lua library and `stream_key` agree), and `sharded` delivers live with
/// SPUBLISH, not PUBLISH.
#[tokio::test]
async fn hash_tagged_channels_and_sharded_live_delivery() {
    let server = RedisServer::start().await;
    let h = RedisHistory::new(pool(&server).await);
    let c = ch("/app/{team7}/feed");
    let stream = "tidings:history:{team7}/app/{team7}/feed:stream";
    assert_eq!(h.stream_key(&c), stream);
    assert_eq!(
        h.meta_key(&c),
        "tidings:history:{team7}/app/{team7}/feed:meta"
    );
    let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
    assert_eq!(slot(stream), slot(c.as_str()));
    assert_eq!(slot(&h.meta_key(&c)), slot(c.as_str()));

    let classic = server.client().await.subscribe(c.as_str()).await;
    let sharded = server
        .client()
        .await
        .subscribe_with("SSUBSCRIBE", c.as_str())
        .await;
    let (mut classic, mut sharded) = (classic, sharded);
    let o = opts(5);
    h.publish(&c, Bytes::from_static(b"plain"), &o)
        .await
        .unwrap();
    h.publish(&c, Bytes::from_static(b"shard"), &o.with_sharded(true))
        .await
        .unwrap();
    let got = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Bytes>| {
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (classic, sharded) = (got(&mut classic), got(&mut sharded));
    assert_eq!(classic.len(), 1, "{classic:?}");
    assert!(classic[0].ends_with("\nplain"), "{classic:?}");
    assert_eq!(sharded.len(), 1, "{sharded:?}");
    assert!(sharded[0].ends_with("\nshard"), "{sharded:?}");
    let mut r = server.client().await;
    assert_eq!(r.int(&[b"XLEN", stream.as_bytes()]).await, 2);
}

#[tokio::test]
async fn prefix_is_configurable_and_checked() {
    let server = RedisServer::start().await;
    let h = RedisHistory::with_prefix(pool(&server).await, "app1:h:").unwrap();
    let c = ch("/x");
    h.publish(&c, Bytes::from_static(b"x"), &opts(5))
        .await
        .unwrap();
    let mut r = server.client().await;
    assert_eq!(
        r.int(&[b"EXISTS", b"app1:h:{/x}:stream", b"app1:h:{/x}:meta"])
            .await,
        2
    );
    for bad in ["a'b", "a\\b", "{x}", "a\nb"] {
        assert!(matches!(
            RedisHistory::with_prefix(pool(&server).await, bad),
            Err(HistoryError::InvalidOptions(_))
        ));
    }
}

/// Keys lost one at a time (eviction, a careless DEL): a lost stream makes
/// positions behind it unrecoverable in the same epoch; a lost meta starts a
/// new epoch and drops the old stream, whose offsets would be reused.
#[tokio::test]
async fn lost_keys() {
    let server = RedisServer::start().await;
    let h = RedisHistory::new(pool(&server).await);
    let c = ch("/lost");
    let o = opts(10);
    for i in 0..3 {
        h.publish(&c, Bytes::from(format!("m{i}")), &o)
            .await
            .unwrap();
    }
    let p3 = h.position(&c, &o).await.unwrap();
    let mut r = server.client().await;
    assert_eq!(r.int(&[b"DEL", h.stream_key(&c).as_bytes()]).await, 1);
    let rec = h
        .recover(&c, &StreamPosition::new(1, p3.epoch.clone()), 10, &o)
        .await
        .unwrap();
    assert!(!rec.recovered);
    assert_eq!(rec.position, p3);
    assert!(h.recover(&c, &p3, 10, &o).await.unwrap().recovered);
    let p4 = h.publish(&c, Bytes::from_static(b"m3"), &o).await.unwrap();
    assert_eq!(p4, StreamPosition::new(4, p3.epoch.clone()));

    assert_eq!(r.int(&[b"DEL", h.meta_key(&c).as_bytes()]).await, 1);
    let rec = h.recover(&c, &p4, 10, &o).await.unwrap();
    assert!(!rec.recovered);
    assert_eq!(rec.position.offset, 0);
    assert_ne!(rec.position.epoch, p3.epoch);
    assert_eq!(r.int(&[b"EXISTS", h.stream_key(&c).as_bytes()]).await, 0);
    let p1 = h.publish(&c, Bytes::from_static(b"new"), &o).await.unwrap();
    assert_eq!(p1, StreamPosition::new(1, rec.position.epoch.clone()));
}
