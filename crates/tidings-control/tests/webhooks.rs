//! Webhooks against a real recording HTTP backend (the end-to-end crate's):
//! signatures verify, failures are retried a bounded number of times, and a
//! dead or hanging backend never makes a sender wait.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;
use tidings_control::{
    hex, hmac_sha256,
    webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
    WebhookConfig, WebhookEvent, Webhooks,
};
use tidings_e2e::backend::{Backend, Call, Mode};

const SECRET: &str = "webhook-secret-0123456789";

fn config(url: &str) -> WebhookConfig {
    let mut c = WebhookConfig::new(url.parse().unwrap(), SECRET);
    c.backoff = Duration::from_millis(50);
    c.timeout = Duration::from_millis(500);
    c
}

fn connect(n: u32) -> WebhookEvent {
    WebhookEvent::Connect {
        conn: format!("g-{n}"),
        user: Some(format!("u{n}")),
        gateway: "g".into(),
        time_ms: 1,
    }
}

/// What a backend does: recompute the HMAC over `<timestamp>.<body>`.
fn verify(call: &Call) -> bool {
    let (Some(ts), Some(sig)) = (call.header(TIMESTAMP_HEADER), call.header(SIGNATURE_HEADER))
    else {
        return false;
    };
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&call.body);
    let expected = format!("sha256={}", hex(&hmac_sha256(SECRET.as_bytes(), &signed)));
    expected == sig
}

fn events_of(calls: &[Call]) -> Vec<Value> {
    calls
        .iter()
        .flat_map(|c| {
            let body: Value = serde_json::from_slice(&c.body).unwrap();
            body["events"].as_array().unwrap().clone()
        })
        .collect()
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn events_arrive_signed_and_in_order() {
    let backend = Backend::start(Mode::Json(serde_json::json!({"ok": true}))).await;
    let hooks = Webhooks::start(config(&format!("{}/hooks", backend.base_url()))).unwrap();
    assert!(hooks.send(connect(1)));
    assert!(hooks.send(WebhookEvent::Disconnect {
        conn: "g-1".into(),
        user: Some("u1".into()),
        gateway: "g".into(),
        code: 4003,
        reason: "revoked".into(),
        time_ms: 2,
    }));
    assert!(hooks.send(WebhookEvent::ChannelOccupied {
        channel: "/app/room/1".into(),
        time_ms: 3,
    }));
    assert!(hooks.send(WebhookEvent::ChannelVacated {
        channel: "/app/room/1".into(),
        time_ms: 4,
    }));
    wait_until(|| hooks.stats().delivered.load(Ordering::Relaxed) == 4).await;
    let calls = backend.calls();
    for c in &calls {
        assert_eq!(c.method, "POST");
        assert_eq!(c.path, "/hooks");
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert!(verify(c), "the signature verifies");
        let ts: u64 = c.header(TIMESTAMP_HEADER).unwrap().parse().unwrap();
        let now = tidings_control::webhook::now_ms() / 1000;
        assert!(now.abs_diff(ts) <= 5);
    }
    let events = events_of(&calls);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "connect",
            "disconnect",
            "channel_occupied",
            "channel_vacated"
        ]
    );
    assert_eq!(events[1]["reason"], "revoked");
    assert_eq!(events[1]["code"], 4003);
    // A tampered body does not verify.
    let mut forged = calls[0].clone();
    forged.body[2] ^= 1;
    assert!(!verify(&forged));
}

#[tokio::test]
async fn a_failing_backend_gets_bounded_retries() {
    let backend = Backend::start(Mode::Status(503)).await;
    let mut c = config(&backend.base_url());
    c.max_attempts = 3;
    let hooks = Webhooks::start(c).unwrap();
    hooks.send(connect(1));
    wait_until(|| hooks.stats().failed.load(Ordering::Relaxed) == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.call_count(), 3, "three attempts, no more");
    assert_eq!(hooks.stats().retries.load(Ordering::Relaxed), 2);
    // Every attempt is signed afresh and verifies.
    assert!(backend.calls().iter().all(verify));

    // A 4xx is the backend refusing: not retried.
    backend.clear_calls();
    backend.set_mode(Mode::Status(400));
    hooks.send(connect(2));
    wait_until(|| hooks.stats().failed.load(Ordering::Relaxed) == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.call_count(), 1);

    // Back to health: a retried batch succeeds.
    backend.clear_calls();
    backend.set_mode(Mode::slow(
        Duration::from_millis(0),
        Mode::Json(serde_json::json!({})),
    ));
    hooks.send(connect(3));
    wait_until(|| hooks.stats().delivered.load(Ordering::Relaxed) == 1).await;
}

#[tokio::test]
async fn a_dead_or_hanging_backend_never_makes_a_sender_wait() {
    // Hanging: accepts, never answers.
    let hanging = Backend::start(Mode::Hang).await;
    // Dead: a port nobody listens on.
    let dead = {
        let b = Backend::start(Mode::Status(200)).await;
        let url = b.base_url();
        b.stop().await;
        url
    };
    for url in [hanging.base_url(), dead] {
        let mut c = config(&url);
        c.queue = 1_000;
        c.batch = 10;
        let hooks = Webhooks::start(c).unwrap();
        let started = Instant::now();
        let mut accepted = 0;
        for i in 0..100_000 {
            if hooks.send(connect(i)) {
                accepted += 1;
            }
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "100,000 sends took {took:?}"
        );
        let s = hooks.stats();
        assert_eq!(s.queued.load(Ordering::Relaxed), accepted);
        assert_eq!(
            s.dropped.load(Ordering::Relaxed),
            100_000 - accepted,
            "what did not fit was dropped and counted"
        );
        assert!(
            accepted <= 1_000 + 4 * 10,
            "the queue is bounded: {accepted}"
        );
        assert!(hooks.queued_now() <= 1_000);
    }
}
