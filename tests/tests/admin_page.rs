//! The admin page in a real headless Chromium: it refuses to show anything
//! without the API key, then shows the gateway's connections and channels,
//! publishes a test message (its own client receives it) and disconnects a
//! socket, without a JavaScript error or a CSP violation.
//!
//! Needs Debian's `chromium` (CI's `.ci/run` installs it) or
//! `$TIDINGS_CHROMIUM`; the test fails, not skips, without it.

use std::time::Duration;

use serde_json::json;
use tidings_e2e::{browser::Browser, ws::Client, Gateway, GatewayOptions, PATIENCE};

const KEY: &str = "admin-page-test-key-0123456789";

#[tokio::test]
async fn the_admin_page_shows_the_gateway_publishes_and_disconnects_with_the_key() {
    let gw = Gateway::start_with(GatewayOptions::default().env("TIDINGS_API_KEY", KEY)).await;
    gw.wait_ready().await;
    let mut visitor = Client::connect(&gw.ws_url()).await;
    let visitor_id = visitor.welcome["connection"].as_str().unwrap().to_owned();

    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/admin", gw.addr)).await;
    // Without the key the API refuses, and the page says so.
    page.wait_for(
        "the refusal without a key",
        "document.getElementById('error').textContent.startsWith('401')",
    )
    .await;

    page.eval(&format!(
        "(() => {{ const f = document.getElementById('key'); f.key.value = {}; f.requestSubmit(); return true; }})()",
        json!(KEY)
    ))
    .await
    .unwrap();
    page.wait_for(
        "the visitor's connection in the table",
        &format!(
            "!!document.querySelector('#sockets tr[data-conn={}]')",
            json!(visitor_id)
        ),
    )
    .await;
    page.wait_for(
        "the broadcast channel in the table",
        "!!document.querySelector('#channels tr[data-channel=\"/app/broadcast\"]')",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('error').textContent")
            .await
            .unwrap(),
        ""
    );

    // Publish a test message: the visitor and the page's own client get it.
    page.eval("document.getElementById('publish').requestSubmit(), true")
        .await
        .unwrap();
    let m = visitor.next_json().await;
    assert_eq!(m["data"], json!({"hello": "admin"}));
    page.wait_for(
        "the page's client logging the message",
        "document.getElementById('log').textContent.includes('message on /app/broadcast')",
    )
    .await;

    // Disconnect the visitor from its row.
    page.eval(&format!(
        "document.querySelector('#sockets tr[data-conn={}] button').click(), true",
        json!(visitor_id)
    ))
    .await
    .unwrap();
    assert_eq!(visitor.closed_with(PATIENCE).await, Some(4002));
    page.wait_for(
        "the visitor gone from the table",
        &format!(
            "!document.querySelector('#sockets tr[data-conn={}]')",
            json!(visitor_id)
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one refusal is the page's first call, before the key was typed.
    let errors: Vec<String> = page
        .errors()
        .into_iter()
        .filter(|e| !(e.contains("401") && e.contains("/admin/state")))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
