//! Publishing with history through the bridge, and opening the live
//! envelope once per message at dispatch.

use std::time::Duration;

use bytes::Bytes;
use tidings_bridge::{
    mailbox, mailbox::Next, tidings_history::LivePublication, Bridge, MailboxReceiver, Outbound,
    SlowConsumerPolicy, Topic,
};
use tidings_core::{ChannelName, ChannelPattern, Message};
use tidings_history::{HistoryOptions, StreamPosition};

fn channel(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

async fn next_frame(rx: &mut MailboxReceiver) -> String {
    match rx.next().await {
        Next::Item(Outbound::Deliver(d)) => String::from_utf8(d.frame().to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn bridge() -> Bridge {
    Bridge::in_process().with_memory_history(|c: &ChannelName| {
        c.as_str()
            .starts_with("/h/")
            .then(|| HistoryOptions::new(10, Duration::from_secs(60)).unwrap())
    })
}

#[tokio::test]
async fn history_channels_get_offsets_others_do_not() {
    let bridge = bridge();
    let (mb, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    sub.join(Topic::Channel(channel("/h/1"))).await.unwrap();
    sub.join(Topic::Channel(channel("/plain"))).await.unwrap();
    sub.join(Topic::Pattern(ChannelPattern::new("/h/*").unwrap()))
        .await
        .unwrap();

    let mut epoch = None;
    for n in 1..=3u64 {
        let pos = bridge
            .publish_with_position(Message::new(channel("/h/1"), format!("{{\"n\":{n}}}")))
            .await
            .unwrap()
            .expect("a history channel answers its position");
        assert_eq!(pos.offset, n);
        let e = epoch.get_or_insert_with(|| pos.epoch.clone());
        assert_eq!(&pos.epoch, e);
        let exact = next_frame(&mut rx).await;
        assert_eq!(
            exact,
            format!(
                r#"{{"type":"message","channel":"/h/1","offset":{n},"epoch":"{e}","data":{{"n":{n}}}}}"#
            )
        );
        let via_pattern = next_frame(&mut rx).await;
        assert!(
            via_pattern.contains(&format!(r#""pattern":"/h/*","offset":{n},"epoch":"{e}""#)),
            "{via_pattern}"
        );
    }
    let none = bridge
        .publish_with_position(Message::new(channel("/plain"), "1"))
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/plain","data":1}"#
    );
}

#[tokio::test]
async fn envelopes_are_opened_never_forwarded_and_malformed_ones_are_discarded() {
    let bridge = Bridge::in_process();
    let (mb, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    sub.join(Topic::Channel(channel("/c"))).await.unwrap();

    // An envelope published by someone else (as `FCALL tidings_publish`
    // does) on a channel this gateway keeps no history for: still opened.
    let wrapped = LivePublication::wrap(&StreamPosition::new(7, "ep-1"), b"\"hi\"");
    bridge
        .publish(Message::new(channel("/c"), wrapped))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/c","offset":7,"epoch":"ep-1","data":"hi"}"#
    );

    let before = bridge.hub().stats().snapshot().discarded;
    for bad in [
        &b"\0th1 "[..],
        b"\0th1 0 e\nx",
        b"\0th1 x e\nx",
        b"\0th1 1 e",
        b"\0th1 1 bad epoch\nx",
    ] {
        bridge
            .publish(Message::new(channel("/c"), Bytes::from_static(bad)))
            .await
            .unwrap();
    }
    bridge
        .publish(Message::new(channel("/c"), "\"after\""))
        .await
        .unwrap();
    // None of the malformed ones reached the socket, raw or otherwise.
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/c","data":"after"}"#
    );
    assert_eq!(bridge.hub().stats().snapshot().discarded, before + 5);
}

/// The paths a broker with server-side pattern matching (Redis) delivers
/// through, exact and pattern: both open the envelope.
#[tokio::test]
async fn exact_and_pattern_deliveries_from_a_broker_open_the_envelope() {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = captured.clone();
    let bridge = Bridge::new(move |inbound| {
        *keep.lock().unwrap() = Some(inbound.clone());
        tidings_bridge::LocalBroker::new(inbound)
    });
    let inbound = captured.lock().unwrap().clone().unwrap();
    let (mb, mut rx) = mailbox(16, SlowConsumerPolicy::Close);
    let mut sub = bridge.subscriber(mb);
    let pattern = ChannelPattern::new("/p/*").unwrap();
    sub.join(Topic::Channel(channel("/p/1"))).await.unwrap();
    sub.join(Topic::Pattern(pattern.clone())).await.unwrap();

    let wrapped = Message::new(
        channel("/p/1"),
        LivePublication::wrap(&StreamPosition::new(3, "E"), b"[1]"),
    );
    inbound.message(&wrapped);
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/p/1","offset":3,"epoch":"E","data":[1]}"#
    );
    inbound.pattern_message(&pattern, &wrapped);
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/p/1","pattern":"/p/*","offset":3,"epoch":"E","data":[1]}"#
    );
    let before = bridge.hub().stats().snapshot().discarded;
    let bad = Message::new(channel("/p/1"), Bytes::from_static(b"\0th1 1 e"));
    inbound.message(&bad);
    inbound.pattern_message(&pattern, &bad);
    inbound.message(&Message::new(channel("/p/1"), "2"));
    assert_eq!(
        next_frame(&mut rx).await,
        r#"{"type":"message","channel":"/p/1","data":2}"#
    );
    assert_eq!(bridge.hub().stats().snapshot().discarded, before + 2);
}
