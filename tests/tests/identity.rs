//! Identity through the real binary: the cookie proxy against a real HTTP
//! backend (forwarded cookies, verdicts, failures, caching, coalescing),
//! one-time tokens in a real Redis and in the gateway's memory, the
//! resolver chain, the Origin check, and that no credential ever reaches
//! the logs.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    http,
    redis::{RedisServer, Reply},
    ws::{Client, Refused},
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::time::{sleep, Instant};

/// How long "nothing arrives" is watched for.
const SHORT: Duration = Duration::from_millis(300);

const RESOLVERS: &str = "TIDINGS_IDENTITY__RESOLVERS";
const ANONYMOUS: &str = "TIDINGS_IDENTITY__ANONYMOUS";
const PROXY_URL: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__URL";
const PROXY_COOKIES: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__COOKIES";
const PROXY_HEADERS: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__HEADERS";
const PROXY_TIMEOUT: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__TIMEOUT_SECS";
const PROXY_CACHE_TTL: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__CACHE_TTL_SECS";
const PROXY_RETRY_AFTER: &str = "TIDINGS_IDENTITY__COOKIE_PROXY__RETRY_AFTER_SECS";

/// A gateway whose only resolver is the cookie proxy asking `backend`.
fn proxy(backend: &Backend) -> GatewayOptions {
    GatewayOptions::default()
        .env(RESOLVERS, r#"["cookie_proxy"]"#)
        .env(PROXY_URL, backend.url())
}

/// A gateway on the Redis at `url`, which redeems tokens there; Redis
/// outages are noticed, and recovered from, quickly.
fn on_redis(url: &str) -> GatewayOptions {
    GatewayOptions::default()
        .env("TIDINGS_REDIS_URL", url)
        .env("TIDINGS_REDIS__COMMAND_TIMEOUT_SECS", "1")
        .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.3")
}

/// A fresh, well-formed token (16-256 of `A-Za-z0-9-_.`), unique per call.
fn new_token(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{tag}-{nanos:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Redis key of `token` under the default prefix.
fn key(token: &str) -> String {
    format!("tidings:token:{token}")
}

/// `ws://.../ws?token=<token>`.
fn with_token(gw: &Gateway, token: &str) -> String {
    format!("{}?token={token}", gw.ws_url())
}

/// Waits until the gateway's token store answers: an unknown token gets
/// 401 rather than 503. (Right after startup the gateway may answer 503 for
/// a moment: see `ready_means_tokens_can_be_redeemed`.)
async fn tokens_ready(gw: &Gateway) {
    // The broker (publishing) too, not only the token store.
    gw.wait_ready().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = refused(&with_token(gw, &new_token("probe")), &[]).await;
        if r.status == 401 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "the token store never answered");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a socket that must be accepted, and waits until the channels it
/// joined on connect are subscribed (the session reads its first request
/// only once its joins are done, so the answer to a ping proves them).
async fn identified(url: &str, headers: &[(&str, &str)]) -> Client {
    let mut c = match Client::connect_with(url, headers).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade refused: {} {:?}", r.status, r.body),
    };
    let pong = c.request(json!({"type":"ping","id":"settle"})).await;
    assert_eq!(pong, json!({"type":"pong","id":"settle"}));
    c
}

/// Opens a socket that must be refused; returns the refusal.
async fn refused(url: &str, headers: &[(&str, &str)]) -> Refused {
    match Client::connect_with(url, headers).await {
        Ok(c) => panic!("expected a refusal, got {}", c.welcome),
        Err(r) => r,
    }
}

/// The refusal's header `name` (lowercase).
fn header<'a>(r: &'a Refused, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Publishes `data` on `channel` over HTTP, asserting it was accepted.
async fn publish(gw: &Gateway, channel: &str, data: Value) {
    let r = gw.publish(channel, data).await;
    assert_eq!(r.status, 202, "publish on {channel}: {}", r.body);
}

/// Asserts that the next frame is `data` on `channel`. A user notification
/// channel keeps a history (the default rule): its messages carry an
/// `offset` and an `epoch`, which are checked to be there and set aside.
async fn expect_message(c: &mut Client, channel: &str, data: Value) {
    let mut f = c.next_json().await;
    if channel.ends_with("/notifications") {
        assert!(f["offset"].is_u64() && f["epoch"].is_string(), "{f}");
        let o = f.as_object_mut().expect("an object");
        o.remove("offset");
        o.remove("epoch");
    }
    assert_eq!(f, json!({"type":"message","channel":channel,"data":data}));
}

/// Asserts that nothing arrives for a while.
async fn expect_silence(c: &mut Client, who: &str) {
    if let Some(f) = c.next_json_within(SHORT).await {
        panic!("{who} should have received nothing, got {f}");
    }
}

/// Asserts that `keeper` (user 42) is still served: a message on its
/// notifications channel reaches it.
async fn still_served(gw: &Gateway, keeper: &mut Client, n: u32) {
    publish(gw, "/app/user/42/notifications", json!({"n": n})).await;
    expect_message(keeper, "/app/user/42/notifications", json!({"n": n})).await;
}

#[tokio::test]
async fn cookie_proxy_forwards_the_cookie_and_delivers_to_exactly_that_user() {
    let backend = Backend::start(Mode::users([
        (
            "alice-session-1",
            json!({"user":"42","groups":["staff"],"channels":["/app/report/7"]}),
        ),
        ("bob-session-2", json!({"user": 43})),
    ]))
    .await;
    let gw = Gateway::start_with(proxy(&backend)).await;

    let mut alice = identified(
        &gw.ws_url(),
        &[("Cookie", "sessionid=alice-session-1; theme=dark")],
    )
    .await;
    assert_eq!(backend.call_count(), 1);
    let call = backend.last_call();
    assert_eq!(call.path, "/whoami");
    assert_eq!(
        call.cookie.as_deref(),
        Some("sessionid=alice-session-1; theme=dark"),
        "the whole Cookie header is forwarded when no cookie names are configured"
    );
    assert_eq!(call.header("accept"), Some("application/json"));
    assert_eq!(alice.welcome["user"], "42");
    assert_eq!(
        alice.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/42/notifications",
            "/app/report/7"
        ])
    );

    let mut bob = identified(&gw.ws_url(), &[("Cookie", "sessionid=bob-session-2")]).await;
    assert_eq!(
        backend.last_call().cookie.as_deref(),
        Some("sessionid=bob-session-2")
    );
    assert_eq!(bob.welcome["user"], "43", "numeric user ids become strings");
    assert_eq!(
        bob.welcome["channels"],
        json!(["/app/broadcast", "/app/user/43/notifications"])
    );

    // A cookie the backend does not know: {"user": null}, anonymous.
    let mut stranger = identified(&gw.ws_url(), &[("Cookie", "sessionid=unknown")]).await;
    assert_eq!(stranger.welcome["user"], Value::Null);
    assert_eq!(stranger.welcome["channels"], json!(["/app/broadcast"]));
    assert_eq!(backend.call_count(), 3);
    // No Cookie header at all: the backend is not asked.
    let mut nobody = identified(&gw.ws_url(), &[]).await;
    assert_eq!(nobody.welcome["user"], Value::Null);
    assert_eq!(backend.call_count(), 3, "no credentials, no backend call");

    // Each user's channel reaches that user's socket only.
    publish(&gw, "/app/user/42/notifications", json!({"for":"alice"})).await;
    publish(&gw, "/app/user/43/notifications", json!({"for":"bob"})).await;
    publish(&gw, "/app/report/7", json!("report")).await;
    expect_message(
        &mut alice,
        "/app/user/42/notifications",
        json!({"for":"alice"}),
    )
    .await;
    expect_message(&mut alice, "/app/report/7", json!("report")).await;
    expect_message(&mut bob, "/app/user/43/notifications", json!({"for":"bob"})).await;
    expect_silence(&mut alice, "alice").await;
    expect_silence(&mut bob, "bob").await;
    expect_silence(&mut stranger, "the anonymous socket").await;
    expect_silence(&mut nobody, "the cookie-less socket").await;

    // The broadcast channel reaches everyone.
    publish(&gw, "/app/broadcast", json!("all")).await;
    for c in [&mut alice, &mut bob, &mut stranger, &mut nobody] {
        expect_message(c, "/app/broadcast", json!("all")).await;
    }
}

