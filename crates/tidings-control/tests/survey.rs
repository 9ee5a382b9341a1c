//! Surveys between gateways on one bridge (the in-process broker here; the
//! end-to-end suite runs them between gateway processes on Redis): every
//! live gateway answers from its registry, and one that stops answering is
//! named missing without holding the answer past the timeout. Requests
//! and answers travel on the control channel, beside the commands.

use std::{sync::Arc, time::Duration};

use tidings_bridge::Bridge;
use tidings_control::{
    Connection, ConnectionInfo, ControlChannel, MemoryPresence, Presence, PresenceChange,
    PresenceConfig, PresenceKey, PresenceTracker, Registry, Surveys,
};
use tidings_core::ChannelName;

struct Probe(ConnectionInfo);

impl Connection for Probe {
    fn disconnect(&self, _: u16, _: &str) {}
    fn subscribe(&self, _: &ChannelName) {}
    fn unsubscribe(&self, _: &ChannelName) {}
    fn refresh(&self) {}
    fn describe(&self) -> ConnectionInfo {
        self.0.clone()
    }
}

fn probe(conn: &str, user: Option<&str>, gateway: &str) -> Arc<dyn Connection> {
    Arc::new(Probe(ConnectionInfo {
        conn: conn.into(),
        user: user.map(str::to_owned),
        gateway: gateway.into(),
        since_ms: 7,
    }))
}

fn control() -> ChannelName {
    ChannelName::new("tidings:control").unwrap()
}

const TIMEOUT: Duration = Duration::from_millis(300);

struct Gw {
    surveys: Arc<Surveys>,
    task: tokio::task::JoinHandle<()>,
    registry: Arc<Registry>,
    live: Arc<PresenceTracker>,
}

async fn gateway(bridge: &Bridge, store: &Arc<dyn Presence>, id: &str) -> Gw {
    let live = PresenceTracker::new(
        store.clone(),
        PresenceConfig {
            ttl: Duration::from_secs(30),
            refresh: Duration::from_secs(10),
        },
        Arc::new(|_: &PresenceKey, _: PresenceChange| {}),
    )
    .unwrap();
    let registry = Registry::new();
    let surveys = Surveys::start(bridge, control(), id, live.clone(), TIMEOUT);
    let (_, task) =
        ControlChannel::start_with_surveys(bridge, control(), registry.clone(), surveys.clone())
            .await;
    Gw {
        surveys,
        task,
        registry,
        live,
    }
}

/// Waits until `n` gateways are in the live set (joins are written by a
/// task).
async fn live(store: &Arc<dyn Presence>, n: usize) {
    for _ in 0..200 {
        if store.list(&PresenceKey::gateways()).await.unwrap().0.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} gateways never became live");
}

#[tokio::test]
async fn every_gateway_answers_and_one_that_stops_is_named_missing() {
    let bridge = Bridge::in_process();
    let store: Arc<dyn Presence> = Arc::new(MemoryPresence::new());
    let a = gateway(&bridge, &store, "a").await;
    let b = gateway(&bridge, &store, "b").await;
    let c = gateway(&bridge, &store, "c").await;
    live(&store, 3).await;
    let _a1 = a
        .registry
        .register("a-1", Some("anna"), probe("a-1", Some("anna"), "a"));
    let _b1 = b
        .registry
        .register("b-1", Some("anna"), probe("b-1", Some("anna"), "b"));
    let b2 = b
        .registry
        .register("b-2", Some("anna"), probe("b-2", Some("anna"), "b"));
    let _c1 = c
        .registry
        .register("c-1", Some("bob"), probe("c-1", Some("bob"), "c"));
    let _anon = c.registry.register("c-2", None, probe("c-2", None, "c"));

    let answer = c.surveys.connections("anna").await.unwrap();
    let conns: Vec<&str> = answer.connections.iter().map(|c| c.conn.as_str()).collect();
    assert_eq!(conns, ["a-1", "b-1", "b-2"]);
    assert_eq!(answer.answered, ["a", "b", "c"]);
    assert!(answer.missing.is_empty());
    assert_eq!(answer.connections[0].since_ms, 7);

    // A closed connection is gone from the next answer.
    drop(b2);
    let answer = a.surveys.connections("anna").await.unwrap();
    assert_eq!(answer.connections.len(), 2);
    // Nobody's connections: an empty list, every gateway answered.
    let answer = a.surveys.connections("nobody").await.unwrap();
    assert!(answer.connections.is_empty());
    assert_eq!(answer.answered.len(), 3);

    // b stops answering (killed: its entry in the live set stays until it
    // expires). The answer comes after the timeout, b named missing.
    b.task.abort();
    let _ = b.task.await;
    let started = tokio::time::Instant::now();
    let answer = a.surveys.connections("anna").await.unwrap();
    assert!(started.elapsed() >= TIMEOUT);
    assert_eq!(answer.missing, ["b"]);
    assert_eq!(answer.answered, ["a", "c"]);
    assert_eq!(answer.connections.len(), 1);
    assert_eq!(
        a.surveys
            .stats()
            .incomplete
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A gateway that stops normally leaves the live set: no wait.
    b.live.leave_all().await;
    let started = tokio::time::Instant::now();
    let answer = a.surveys.connections("anna").await.unwrap();
    assert!(answer.missing.is_empty());
    assert!(started.elapsed() < TIMEOUT);
}

#[tokio::test]
async fn a_malformed_request_is_counted_and_harms_no_survey() {
    let bridge = Bridge::in_process();
    let store: Arc<dyn Presence> = Arc::new(MemoryPresence::new());
    let a = gateway(&bridge, &store, "a").await;
    // Another listener on the same channel without surveys (a second
    // registry): it leaves survey traffic alone, no warning, no count.
    let (plain, _plain_task) = ControlChannel::start(&bridge, control(), Registry::new()).await;
    live(&store, 1).await;
    let _a1 = a
        .registry
        .register("a-1", Some("anna"), probe("a-1", Some("anna"), "a"));
    for junk in [
        r#"{"op":"survey"}"#,
        r#"{"op":"survey","id":"x","from":"b","user":"u","extra":1}"#,
        r#"{"op":"survey_reply","to":"a"}"#,
    ] {
        bridge
            .publish(tidings_core::Message::new(control(), junk))
            .await
            .unwrap();
    }
    let answer = a.surveys.connections("anna").await.unwrap();
    assert_eq!(answer.connections.len(), 1);
    assert_eq!(
        a.surveys
            .stats()
            .invalid
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(
        plain
            .stats()
            .invalid
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
