//! The cost of presence on one large channel in Redis: joining 10,000
//! connections (in batches of 500), a full refresh in batches of several
//! sizes (the gateway's is `REFRESH_BATCH`),
//! counting (what `presence = "counts"` does), listing (what `"full"` does
//! for `GET /api/presence`) and single joins and leaves on the big channel.
//!
//! `cargo bench -p tidings-control --bench presence`
//!
//! Starts its own `redis-server` (no persistence) on a free port.
//! Environment: `CONNECTIONS` (default 10000). Results go to
//! docs/benchmarks.md ("Presence").

use std::time::{Duration, Instant};

use fred::{
    interfaces::ClientLike,
    types::{config::Config, Builder},
};
use tidings_control::{Presence, PresenceEntry, PresenceKey, RedisPresence};
use tidings_core::ChannelName;
use tidings_e2e::redis::RedisServer;

fn entry(i: usize) -> PresenceEntry {
    PresenceEntry {
        conn: format!("3fa1c09b22e4-{i}"),
        user: Some(format!("user{}", i / 2)),
        gateway: "3fa1c09b22e4".into(),
        info: serde_json::json!({"name": format!("User {}", i / 2)}),
        since_ms: 1_764_547_200_000,
    }
}

fn per(d: Duration, n: usize) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0 / n as f64)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = RedisServer::start().await;
    let pool = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build_pool(2)
        .unwrap();
    pool.init().await.unwrap();
    let p = RedisPresence::new(pool);
    let key = PresenceKey::channel(&ChannelName::new("/app/room/big").unwrap());
    let ttl = Duration::from_secs(30);
    let entries: Vec<PresenceEntry> = (0..n).map(entry).collect();

    let t = Instant::now();
    for chunk in entries.chunks(500) {
        p.add(&key, chunk, ttl).await.unwrap();
    }
    let join_all = t.elapsed();

    // A refresh in batches of several sizes: the total, and the longest
    // call (Redis runs a script whole: every other client, the
    // application's PUBLISHes among them, waits that long).
    let mut refreshes = Vec::new();
    for batch in [500, 100, 64, 32] {
        let mut longest = Duration::ZERO;
        let t = Instant::now();
        for chunk in entries.chunks(batch) {
            let c = Instant::now();
            p.add(&key, chunk, ttl).await.unwrap();
            longest = longest.max(c.elapsed());
        }
        refreshes.push((batch, t.elapsed(), longest));
    }

    let rounds = 1_000;
    let t = Instant::now();
    for _ in 0..rounds {
        let (s, _) = p.stats(&key).await.unwrap();
        assert_eq!(s.connections, n as u64);
    }
    let stats = t.elapsed();

    let lists = 20;
    let t = Instant::now();
    for _ in 0..lists {
        let (l, _) = p.list(&key).await.unwrap();
        assert_eq!(l.len(), n);
    }
    let list = t.elapsed();

    let singles = 1_000;
    let t = Instant::now();
    for i in 0..singles {
        let e = entry(n + i);
        p.add(&key, std::slice::from_ref(&e), ttl).await.unwrap();
        p.remove(&key, std::slice::from_ref(&e.conn)).await.unwrap();
    }
    let single = t.elapsed();

    let mut r = server.client().await;
    let mem = match r.cmd(&["MEMORY", "USAGE", &p.keys(&key)[0]]).await {
        tidings_e2e::redis::Reply::Int(b) => b,
        _ => -1,
    };
    let mem_e = match r.cmd(&["MEMORY", "USAGE", &p.keys(&key)[1]]).await {
        tidings_e2e::redis::Reply::Int(b) => b,
        _ => -1,
    };
    let mem_u = match r.cmd(&["MEMORY", "USAGE", &p.keys(&key)[2]]).await {
        tidings_e2e::redis::Reply::Int(b) => b,
        _ => -1,
    };

    println!(
        "presence on one channel of {n} connections ({} users), Redis on loopback:",
        n / 2
    );
    println!(
        "  join all, batches of 500:   {:?} total, {} per batch",
        join_all,
        per(join_all, n.div_ceil(500))
    );
    for (batch, total, longest) in refreshes {
        println!(
            "  refresh all, batches of {batch:3}: {:?} total, {} per call, longest {:.3} ms",
            total,
            per(total, n.div_ceil(batch)),
            longest.as_secs_f64() * 1000.0
        );
    }
    println!(
        "  stats (counts only):        {} per call",
        per(stats, rounds)
    );
    println!(
        "  list (all {n} entries):      {} per call",
        per(list, lists)
    );
    println!(
        "  one join + one leave:       {} per pair",
        per(single, singles)
    );
    println!(
        "  Redis memory: {:.1} MiB ({} bytes per connection)",
        (mem + mem_e + mem_u) as f64 / 1048576.0,
        (mem + mem_e + mem_u) / n as i64
    );
}
