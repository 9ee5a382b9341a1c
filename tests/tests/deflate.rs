//! permessage-deflate (RFC 7692) through the real binary, with real clients
//! that offer it: Chromium (it always does) and Node's `ws` (npm, pinned in
//! `tests/deflate/package.json`).
//!
//! What goes over the wire is measured, not assumed: the Node client
//! reports the bytes its TCP socket read and wrote, so a compressed frame
//! shows up as fewer bytes than its message; Chromium's socket reports the
//! negotiated extension, and the gateway's `/metrics` count the compressed
//! frames and how many times a message was compressed (once, whatever the
//! number of sockets).

use std::{path::PathBuf, process::Stdio, sync::OnceLock, time::Duration};

use serde_json::{json, Value};
use tidings_e2e::{browser::Browser, http, Gateway, GatewayOptions};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// What the gateway answers to an accepted offer.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

const ON: &str = "[websocket]\npermessage_deflate = true\ndeflate_threshold_bytes = 1024\n";

const PATIENCE: Duration = Duration::from_secs(30);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deflate")
}

/// Installs the pinned `ws` into `tests/deflate/node_modules` if needed.
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if dir().join("node_modules/ws/package.json").is_file() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run npm ({e}): these tests need Node.js and npm, then `npm install` in tests/deflate")
            });
        assert!(status.success(), "npm install in tests/deflate failed");
    });
}

/// A running `tests/deflate/client.js`.
struct NodeWs {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeWs {
    /// Connects to `url`, offering permessage-deflate when `deflate` (and
    /// then compressing its own messages of `threshold` bytes or more).
    async fn start(url: &str, deflate: bool, threshold: usize) -> NodeWs {
        ensure_installed();
        let mut child = Command::new("node")
            .arg(dir().join("client.js"))
            .arg(url)
            .arg(if deflate { "on" } else { "off" })
            .arg(threshold.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js) is needed for these tests");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        NodeWs {
            _child: child,
            stdin,
            lines,
        }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("the ws client to report in time")
            .expect("read")
            .expect("the client exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn next_ev(&mut self, ev: &str) -> Value {
        loop {
            let v = self.next().await;
            assert_ne!(v["ev"], "close", "the socket closed: {v}");
            if v["ev"] == ev {
                return v;
            }
        }
    }

    /// The next message (its text parsed as JSON) and the bytes read from
    /// the wire so far.
    async fn message(&mut self) -> (Value, u64) {
        let (v, read, _) = self.message_len().await;
        (v, read)
    }

    /// [`NodeWs::message`], and the message's length in bytes.
    async fn message_len(&mut self) -> (Value, u64, u64) {
        let m = self.next_ev("message").await;
        let text = m["text"].as_str().expect("text");
        (
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")),
            m["read"].as_u64().expect("read"),
            text.len() as u64,
        )
    }

    /// Sends `text`; returns the bytes it took on the wire.
    async fn send(&mut self, text: &str) -> u64 {
        let line = format!("{}\n", json!({ "send": text }));
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        let sent = self.next_ev("sent").await;
        sent["written"].as_u64().unwrap() - sent["before"].as_u64().unwrap()
    }

    /// The handshake's answer, then the welcome: (extensions answered,
    /// bytes read so far).
    async fn opened(&mut self) -> (Option<String>, u64) {
        let up = self.next_ev("upgrade").await;
        let (welcome, read) = self.message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (up["extensions"].as_str().map(str::to_owned), read)
    }
}

/// One counter from `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> u64 {
    let body = http::get(gw.addr, "/metrics").await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}")) as u64
}

