//! The same pseudo-random calls to Redis and to the in-memory history give
//! the same answers (epochs compared through the order they appear in).

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use tidings_core::ChannelName;
use tidings_history::{
    History, HistoryError, HistoryOptions, MemoryHistory, RedisHistory, StreamPosition,
};

use crate::support::{pool, RedisServer};

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Epochs of one implementation, numbered in order of appearance.
#[derive(Default)]
struct Epochs(HashMap<String, usize>);

impl Epochs {
    fn id(&mut self, epoch: &str) -> usize {
        let n = self.0.len();
        *self.0.entry(epoch.to_owned()).or_insert(n)
    }
    fn epoch(&self, id: usize) -> String {
        self.0
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| "neverseen".to_owned())
    }
}

/// An answer with epochs replaced by their numbers.
#[derive(Debug, PartialEq)]
enum Answer {
    Position(u64, usize),
    Recovery {
        recovered: bool,
        position: (u64, usize),
        publications: Vec<(u64, Bytes)>,
    },
    Future,
    Invalid,
}

fn normalize_position(p: &StreamPosition, e: &mut Epochs) -> Answer {
    Answer::Position(p.offset, e.id(&p.epoch))
}

fn normalize_recovery(
    r: Result<tidings_history::Recovery, HistoryError>,
    e: &mut Epochs,
) -> Answer {
    match r {
        Ok(r) => Answer::Recovery {
            recovered: r.recovered,
            position: (r.position.offset, e.id(&r.position.epoch)),
            publications: r
                .publications
                .into_iter()
                .map(|p| {
                    assert_eq!(p.epoch, r.position.epoch);
                    (p.offset, p.payload)
                })
                .collect(),
        },
        Err(HistoryError::FuturePosition { .. }) => Answer::Future,
        Err(HistoryError::InvalidPosition(_)) => Answer::Invalid,
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn redis_and_memory_answer_the_same() {
    let server = RedisServer::start().await;
    let redis = RedisHistory::new(pool(&server).await);
    redis.install().await.unwrap();
    for seed in 1..=4u64 {
        let memory = MemoryHistory::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let c = ChannelName::new(&format!("/diff/{seed}")).unwrap();
        let o = HistoryOptions::new(1 + seed, Duration::from_secs(600)).unwrap();
        let (mut er, mut em) = (Epochs::default(), Epochs::default());
        let mut published = 0u64;
        for step in 0..150 {
            let (a, b) = match rng.below(10) {
                0..=4 => {
                    published += 1;
                    let payload = Bytes::from(format!("{seed}-{step}"));
                    (
                        normalize_position(
                            &redis.publish(&c, payload.clone(), &o).await.unwrap(),
                            &mut er,
                        ),
                        normalize_position(
                            &memory.publish(&c, payload, &o).await.unwrap(),
                            &mut em,
                        ),
                    )
                }
                5 => (
                    normalize_position(&redis.position(&c, &o).await.unwrap(), &mut er),
                    normalize_position(&memory.position(&c, &o).await.unwrap(), &mut em),
                ),
                _ => {
                    let offset = rng.below(published + 3);
                    let limit = rng.below(8);
                    // the current epoch, or one neither has seen
                    let epoch_id = if rng.below(5) == 0 { usize::MAX } else { 0 };
                    let sr = StreamPosition::new(offset, er.epoch(epoch_id));
                    let sm = StreamPosition::new(offset, em.epoch(epoch_id));
                    (
                        normalize_recovery(redis.recover(&c, &sr, limit, &o).await, &mut er),
                        normalize_recovery(memory.recover(&c, &sm, limit, &o).await, &mut em),
                    )
                }
            };
            assert_eq!(
                a, b,
                "seed {seed}, step {step}: redis (left) and memory (right) differ"
            );
        }
    }
}
