//! Operations through the real binary: `/metrics`, connection and socket
//! limits, slowloris protection, the SIGTERM drain, and logs (JSON lines,
//! connection spans, no secrets, `RUST_LOG`). `docs/operations.md` describes
//! what is checked here.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::{future::join_all, StreamExt};
use serde_json::{json, Value};
use tidings_e2e::{
    backend::{Backend, Mode},
    http::{self, Response},
    raw::{op, RawWs},
    redis::{free_port, RedisServer},
    ws::Client,
    Gateway, GatewayOptions, PATIENCE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::sleep,
};
use tokio_tungstenite::tungstenite::Message;

/// How long a metric may take to reach its expected value.
const METRIC_PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

/// One scrape of `/metrics`: every sample by its series as printed
/// (`name` or `name{label="value"}`), and each metric's `# TYPE`.
struct Metrics {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    text: String,
}

impl Metrics {
    /// Parses the Prometheus text format, strictly: every line is a
    /// comment or `series value`, and no series appears twice.
    fn parse(text: &str) -> Metrics {
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        let mut helps = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("`# TYPE name kind`");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE of {name} given twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("`# HELP name text`");
                helps.insert(name.to_owned(), help.to_owned());
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number in {line:?}"));
                assert!(
                    samples.insert(series.to_owned(), value).is_none(),
                    "series {series} appears twice"
                );
            }
        }
        Metrics {
            samples,
            types,
            helps,
            text: text.to_owned(),
        }
    }

    /// The value of `series` (`name` or `name{label="value"}`).
    fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no sample {series} in /metrics:\n{}", self.text),
        }
    }

    /// The value of `name{label="value"}`.
    fn with(&self, name: &str, label: &str, value: &str) -> f64 {
        self.get(&format!("{name}{{{label}=\"{value}\"}}"))
    }

    /// `tidings_upgrades_rejected_total{reason=...}`.
    fn rejected(&self, reason: &str) -> f64 {
        self.with("tidings_upgrades_rejected_total", "reason", reason)
    }

    /// `tidings_connections_closed_total{reason=...}`.
    fn closed(&self, reason: &str) -> f64 {
        self.with("tidings_connections_closed_total", "reason", reason)
    }

    /// `tidings_identity_lookups_total{outcome=...}`.
    fn lookups(&self, outcome: &str) -> f64 {
        self.with("tidings_identity_lookups_total", "outcome", outcome)
    }
}

/// `GET /metrics` from loopback with no key.
async fn scrape(gw: &Gateway) -> Metrics {
    scrape_with(gw, &[]).await
}

/// `GET /metrics` with these request headers; asserts 200.
async fn scrape_with(gw: &Gateway, headers: &[(String, String)]) -> Metrics {
    let res = http::request(gw.addr, "GET", "/metrics", headers, b"").await;
    assert_eq!(res.status, 200, "GET /metrics: {}", res.body);
    Metrics::parse(&res.body)
}

