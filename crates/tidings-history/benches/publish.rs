//! Publish throughput through the atomic step (`FCALL tidings_publish`)
//! against plain `PUBLISH`, on the same Redis, with pipelining: many
//! concurrent publishes over a pool of two connections (fred pipelines the
//! commands of concurrent callers on each connection).
//!
//! `cargo bench -p tidings-history --bench publish`
//!
//! Starts its own `redis-server` (no persistence) on a free port, or uses
//! `TIDINGS_BENCH_REDIS_URL`. Environment: `MESSAGES` (default 200000),
//! `CONCURRENCY` (default 256). Results go to the crate README
//! ("Performance").

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, PubsubInterface},
    types::{config::Config, Builder, Value},
};
use tidings_core::ChannelName;
use tidings_history::{History, HistoryOptions, RedisHistory};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PAYLOAD: &[u8] =
    br#"{"type":"notification","id":123456,"text":"Your export is ready","url":"/exports/123456"}"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Publish,
    Atomic,
}

async fn run(
    mode: Mode,
    pool: &Pool,
    history: &Arc<RedisHistory>,
    channels: &[ChannelName],
    messages: usize,
    concurrency: usize,
) -> f64 {
    let opts = HistoryOptions::new(100, Duration::from_secs(600)).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let pool = pool.clone();
        let history = history.clone();
        let channels = channels.to_vec();
        let n = messages / concurrency + usize::from(t < messages % concurrency);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let c = &channels[(t + i * concurrency) % channels.len()];
                let payload = Bytes::from_static(PAYLOAD);
                match mode {
                    Mode::Publish => {
                        // as the gateway's Redis broker publishes
                        let _: i64 = pool
                            .next()
                            .publish(c.as_str(), Value::Bytes(payload))
                            .await
                            .unwrap();
                    }
                    Mode::Atomic => {
                        history.publish(c, payload, &opts).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    messages as f64 / start.elapsed().as_secs_f64()
}

/// A subscriber that reads and discards everything (as a gateway would
/// read it), so that PUBLISH has someone to deliver to.
async fn drain_subscriber(port: u16, channel: &str) -> tokio::task::JoinHandle<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let cmd = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{}\r\n",
        channel.len(),
        channel
    );
    s.write_all(cmd.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
}

#[tokio::main]
async fn main() {
    let messages = env("MESSAGES", 200_000);
    let concurrency = env("CONCURRENCY", 256);
    let (url, port, _server) = match std::env::var("TIDINGS_BENCH_REDIS_URL") {
        Ok(url) => {
            let port = url
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .parse()
                .unwrap_or(6379);
            (url, port, None)
        }
        Err(_) => {
            // Its own redis-server on a free port, without persistence.
            let server = tidings_e2e::redis::RedisServer::start().await;
            (server.url(), server.port, Some(server))
        }
    };
    let pool = Builder::from_config(Config::from_url(&url).unwrap())
        .build_pool(2)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.init().await.is_err() {
        assert!(Instant::now() < deadline, "redis did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = Arc::new(RedisHistory::new(pool.clone()));
    history.install().await.unwrap();
    let version: String = pool
        .info::<String>(Some(fred::types::InfoKind::Server))
        .await
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        .unwrap_or_default();
    println!("redis {version}, {messages} messages of {} bytes, {concurrency} concurrent publishes over a pool of 2 connections", PAYLOAD.len());

    let one = vec![ChannelName::new("/app/broadcast").unwrap()];
    let many: Vec<ChannelName> = (0..1000)
        .map(|i| ChannelName::new(&format!("/app/user/{i}/notifications")).unwrap())
        .collect();
    let sub = drain_subscriber(port, one[0].as_str()).await;
    // warm up (connections, the function, the keys)
    run(Mode::Atomic, &pool, &history, &many, 20_000, concurrency).await;
    run(Mode::Publish, &pool, &history, &many, 20_000, concurrency).await;

    for (name, channels) in [
        ("1 channel, 1 subscriber", &one),
        ("1000 channels, no subscriber", &many),
    ] {
        let plain = run(
            Mode::Publish,
            &pool,
            &history,
            channels,
            messages,
            concurrency,
        )
        .await;
        let atomic = run(
            Mode::Atomic,
            &pool,
            &history,
            channels,
            messages,
            concurrency,
        )
        .await;
        println!(
            "{name:30} PUBLISH {plain:>9.0} msg/s   FCALL tidings_publish {atomic:>9.0} msg/s   ratio {:.2}",
            atomic / plain
        );
    }
    // Redis's own time per command (what the server spends, whatever the
    // load from the client and other processes on the machine)
    let stats: String = pool
        .next()
        .info::<String>(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    for line in stats.lines() {
        for cmd in ["fcall", "publish", "xadd"] {
            if let Some(rest) = line.strip_prefix(&format!("cmdstat_{cmd}:")) {
                let per_call = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("usec_per_call="))
                    .unwrap_or("?");
                println!("server time per {cmd:>7}: {per_call} us");
            }
        }
    }
    sub.abort();
    let _ = pool.quit().await;
}
