//! End to end with a real Django app (`tests/django/`): users log in through
//! Django's auth, their WebSockets open with Django's session cookie or with
//! a one-time token issued by a Django view, the gateway asks Django's whoami
//! view who they are, and what Django PUBLISHes with redis-py to a user's
//! channel reaches that user's sockets and nobody else's.
//!
//! Needs python3 (with venv) and PyPI the first time: the harness installs
//! `tests/django/requirements.txt` into `tests/django/.venv`.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_e2e::{
    django::{DjangoApp, Session, PASSWORD},
    redis::{RedisServer, Reply},
    ws::{Client, Refused},
    Gateway, GatewayOptions,
};

/// Where Django stores one-time tokens, and where the gateway redeems them.
const PREFIX: &str = "tidings:token:";

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);

/// Redis, Django and a gateway that knows users by Django's session cookie
/// (then by one-time token), with `identity.anonymous = anonymous`.
struct Stack {
    redis: RedisServer,
    django: DjangoApp,
    gw: Gateway,
}

impl Stack {
    fn gateway_options(redis: &RedisServer, django: &DjangoApp, anonymous: &str) -> GatewayOptions {
        GatewayOptions::default()
            .env("TIDINGS_REDIS_URL", redis.url())
            .env("TIDINGS_IDENTITY__RESOLVERS", r#"["cookie_proxy","token"]"#)
            .env("TIDINGS_IDENTITY__ANONYMOUS", anonymous)
            .env("TIDINGS_IDENTITY__COOKIE_PROXY__URL", django.whoami_url())
            .env("TIDINGS_IDENTITY__TOKEN__PREFIX", PREFIX)
            .env("TIDINGS_LOG__LEVEL", "debug")
    }

    async fn start(anonymous: &str) -> Stack {
        let redis = RedisServer::start().await;
        let django = DjangoApp::start(&redis.url(), PREFIX).await;
        let gw = Gateway::start_with(Self::gateway_options(&redis, &django, anonymous)).await;
        // Sockets opened before the first Redis connection would (rightly)
        // get a gap notice once it is up; these tests start from ready.
        gw.wait_ready().await;
        Stack { redis, django, gw }
    }

    /// Opens a socket with these request headers and waits until the
    /// channels it joined on connect are subscribed in Redis (the session
    /// reads its first request only once its joins are done).
    async fn connect(&self, url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut c = Client::connect_with(url, headers).await?;
        let pong = c.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        Ok(c)
    }

    /// Opens a socket as the browser of this Django session.
    async fn connect_as(&self, s: &Session) -> Client {
        let cookie = s.cookie();
        self.connect(&self.gw.ws_url(), &[("Cookie", &cookie)])
            .await
            .unwrap_or_else(|r| panic!("{}'s socket was refused: {r:?}", s.user_id))
    }

    /// Opens a socket with `?token=`.
    async fn connect_with_token(&self, token: &str) -> Result<Client, Refused> {
        let url = format!("{}?token={token}", self.gw.ws_url());
        self.connect(&url, &[]).await
    }

    /// Asserts that the gateway's logs (at debug level) contain none of
    /// these secrets.
    fn assert_logs_keep(&self, secrets: &[&str]) {
        let logs = self.gw.logs();
        assert!(
            logs.contains("DEBUG") || logs.contains("debug"),
            "the gateway should log at debug level here:\n{logs}"
        );
        for s in secrets {
            assert!(
                !logs.contains(s),
                "the gateway logged a secret {s:?}:\n{logs}"
            );
        }
    }
}

fn user_channel(user_id: &str) -> String {
    format!("/app/user/{user_id}/notifications")
}

fn sorted(v: &Value) -> Vec<String> {
    let mut v: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a channel name").to_owned())
        .collect();
    v.sort();
    v
}

/// Asserts the welcome frame names this user and her joined channels.
fn assert_welcome(c: &Client, user_id: &str) {
    assert_eq!(c.welcome["user"], user_id, "{}", c.welcome);
    let mut want = vec!["/app/broadcast".to_owned(), user_channel(user_id)];
    want.sort();
    assert_eq!(sorted(&c.welcome["channels"]), want, "{}", c.welcome);
}

fn notification(user_id: &str, text: &str) -> Value {
    json!({"type": "message", "channel": user_channel(user_id), "data": {"text": text}})
}

/// The next frame, with the history position the package's publish gives
/// user notifications (`offset`, `epoch`) checked and taken out.
async fn next_notification(c: &mut Client) -> Value {
    let mut f = c.next_json().await;
    let o = f.as_object_mut().expect("an object");
    assert!(
        o.remove("offset").is_some_and(|v| v.is_u64()),
        "an offset: {o:?}"
    );
    assert!(
        o.remove("epoch").is_some_and(|v| v.is_string()),
        "an epoch: {o:?}"
    );
    f
}

async fn assert_quiet(c: &mut Client, who: &str) {
    if let Some(f) = c.next_json_within(QUIET).await {
        panic!("{who} should have received nothing, got {f}");
    }
}

fn assert_refused(r: Result<Client, Refused>, status: u16, what: &str) {
    match r {
        Ok(c) => panic!("{what}: the socket opened: {}", c.welcome),
        Err(refused) => assert_eq!(refused.status, status, "{what}: {refused:?}"),
    }
}

#[tokio::test]
async fn the_django_app_answers_whoami_and_issues_tokens() {
    let redis = RedisServer::start().await;
    let django = DjangoApp::start(&redis.url(), PREFIX).await;
    let (alice_id, bob_id) = (django.user_id("alice"), django.user_id("bob"));
    assert_ne!(alice_id, bob_id);

    assert_eq!(django.whoami(None).await, json!({"user": null}));
    let alice = django.login("alice", PASSWORD).await;
    let bob = django.login("bob", PASSWORD).await;
    assert_eq!(alice.user_id, alice_id);
    assert_ne!(alice.sessionid, bob.sessionid);
    assert_eq!(
        django.whoami(Some(&alice)).await,
        json!({"user": alice_id, "groups": ["editors"]})
    );
    assert_eq!(
        django.whoami(Some(&bob)).await,
        json!({"user": bob_id, "groups": []})
    );
    let wrong = django
        .post_form(
            "/login/",
            None,
            &[("username", "alice"), ("password", "wrong")],
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // A token (from the package's token view, through Redis) is the identity
    // JSON under PREFIX, for at most 5 seconds.
    let token = django.token(&alice).await;
    assert!(token.len() >= 40, "{token}");
    let key = format!("{PREFIX}{token}");
    let mut r = redis.client().await;
    let stored = r.cmd(&["GET", &key]).await;
    let stored: Value = serde_json::from_str(stored.as_str().expect("the token is stored"))
        .expect("the token holds JSON");
    assert_eq!(stored, json!({"user": alice_id, "groups": ["editors"]}));
    let ttl = r.cmd(&["PTTL", &key]).await.as_int().expect("PTTL");
    assert!((1..=5000).contains(&ttl), "PTTL {ttl}");
    assert_ne!(django.token(&alice).await, token, "a new token each time");

    // Without a login: no token (Django's CSRF check refuses first).
    let anon = django.post_form("/tidings/token/", None, &[]).await;
    assert_eq!(anon.status, 403, "{}", anon.body);
    // With a CSRF token but no login: 401 JSON, not a 302 to a login page
    // (which a page's fetch() would follow).
    let visitor = Session {
        user_id: String::new(),
        sessionid: String::new(),
        csrftoken: "a".repeat(32),
    };
    let anon = django
        .post_form("/tidings/token/", Some(&visitor), &[])
        .await;
    assert_eq!(anon.status, 401, "{}", anon.body);
    let body: Value = serde_json::from_str(&anon.body).expect("JSON");
    assert_eq!(body["error"], "login_required", "{body}");
}

#[tokio::test]
async fn with_the_session_cookie_each_user_gets_her_notifications_and_nobody_elses() {
    let st = Stack::start("allow").await;
    let django = &st.django;
    let alice = django.login("alice", PASSWORD).await;
    let bob = django.login("bob", PASSWORD).await;

    let mut a = st.connect_as(&alice).await;
    let mut b = st.connect_as(&bob).await;
    assert_welcome(&a, &alice.user_id);
    assert_welcome(&b, &bob.user_id);
    let mut anon = st.connect(&st.gw.ws_url(), &[]).await.expect("anonymous");
    assert_eq!(anon.welcome["user"], Value::Null, "{}", anon.welcome);
    assert_eq!(anon.welcome["channels"], json!(["/app/broadcast"]));
    assert!(
        django.logs().contains("GET /tidings/whoami/"),
        "the gateway asked Django:\n{}",
        django.logs()
    );

    django.notify(&alice, "for alice").await;
    assert_eq!(
        next_notification(&mut a).await,
        notification(&alice.user_id, "for alice")
    );
    assert_quiet(&mut b, "bob").await;
    assert_quiet(&mut anon, "the anonymous socket").await;

    django.notify(&bob, "for bob").await;
    assert_eq!(
        next_notification(&mut b).await,
        notification(&bob.user_id, "for bob")
    );
    assert_quiet(&mut a, "alice").await;
    assert_quiet(&mut anon, "the anonymous socket").await;

    // A second tab of alice's gets hers too; bob still nothing.
    let mut a2 = st.connect_as(&alice).await;
    assert_welcome(&a2, &alice.user_id);
    django.notify(&alice, "both tabs").await;
    assert_eq!(
        next_notification(&mut a).await,
        notification(&alice.user_id, "both tabs")
    );
    assert_eq!(
        next_notification(&mut a2).await,
        notification(&alice.user_id, "both tabs")
    );
    assert_quiet(&mut b, "bob").await;

    // Subscribing to another user's channel is forbidden.
    let r = b
        .request(json!({"type": "subscribe", "channel": user_channel(&alice.user_id)}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");

    st.assert_logs_keep(&[
        &alice.sessionid,
        &bob.sessionid,
        &alice.csrftoken,
        &bob.csrftoken,
    ]);
}

/// The package's `publish_to_user` (the three-line setup, publishing
/// through Redis) gives user notifications a history, so a browser whose
/// gateway was SIGKILLed while Django kept notifying reconnects with its
/// position and gets every notification once, in order.
#[tokio::test]
async fn django_notifications_published_while_the_gateway_was_down_are_recovered() {
    let mut st = Stack::start("allow").await;
    let alice = st.django.login("alice", PASSWORD).await;
    let mut a = st.connect_as(&alice).await;
    let ch = user_channel(&alice.user_id);
    assert_eq!(a.welcome["recovery"], true, "{}", a.welcome);
    st.django.notify(&alice, "one").await;
    let one = a.next_json().await;
    assert_eq!(one["data"], json!({"text": "one"}), "{one}");
    let at = json!({ ch.as_str(): {"offset": one["offset"], "epoch": one["epoch"]} });
    // The gateway dies; Django goes on notifying (straight into Redis).
    drop(a);
    let opts = Stack::gateway_options(&st.redis, &st.django, "allow");
    st.gw = Gateway::start_with(GatewayOptions::default()).await;
    for text in ["two", "three"] {
        st.django.notify(&alice, text).await;
    }
    st.gw = Gateway::start_with(opts).await;
    st.gw.wait_ready().await;
    let since = tidings_e2e::percent_encode(&at.to_string());
    let url = format!("{}?since={since}", st.gw.ws_url());
    // (Not `st.connect`: its ping would skip the replayed messages.)
    let mut a = Client::connect_with(&url, &[("Cookie", &alice.cookie())])
        .await
        .expect("reconnect");
    assert_eq!(
        a.welcome["positions"][ch.as_str()]["recovered"],
        true,
        "{}",
        a.welcome
    );
    for text in ["two", "three"] {
        assert_eq!(
            next_notification(&mut a).await,
            notification(&alice.user_id, text)
        );
    }
    st.django.notify(&alice, "four").await;
    assert_eq!(
        next_notification(&mut a).await,
        notification(&alice.user_id, "four")
    );
    assert_quiet(&mut a, "alice").await;
}

#[tokio::test]
async fn with_anonymous_refuse_a_socket_without_a_login_is_refused() {
    let st = Stack::start("refuse").await;
    let url = st.gw.ws_url();
    assert_refused(st.connect(&url, &[]).await, 401, "no cookie");
    assert_refused(
        st.connect(&url, &[("Cookie", "sessionid=not-a-session")])
            .await,
        401,
        "a session Django does not know",
    );

    let alice = st.django.login("alice", PASSWORD).await;
    let mut a = st.connect_as(&alice).await;
    assert_welcome(&a, &alice.user_id);
    st.django.notify(&alice, "hi").await;
    assert_eq!(
        next_notification(&mut a).await,
        notification(&alice.user_id, "hi")
    );
    st.assert_logs_keep(&[&alice.sessionid, &alice.csrftoken]);
}

#[tokio::test]
async fn a_one_time_token_from_django_opens_one_socket() {
    let st = Stack::start("allow").await;
    let django = &st.django;
    let alice = django.login("alice", PASSWORD).await;
    let bob = django.login("bob", PASSWORD).await;
    let mut b = st.connect_as(&bob).await;

    // The token, not a cookie, says who the socket is.
    let token = django.token(&alice).await;
    let mut a = st.connect_with_token(&token).await.expect("token accepted");
    assert_welcome(&a, &alice.user_id);
    django.notify(&alice, "by token").await;
    assert_eq!(
        next_notification(&mut a).await,
        notification(&alice.user_id, "by token")
    );
    assert_quiet(&mut b, "bob").await;

    // It works once: the gateway deleted it.
    assert_refused(st.connect_with_token(&token).await, 401, "a used token");
    let mut r = st.redis.client().await;
    assert_eq!(
        r.cmd(&["EXISTS", &format!("{PREFIX}{token}")]).await,
        Reply::Int(0)
    );
    assert_refused(
        st.connect_with_token("never-issued-0123456789").await,
        401,
        "an unknown token",
    );
    assert_refused(
        st.connect_with_token("short").await,
        401,
        "a malformed token",
    );

    // It expires: a token stored for 200 ms is gone after 400 ms.
    let identity = json!({"user": alice.user_id, "groups": []}).to_string();
    let expiring = "expiring-token-0123456789";
    let set = r
        .cmd(&[
            "SET",
            &format!("{PREFIX}{expiring}"),
            &identity,
            "PX",
            "200",
        ])
        .await;
    assert_eq!(set, Reply::Simple("OK".into()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_refused(
        st.connect_with_token(expiring).await,
        401,
        "an expired token",
    );

    // A bare user id is an identity too.
    let bare = "bare-user-id-token-0123456789";
    r.cmd(&["SET", &format!("{PREFIX}{bare}"), &bob.user_id, "EX", "5"])
        .await;
    let b2 = st.connect_with_token(bare).await.expect("bare id accepted");
    assert_welcome(&b2, &bob.user_id);

    // The token also comes as the `tidings_token` cookie, when Django's
    // session cookie (here: none) does not tell who the socket is.
    let token2 = django.token(&alice).await;
    let cookie = format!("tidings_token={token2}");
    let a3 = st
        .connect(&st.gw.ws_url(), &[("Cookie", &cookie)])
        .await
        .expect("token cookie accepted");
    assert_welcome(&a3, &alice.user_id);

    st.assert_logs_keep(&[&token, &token2, &alice.sessionid, &bob.sessionid]);
}