#[tokio::test]
async fn cookie_proxy_forwards_only_the_configured_cookies_and_headers() {
    let backend = Backend::start(Mode::users([
        ("s1-value", json!({"user":"1"})),
        ("s2-value", json!({"user":"2"})),
    ]))
    .await;
    let gw = Gateway::start_with(
        proxy(&backend)
            .env(PROXY_COOKIES, r#"["sessionid"]"#)
            .env(PROXY_HEADERS, r#"["authorization"]"#),
    )
    .await;

    let c = identified(
        &gw.ws_url(),
        &[("Cookie", "csrftoken=c1; sessionid=s1-value; theme=dark")],
    )
    .await;
    assert_eq!(c.welcome["user"], "1");
    let call = backend.last_call();
    assert_eq!(call.cookie.as_deref(), Some("sessionid=s1-value"));
    assert_eq!(call.header("authorization"), None);

    let c = identified(
        &gw.ws_url(),
        &[
            ("Cookie", "sessionid=s2-value; other=x"),
            ("Authorization", "Bearer header-secret"),
        ],
    )
    .await;
    assert_eq!(c.welcome["user"], "2");
    let call = backend.last_call();
    assert_eq!(call.cookie.as_deref(), Some("sessionid=s2-value"));
    assert_eq!(call.header("authorization"), Some("Bearer header-secret"));
    assert_eq!(backend.call_count(), 2);

    // Cookies, but not the configured one: nothing to forward, no call.
    let c = identified(&gw.ws_url(), &[("Cookie", "csrftoken=c1; theme=dark")]).await;
    assert_eq!(c.welcome["user"], Value::Null);
    assert_eq!(backend.call_count(), 2);
}

#[tokio::test]
async fn backend_verdicts_and_failures_decide_the_upgrade_and_others_stay_served() {
    let backend = Backend::start(Mode::users([("keeper", json!({"user":"42"}))])).await;
    let gw = Gateway::start_with(
        proxy(&backend)
            .env(PROXY_CACHE_TTL, "0")
            .env(PROXY_TIMEOUT, "0.5")
            .env(PROXY_RETRY_AFTER, "7"),
    )
    .await;
    let url = gw.ws_url();
    let mut keeper = identified(&url, &[("Cookie", "sid=keeper")]).await;
    assert_eq!(keeper.welcome["user"], "42");
    let mut calls = backend.call_count();
    let mut n = 0;

    // {"user": null}: anonymous, broadcast only.
    backend.set_mode(Mode::Json(json!({"user": null})));
    let anon = identified(&url, &[("Cookie", "sid=nobody")]).await;
    assert_eq!(anon.welcome["user"], Value::Null);
    assert_eq!(anon.welcome["channels"], json!(["/app/broadcast"]));
    anon.close().await;

    // The backend's 401 and 403 are the upgrade's.
    for status in [401, 403] {
        backend.set_mode(Mode::Status(status));
        let r = refused(&url, &[("Cookie", "sid=refused")]).await;
        assert_eq!(r.status, status, "backend {status}: {}", r.body);
        assert_eq!(header(&r, "retry-after"), None);
    }

    assert_eq!(backend.call_count(), calls + 3, "one call per upgrade");
    calls = backend.call_count();

    // The backend failing in any way: 503 with Retry-After, within bounds.
    let failures = [
        ("500", Mode::Status(500)),
        ("502", Mode::Status(502)),
        (
            "invalid identity JSON",
            Mode::Json(json!(["not", "an", "identity"])),
        ),
        (
            "slower than the timeout",
            Mode::slow(Duration::from_secs(5), Mode::Json(json!({"user":"42"}))),
        ),
        ("no answer", Mode::Hang),
    ];
    for (what, mode) in failures {
        backend.set_mode(mode);
        let started = Instant::now();
        let r = refused(&url, &[("Cookie", "sid=keeper")]).await;
        let took = started.elapsed();
        assert_eq!(r.status, 503, "backend {what}: {}", r.body);
        assert_eq!(header(&r, "retry-after"), Some("7"), "backend {what}");
        assert!(
            took < Duration::from_secs(3),
            "backend {what}: refused after {took:?} with a 0.5 s timeout"
        );
        if matches!(what, "slower than the timeout" | "no answer") {
            assert!(
                took >= Duration::from_millis(450),
                "backend {what}: refused after {took:?}, before the 0.5 s timeout"
            );
        }
        assert_eq!(backend.call_count(), calls + 1, "backend {what}");
        calls = backend.call_count();
        n += 1;
        still_served(&gw, &mut keeper, n).await;
    }
    assert_eq!(n, 5);

    // Nothing listening at all (connection refused).
    backend.stop().await;
    let started = Instant::now();
    let r = refused(&url, &[("Cookie", "sid=keeper")]).await;
    assert_eq!(r.status, 503, "backend down: {}", r.body);
    assert_eq!(header(&r, "retry-after"), Some("7"));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !r.body.contains("keeper"),
        "the refusal must not echo the cookie: {}",
        r.body
    );
    still_served(&gw, &mut keeper, 99).await;
    // Anonymous sockets are still welcome meanwhile.
    let c = identified(&url, &[]).await;
    assert_eq!(c.welcome["user"], Value::Null);
}

#[tokio::test]
async fn anonymous_refuse_answers_401_to_unrecognized_sockets() {
    let backend = Backend::start(Mode::users([("known", json!({"user":"5"}))])).await;
    let gw = Gateway::start_with(proxy(&backend).env(ANONYMOUS, "refuse")).await;

    let r = refused(&gw.ws_url(), &[("Cookie", "sid=stranger")]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(backend.call_count(), 1, "the backend was asked first");
    let r = refused(&gw.ws_url(), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(backend.call_count(), 1);

    let c = identified(&gw.ws_url(), &[("Cookie", "sid=known")]).await;
    assert_eq!(c.welcome["user"], "5");
}

/// Opens `n` sockets at once, all with `cookie`; all must be user 42.
/// Returns how long it took until every one was open.
async fn storm(gw: &Gateway, n: usize, cookie: &'static str) -> Duration {
    let url = gw.ws_url();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.clone();
        set.spawn(async move {
            match Client::connect_with(&url, &[("Cookie", cookie)]).await {
                Ok(c) => c,
                Err(r) => panic!("upgrade refused: {} {}", r.status, r.body),
            }
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(c) = set.join_next().await {
        let c = c.expect("connect task");
        assert_eq!(c.welcome["user"], "42");
        clients.push(c);
    }
    assert_eq!(clients.len(), n);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_with_one_cookie_makes_one_backend_call() {
    // Coalescing alone, with the cache off: identical lookups that overlap
    // the one in flight wait for it. The backend is slow enough for all of
    // them to arrive while it thinks.
    let backend = Backend::start(Mode::slow(
        Duration::from_secs(2),
        Mode::users([("storm-session", json!({"user":"42"}))]),
    ))
    .await;
    let gw = Gateway::start_with(
        proxy(&backend)
            .env(PROXY_CACHE_TTL, "0")
            .env(PROXY_TIMEOUT, "10"),
    )
    .await;
    let took = storm(&gw, 100, "sessionid=storm-session").await;
    assert_eq!(
        backend.call_count(),
        1,
        "100 overlapping identical lookups, cache off: one backend call (all open after {took:?})"
    );
    drop(gw);

    // The storm with the cache on (a TTL longer than the storm, so a busy
    // machine cannot make it expire midway): 1,000 sockets reconnecting at
    // once with one cookie, a backend taking 300 ms.
    backend.clear_calls();
    backend.set_mode(Mode::slow(
        Duration::from_millis(300),
        Mode::users([("storm-session", json!({"user":"42"}))]),
    ));
    let gw = Gateway::start_with(proxy(&backend).env(PROXY_CACHE_TTL, "30")).await;
    let took = storm(&gw, 1000, "sessionid=storm-session").await;
    assert_eq!(
        backend.call_count(),
        1,
        "1,000 identical upgrades: one backend call (all open after {took:?})"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn the_cache_reuses_answers_within_its_ttl_only() {
    let backend = Backend::start(Mode::users([
        ("c1", json!({"user":"1"})),
        ("c2", json!({"user":"2"})),
    ]))
    .await;

    // Cache off: every sequential connect asks.
    let gw = Gateway::start_with(proxy(&backend).env(PROXY_CACHE_TTL, "0")).await;
    for i in 1..=3 {
        let c = identified(&gw.ws_url(), &[("Cookie", "sid=c1")]).await;
        assert_eq!(c.welcome["user"], "1");
        assert_eq!(backend.call_count(), i);
    }
    drop(gw);

    // Cache on: a second connect within the TTL does not ask again.
    backend.clear_calls();
    let gw = Gateway::start_with(proxy(&backend).env(PROXY_CACHE_TTL, "0.8")).await;
    let started = Instant::now();
    for _ in 0..3 {
        let c = identified(&gw.ws_url(), &[("Cookie", "sid=c1")]).await;
        assert_eq!(c.welcome["user"], "1");
    }
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "setup too slow for the TTL"
    );
    assert_eq!(backend.call_count(), 1, "answered from the cache");
    // Other credentials are another entry.
    let c = identified(&gw.ws_url(), &[("Cookie", "sid=c2")]).await;
    assert_eq!(c.welcome["user"], "2");
    assert_eq!(backend.call_count(), 2);
    // Once the TTL has passed, the backend is asked again.
    // (The entry dates from the answer, just after the backend got the call.)
    let first_call = Instant::from_std(backend.calls()[0].at);
    tokio::time::sleep_until(first_call + Duration::from_millis(1000)).await;
    let c = identified(&gw.ws_url(), &[("Cookie", "sid=c1")]).await;
    assert_eq!(c.welcome["user"], "1");
    assert_eq!(backend.call_count(), 3, "the entry expired");

    // A refusal is cached; a failure is not.
    backend.set_mode(Mode::Status(500));
    let r = refused(&gw.ws_url(), &[("Cookie", "sid=c3")]).await;
    assert_eq!(r.status, 503);
    backend.set_mode(Mode::users([("c3", json!({"user":"3"}))]));
    let c = identified(&gw.ws_url(), &[("Cookie", "sid=c3")]).await;
    assert_eq!(c.welcome["user"], "3", "a failed lookup must not be cached");
    assert_eq!(backend.call_count(), 5);
    backend.set_mode(Mode::Status(403));
    let r = refused(&gw.ws_url(), &[("Cookie", "sid=c4")]).await;
    assert_eq!(r.status, 403);
    backend.set_mode(Mode::users([("c4", json!({"user":"4"}))]));
    let r = refused(&gw.ws_url(), &[("Cookie", "sid=c4")]).await;
    assert_eq!(r.status, 403, "the refusal is reused within the TTL");
    assert_eq!(backend.call_count(), 6);
}

#[tokio::test]
async fn redis_tokens_are_redeemed_once_and_expire() {
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start_with(on_redis(&redis.url()).env(RESOLVERS, r#"["token"]"#)).await;
    tokens_ready(&gw).await;
    let mut r = redis.client().await;
    let ok = Reply::Simple("OK".into());

    // Identity JSON, in the query.
    let t = new_token("json");
    assert_eq!(
        r.cmd(&["SET", &key(&t), r#"{"user":"7","groups":["g"]}"#, "EX", "5"])
            .await,
        ok
    );
    let mut seven = identified(&with_token(&gw, &t), &[]).await;
    assert_eq!(seven.welcome["user"], "7");
    assert_eq!(
        seven.welcome["channels"],
        json!(["/app/broadcast", "/app/user/7/notifications"])
    );
    assert_eq!(
        r.cmd(&["EXISTS", &key(&t)]).await.as_int(),
        Some(0),
        "redeemed with GETDEL"
    );
    publish(&gw, "/app/user/7/notifications", json!("for 7")).await;
    expect_message(&mut seven, "/app/user/7/notifications", json!("for 7")).await;

    // The same token again.
    let refusal = refused(&with_token(&gw, &t), &[]).await;
    assert_eq!(refusal.status, 401, "{}", refusal.body);

    // Expired by Redis before use.
    let t = new_token("short");
    assert_eq!(
        r.cmd(&["SET", &key(&t), r#"{"user":"7"}"#, "PX", "100"])
            .await,
        ok
    );
    sleep(SHORT).await;
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);

    // A bare user id as the value.
    let t = new_token("bare");
    r.cmd(&["SET", &key(&t), "8", "EX", "5"]).await;
    let c = identified(&with_token(&gw, &t), &[]).await;
    assert_eq!(c.welcome["user"], "8");

    // In the tidings_token cookie.
    let t = new_token("cookie");
    r.cmd(&["SET", &key(&t), r#"{"user":"9"}"#, "EX", "5"])
        .await;
    let cookie = format!("theme=dark; tidings_token={t}");
    let c = identified(&gw.ws_url(), &[("Cookie", &cookie)]).await;
    assert_eq!(c.welcome["user"], "9");
    assert_eq!(r.cmd(&["EXISTS", &key(&t)]).await.as_int(), Some(0));

    // Malformed, unknown, and a stored value that is no identity.
    assert_eq!(refused(&with_token(&gw, "abc"), &[]).await.status, 401);
    let t = new_token("unknown");
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);
    let t = new_token("garbage");
    r.cmd(&["SET", &key(&t), "{not json", "EX", "5"]).await;
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);

    // No token: the anonymous policy (allow).
    let c = identified(&gw.ws_url(), &[]).await;
    assert_eq!(c.welcome["user"], Value::Null);

    // Redis down: 503 with Retry-After, promptly; the open socket stays.
    redis.kill().await;
    let deadline = Instant::now() + PATIENCE;
    let refusal = loop {
        let started = Instant::now();
        let refusal = refused(&with_token(&gw, &new_token("down")), &[]).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "refused only after {:?}",
            started.elapsed()
        );
        if refusal.status == 503 || Instant::now() > deadline {
            break refusal;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refusal.status, 503, "{}", refusal.body);
    assert!(
        header(&refusal, "retry-after").is_some(),
        "{:?}",
        refusal.headers
    );
    assert_eq!(
        seven.request(json!({"type":"ping"})).await["type"],
        "pong",
        "the open socket is still served"
    );

    // Redis back: tokens work again.
    redis.restart().await;
    let mut r = redis.client().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let t = new_token("back");
        r.cmd(&["SET", &key(&t), "10", "EX", "5"]).await;
        match Client::connect_with(&with_token(&gw, &t), &[]).await {
            Ok(c) => {
                assert_eq!(c.welcome["user"], "10");
                break;
            }
            Err(refusal) => {
                assert_eq!(refusal.status, 503, "{}", refusal.body);
                assert!(
                    Instant::now() < deadline,
                    "tokens still refused after Redis came back"
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Polls `/readyz` until it answers 200, then asks with an unknown token:
/// the answer's status (401 if the token store answered).
async fn token_status_once_ready(gw: &Gateway) -> u16 {
    let deadline = Instant::now() + PATIENCE;
    while http::get(gw.addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        sleep(Duration::from_millis(2)).await;
    }
    match Client::connect_with(&with_token(gw, &new_token("ready")), &[]).await {
        Ok(c) => panic!("an unknown token was accepted: {}", c.welcome),
        Err(r) => r.status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_tokens_can_be_redeemed() {
    // A gateway that says it is ready (`/readyz` 200, what a load balancer
    // waits for) must redeem tokens: an unknown token gets 401, not 503.
    // Checked right after startup and right after Redis came back, on
    // several gateways and twice (the window is a race).
    const GATEWAYS: usize = 6;
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let started = futures_util::future::join_all((0..GATEWAYS).map(|_| async {
        let gw = Gateway::start_with(
            GatewayOptions::default()
                .env("TIDINGS_REDIS_URL", url.as_str())
                .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "1")
                .env(RESOLVERS, r#"["token"]"#),
        )
        .await;
        let status = token_status_once_ready(&gw).await;
        (gw, status)
    }))
    .await;
    let (gws, at_start): (Vec<Gateway>, Vec<u16>) = started.into_iter().unzip();
    let mut seen = vec![("startup".to_owned(), at_start)];

    for round in 1..=2 {
        if seen
            .iter()
            .any(|(_, statuses)| statuses.iter().any(|s| *s != 401))
        {
            break; // seen already
        }
        redis.kill().await;
        for gw in &gws {
            let deadline = Instant::now() + PATIENCE;
            while http::get(gw.addr, "/readyz").await.status == 200 {
                assert!(Instant::now() < deadline, "still ready without Redis");
                sleep(Duration::from_millis(10)).await;
            }
        }
        sleep(Duration::from_secs(1)).await;
        redis.restart().await;
        let statuses =
            futures_util::future::join_all(gws.iter().map(token_status_once_ready)).await;
        seen.push((format!("Redis restart {round}"), statuses));
    }

    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, statuses)| statuses.iter().any(|s| *s != 401))
        .collect();
    assert!(
        bad.is_empty(),
        "/readyz said 200, yet an unknown token got 503 (the token store was not \
         connected) instead of 401: {bad:?}"
    );
}

#[tokio::test]
async fn the_chain_asks_the_cookie_proxy_first_then_the_token() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(Mode::Json(json!({"user": null}))).await;
    let gw = Gateway::start_with(
        on_redis(&redis.url())
            .env(RESOLVERS, r#"["cookie_proxy","token"]"#)
            .env(PROXY_URL, backend.url())
            .env(PROXY_CACHE_TTL, "0"),
    )
    .await;
    tokens_ready(&gw).await;
    let mut r = redis.client().await;

    // The backend does not know the cookie: the token decides.
    let t = new_token("chain");
    r.cmd(&["SET", &key(&t), r#"{"user":"7"}"#, "EX", "5"])
        .await;
    let c = identified(&with_token(&gw, &t), &[("Cookie", "sessionid=stale")]).await;
    assert_eq!(c.welcome["user"], "7");
    assert_eq!(backend.call_count(), 1, "the cookie proxy was asked first");

    // The backend knows the cookie: it decides, the token stays unused.
    backend.set_mode(Mode::users([("fresh", json!({"user":"42"}))]));
    let t = new_token("unused");
    r.cmd(&["SET", &key(&t), r#"{"user":"7"}"#, "EX", "5"])
        .await;
    let c = identified(&with_token(&gw, &t), &[("Cookie", "sessionid=fresh")]).await;
    assert_eq!(c.welcome["user"], "42");
    assert_eq!(r.cmd(&["EXISTS", &key(&t)]).await.as_int(), Some(1));

    // A refusal by the backend decides too.
    backend.set_mode(Mode::Status(403));
    let refusal = refused(&with_token(&gw, &t), &[("Cookie", "sessionid=fresh")]).await;
    assert_eq!(refusal.status, 403);
    assert_eq!(r.cmd(&["EXISTS", &key(&t)]).await.as_int(), Some(1));

    // No cookie: straight to the token.
    let calls = backend.call_count();
    let c = identified(&with_token(&gw, &t), &[]).await;
    assert_eq!(c.welcome["user"], "7");
    assert_eq!(backend.call_count(), calls);
}

/// `POST /api/tokens` on `gw`: the status and the parsed body.
async fn mint(gw: &Gateway, body: Value) -> (u16, Value) {
    let res = http::request(
        gw.addr,
        "POST",
        "/api/tokens",
        &[("Content-Type".to_owned(), "application/json".to_owned())],
        body.to_string().as_bytes(),
    )
    .await;
    let parsed = serde_json::from_str(&res.body).unwrap_or(Value::Null);
    (res.status, parsed)
}

#[tokio::test]
async fn tokens_without_redis_are_minted_by_the_gateway_and_redeemed_once() {
    let gw = Gateway::start_with(GatewayOptions::default().env(RESOLVERS, r#"["token"]"#)).await;

    let (status, body) = mint(
        &gw,
        json!({"identity":{"user":"42","channels":["/app/report/9"]},"ttl_secs":5}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_in"], 5.0);
    let t = body["token"].as_str().expect("token").to_owned();
    let mut c = identified(&with_token(&gw, &t), &[]).await;
    assert_eq!(c.welcome["user"], "42");
    assert_eq!(
        c.welcome["channels"],
        json!([
            "/app/broadcast",
            "/app/user/42/notifications",
            "/app/report/9"
        ])
    );
    publish(&gw, "/app/report/9", json!("r")).await;
    expect_message(&mut c, "/app/report/9", json!("r")).await;
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);

    // In the cookie.
    let (_, body) = mint(&gw, json!({"identity":{"user":"43"}})).await;
    let cookie = format!("tidings_token={}", body["token"].as_str().expect("token"));
    let c = identified(&gw.ws_url(), &[("Cookie", &cookie)]).await;
    assert_eq!(c.welcome["user"], "43");
    assert_eq!(
        refused(&gw.ws_url(), &[("Cookie", &cookie)]).await.status,
        401
    );

    // Expired before use.
    let (status, body) = mint(&gw, json!({"identity":{"user":"44"},"ttl_secs":0.1})).await;
    assert_eq!(status, 201, "{body}");
    sleep(SHORT).await;
    let t = body["token"].as_str().expect("token");
    assert_eq!(refused(&with_token(&gw, t), &[]).await.status, 401);
}

#[tokio::test]
async fn the_origin_is_checked_before_anyone_is_asked() {
    let backend = Backend::start(Mode::users([("s", json!({"user":"42"}))])).await;
    let cookie = ("Cookie", "sessionid=s");

    // Default: same origin only.
    let gw = Gateway::start_with(proxy(&backend)).await;
    let r = refused(&gw.ws_url(), &[cookie, ("Origin", "http://evil.example")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        backend.call_count(),
        0,
        "a foreign page's cookies never reach the backend"
    );
    let port = gw.addr.port();
    for foreign in [
        format!("http://127.0.0.1:{}", port + 1),
        format!("http://localhost:{port}"),
        "null".to_owned(),
    ] {
        let r = refused(&gw.ws_url(), &[cookie, ("Origin", &foreign)]).await;
        assert_eq!(r.status, 403, "Origin {foreign}");
    }
    // The Host header is 127.0.0.1:<port>: that origin is this one.
    let same = format!("http://127.0.0.1:{port}");
    let c = identified(&gw.ws_url(), &[cookie, ("Origin", &same)]).await;
    assert_eq!(c.welcome["user"], "42");
    // No Origin (not a browser): allowed.
    let c = identified(&gw.ws_url(), &[cookie]).await;
    assert_eq!(c.welcome["user"], "42");
    drop(gw);

    // A list: exactly those origins.
    let gw = Gateway::start_with(proxy(&backend).env(
        "TIDINGS_WEBSOCKET__ALLOWED_ORIGINS",
        r#"["http://app.example"]"#,
    ))
    .await;
    let c = identified(&gw.ws_url(), &[cookie, ("Origin", "http://app.example")]).await;
    assert_eq!(c.welcome["user"], "42");
    let calls = backend.call_count();
    for foreign in [
        "http://evil.example".to_owned(),
        "https://app.example".to_owned(),
        "http://app.example.evil.example".to_owned(),
        format!("http://127.0.0.1:{}", gw.addr.port()),
    ] {
        let r = refused(&gw.ws_url(), &[cookie, ("Origin", &foreign)]).await;
        assert_eq!(r.status, 403, "Origin {foreign}");
    }
    assert_eq!(backend.call_count(), calls);
}

#[tokio::test]
async fn no_cookie_or_token_ever_reaches_the_logs() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(Mode::users([("SECRETcookieOK4711", json!({"user":"42"}))])).await;
    let gw = Gateway::start_with(
        on_redis(&redis.url())
            .env("TIDINGS_LOG__LEVEL", "debug")
            .env(RESOLVERS, r#"["cookie_proxy","token"]"#)
            .env(PROXY_URL, backend.url())
            .env(PROXY_HEADERS, r#"["authorization"]"#)
            .env(PROXY_CACHE_TTL, "0")
            .env(PROXY_TIMEOUT, "0.5"),
    )
    .await;
    tokens_ready(&gw).await;
    let url = gw.ws_url();
    let mut r = redis.client().await;
    let mut secrets: Vec<String> = Vec::new();

    // Cookie identified; the Authorization header forwarded.
    secrets.push("SECRETcookieOK4711".into());
    secrets.push("SECRETbearer0815".into());
    let c = identified(
        &url,
        &[
            ("Cookie", "sessionid=SECRETcookieOK4711"),
            ("Authorization", "Bearer SECRETbearer0815"),
        ],
    )
    .await;
    assert_eq!(c.welcome["user"], "42");

    // Cookie unknown, then a token identifies; the token reused.
    let t = new_token("SECRETtokenA");
    r.cmd(&["SET", &key(&t), r#"{"user":"7"}"#, "EX", "5"])
        .await;
    let c = identified(
        &with_token(&gw, &t),
        &[("Cookie", "sessionid=SECRETstale99")],
    )
    .await;
    assert_eq!(c.welcome["user"], "7");
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);
    secrets.extend([t, "SECRETstale99".into()]);

    // A token in the cookie; an unknown token; a malformed one.
    let t = new_token("SECRETtokenB");
    r.cmd(&["SET", &key(&t), "8", "EX", "5"]).await;
    let cookie = format!("tidings_token={t}");
    assert_eq!(
        identified(&url, &[("Cookie", &cookie)]).await.welcome["user"],
        "8"
    );
    let unknown = new_token("SECRETtokenC");
    assert_eq!(refused(&with_token(&gw, &unknown), &[]).await.status, 401);
    assert_eq!(
        refused(&with_token(&gw, "SECRETbad"), &[]).await.status,
        401
    );
    secrets.extend([t, unknown, "SECRETbad".into()]);

    // Backend refusals and failures, and a foreign Origin.
    for (cookie, mode, status) in [
        ("SECRETcookie401", Mode::Status(401), 401),
        ("SECRETcookie403", Mode::Status(403), 403),
        ("SECRETcookie500", Mode::Status(500), 503),
        ("SECRETcookieHang", Mode::Hang, 503),
    ] {
        backend.set_mode(mode);
        let header = format!("sessionid={cookie}");
        assert_eq!(refused(&url, &[("Cookie", &header)]).await.status, status);
        secrets.push(cookie.into());
    }
    let r403 = refused(
        &url,
        &[
            ("Cookie", "sessionid=SECREToriginCookie"),
            ("Origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(r403.status, 403);
    secrets.push("SECREToriginCookie".into());
    backend.stop().await;
    assert_eq!(
        refused(&url, &[("Cookie", "sessionid=SECRETcookieDown")])
            .await
            .status,
        503
    );
    secrets.push("SECRETcookieDown".into());

    // The token store down.
    redis.kill().await;
    let t = new_token("SECRETtokenD");
    let deadline = Instant::now() + PATIENCE;
    while refused(&with_token(&gw, &t), &[]).await.status != 503 {
        assert!(Instant::now() < deadline, "no 503 with Redis down");
        sleep(Duration::from_millis(50)).await;
    }
    secrets.push(t);

    // Debug logging is on and saw these paths (the log reader is async:
    // wait for the last one).
    let deadline = Instant::now() + PATIENCE;
    let logs = loop {
        let logs = gw.logs();
        if logs.contains("token store unavailable") || Instant::now() > deadline {
            break logs;
        }
        sleep(Duration::from_millis(20)).await;
    };
    for expected in [
        "DEBUG",
        "identified",
        "upgrade refused",
        "identity backend unavailable",
        "token store unavailable",
    ] {
        assert!(
            logs.contains(expected),
            "the logs lack {expected:?}:\n{logs}"
        );
    }
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|s| logs.contains(s.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "credentials in the logs: {leaked:?}\n{}",
        logs.lines()
            .filter(|l| leaked.iter().any(|s| l.contains(s.as_str())))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !logs.contains("SECRET"),
        "part of a credential is in the logs:\n{logs}"
    );
}

#[tokio::test]
async fn a_whoami_answer_with_a_mistyped_field_never_puts_its_value_in_the_logs() {
    // A backend that echoes the session cookie into a field of the wrong
    // type: serde_json's error message would quote it.
    let backend = Backend::start(Mode::Json(json!({"user": "42"}))).await;
    let gw = Gateway::start_with(
        proxy(&backend)
            .env("TIDINGS_LOG__LEVEL", "debug")
            .env(PROXY_CACHE_TTL, "0"),
    )
    .await;
    let answers = [
        ("SECRETgroupsEcho1", "groups"),
        ("SECRETuserEcho2", "user"),
        ("SECRETchannelsEcho3", "channels"),
    ];
    for (secret, field) in answers {
        let body = match field {
            "groups" => json!({"user": "42", "groups": secret}),
            "user" => json!({"user": {"session": secret}}),
            _ => json!({"user": "42", "channels": [1, secret, {"x": secret}]}),
        };
        backend.set_mode(Mode::Json(body));
        let cookie = format!("sessionid={secret}");
        let r = refused(&gw.ws_url(), &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(!r.body.contains(secret), "{}", r.body);
    }
    // One warning per answer (the log reader is async: wait for them).
    let deadline = Instant::now() + PATIENCE;
    let logs = loop {
        let logs = gw.logs();
        if logs.matches("identity backend unavailable").count() >= answers.len() {
            break logs;
        }
        assert!(Instant::now() < deadline, "warnings missing:\n{logs}");
        sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !logs.contains("SECRET"),
        "a value of the backend's answer is in the logs:\n{}",
        logs.lines()
            .filter(|l| l.contains("SECRET"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The warnings still say what is wrong, and where.
    for (_, field) in answers {
        assert!(
            logs.contains(&format!("field `{field}`")),
            "no warning names the field {field}:\n{logs}"
        );
    }
}

#[tokio::test]
async fn a_token_minted_for_nobody_obeys_the_anonymous_policy() {
    // Refused: a token whose identity has no user opens no socket.
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env(RESOLVERS, r#"["token"]"#)
            .env(ANONYMOUS, "refuse"),
    )
    .await;
    for identity in [json!({"user": null}), json!({}), json!({"user": ""})] {
        let (status, body) = mint(&gw, json!({ "identity": identity })).await;
        assert_eq!(status, 201, "{body}");
        let t = body["token"].as_str().expect("token");
        let r = refused(&with_token(&gw, t), &[]).await;
        assert_eq!(r.status, 401, "token for {identity}: {}", r.body);
    }
    let (_, body) = mint(&gw, json!({"identity": {"user": "42"}})).await;
    let c = identified(
        &with_token(&gw, body["token"].as_str().expect("token")),
        &[],
    )
    .await;
    assert_eq!(c.welcome["user"], "42");
    drop(gw);

    // Allowed: the same token opens an anonymous socket.
    let gw = Gateway::start_with(GatewayOptions::default().env(RESOLVERS, r#"["token"]"#)).await;
    let (_, body) = mint(&gw, json!({"identity": {"user": null}})).await;
    let c = identified(
        &with_token(&gw, body["token"].as_str().expect("token")),
        &[],
    )
    .await;
    assert_eq!(c.welcome["user"], Value::Null);
    assert_eq!(c.welcome["channels"], json!(["/app/broadcast"]));
}

#[tokio::test]
async fn the_token_cookie_is_not_forwarded_to_the_whoami_backend() {
    let backend = Backend::start(Mode::users([("s1", json!({"user": "42"}))])).await;
    let gw = Gateway::start_with(
        proxy(&backend)
            .env(RESOLVERS, r#"["cookie_proxy","token"]"#)
            .env(PROXY_CACHE_TTL, "0"),
    )
    .await;
    let (status, body) = mint(&gw, json!({"identity": {"user": "7"}})).await;
    assert_eq!(status, 201, "{body}");
    let t = body["token"].as_str().expect("token").to_owned();

    // The session cookie identifies; the token cookie never reaches the
    // backend (nor the token in the query: the backend gets no query).
    let cookie = format!("sessionid=s1; tidings_token={t}; theme=dark");
    let c = identified(&with_token(&gw, &t), &[("Cookie", &cookie)]).await;
    assert_eq!(c.welcome["user"], "42");
    let call = backend.last_call();
    assert_eq!(call.cookie.as_deref(), Some("sessionid=s1; theme=dark"));
    assert_eq!(call.path, "/whoami");
    assert!(
        !call.headers.iter().any(|(_, v)| v.contains(&t)),
        "the token reached the backend: {:?}",
        call.headers
    );

    // Only the token cookie: nothing for the backend, the token decides.
    let calls = backend.call_count();
    let cookie = format!("tidings_token={t}");
    let c = identified(&gw.ws_url(), &[("Cookie", &cookie)]).await;
    assert_eq!(c.welcome["user"], "7");
    assert_eq!(backend.call_count(), calls, "the backend was not asked");
    drop(gw);

    // Listed in `cookies`, it is forwarded: the operator asked for it.
    let gw = Gateway::start_with(
        proxy(&backend)
            .env(PROXY_COOKIES, r#"["sessionid","tidings_token"]"#)
            .env(PROXY_CACHE_TTL, "0"),
    )
    .await;
    let c = identified(
        &gw.ws_url(),
        &[("Cookie", "sessionid=s1; tidings_token=t2")],
    )
    .await;
    assert_eq!(c.welcome["user"], "42");
    assert_eq!(
        backend.last_call().cookie.as_deref(),
        Some("sessionid=s1; tidings_token=t2")
    );
}

#[tokio::test]
async fn a_redemption_that_timed_out_against_a_frozen_redis_does_not_spend_the_token() {
    let redis = RedisServer::start().await;
    // Redis commands time out after 1 s.
    let gw = Gateway::start_with(on_redis(&redis.url()).env(RESOLVERS, r#"["token"]"#)).await;
    tokens_ready(&gw).await;
    let mut r = redis.client().await;
    let t = new_token("frozen");
    r.cmd(&["SET", &key(&t), r#"{"user":"7"}"#, "EX", "60"])
        .await;
    // Whatever command the gateway redeems with.
    const REDEEMING: [&str; 3] = ["getdel", "eval", "evalsha"];
    let before = r.command_calls(&REDEEMING).await;

    // Redis frozen: the redemption is sent, and waits in Redis's input
    // buffer; the gateway gives up and answers 503.
    redis.pause();
    let refusal = refused(&with_token(&gw, &t), &[]).await;
    redis.resume();
    assert_eq!(refusal.status, 503, "{}", refusal.body);

    // Thawed, Redis runs the waiting redemption: it must leave the token.
    let deadline = Instant::now() + PATIENCE;
    while r.command_calls(&REDEEMING).await <= before {
        assert!(Instant::now() < deadline, "Redis never ran the redemption");
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        r.cmd(&["EXISTS", &key(&t)]).await.as_int(),
        Some(1),
        "the client was refused, yet its token was spent"
    );

    // And the client's retry gets in with it (once the gateway's Redis
    // connection is healthy again), exactly once.
    let deadline = Instant::now() + PATIENCE;
    let c = loop {
        match Client::connect_with(&with_token(&gw, &t), &[]).await {
            Ok(c) => break c,
            Err(refusal) => {
                assert_eq!(refusal.status, 503, "{}", refusal.body);
                assert!(Instant::now() < deadline, "the token never worked again");
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(c.welcome["user"], "7");
    assert_eq!(refused(&with_token(&gw, &t), &[]).await.status, 401);
}