/// A JSON document of about `items` × 80 bytes, compressible like real
/// data (repeated keys, similar values).
fn document(items: usize, marker: &str) -> Value {
    json!({
        "marker": marker,
        "items": (0..items).map(|i| json!({
            "id": i,
            "title": format!("Headline number {i} of the day"),
            "tags": ["news", "sport", format!("t{}", i % 7)],
            "score": i * 37 % 101,
        })).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn node_ws_negotiates_gets_large_frames_compressed_once_and_sends_compressed_ones() {
    let gw = Gateway::start_with(GatewayOptions::default().toml(ON)).await;
    let url = gw.ws_url();
    // A mixed population: two sockets that negotiate the extension, one
    // that does not offer it.
    let mut a = NodeWs::start(&url, true, 0).await;
    let mut b = NodeWs::start(&url, true, 0).await;
    let mut plain = NodeWs::start(&url, false, 0).await;
    let (ext_a, mut read_a) = a.opened().await;
    let (ext_b, mut read_b) = b.opened().await;
    let (ext_plain, mut read_plain) = plain.opened().await;
    assert_eq!(ext_a.as_deref(), Some(ANSWER));
    assert_eq!(ext_b.as_deref(), Some(ANSWER));
    assert_eq!(ext_plain, None);

    // A large delivery: compressed for a and b (a fraction of its size on
    // the wire), as it is for the plain socket, intact for all three.
    let doc = document(100, "big");
    assert_eq!(gw.publish("/app/broadcast", doc.clone()).await.status, 202);
    let mut frame_len = 0;
    for (c, read, compressed) in [
        (&mut a, &mut read_a, true),
        (&mut b, &mut read_b, true),
        (&mut plain, &mut read_plain, false),
    ] {
        let (m, now, text_len) = c.message_len().await;
        assert_eq!(m["data"], doc, "the message arrives intact");
        frame_len = text_len;
        let wire = now - *read;
        *read = now;
        if compressed {
            assert!(
                wire * 3 < text_len,
                "{wire} bytes on the wire for a {text_len}-byte message"
            );
        } else {
            assert!(wire > text_len, "{wire} bytes for {text_len}");
        }
    }
    assert!(frame_len > 4096, "{frame_len}");
    // Compressed once, written compressed twice.
    assert_eq!(metric(&gw, "tidings_ws_deflated_messages_total").await, 1);
    assert_eq!(metric(&gw, "tidings_ws_deflated_frames_total").await, 2);
    // Each of the two frames saved more than two thirds of the message.
    assert!(metric(&gw, "tidings_ws_deflate_bytes_saved_total").await > frame_len);

    // Under the threshold: uncompressed for everyone, nothing compressed.
    assert_eq!(
        gw.publish("/app/broadcast", json!("small")).await.status,
        202
    );
    for (c, read) in [(&mut a, &mut read_a), (&mut plain, &mut read_plain)] {
        let (m, now, text_len) = c.message_len().await;
        assert_eq!(m["data"], "small");
        assert!(now - *read > text_len, "{} for {text_len}", now - *read);
        *read = now;
    }
    assert_eq!(b.message().await.0["data"], "small");
    assert_eq!(metric(&gw, "tidings_ws_deflated_messages_total").await, 1);
    assert_eq!(metric(&gw, "tidings_ws_deflated_frames_total").await, 2);

    // Client to server: a compressed message (ws compresses it: threshold
    // 0) is inflated; its reply echoes it.
    let id = "abcdefgh".repeat(500);
    let ping = json!({"type": "ping", "id": id}).to_string();
    let wire = a.send(&ping).await;
    assert!(
        wire * 10 < ping.len() as u64,
        "{wire} bytes for {}",
        ping.len()
    );
    let (pong, _) = a.message().await;
    assert_eq!(pong, json!({"type": "pong", "id": id}));
    assert_eq!(metric(&gw, "tidings_ws_inflated_messages_total").await, 1);
    // And the plain socket's messages are read as before.
    plain.send(&ping).await;
    assert_eq!(plain.message().await.0["id"], id);
    // Small compressed messages too (ws compresses everything here).
    b.send(r#"{"type":"ping","id":7}"#).await;
    assert_eq!(b.message().await.0, json!({"type": "pong", "id": 7}));
    assert_eq!(metric(&gw, "tidings_ws_inflated_messages_total").await, 2);
}

#[tokio::test]
async fn off_by_default_nothing_is_negotiated() {
    let gw = Gateway::start().await;
    let mut c = NodeWs::start(&gw.ws_url(), true, 0).await;
    let (ext, read) = c.opened().await;
    assert_eq!(ext, None, "no extension answered");
    let doc = document(100, "off");
    gw.publish("/app/broadcast", doc.clone()).await;
    let (m, now, len) = c.message_len().await;
    assert_eq!(m["data"], doc);
    assert!(now - read > len, "{} bytes for {len}", now - read);
    // Its messages go uncompressed (ws compresses only when negotiated).
    let ping = json!({"type": "ping", "id": "x".repeat(2000)}).to_string();
    assert!(c.send(&ping).await > ping.len() as u64);
    assert_eq!(c.message().await.0["type"], "pong");
    assert_eq!(metric(&gw, "tidings_ws_deflated_frames_total").await, 0);
    assert_eq!(metric(&gw, "tidings_ws_inflated_messages_total").await, 0);
}

/// The answer's `Sec-WebSocket-Extensions` to a handshake offering
/// `offer`, or `None` when it has none.
async fn answer_to(gw: &Gateway, offer: &str) -> Option<String> {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {offer}\r\n\r\n",
        gw.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("the answer in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn offers_the_server_cannot_honour_are_declined() {
    let gw = Gateway::start_with(GatewayOptions::default().toml(ON)).await;
    for (offer, accepted) in [
        ("permessage-deflate; client_max_window_bits", true),
        ("permessage-deflate; server_max_window_bits=10", false),
        (
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            true,
        ),
        ("permessage-deflate; unknown_param", false),
        ("x-webkit-deflate-frame", false),
    ] {
        let answer = answer_to(&gw, offer).await;
        assert_eq!(
            answer.as_deref(),
            accepted.then_some(ANSWER),
            "offer {offer:?}"
        );
    }
}

#[tokio::test]
async fn chromium_negotiates_and_gets_large_messages_compressed_and_intact() {
    let gw = Gateway::start_with(GatewayOptions::default().toml(ON)).await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    // The demo page, for an origin the gateway allows; its own socket is
    // the second Chromium socket.
    page.navigate(&format!("http://{}/", gw.addr)).await;
    page.wait_for(
        "the demo page's socket to open",
        "document.getElementById('status')?.textContent === 'connected'",
    )
    .await;
    page.eval(
        "window.__m = []; window.__ws = new WebSocket(`ws://${location.host}/ws`); \
         __ws.onmessage = (e) => __m.push(JSON.parse(e.data)); true",
    )
    .await
    .unwrap();
    page.wait_for(
        "the test socket's welcome",
        "__ws.readyState === 1 && __m.some(m => m.type === 'welcome')",
    )
    .await;
    let ext = page.eval("__ws.extensions").await.unwrap();
    assert_eq!(ext, json!(ANSWER), "what Chromium's socket negotiated");

    let doc = document(200, "chromium");
    gw.publish("/app/broadcast", doc.clone()).await;
    let got = page
        .wait_for(
            "the large message",
            "__m.find(m => m.type === 'message' && m.data && m.data.marker === 'chromium')?.data",
        )
        .await;
    assert_eq!(got, doc, "intact after Chromium inflated it");
    // Once compressed, written compressed to both of Chromium's sockets.
    assert_eq!(metric(&gw, "tidings_ws_deflated_messages_total").await, 1);
    assert_eq!(metric(&gw, "tidings_ws_deflated_frames_total").await, 2);

    // Chromium compresses what it sends: the gateway inflates it.
    let id = "chromium ".repeat(300);
    page.eval(&format!(
        "__ws.send(JSON.stringify({{type: 'ping', id: {}}})); true",
        json!(id)
    ))
    .await
    .unwrap();
    let pong = page
        .wait_for("the pong", "__m.find(m => m.type === 'pong')?.id")
        .await;
    assert_eq!(pong, json!(id));
    assert!(metric(&gw, "tidings_ws_inflated_messages_total").await >= 1);
    assert!(page.errors().is_empty(), "{:#?}", page.errors());
}
