//! Micro-benchmarks of protocol v1 message encoding: the one encode fan-out
//! does per message ([`Delivery::new`]), for the payload kinds the protocol
//! distinguishes (JSON inlined, other text as a JSON string, non-UTF-8 as
//! base64).
//!
//! `cargo bench -p tidings-core`; see `docs/benchmarks.md`.

use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use tidings_core::{protocol, ChannelName, ChannelPattern, Delivery, Message};

/// A JSON document of at least `size` bytes: an array of small objects.
fn json_of(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() + 2 < size {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":{i},"user":"u{i}","text":"hello \"world\" {i}","ok":true}}"#
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

/// Plain text of `size` bytes that is not JSON (with quotes and a newline to
/// escape).
fn text_of(size: usize) -> Vec<u8> {
    let line = "Hello, \"world\": the quick brown fox jumps over the lazy dog.\n";
    line.bytes().cycle().take(size).collect()
}

/// `size` bytes that are not valid UTF-8.
fn binary_of(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(151) | 0x80)
        .collect()
}

fn bench(c: &mut Criterion) {
    let channel = ChannelName::new("/app/user/4217/notifications").unwrap();
    let small_json = br#"{"event":"update","id":42,"text":"hi"}"#.to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("json_small", small_json),
        ("json_4k", json_of(4096)),
        ("text_small", b"Hello, world".to_vec()),
        ("text_4k", text_of(4096)),
        ("binary_small", binary_of(32)),
        ("binary_4k", binary_of(4096)),
    ];
    // The payload kinds are what they claim to be.
    for (name, payload) in &cases {
        let utf8 = std::str::from_utf8(payload).ok();
        let json = utf8.is_some_and(|t| serde_json::from_str::<serde_json::Value>(t).is_ok());
        match *name {
            n if n.starts_with("json") => assert!(json, "{n}"),
            n if n.starts_with("text") => assert!(utf8.is_some() && !json, "{n}"),
            n => assert!(utf8.is_none(), "{n}"),
        }
    }

    let mut g = c.benchmark_group("delivery_new");
    for (name, payload) in &cases {
        let message = Message::new(channel.clone(), payload.clone());
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_with_input(BenchmarkId::new(*name, payload.len()), &message, |b, m| {
            b.iter(|| Delivery::new(black_box(m)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode_message");
    let pattern = ChannelPattern::new("/app/user/*").unwrap();
    let (_, small) = &cases[0];
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("json_small/exact", |b| {
        b.iter(|| protocol::encode_message(black_box(&channel), None, black_box(small)))
    });
    g.bench_function("json_small/pattern", |b| {
        b.iter(|| protocol::encode_message(black_box(&channel), Some(&pattern), black_box(small)))
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
