//! Channel history, first step: publications on channels with history get
//! an offset and an epoch, with the real binary, real Redis and real
//! sockets. (Recovery on subscribe is the next step.)

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    http,
    redis::{free_port, RedisServer, Reply},
    ws::Client,
    Gateway, GatewayOptions,
};

/// The default user notification channel of user 42 (the default rule
/// keeps a history: 100 publications for 600 s).
const NOTES: &str = "/app/user/42/notifications";

/// A gateway whose identity comes from `backend` (user 42 with the cookie
/// `sessionid=u42`), on the Redis at `redis` or, without, in-process.
async fn gateway(backend: &Backend, redis: Option<&RedisServer>) -> Gateway {
    let mut opts = GatewayOptions::default()
        .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
        .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", backend.url());
    if let Some(redis) = redis {
        opts = opts.env("TIDINGS_REDIS_URL", redis.url());
    }
    let gw = Gateway::start_with(opts).await;
    // Redis: the broker is connected and the history's function loaded.
    gw.wait_ready().await;
    gw
}

/// User 42's socket, once its joins (broadcast, notifications) are done.
async fn user_42(gw: &Gateway) -> Client {
    let mut c = match Client::connect_with(&gw.ws_url(), &[("Cookie", "sessionid=u42")]).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade refused: {} {:?}", r.status, r.body),
    };
    assert_eq!(c.welcome["user"], "42");
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong, json!({"type":"pong","id":"settle"}));
    c
}

async fn backend() -> Backend {
    Backend::start(Mode::users([("u42", json!({"user": "42"}))])).await
}

/// Publishes three times through `POST /api/publish` on the notification
/// channel: the answers and the socket's frames carry offsets 1, 2, 3 in
/// one epoch, which is returned. A channel without history (the
/// broadcast) gets no offset, neither in the answer nor in the frame.
async fn three_with_offsets(gw: &Gateway, c: &mut Client) -> String {
    let mut epoch: Option<String> = None;
    for n in 1..=3u64 {
        let r = gw.publish(NOTES, json!({"n": n})).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let answer: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(answer["status"], "accepted");
        assert_eq!(answer["offset"], json!(n), "{answer}");
        let e = answer["epoch"].as_str().expect("an epoch").to_owned();
        assert!(!e.is_empty());
        assert_eq!(epoch.get_or_insert_with(|| e.clone()), &e, "one epoch");
        assert_eq!(
            c.next_json().await,
            json!({"type":"message","channel":NOTES,"offset":n,"epoch":e,"data":{"n":n}})
        );
    }
    let r = gw.publish("/app/broadcast", json!("all")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (202, r#"{"status":"accepted"}"#)
    );
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":"/app/broadcast","data":"all"})
    );
    epoch.unwrap()
}

#[tokio::test]
async fn redis_history_channels_get_offsets_from_the_api_and_from_fcall() {
    let redis = RedisServer::start().await;
    let be = backend().await;
    let gw = gateway(&be, Some(&redis)).await;
    let mut c = user_42(&gw).await;
    let epoch = three_with_offsets(&gw, &mut c).await;

    // A backend publishing with the one command gets the next offset, and
    // the socket gets it with it (never the live envelope).
    let mut r = redis.client().await;
    let reply = r
        .cmd(&[
            "FCALL",
            "tidings_publish",
            "1",
            NOTES,
            r#"{"n":4}"#,
            "100",
            "600",
        ])
        .await;
    assert_eq!(
        reply,
        Reply::Array(vec![
            Reply::Int(4),
            Reply::Bulk(Some(epoch.clone().into_bytes()))
        ])
    );
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":NOTES,"offset":4,"epoch":epoch,"data":{"n":4}})
    );

    // A plain PUBLISH on the same channel is delivered exactly as before.
    assert_eq!(r.publish(NOTES, br#"{"n":"plain"}"#).await, 1);
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":NOTES,"data":{"n":"plain"}})
    );

    // Something that starts like a live envelope but is malformed never
    // reaches the socket, raw or otherwise: it is counted as discarded.
    assert_eq!(r.publish(NOTES, b"\0th1 1 not an epoch\nraw").await, 1);
    assert_eq!(r.publish(NOTES, b"\0th1 0 e\nraw").await, 1);

    // The history holds what was published with it (1-4), not the plain
    // PUBLISH.
    let key = format!("tidings:history:{{{NOTES}}}:stream");
    assert_eq!(r.cmd(&["XLEN", &key]).await, Reply::Int(4));
    let r5 = gw.publish(NOTES, json!({"n": 5})).await;
    let answer: Value = serde_json::from_str(&r5.body).unwrap();
    assert_eq!(
        (answer["offset"].clone(), answer["epoch"].clone()),
        (json!(5), json!(epoch))
    );
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":NOTES,"offset":5,"epoch":epoch,"data":{"n":5}})
    );
    let metrics = http::get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == r#"tidings_messages_dropped_total{reason="discarded"} 2"#),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn in_process_history_channels_get_offsets() {
    let be = backend().await;
    let gw = gateway(&be, None).await;
    let mut c = user_42(&gw).await;
    let epoch = three_with_offsets(&gw, &mut c).await;
    let r = gw.publish(NOTES, json!({"n": 4})).await;
    let answer: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(answer["offset"], json!(4));
    assert_eq!(answer["epoch"], json!(epoch));
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":NOTES,"offset":4,"epoch":epoch,"data":{"n":4}})
    );
}

