//! The demo page in a real headless Chromium: it connects (through the
//! gateway's own `/tidings.js` client), shows what is published to the
//! channel every socket joins, its own publish form round-trips, it
//! subscribes to more channels, and it reconnects after the gateway is
//! killed and restarted, all without a JavaScript error or a CSP violation.
//!
//! Needs Debian's `chromium` (CI's `.ci/run` installs it) or
//! `$TIDINGS_CHROMIUM`; the tests fail, not skip, without it.

use serde_json::json;
use tidings_e2e::{browser::Browser, browser::Page, Gateway, GatewayOptions};

const KEY: &str = "0123456789012345678901";

/// A string no earlier run or other test could have put on the page.
fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{what} {}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    json!(s).to_string()
}

/// Opens the demo page and waits until its socket is open and the welcome
/// frame (naming the joined channel) is shown.
async fn open_demo(browser: &Browser, gw: &Gateway) -> Page {
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/", gw.addr)).await;
    page.wait_for(
        "the page's socket to open and show the welcome",
        "document.getElementById('status')?.textContent === 'connected' \
         && document.getElementById('who').textContent.includes('joined /app/broadcast')",
    )
    .await;
    page
}

/// Waits until the page's log shows a `message` row containing `text`.
async fn wait_for_message(page: &Page, text: &str) {
    page.wait_for(
        &format!("a message row containing {text:?}"),
        &format!(
            "[...document.querySelectorAll('#log li.message')].some(li => \
             li.textContent.includes('/app/broadcast') && li.textContent.includes({}))",
            js(text)
        ),
    )
    .await;
}

/// Fills the page's publish form and submits it with a real click.
async fn submit_form(page: &Page, data: &str, key: &str) {
    let filled = page
        .eval(&format!(
            "(() => {{ const f = document.getElementById('publish'); \
             f.elements.channel.value = '/app/broadcast'; \
             f.elements.data.value = {}; f.elements.key.value = {}; \
             f.querySelector('button[type=submit]').click(); return true; }})()",
            js(data),
            js(key)
        ))
        .await;
    assert_eq!(filled, Ok(json!(true)), "filling the publish form");
}

/// The `#log li.error` rows the page shows.
async fn error_rows(page: &Page) -> serde_json::Value {
    page.eval("[...document.querySelectorAll('#log li.error')].map(li => li.textContent)")
        .await
        .expect("read the error rows")
}

/// Asserts the page recorded no uncaught exception, console error or CSP
/// violation, other than those `expected` accepts. The browser's own request
/// for `/favicon.ico`, which the gateway does not serve (and the page's CSP
/// forbids a `data:` icon), is not the page's fault.
async fn assert_no_errors(page: &Page, expected: impl Fn(&str) -> bool) {
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| !(e.starts_with("log/network:") && e.ends_with("/favicon.ico)")))
        .filter(|e| !expected(e))
        .collect();
    assert!(
        errors.is_empty(),
        "JavaScript errors, console errors or CSP violations on the page: {errors:#?}\nits text:\n{}",
        page.body_text().await
    );
}

#[tokio::test]
async fn demo_page_connects_shows_messages_and_publishes_from_its_form() {
    let gw = Gateway::start().await;
    let browser = Browser::launch().await;
    let page = open_demo(&browser, &gw).await;

    // A publish over the HTTP API shows up on the page.
    let text = unique("hello from the test");
    let r = gw.publish("/app/broadcast", json!({ "text": text })).await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for_message(&page, &text).await;

    // The page's own form publishes (no key needed from loopback), and the
    // message comes back over the page's socket.
    let text = unique("hello from the form");
    submit_form(&page, &json!({ "text": text }).to_string(), "").await;
    wait_for_message(&page, &text).await;

    // Text that is not JSON is published as a JSON string.
    let text = unique("plain text from the form");
    submit_form(&page, &text, "").await;
    wait_for_message(&page, &js(&text)).await;

    assert_eq!(error_rows(&page).await, json!([]), "error rows on the page");
    assert_no_errors(&page, |_| false).await;
}

#[tokio::test]
async fn demo_page_form_uses_the_api_key() {
    let gw = Gateway::start_with(GatewayOptions::default().env("TIDINGS_API_KEY", KEY)).await;
    let browser = Browser::launch().await;
    let page = open_demo(&browser, &gw).await;

    // Without the key the gateway refuses, and the page says so.
    let text = unique("refused");
    submit_form(&page, &json!({ "text": text }).to_string(), "").await;
    page.wait_for(
        "an error row saying the publish was refused",
        "[...document.querySelectorAll('#log li.error')].some(li => \
         li.textContent.includes('publish failed: HTTP 401'))",
    )
    .await;

    // With it, the message goes through.
    let text = unique("with the key");
    submit_form(&page, &json!({ "text": text }).to_string(), KEY).await;
    wait_for_message(&page, &text).await;
    assert_eq!(
        error_rows(&page).await.as_array().map(Vec::len),
        Some(1),
        "only the refused publish is an error row"
    );

    // The 401 itself is logged by the browser as a failed load; nothing else
    // may go wrong.
    assert_no_errors(&page, |e| {
        e.starts_with("log/network:") && e.contains(" 401 ")
    })
    .await;
    assert!(!gw.logs().contains(KEY), "the API key must never be logged");
}