/// Scrapes until `check` holds (metrics are read from live counters, some of
/// which move just after the client saw the event); returns that scrape.
async fn wait_metrics(gw: &Gateway, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + METRIC_PATIENCE;
    loop {
        let m = scrape(gw).await;
        if check(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what} within {METRIC_PATIENCE:?}:\n{}",
            m.text
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes until `series` equals `want`.
async fn wait_value(gw: &Gateway, series: &str, want: f64) -> Metrics {
    wait_metrics(gw, &format!("{series} = {want}"), |m| m.get(series) == want).await
}

/// Connects, expecting success.
async fn connect(url: &str, headers: &[(&str, &str)]) -> Client {
    match Client::connect_with(url, headers).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade refused with {}: {}", r.status, r.body),
    }
}

/// Connects, expecting a refusal with `status`; returns it.
async fn refused(url: &str, headers: &[(&str, &str)], status: u16) -> tidings_e2e::ws::Refused {
    match Client::connect_with(url, headers).await {
        Ok(c) => panic!("expected {status}, but the socket opened: {}", c.welcome),
        Err(r) => {
            assert_eq!(r.status, status, "refusal: {}", r.body);
            r
        }
    }
}

/// A header of a refused upgrade.
fn header<'a>(r: &'a tidings_e2e::ws::Refused, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `POST /api/tokens` for `user`; returns the token.
async fn mint(gw: &Gateway, user: &str, key: Option<&str>) -> String {
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    if let Some(k) = key {
        headers.push(("Authorization".to_owned(), format!("Bearer {k}")));
    }
    let body = json!({"identity": {"user": user}, "ttl_secs": 30}).to_string();
    let res = http::request(gw.addr, "POST", "/api/tokens", &headers, body.as_bytes()).await;
    assert_eq!(res.status, 201, "mint a token: {}", res.body);
    let v: Value = serde_json::from_str(&res.body).expect("token JSON");
    v["token"].as_str().expect("token").to_owned()
}

/// Publishes `data` on `channel` over HTTP and asserts 202.
async fn publish(gw: &Gateway, channel: &str, data: Value) {
    let res = gw.publish(channel, data).await;
    assert_eq!(res.status, 202, "publish: {}", res.body);
}

/// Reads `c`'s next frame and asserts it is `data` on `/app/broadcast`.
async fn expect_broadcast(c: &mut Client, data: &Value, who: &str) {
    let f = c.next_json().await;
    assert_eq!(
        f,
        json!({"type":"message","channel":"/app/broadcast","data":data}),
        "{who} must receive the broadcast"
    );
}

/// Pings over the socket and asserts the pong: the socket is open and served.
async fn assert_served(c: &mut Client, who: &str) {
    let r = c.request(json!({"type":"ping","id":who})).await;
    assert_eq!(r, json!({"type":"pong","id":who}), "{who} is served");
}

/// Stops the gateway (SIGTERM) and returns everything it logged.
async fn stop(mut gw: Gateway) -> String {
    gw.sigterm();
    let status = gw.wait_exit(PATIENCE).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    gw.logs()
}

/// Room rules for tests that subscribe: everyone joins `/app/broadcast` and
/// may subscribe to any `/app/room/*`.
const ROOMS: &str = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/room/*"
subscribe = true
anonymous = true
"#;

// ---------------------------------------------------------------- /metrics

/// Every metric of the issue, with its type and full label set.
const METRICS: &[(&str, &str)] = &[
    ("tidings_connections", "gauge"),
    ("tidings_connections_opened_total", "counter"),
    ("tidings_connections_closed_total", "counter"),
    ("tidings_upgrades_rejected_total", "counter"),
    ("tidings_client_messages_total", "counter"),
    ("tidings_client_messages_rate_limited_total", "counter"),
    ("tidings_frames_out_total", "counter"),
    ("tidings_rpc_calls_total", "counter"),
    ("tidings_rpc_failures_total", "counter"),
    ("tidings_subscriptions", "gauge"),
    ("tidings_channels", "gauge"),
    ("tidings_patterns", "gauge"),
    ("tidings_outbound_queued_messages", "gauge"),
    ("tidings_outbound_queue_max_depth", "gauge"),
    ("tidings_broker_messages_total", "counter"),
    ("tidings_messages_delivered_total", "counter"),
    ("tidings_messages_dropped_total", "counter"),
    ("tidings_slow_consumer_closes_total", "counter"),
    ("tidings_gap_notices_total", "counter"),
    ("tidings_broker_up", "gauge"),
    ("tidings_broker_reconnects_total", "counter"),
    ("tidings_identity_lookups_total", "counter"),
    ("tidings_identity_lookup_seconds", "histogram"),
];

const COOKIE_PROXY_METRICS: &[&str] = &[
    "tidings_identity_backend_requests_total",
    "tidings_identity_cache_hits_total",
    "tidings_identity_coalesced_total",
];

const CLOSE_REASONS: &[&str] = &[
    "client",
    "protocol_error",
    "message_too_big",
    "heartbeat_timeout",
    "slow_consumer",
    "shutdown",
    "rate_limited",
];

const REJECT_REASONS: &[&str] = &[
    "not_upgrade",
    "shutting_down",
    "origin",
    "bad_handshake",
    "identity_refused",
    "identity_unavailable",
    "limit_total",
    "limit_per_ip",
    "limit_per_user",
];

/// The histogram's buckets are cumulative, end with `+Inf` = `_count`.
fn check_histogram(m: &Metrics) {
    let name = "tidings_identity_lookup_seconds";
    let les = [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "2.5", "+Inf",
    ];
    let mut last = 0.0;
    for le in les {
        let v = m.get(&format!("{name}_bucket{{le=\"{le}\"}}"));
        assert!(
            v >= last,
            "bucket le={le} ({v}) below the one before ({last})"
        );
        last = v;
    }
    assert_eq!(last, m.get(&format!("{name}_count")), "+Inf bucket = count");
    assert!(m.get(&format!("{name}_sum")) >= 0.0);
}

#[tokio::test]
async fn metrics_lists_every_metric_and_is_authorized_like_the_api() {
    const KEY: &str = "ops-metrics-key-0123456789";
    let gw = Gateway::start_with(GatewayOptions::default().env("TIDINGS_API_KEY", KEY)).await;
    let _c = connect(&gw.ws_url(), &[]).await;

    // With an api_key, only the bearer key opens /metrics, even from loopback.
    let res = http::get(gw.addr, "/metrics").await;
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    let wrong = [(
        "Authorization".to_owned(),
        "Bearer not-the-key-0123456789".to_owned(),
    )];
    let res = http::request(gw.addr, "GET", "/metrics", &wrong, b"").await;
    assert_eq!(res.status, 401);
    let auth = [("Authorization".to_owned(), format!("Bearer {KEY}"))];
    let res = http::request(gw.addr, "GET", "/metrics", &auth, b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let res = http::request(gw.addr, "POST", "/metrics", &auth, b"").await;
    assert_eq!((res.status, res.header("allow")), (405, Some("GET")));

    let m = scrape_with(&gw, &auth).await;
    for (name, kind) in METRICS {
        assert_eq!(
            m.types.get(*name).map(String::as_str),
            Some(*kind),
            "TYPE of {name}"
        );
        assert!(m.helps.contains_key(*name), "HELP of {name}");
    }
    // Every sample belongs to a metric with a TYPE.
    for series in m.samples.keys() {
        let base = series.split('{').next().unwrap_or(series);
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| base.strip_suffix(s).filter(|b| m.types.contains_key(*b)))
            .unwrap_or(base);
        assert!(m.types.contains_key(base), "{series} has no TYPE");
    }
    for reason in CLOSE_REASONS {
        assert_eq!(m.closed(reason), 0.0, "closed {reason}");
    }
    for reason in REJECT_REASONS {
        assert_eq!(m.rejected(reason), 0.0, "rejected {reason}");
    }
    for reason in ["slow_consumer", "discarded", "no_subscriber"] {
        assert_eq!(
            m.with("tidings_messages_dropped_total", "reason", reason),
            0.0
        );
    }
    assert_eq!(m.lookups("anonymous"), 1.0);
    for outcome in ["user", "refused", "unavailable"] {
        assert_eq!(m.lookups(outcome), 0.0);
    }
    assert_eq!(m.with("tidings_broker_up", "broker", "in-process"), 1.0);
    assert_eq!(m.get("tidings_connections"), 1.0);
    check_histogram(&m);
    assert_eq!(m.get("tidings_identity_lookup_seconds_count"), 1.0);
    // The cookie proxy's counters exist only when it is configured.
    for name in COOKIE_PROXY_METRICS {
        assert!(
            !m.types.contains_key(*name),
            "{name} without a cookie proxy"
        );
    }

    // Without an api_key: loopback peers that came through no proxy only.
    let open = Gateway::start().await;
    assert_eq!(http::get(open.addr, "/metrics").await.status, 200);
    let proxied = [("X-Forwarded-For".to_owned(), "203.0.113.9".to_owned())];
    let res = http::request(open.addr, "GET", "/metrics", &proxied, b"").await;
    assert_eq!(res.status, 401, "a proxied request is not local");
    let closed = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_API__ALLOW_LOCAL_WITHOUT_KEY", "false"),
    )
    .await;
    assert_eq!(http::get(closed.addr, "/metrics").await.status, 401);
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(ROOMS)
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["token"]"#),
    )
    .await;
    let m = scrape(&gw).await;
    for series in [
        "tidings_connections",
        "tidings_connections_opened_total",
        "tidings_messages_delivered_total",
        "tidings_client_messages_total",
        "tidings_identity_lookup_seconds_count",
        "tidings_subscriptions",
    ] {
        assert_eq!(m.get(series), 0.0, "{series} at start");
    }

    // Five sockets: one user (token), four anonymous.
    let token = mint(&gw, "u1", None).await;
    let mut cs = vec![connect(&format!("{}?token={token}", gw.ws_url()), &[]).await];
    assert_eq!(cs[0].welcome["user"], "u1");
    for _ in 0..4 {
        cs.push(connect(&gw.ws_url(), &[]).await);
    }
    let m = wait_value(&gw, "tidings_connections", 5.0).await;
    assert_eq!(m.get("tidings_connections_opened_total"), 5.0);
    assert_eq!(m.lookups("user"), 1.0);
    assert_eq!(m.lookups("anonymous"), 4.0);
    assert_eq!(m.get("tidings_identity_lookup_seconds_count"), 5.0);
    let sum = m.get("tidings_identity_lookup_seconds_sum");
    assert!(sum > 0.0 && sum < 5.0 * 2.5, "lookup seconds sum {sum}");
    check_histogram(&m);
    assert_eq!(
        m.get("tidings_subscriptions"),
        5.0,
        "each joined /app/broadcast"
    );
    assert_eq!(m.get("tidings_channels"), 1.0);

    // Subscriptions, and client messages (3 subscribes + 5 pings).
    cs[0].subscribe("/app/room/1").await;
    cs[1].subscribe("/app/room/1").await;
    cs[2].subscribe("/app/room/2").await;
    for (i, c) in cs.iter_mut().enumerate() {
        assert_served(c, &format!("c{i}")).await;
    }
    let m = wait_value(&gw, "tidings_client_messages_total", 8.0).await;
    assert_eq!(m.get("tidings_subscriptions"), 8.0);
    assert_eq!(m.get("tidings_channels"), 3.0);
    assert_eq!(m.get("tidings_patterns"), 0.0);
    assert_eq!(m.get("tidings_client_messages_rate_limited_total"), 0.0);

    // Publishes: 3 on the broadcast (5 recipients each), 1 on room/1 (2).
    for n in 0..3 {
        publish(&gw, "/app/broadcast", json!(n)).await;
    }
    publish(&gw, "/app/room/1", json!("room")).await;
    publish(&gw, "/app/nobody/listens", json!("void")).await;
    for (i, c) in cs.iter_mut().enumerate() {
        for n in 0..3 {
            expect_broadcast(c, &json!(n), &format!("c{i}")).await;
        }
        if i < 2 {
            assert_eq!(c.next_json().await["data"], "room");
        }
    }
    let m = wait_value(&gw, "tidings_messages_delivered_total", 17.0).await;
    assert_eq!(m.get("tidings_broker_messages_total"), 5.0);
    assert_eq!(
        m.with("tidings_messages_dropped_total", "reason", "no_subscriber"),
        1.0
    );
    // Frames out: 5 welcomes + 3 acks + 5 pongs + 17 deliveries.
    let m = wait_value(&gw, "tidings_frames_out_total", 30.0).await;
    assert_eq!(m.get("tidings_outbound_queued_messages"), 0.0);
    assert_eq!(m.get("tidings_outbound_queue_max_depth"), 0.0);

    // Two sockets close: the gauges drop, the counters keep their history.
    let c1 = cs.remove(1);
    let c0 = cs.remove(0);
    c0.close().await;
    c1.close().await;
    let m = wait_metrics(&gw, "two sockets closed by their clients", |m| {
        m.get("tidings_connections") == 3.0
            && m.closed("client") == 2.0
            && m.get("tidings_subscriptions") == 4.0
    })
    .await;
    assert_eq!(m.get("tidings_connections_opened_total"), 5.0);
    assert_eq!(
        m.get("tidings_channels"),
        2.0,
        "/app/room/1 has no one left"
    );
    for reason in CLOSE_REASONS.iter().filter(|r| **r != "client") {
        assert_eq!(m.closed(reason), 0.0, "closed {reason}");
    }
    // Nothing was refused along the way.
    for reason in REJECT_REASONS {
        assert_eq!(m.rejected(reason), 0.0, "rejected {reason}");
    }
}

#[tokio::test]
async fn cookie_proxy_metrics_and_an_unavailable_backend() {
    let users = || {
        Mode::users([
            ("sess-a", json!({"user": "alice"})),
            ("sess-b", json!({"user": "bob"})),
            ("sess-c", json!({"user": "carol"})),
        ])
    };
    let backend = Backend::start(users()).await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy"]"#)
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", backend.url())
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__CACHE_TTL_SECS", "60")
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__RETRY_AFTER_SECS", "3"),
    )
    .await;
    let m = scrape(&gw).await;
    for name in COOKIE_PROXY_METRICS {
        assert_eq!(m.types.get(*name).map(String::as_str), Some("counter"));
        assert_eq!(m.get(name), 0.0);
    }

    // The same cookie three times: one backend request, two cache hits.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let c = connect(&gw.ws_url(), &[("Cookie", "sessionid=sess-a")]).await;
        assert_eq!(c.welcome["user"], "alice");
        sockets.push(c);
    }
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_identity_backend_requests_total"), 1.0);
    assert_eq!(m.get("tidings_identity_cache_hits_total"), 2.0);
    assert_eq!(m.get("tidings_identity_coalesced_total"), 0.0);
    assert_eq!(m.lookups("user"), 3.0);

    // Four identical lookups at once against a slow backend: one request.
    backend.set_mode(Mode::slow(Duration::from_millis(400), users()));
    let url = gw.ws_url();
    let at_once = join_all((0..4).map(|_| connect(&url, &[("Cookie", "sessionid=sess-b")]))).await;
    for c in &at_once {
        assert_eq!(c.welcome["user"], "bob");
    }
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_identity_backend_requests_total"), 2.0);
    let shared = m.get("tidings_identity_coalesced_total");
    assert!(shared >= 1.0, "concurrent lookups coalesced: {shared}");
    assert_eq!(
        shared + m.get("tidings_identity_cache_hits_total") - 2.0,
        3.0,
        "the other three shared the first one's answer"
    );
    // No cookie: no backend request, an anonymous lookup.
    let anon = connect(&gw.ws_url(), &[]).await;
    assert_eq!(anon.welcome["user"], Value::Null);
    let m = scrape(&gw).await;
    assert_eq!(m.lookups("anonymous"), 1.0);
    assert_eq!(m.get("tidings_identity_backend_requests_total"), 2.0);

    // The backend goes down: an unknown cookie gets 503 with Retry-After,
    // counted as identity_unavailable; a cached one still connects.
    backend.stop().await;
    let r = refused(&gw.ws_url(), &[("Cookie", "sessionid=sess-c")], 503).await;
    assert_eq!(header(&r, "retry-after"), Some("3"));
    let m = scrape(&gw).await;
    assert_eq!(m.rejected("identity_unavailable"), 1.0);
    assert_eq!(m.lookups("unavailable"), 1.0);
    assert_eq!(m.get("tidings_identity_backend_requests_total"), 3.0);
    let cached = connect(&gw.ws_url(), &[("Cookie", "sessionid=sess-a")]).await;
    assert_eq!(cached.welcome["user"], "alice", "answered from the cache");
    // The sockets already open never noticed.
    for (i, c) in sockets.iter_mut().enumerate() {
        assert_served(c, &format!("alice{i}")).await;
    }
}

#[tokio::test]
async fn redis_outage_shows_in_the_broker_metrics() {
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .env("TIDINGS_REDIS__RECONNECT_MAX_DELAY_SECS", "0.5"),
    )
    .await;
    let m = wait_value(&gw, "tidings_broker_up{broker=\"redis\"}", 1.0).await;
    assert_eq!(m.get("tidings_broker_reconnects_total"), 0.0);
    let mut c = connect(&gw.ws_url(), &[]).await;
    assert_served(&mut c, "settled").await; // its join is subscribed
    publish(&gw, "/app/broadcast", json!("before")).await;
    expect_broadcast(&mut c, &json!("before"), "the socket").await;
    wait_value(&gw, "tidings_broker_messages_total", 1.0).await;

    redis.kill().await;
    wait_value(&gw, "tidings_broker_up{broker=\"redis\"}", 0.0).await;
    assert_eq!(http::get(gw.addr, "/readyz").await.status, 503);
    assert_eq!(
        gw.publish("/app/broadcast", json!("lost")).await.status,
        503
    );

    redis.restart().await;
    let m = wait_metrics(&gw, "the broker back, with a reconnect and a gap", |m| {
        m.get("tidings_broker_up{broker=\"redis\"}") == 1.0
            && m.get("tidings_broker_reconnects_total") >= 1.0
            && m.get("tidings_gap_notices_total") >= 1.0
    })
    .await;
    assert_eq!(m.get("tidings_connections"), 1.0, "the socket stayed");
    let gap = c.next_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "broker_reconnected");
}

/// Regression test for a fixed bug: when Redis refuses a SUBSCRIBE (here an
/// ACL that allows only `/app/broadcast`; Redis answers `-NOPERM`), the
/// gateway used to answer `subscribed`, log nothing, count nothing, and keep
/// `/readyz` and `tidings_broker_up` healthy, so the socket silently never
/// received that channel (the same for the re-subscription after a
/// reconnect), because `RedisBroker::subscribe` trusted fred's `subscribe()`
/// result, which is `Ok` despite the error reply. The refusal must reach the
/// client as a `forbidden` error naming Redis' answer.
#[tokio::test]
async fn redis_refusing_a_subscription_is_not_acknowledged() {
    let redis = RedisServer::start().await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(ROOMS)
            .env("TIDINGS_REDIS_URL", redis.url()),
    )
    .await;
    wait_value(&gw, "tidings_broker_up{broker=\"redis\"}", 1.0).await;
    let mut c = connect(&gw.ws_url(), &[]).await;
    assert_served(&mut c, "settled").await;
    let mut r = redis.client().await;
    // Channels other than /app/broadcast are now refused to the gateway's user.
    let acl = r
        .cmd(&[
            "ACL",
            "SETUSER",
            "default",
            "resetchannels",
            "&/app/broadcast",
            // The gateways' control channel (see docs/control.md).
            "&tidings:control",
        ])
        .await;
    assert_eq!(acl.as_str(), Some("OK"));
    let reply = c
        .request(json!({"type":"subscribe","channel":"/app/room/9","id":1}))
        .await;
    let held = r.numsub("/app/room/9").await;
    assert!(
        reply["type"] != "subscribed" || held == 1,
        "the gateway acknowledged {reply} although Redis refused the SUBSCRIBE \
         (NUMSUB /app/room/9 = {held}); messages on it will never arrive"
    );
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["code"].as_str(),
            reply["id"].as_i64()
        ),
        (Some("error"), Some("forbidden"), Some(1)),
        "a refused subscription is a forbidden error: {reply}"
    );
    assert!(
        reply["message"].as_str().unwrap_or("").contains("NOPERM"),
        "{reply}"
    );
    // The socket is still served.
    assert_served(&mut c, "after the refusal").await;
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn max_connections_answers_503_with_retry_after() {
    let gw =
        Gateway::start_with(GatewayOptions::default().env("TIDINGS_LIMITS__MAX_CONNECTIONS", "3"))
            .await;
    let mut cs = Vec::new();
    for _ in 0..3 {
        cs.push(connect(&gw.ws_url(), &[]).await);
    }
    let r = refused(&gw.ws_url(), &[], 503).await;
    assert_eq!(r.body, "server at connection capacity\n");
    assert_eq!(header(&r, "retry-after"), Some("5"));
    let m = scrape(&gw).await;
    assert_eq!(m.rejected("limit_total"), 1.0);
    assert_eq!(m.get("tidings_connections"), 3.0);
    for reason in REJECT_REASONS.iter().filter(|r| **r != "limit_total") {
        assert_eq!(m.rejected(reason), 0.0, "rejected {reason}");
    }
    // Plain HTTP is not a socket: still served.
    assert_eq!(http::get(gw.addr, "/healthz").await.status, 200);
    // The three open sockets are unaffected.
    publish(&gw, "/app/broadcast", json!("full")).await;
    for (i, c) in cs.iter_mut().enumerate() {
        expect_broadcast(c, &json!("full"), &format!("c{i}")).await;
    }
    // A place frees up: a new socket fits again.
    cs.pop().expect("three").close().await;
    wait_value(&gw, "tidings_connections", 2.0).await;
    sleep(Duration::from_millis(100)).await; // the slot is released just after
    let mut again = connect(&gw.ws_url(), &[]).await;
    assert_served(&mut again, "again").await;
    assert_eq!(scrape(&gw).await.rejected("limit_total"), 1.0);
}

#[tokio::test]
async fn max_connections_per_ip_answers_429_and_forwarded_for_counts_only_from_trusted_proxies() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_LIMITS__MAX_CONNECTIONS_PER_IP", "2")
            .env("TIDINGS_LIMITS__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)
            .env("RUST_LOG", "info,tidings_transport=debug"),
    )
    .await;
    let url = gw.ws_url();
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    // From the trusted proxy (loopback), the client is the rightmost
    // untrusted X-Forwarded-For entry: both count as 203.0.113.7.
    let mut a = connect(&url, &xff("203.0.113.7")).await;
    let mut b = connect(&url, &xff("198.51.100.1, 203.0.113.7")).await;
    let r = refused(&url, &xff("203.0.113.7"), 429).await;
    assert_eq!(r.body, "too many connections from this address\n");
    // A different claim further left does not make it another client.
    refused(&url, &xff("192.0.2.44, 203.0.113.7"), 429).await;
    // Another address has its own count.
    let mut c = connect(&url, &xff("203.0.113.8")).await;
    // The proxy's own address (no header) too.
    let mut d = connect(&url, &[]).await;
    let mut e = connect(&url, &[]).await;
    refused(&url, &[], 429).await;
    let m = scrape(&gw).await;
    assert_eq!(m.rejected("limit_per_ip"), 3.0);
    assert_eq!(m.rejected("limit_total"), 0.0);
    assert_eq!(m.get("tidings_connections"), 5.0);
    publish(&gw, "/app/broadcast", json!("ip")).await;
    for (who, s) in [
        ("a", &mut a),
        ("b", &mut b),
        ("c", &mut c),
        ("d", &mut d),
        ("e", &mut e),
    ] {
        expect_broadcast(s, &json!("ip"), who).await;
    }
    // The connection span names the forwarded client address (`client`)
    // next to the TCP peer (`peer`, the proxy).
    let deadline = Instant::now() + PATIENCE;
    while !gw.logs().contains("peer=127.0.0.1:") || !gw.logs().contains("client=203.0.113.7") {
        assert!(
            Instant::now() < deadline,
            "no conn span with the forwarded client:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(20)).await;
    }

    // Without trusted proxies the header is ignored: all are 127.0.0.1.
    let gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_LIMITS__MAX_CONNECTIONS_PER_IP", "2"),
    )
    .await;
    let url = gw.ws_url();
    let mut f = connect(&url, &xff("203.0.113.1")).await;
    let _g = connect(&url, &xff("203.0.113.2")).await;
    refused(&url, &xff("203.0.113.3"), 429).await;
    assert_eq!(scrape(&gw).await.rejected("limit_per_ip"), 1.0);
    assert_served(&mut f, "f").await;
}

#[tokio::test]
async fn max_connections_per_user_answers_429() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["token"]"#)
            .env("TIDINGS_LIMITS__MAX_CONNECTIONS_PER_USER", "2"),
    )
    .await;
    let as_user = |token: String| format!("{}?token={token}", gw.ws_url());
    let mut u1a = connect(&as_user(mint(&gw, "u1", None).await), &[]).await;
    let mut u1b = connect(&as_user(mint(&gw, "u1", None).await), &[]).await;
    assert_eq!(u1a.welcome["user"], "u1");
    let r = refused(&as_user(mint(&gw, "u1", None).await), &[], 429).await;
    assert_eq!(r.body, "too many connections for this user\n");
    // Another user, and anonymous sockets (not counted per user), are fine.
    let mut u2 = connect(&as_user(mint(&gw, "u2", None).await), &[]).await;
    assert_eq!(u2.welcome["user"], "u2");
    let mut anons = Vec::new();
    for _ in 0..3 {
        anons.push(connect(&gw.ws_url(), &[]).await);
    }
    let m = scrape(&gw).await;
    assert_eq!(m.rejected("limit_per_user"), 1.0);
    assert_eq!(m.rejected("limit_per_ip"), 0.0);
    assert_eq!(
        m.lookups("user"),
        4.0,
        "the refused one was identified first"
    );
    assert_eq!(m.lookups("anonymous"), 3.0);
    assert_eq!(m.get("tidings_connections"), 6.0);
    assert_served(&mut u1a, "u1a").await;
    assert_served(&mut u2, "u2").await;
    publish(&gw, "/app/broadcast", json!("u")).await;
    expect_broadcast(&mut u1b, &json!("u"), "u1b").await;
    for (i, a) in anons.iter_mut().enumerate() {
        expect_broadcast(a, &json!("u"), &format!("anon{i}")).await;
    }
    // One of u1's sockets closes: u1 may open another.
    u1a.close().await;
    wait_value(&gw, "tidings_connections", 5.0).await;
    sleep(Duration::from_millis(100)).await;
    let again = connect(&as_user(mint(&gw, "u1", None).await), &[]).await;
    assert_eq!(again.welcome["user"], "u1");
}

#[tokio::test]
async fn max_subscriptions_answers_too_many_subscriptions() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(ROOMS)
            .env("TIDINGS_WEBSOCKET__MAX_SUBSCRIPTIONS", "3"),
    )
    .await;
    let mut a = connect(&gw.ws_url(), &[]).await;
    let mut b = connect(&gw.ws_url(), &[]).await;
    // The joined /app/broadcast counts: two more fit.
    a.subscribe("/app/room/1").await;
    a.subscribe("/app/room/2").await;
    let r = a
        .request(json!({"type":"subscribe","channel":"/app/room/3","id":"s3"}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str(), r["id"].as_str()),
        (Some("error"), Some("too_many_subscriptions"), Some("s3")),
        "{r}"
    );
    // Subscribing again to one it holds is no new subscription.
    a.subscribe("/app/room/2").await;
    // Others have their own budget.
    b.subscribe("/app/room/3").await;
    b.subscribe("/app/room/4").await;
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_subscriptions"), 6.0);
    assert_eq!(m.get("tidings_channels"), 5.0);
    assert_eq!(m.get("tidings_client_messages_total"), 6.0);
    // Unsubscribing frees a place.
    let r = a
        .request(json!({"type":"unsubscribe","channel":"/app/room/1"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    a.subscribe("/app/room/3").await;
    publish(&gw, "/app/room/3", json!("three")).await;
    assert_eq!(a.next_json().await["data"], "three");
    assert_eq!(b.next_json().await["data"], "three");
    // a: broadcast, room/2, room/3; b: broadcast, room/3, room/4.
    assert_eq!(
        wait_value(&gw, "tidings_subscriptions", 6.0)
            .await
            .get("tidings_channels"),
        4.0,
        "/app/room/1 has no one left"
    );
}

#[tokio::test]
async fn client_rate_limit_answers_rate_limited_then_closes_with_1008() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            // One token every 5 s: none comes back during the test.
            .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGES_PER_SEC", "0.2")
            .env("TIDINGS_WEBSOCKET__CLIENT_MESSAGE_BURST", "5"),
    )
    .await;
    let mut bystander = connect(&gw.ws_url(), &[]).await;
    let mut r = RawWs::welcomed(&gw).await;
    let ping = |id: usize| json!({"type":"ping","id":id}).to_string();
    // The burst is served...
    for i in 0..5 {
        r.send_frame(true, op::TEXT, ping(i).as_bytes()).await;
        assert_eq!(
            r.next_json(PATIENCE).await.expect("pong"),
            json!({"type":"pong","id":i})
        );
    }
    // ...the next message is refused, with its id, and the socket stays.
    r.send_frame(true, op::TEXT, ping(5).as_bytes()).await;
    let e = r.next_json(PATIENCE).await.expect("rate_limited error");
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_i64()),
        (Some("error"), Some("rate_limited"), Some(5)),
        "{e}"
    );
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_client_messages_rate_limited_total"), 1.0);
    assert_eq!(m.get("tidings_client_messages_total"), 6.0);
    // The bystander has a bucket of its own.
    assert_served(&mut bystander, "bystander").await;

    // 99 more in a row: the 100th refused message in a row closes with 1008.
    for i in 6..105 {
        r.send_frame(true, op::TEXT, ping(i).as_bytes()).await;
    }
    let mut errors = 0;
    let code = loop {
        let f = r.read_frame(PATIENCE).await.expect("a frame or the close");
        match f.opcode {
            op::TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
                assert_eq!(v["code"], "rate_limited", "{v}");
                errors += 1;
            }
            op::CLOSE => break f.close_code(),
            op::PING => {}
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(errors, 98, "an error for each but the one that closed");
    let m = wait_value(
        &gw,
        "tidings_connections_closed_total{reason=\"rate_limited\"}",
        1.0,
    )
    .await;
    assert_eq!(m.get("tidings_client_messages_rate_limited_total"), 100.0);
    assert_eq!(m.get("tidings_connections"), 1.0);
    publish(&gw, "/app/broadcast", json!("calm")).await;
    expect_broadcast(&mut bystander, &json!("calm"), "the bystander").await;
    assert_served(&mut bystander, "bystander-after").await;
}

#[tokio::test]
async fn max_message_bytes_closes_with_1009_and_is_counted() {
    let gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_WEBSOCKET__MAX_MESSAGE_BYTES", "128"),
    )
    .await;
    let mut bystander = connect(&gw.ws_url(), &[]).await;
    let mut r = RawWs::welcomed(&gw).await;
    r.send_frame(true, op::TEXT, &[b' '; 129]).await;
    assert_eq!(r.close_code(PATIENCE).await, Some(1009));
    let m = wait_value(
        &gw,
        "tidings_connections_closed_total{reason=\"message_too_big\"}",
        1.0,
    )
    .await;
    assert_eq!(m.get("tidings_connections"), 1.0);
    publish(&gw, "/app/broadcast", json!("small")).await;
    expect_broadcast(&mut bystander, &json!("small"), "the bystander").await;
}

#[tokio::test]
async fn outbound_queue_overflow_closes_the_slow_consumer_with_4001() {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_WEBSOCKET__OUTBOUND_QUEUE", "8")
            // The stalled socket must not be cut by the write timeout first.
            .env("TIDINGS_WEBSOCKET__WRITE_TIMEOUT_SECS", "60"),
    )
    .await;
    // A fast reader, reading in its own task until the "end" message.
    let fast = connect(&gw.ws_url(), &[]).await;
    let fast = tokio::spawn(async move {
        let mut fast = fast;
        let mut n = 0u64;
        loop {
            let f = fast.next_json().await;
            if f["data"] == "end" {
                return (n, fast);
            }
            assert_eq!(f["data"]["seq"], n, "the fast reader gets every message");
            n += 1;
        }
    });
    // A slow one: a tiny receive window, and it stops reading.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(gw.addr).await.expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(gw.ws_url(), stream)
        .await
        .expect("handshake");
    let welcome = slow.next().await.expect("welcome").expect("welcome");
    assert!(matches!(welcome, Message::Text(_)), "{welcome:?}");

    let pad = "x".repeat(16 * 1024);
    let mut sent = 0u64;
    loop {
        publish(&gw, "/app/broadcast", json!({"seq": sent, "pad": pad})).await;
        sent += 1;
        if sent % 4 == 0 && scrape(&gw).await.get("tidings_slow_consumer_closes_total") >= 1.0 {
            break;
        }
        assert!(sent < 2000, "the slow socket never overflowed its queue");
    }
    publish(&gw, "/app/broadcast", json!("end")).await;
    let (got, _fast) = fast.await.expect("fast reader");
    assert_eq!(got, sent, "the fast reader got all {sent} messages");

    // The slow socket reads again: what was on the wire, then 4001.
    let deadline = Instant::now() + PATIENCE;
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, slow.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    let m = wait_value(
        &gw,
        "tidings_connections_closed_total{reason=\"slow_consumer\"}",
        1.0,
    )
    .await;
    assert_eq!(m.get("tidings_slow_consumer_closes_total"), 1.0);
    assert_eq!(m.get("tidings_connections"), 1.0);
    assert!(m.get("tidings_messages_delivered_total") >= (sent + 1) as f64);
}

/// Reads `s` until the server closes the connection; returns how long that
/// took and what it sent.
async fn until_closed(mut s: TcpStream) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!("still open after {PATIENCE:?}"),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_is_cut_off_after_the_handshake_timeout() {
    let gw = Gateway::start_with(
        GatewayOptions::default().env("TIDINGS_WEBSOCKET__HANDSHAKE_TIMEOUT_SECS", "1"),
    )
    .await;
    let mut socket = connect(&gw.ws_url(), &[]).await;

    // Half a request, then nothing; and a connection that sends nothing.
    let mut partial = TcpStream::connect(gw.addr).await.expect("connect");
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    let silent = TcpStream::connect(gw.addr).await.expect("connect");
    // A slow client that does finish its headers in time is served.
    let in_time = async {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        sleep(Duration::from_millis(300)).await;
        s.write_all(b"Connection: close\r\n\r\n")
            .await
            .expect("write");
        let mut res = String::new();
        s.read_to_string(&mut res).await.expect("read");
        res
    };
    let ((partial_after, partial_got), (silent_after, silent_got), res) =
        tokio::join!(until_closed(partial), until_closed(silent), in_time);
    for (what, after, got) in [
        ("partial request", partial_after, partial_got),
        ("silent connection", silent_after, silent_got),
    ] {
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(5),
            "the {what} was closed after {after:?}, not after about 1 s"
        );
        assert!(
            !String::from_utf8_lossy(&got).contains(" 101 "),
            "the {what} was never upgraded"
        );
    }
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");

    // An upgraded socket is past the handshake: the timeout no longer applies.
    assert_served(&mut socket, "after the timeout").await;
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_connections"), 1.0);
    assert_eq!(m.get("tidings_connections_opened_total"), 1.0);
}

// ---------------------------------------------------------------- drain

#[tokio::test]
async fn sigterm_drains_readiness_first_then_closes_spread_with_1012_and_exits() {
    const N: usize = 40;
    const DELAY: f64 = 1.0;
    const SPREAD: f64 = 2.0;
    const GRACE: f64 = 5.0;
    let mut gw = Gateway::start_with(
        GatewayOptions::default()
            .env("TIDINGS_SHUTDOWN__READINESS_DELAY_SECS", DELAY.to_string())
            .env("TIDINGS_SHUTDOWN__DRAIN_SPREAD_SECS", SPREAD.to_string())
            .env("TIDINGS_SHUTDOWN__GRACE_SECS", GRACE.to_string()),
    )
    .await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(&gw.ws_url(), &[]).await);
    }
    assert_eq!(http::get(gw.addr, "/readyz").await.status, 200);
    wait_value(&gw, "tidings_connections", N as f64).await;

    let t0 = Instant::now();
    gw.sigterm();
    // Not ready at once.
    let readyz: Response = loop {
        let r = http::get(gw.addr, "/readyz").await;
        if r.status == 503 {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "/readyz still {} after SIGTERM",
            r.status
        );
        sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(readyz.body, "shutting down\n");
    assert_eq!(http::get(gw.addr, "/healthz").await.status, 200);
    // New sockets are refused...
    let r = refused(&gw.ws_url(), &[], 503).await;
    assert_eq!(r.body, "server is shutting down\n");
    assert_eq!(header(&r, "retry-after"), Some("1"));
    // ...while every open one stays, and is still served: the HTTP API works
    // during the delay and the publish reaches all of them.
    publish(&gw, "/app/broadcast", json!({"during": "drain"})).await;
    for (i, c) in clients.iter_mut().enumerate() {
        expect_broadcast(c, &json!({"during": "drain"}), &format!("socket {i}")).await;
    }
    let m = scrape(&gw).await;
    assert_eq!(m.get("tidings_connections"), N as f64);
    assert_eq!(m.rejected("shutting_down"), 1.0);
    assert_eq!(m.closed("shutdown"), 0.0);
    let checked = t0.elapsed();
    assert!(
        checked < Duration::from_secs_f64(DELAY),
        "the checks during the readiness delay took {checked:?}: too slow to prove anything"
    );

    // Then every socket is closed with 1012, each at its own moment.
    let closes = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed_with(Duration::from_secs(10)).await;
                (code, t0.elapsed())
            })
        })
        .collect::<Vec<_>>();
    // Midway through the spread the listener is gone while sockets remain.
    sleep(Duration::from_secs_f64(DELAY + SPREAD / 4.0).saturating_sub(t0.elapsed())).await;
    let probed_at = t0.elapsed();
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener still accepts {probed_at:?} after SIGTERM"
    );
    let mut at = Vec::with_capacity(N);
    for (i, task) in join_all(closes).await.into_iter().enumerate() {
        let (code, when) = task.expect("close watcher");
        assert_eq!(code, Some(1012), "socket {i}");
        at.push(when.as_secs_f64());
    }
    at.sort_by(f64::total_cmp);
    let (first, last) = (at[0], at[N - 1]);
    assert!(
        first >= DELAY - 0.05,
        "a socket closed {first:.3} s after SIGTERM, before the readiness delay"
    );
    assert!(
        last <= DELAY + SPREAD + 1.0,
        "the last socket closed {last:.3} s after SIGTERM"
    );
    assert!(
        last - first >= 1.0,
        "closes spread over only {:.3} s: {at:?}",
        last - first
    );
    assert!(
        last > probed_at.as_secs_f64(),
        "sockets were still open when the listener was probed"
    );
    let most = at
        .iter()
        .map(|&start| {
            at.iter()
                .filter(|&&t| t >= start && t < start + 0.2)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most * 10 <= N * 4,
        "{most} of {N} closes fell within one 0.2 s slice: {at:?}"
    );

    // The process exits, successfully, by readiness delay + grace.
    let deadline = Duration::from_secs_f64(DELAY + GRACE + 1.0);
    let status = gw
        .wait_exit(deadline.saturating_sub(t0.elapsed()))
        .await
        .unwrap_or_else(|| panic!("still running {deadline:?} after SIGTERM"));
    assert!(status.success(), "{status:?}");
    let logs = gw.logs();
    for line in [
        "SIGTERM received",
        "draining: not ready, refusing new sockets",
        "closing sockets (1012), spread over the drain window",
    ] {
        assert!(logs.contains(line), "no {line:?} in the logs:\n{logs}");
    }
    assert!(!logs.contains("shutdown grace elapsed"), "{logs}");
}

// ---------------------------------------------------------------- logs

#[tokio::test]
async fn json_logs_carry_connection_spans_and_never_secrets() {
    const KEY: &str = "ops-ApiKey-7f3a9c2e51d84b06";
    const WRONG_KEY: &str = "ops-WrongKey-0000aaaa1111bbbb";
    const COOKIE: &str = "sess-Cookie-9e1d2c3b4a5f6071";
    let backend = Backend::start(Mode::users([(COOKIE, json!({"user": "alice"}))])).await;
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .toml(ROOMS)
            .env("TIDINGS_API_KEY", KEY)
            .env(
                "TIDINGS_IDENTITY__RESOLVERS",
                r#"["cookie_proxy", "token"]"#,
            )
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", backend.url())
            .env("TIDINGS_LOG__LEVEL", "debug")
            .env("TIDINGS_LOG__FORMAT", "json"),
    )
    .await;
    let url = gw.ws_url();
    let mut secrets = vec![KEY.to_owned(), WRONG_KEY.to_owned(), COOKIE.to_owned()];

    // A cookie identity.
    let session = format!("sessionid={COOKIE}; theme=dark");
    let mut alice = connect(&url, &[("Cookie", &session)]).await;
    assert_eq!(alice.welcome["user"], "alice");
    // A token in the query, then the same token again (refused).
    let token = mint(&gw, "u-token", Some(KEY)).await;
    let mut tok = connect(&format!("{url}?token={token}"), &[]).await;
    assert_eq!(tok.welcome["user"], "u-token");
    refused(&format!("{url}?token={token}"), &[], 401).await;
    // A token in a cookie.
    let token2 = mint(&gw, "u-cookie-token", Some(KEY)).await;
    let cookie2 = format!("tidings_token={token2}");
    let tok2 = connect(&url, &[("Cookie", &cookie2)]).await;
    assert_eq!(tok2.welcome["user"], "u-cookie-token");
    secrets.push(token);
    secrets.push(token2);
    // An Authorization header on the upgrade, a refused Origin.
    let bearer = format!("Bearer {KEY}");
    let _anon = connect(&url, &[("Authorization", &bearer)]).await;
    refused(&url, &[("Origin", "https://evil.example")], 403).await;
    // The API with the key, with a wrong key, and /metrics with the key.
    let res = gw
        .publish_with_key("/app/broadcast", json!("hello"), Some(KEY))
        .await;
    assert_eq!(res.status, 202);
    expect_broadcast(&mut alice, &json!("hello"), "alice").await;
    let res = gw
        .publish_with_key("/app/broadcast", json!("no"), Some(WRONG_KEY))
        .await;
    assert_eq!(res.status, 401);
    scrape_with(
        &gw,
        &[("Authorization".to_owned(), format!("Bearer {KEY}"))],
    )
    .await;
    // Client traffic, then a polite close.
    alice.subscribe("/app/room/1").await;
    assert_served(&mut tok, "tok").await;
    tok.close().await;
    let logs = stop(gw).await;

    let mut opened = Vec::new();
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret in the logs: {line}"
            );
        }
        if v["message"] == "socket open" || v["message"] == "socket closed" {
            let span = &v["span"];
            assert_eq!(span["name"], "conn", "{line}");
            assert!(span["id"].is_u64(), "{line}");
            let peer = span["peer"].as_str().unwrap_or_default();
            assert!(peer.starts_with("127.0.0.1:"), "conn span peer: {line}");
            if v["message"] == "socket open" {
                opened.push(span["user"].clone());
            } else {
                assert!(v["reason"].is_string(), "{line}");
            }
        }
    }
    for user in ["alice", "u-token", "u-cookie-token"] {
        assert!(
            opened.contains(&json!(user)),
            "no `socket open` in a span with user={user}: {opened:?}"
        );
    }
    assert_eq!(opened.len(), 4, "four sockets opened: {opened:?}");
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug level is on");

    // A Redis password stays out of the logs too (nothing listens there).
    const REDIS_PASSWORD: &str = "redisPw-5c6d7e8f9a0b";
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .env(
                "TIDINGS_REDIS_URL",
                format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", free_port()),
            )
            .env("TIDINGS_REDIS__CONNECT_TIMEOUT_SECS", "0.2")
            .env("TIDINGS_LOG__LEVEL", "debug")
            .env("TIDINGS_LOG__FORMAT", "json"),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    while !gw.logs().contains("***@127.0.0.1") {
        assert!(
            Instant::now() < deadline,
            "no redacted Redis URL logged:\n{}",
            gw.logs()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let logs = stop(gw).await;
    for line in logs.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(!line.contains(REDIS_PASSWORD), "the Redis password: {line}");
    }
}

/// Starts a gateway with these log settings, opens and closes one socket,
/// stops it, and returns its logs.
async fn logs_of_one_socket(opts: GatewayOptions) -> String {
    let gw = Gateway::start_with(opts).await;
    let c = connect(&gw.ws_url(), &[]).await;
    c.close().await;
    wait_value(
        &gw,
        "tidings_connections_closed_total{reason=\"client\"}",
        1.0,
    )
    .await;
    stop(gw).await
}

#[tokio::test]
async fn rust_log_overrides_log_level() {
    // At the default `info`, connects and disconnects are not logged.
    let logs = logs_of_one_socket(GatewayOptions::default()).await;
    assert!(!logs.contains("socket open"), "{logs}");

    // RUST_LOG turns them on over log.level...
    let logs = logs_of_one_socket(
        GatewayOptions::default()
            .env("TIDINGS_LOG__LEVEL", "info")
            .env("RUST_LOG", "info,tidings_transport=debug"),
    )
    .await;
    let open = logs
        .lines()
        .find(|l| l.contains("socket open"))
        .unwrap_or_else(|| panic!("RUST_LOG did not enable debug:\n{logs}"));
    // Text format: the connection span with its id and peer.
    assert!(
        open.contains("conn{id=") && open.contains("peer=127.0.0.1:"),
        "{open}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("socket closed") && l.contains("reason=\"client\"")),
        "{logs}"
    );

    // ...and off: RUST_LOG wins in both directions.
    let logs = logs_of_one_socket(
        GatewayOptions::default()
            .env("TIDINGS_LOG__LEVEL", "debug")
            .env("RUST_LOG", "info"),
    )
    .await;
    assert!(!logs.contains("socket open"), "{logs}");
    assert!(logs.contains("SIGTERM received"), "info still logged");

    // log.level alone does it too.
    let logs = logs_of_one_socket(
        GatewayOptions::default().env("TIDINGS_LOG__LEVEL", "info,tidings_transport=debug"),
    )
    .await;
    assert!(logs.contains("socket open"), "{logs}");
}