#[tokio::test]
async fn not_ready_until_the_history_function_is_loaded_even_when_redis_comes_late() {
    let port = free_port();
    let be = backend().await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", be.url())
            .env("TIDINGS_REDIS_URL", format!("redis://127.0.0.1:{port}"))
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.3"),
    )
    .await;
    let r = http::get(gw.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("history"), "{}", r.body);

    let redis = RedisServer::start_on(port).await;
    gw.wait_ready().await;
    // Ready means loaded: nothing has been published yet.
    let mut r = redis.client().await;
    let libs = r.cmd(&["FUNCTION", "LIST", "LIBRARYNAME", "tidings"]).await;
    assert!(matches!(&libs, Reply::Array(l) if l.len() == 1), "{libs:?}");
    let mut c = user_42(&gw).await;
    let e = three_with_offsets(&gw, &mut c).await;
    assert!(!e.is_empty());
}

/// A client's WebSocket `publish` on a channel whose rule keeps a history
/// goes through it too: the message carries its sender and its offset.
#[tokio::test]
async fn client_publishes_on_a_history_channel_get_offsets() {
    let gw = Gateway::start_with(GatewayOptions::default().toml(
        r#"
[[routing.rules]]
channel = "/app/room/lobby"
join = true
publish = true
anonymous = true
history = { size = 10, ttl_secs = 60 }
"#,
    ))
    .await;
    let mut c = Client::connect(&gw.ws_url()).await;
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong, json!({"type":"pong","id":"settle"}));
    for n in 1..=2u64 {
        c.send_json(json!({"type":"publish","channel":"/app/room/lobby","data":{"n":n},"id":n}))
            .await;
        // The reply and the message may come in either order.
        let (a, b) = (c.next_json().await, c.next_json().await);
        let (reply, message) = if a["type"] == "published" {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(reply["type"], "published", "{reply}");
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["from"], Value::Null);
        assert_eq!(message["data"], json!({"n": n}));
        assert_eq!(message["offset"], json!(n), "{message}");
        assert!(message["epoch"].is_string(), "{message}");
    }
}

/// A Redis that will never load the function library (here an ACL without
/// FUNCTION; Redis before 7.0 answers "unknown command" the same way): the
/// gateway still becomes ready, says plainly in its log that history is
/// off, and publishes on history channels as plain messages, without
/// offsets, instead of staying not ready for ever.
#[tokio::test]
async fn a_redis_that_refuses_functions_serves_without_history_rather_than_never_ready() {
    let redis = RedisServer::start().await;
    let mut r = redis.client().await;
    assert_eq!(
        r.cmd(&["ACL", "SETUSER", "default", "-function"])
            .await
            .as_str(),
        Some("OK")
    );
    let backend = backend().await;
    let gw = gateway(&backend, Some(&redis)).await;
    let mut c = user_42(&gw).await;
    let p = gw.publish(NOTES, json!({"n": 1})).await;
    assert_eq!(
        (p.status, p.body.as_str()),
        (202, r#"{"status":"accepted"}"#)
    );
    assert_eq!(
        c.next_json().await,
        json!({"type":"message","channel":NOTES,"data":{"n":1}})
    );
    assert!(gw.logs().contains("history is off"), "{}", gw.logs());
}

/// A storm of sockets of one user (its notification channel keeps a
/// history) reads the channel's position from Redis once, not once per
/// socket; each socket is told the same position, and the next publication
/// (offset one after it) reaches every one. After the last socket leaves,
/// the next socket reads again.
#[tokio::test]
async fn a_storm_of_sockets_on_one_channel_reads_its_position_once() {
    let redis = RedisServer::start().await;
    let be = backend().await;
    let gw = gateway(&be, Some(&redis)).await;
    let mut r = redis.client().await;
    let before = r.command_calls(&["fcall"]).await;

    let sockets: Vec<Client> = futures_util::future::join_all((0..40).map(|_| user_42(&gw))).await;
    assert_eq!(
        r.command_calls(&["fcall"]).await - before,
        1,
        "one tidings_position call for 40 sockets"
    );
    let positions: Vec<Value> = sockets
        .iter()
        .map(|c| c.welcome["positions"][NOTES].clone())
        .collect();
    assert_eq!(positions[0]["offset"], json!(0), "{positions:?}");
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "{positions:?}"
    );

    let epoch = positions[0]["epoch"].as_str().unwrap().to_owned();
    let answer = gw.publish(NOTES, json!({"n": 1})).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    for mut c in sockets {
        assert_eq!(
            c.next_json().await,
            json!({"type":"message","channel":NOTES,"offset":1,"epoch":epoch,"data":{"n":1}})
        );
    }
    // Every socket gone: the channel's kept position went with them.
    for _ in 0..200 {
        let m = http::get(gw.addr, "/metrics").await.body;
        let open = m
            .lines()
            .find_map(|l| l.strip_prefix("tidings_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if open == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = r.command_calls(&["fcall"]).await;
    let c = user_42(&gw).await;
    assert_eq!(c.welcome["positions"][NOTES]["offset"], json!(1));
    assert_eq!(r.command_calls(&["fcall"]).await - before, 1);
}