#[tokio::test]
async fn demo_page_subscribes_and_shows_the_reconnect_after_a_gateway_restart() {
    let rules = r#"
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
    let opts = GatewayOptions::default().toml(rules);
    let mut gw = Gateway::start_with(opts.clone()).await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = open_demo(&browser, &gw).await;

    // Subscribe to one more channel with the page's form.
    let done = page
        .eval(
            "(() => { const f = document.getElementById('subscribe'); \
             f.elements.channel.value = '/app/room/7'; \
             f.querySelector('button[type=submit]').click(); return true; })()",
        )
        .await;
    assert_eq!(done, Ok(json!(true)));
    page.wait_for(
        "the channel list to show the subscription",
        "document.getElementById('channels').textContent.includes('/app/room/7 (subscribed)')",
    )
    .await;
    let text = unique("in the room");
    let r = gw.publish("/app/room/7", json!({ "text": text })).await;
    assert_eq!(r.status, 202, "{}", r.body);
    page.wait_for(
        "the room message",
        &format!(
            "[...document.querySelectorAll('#log li.message')].some(li => \
             li.textContent.includes('/app/room/7') && li.textContent.includes({}))",
            js(&text)
        ),
    )
    .await;

    // The gateway dies; the page says so, and reconnects once it is back.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(gw
        .wait_exit(std::time::Duration::from_secs(10))
        .await
        .is_some());
    page.wait_for(
        "the page to show the disconnect",
        "document.getElementById('status').textContent.startsWith('disconnected (1006')",
    )
    .await;
    let gw = Gateway::start_with(opts.env("TIDINGS_LISTEN", addr.to_string())).await;
    assert_eq!(gw.addr, addr);
    page.wait_for(
        "the page to reconnect and show the gap",
        "document.getElementById('status').textContent === 'connected' \
         && [...document.querySelectorAll('#log li.gap')].some(li => \
            li.textContent.startsWith('reconnected:') && li.textContent.includes('/app/room/7'))",
    )
    .await;
    page.wait_for(
        "the subscription to be renewed",
        "document.getElementById('channels').textContent.includes('/app/room/7 (subscribed)')",
    )
    .await;
    let text = unique("after the restart");
    let r = gw.publish("/app/room/7", json!({ "text": text })).await;
    assert_eq!(r.status, 202, "{}", r.body);
    page.wait_for(
        "the room message after the restart",
        &format!(
            "[...document.querySelectorAll('#log li.message')].some(li => \
             li.textContent.includes('/app/room/7') && li.textContent.includes({}))",
            js(&text)
        ),
    )
    .await;
    assert_eq!(error_rows(&page).await, json!([]), "error rows on the page");
    // While the gateway was down the browser logged failed connections.
    assert_no_errors(&page, |e| {
        e.starts_with("log/network:") || e.contains("WebSocket connection to")
    })
    .await;
}

/// With history (and Redis), the demo page shows recovery: after the
/// gateway is killed and restarted while a backend publishes with the
/// one-command publish, the page says the room was recovered and shows the
/// messages published meanwhile, in order.
#[tokio::test]
async fn demo_page_shows_recovery_after_a_gateway_restart() {
    let redis = tidings_e2e::redis::RedisServer::start().await;
    let rules = r#"
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/room/*"
subscribe = true
anonymous = true
history = { size = 50, ttl_secs = 600 }
"#;
    let opts = GatewayOptions::default()
        .toml(rules)
        .env("TIDINGS_REDIS_URL", redis.url());
    let mut gw = Gateway::start_with(opts.clone()).await;
    gw.wait_ready().await;
    let addr = gw.addr;
    let browser = Browser::launch().await;
    let page = open_demo(&browser, &gw).await;
    let done = page
        .eval(
            "(() => { const f = document.getElementById('subscribe'); \
             f.elements.channel.value = '/app/room/h'; \
             f.querySelector('button[type=submit]').click(); return true; })()",
        )
        .await;
    assert_eq!(done, Ok(json!(true)));
    page.wait_for(
        "the subscription",
        "document.getElementById('channels').textContent.includes('/app/room/h (subscribed)')",
    )
    .await;
    let before = unique("before");
    let r = gw.publish("/app/room/h", json!({ "text": before })).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let row = |text: &str| {
        format!(
            "[...document.querySelectorAll('#log li.message')].some(li => \
             li.textContent.includes('/app/room/h #') && li.textContent.includes({}))",
            js(text)
        )
    };
    page.wait_for("the first message", &row(&before)).await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(gw
        .wait_exit(std::time::Duration::from_secs(10))
        .await
        .is_some());
    // Published while the gateway is down, with the one-command publish.
    let mut r = redis.client().await;
    let missed: Vec<String> = (0..3).map(|n| unique(&format!("missed {n}"))).collect();
    for text in &missed {
        let data = json!({ "text": text }).to_string();
        r.fcall_publish("/app/room/h", &data, 50, 600)
            .await
            .unwrap_or_else(|reply| panic!("FCALL: {reply:?}"));
    }
    let gw = Gateway::start_with(opts.env("TIDINGS_LISTEN", addr.to_string())).await;
    assert_eq!(gw.addr, addr);
    page.wait_for(
        "the page to say the room was recovered",
        "[...document.querySelectorAll('#log li.state')].some(li => \
         li.textContent.startsWith('reconnected: recovered everything published on /app/room/h'))",
    )
    .await;
    for text in &missed {
        page.wait_for("a missed message", &row(text)).await;
    }
    // In order (the log shows the newest first), and no gap for the room.
    let order = page
        .eval(
            "[...document.querySelectorAll('#log li.message')].map(li => li.textContent) \
             .filter(t => t.includes('/app/room/h #')).reverse()",
        )
        .await
        .expect("the rows");
    let texts: Vec<&str> = order
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    for (row, text) in texts[1..].iter().zip(&missed) {
        assert!(row.contains(text.as_str()), "{row} / {text}");
    }
    let gaps = page
        .eval(
            "[...document.querySelectorAll('#log li.gap')].map(li => li.textContent) \
             .filter(t => t.includes('/app/room/h'))",
        )
        .await
        .unwrap();
    assert_eq!(gaps, json!([]));
    drop(gw);
}
