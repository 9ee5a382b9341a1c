//! The wires other than the gateway's own WebSocket protocol: Server-Sent
//! Events (`GET /sse`), Socket.IO (Engine.IO 4, Socket.IO 5) over
//! WebSocket or HTTP long-polling, and Pusher Channels (protocol 7, as
//! pusher-js speaks it, subscribed to the public channel `broadcast` of the
//! app `bench`). Each client is one task holding one TCP
//! connection; the HTTP ones are spoken by hand (HTTP/1.1, keep-alive,
//! chunked or sized bodies) so that the bench stays small per client.
//!
//! Against the Node socket.io baseline (`socketio-baseline/server.js`) the
//! same Socket.IO client runs: the baseline sends the same
//! `42["tidings",{"type":"welcome","user":…}]` after the connect and the
//! same `42["notification",DATA,{"channel":…}]` events.

use std::{net::SocketAddr, sync::atomic::Ordering};

use bytes::{Buf, BytesMut};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, account, find, now_ns, number_after, on_text, Parsed, Plan, Ws},
    stats::Shared,
};

/// How clients talk to the gateway.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum Wire {
    /// The gateway's protocol v1 over a WebSocket (`/ws`).
    Websocket,
    /// Server-Sent Events (`GET /sse`), each frame one event.
    Sse,
    /// Socket.IO over a WebSocket
    /// (`/socket.io/?EIO=4&transport=websocket`), as `socket.io-client`
    /// with `transports: ["websocket"]`.
    Socketio,
    /// Socket.IO over HTTP long-polling
    /// (`/socket.io/?EIO=4&transport=polling`), never upgraded.
    SocketioPolling,
    /// Pusher Channels protocol 7 (`/app/bench-key?protocol=7`), each
    /// client subscribed to the public channel `broadcast` (the Tidings
    /// channel `/pusher/bench/broadcast`); `--launch` configures the app.
    /// Broadcast and idle only.
    Pusher,
}

/// The app `--wire pusher` uses: id, key and secret.
pub(crate) const PUSHER_APP: (&str, &str, &str) = ("bench", "bench-key", "bench-secret-0123");

/// The gateway's environment for `--wire pusher`: the Pusher endpoints on,
/// with the bench's app.
pub(crate) fn pusher_env() -> Vec<(String, String)> {
    let (id, key, secret) = PUSHER_APP;
    vec![
        ("TIDINGS_PUSHER__ENABLED".into(), "true".into()),
        (
            "TIDINGS_PUSHER__APPS".into(),
            format!(r#"[{{id="{id}",key="{key}",secret="{secret}"}}]"#),
        ),
    ]
}

impl Wire {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wire::Websocket => "websocket",
            Wire::Sse => "sse",
            Wire::Socketio => "socketio",
            Wire::SocketioPolling => "socketio-polling",
            Wire::Pusher => "pusher",
        }
    }

    /// The client URL for a gateway (or baseline server) at `addr`.
    pub(crate) fn url(self, addr: SocketAddr) -> String {
        match self {
            Wire::Websocket => format!("ws://{addr}/ws"),
            Wire::Sse => format!("http://{addr}/sse"),
            Wire::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            Wire::SocketioPolling => format!("http://{addr}/socket.io/?EIO=4&transport=polling"),
            Wire::Pusher => format!("ws://{addr}/app/{}?protocol=7", PUSHER_APP.1),
        }
    }

    /// The channel the broadcast goes to.
    pub(crate) fn broadcast_channel(self) -> &'static str {
        match self {
            Wire::Pusher => "/pusher/bench/broadcast",
            _ => "/app/broadcast",
        }
    }

    /// Whether this is Socket.IO (which the Node baseline also serves).
    pub(crate) fn is_socketio(self) -> bool {
        matches!(self, Wire::Socketio | Wire::SocketioPolling)
    }
}

/// The path and query of an `http://host:port/path?query` URL.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// Checks a welcome frame names the plan's user (a wrong one is counted,
/// not refused).
fn check_welcome(frame: &serde_json::Value, plan: &Plan, shared: &Shared) -> Result<(), String> {
    if frame["type"] != "welcome" {
        return Err(format!("first frame is not welcome: {}", frame["type"]));
    }
    let want = plan.user.to_string();
    if frame["user"].as_str() != Some(want.as_str()) {
        shared.wrong_welcome.fetch_add(1, Ordering::Relaxed);
        shared.sample(|| format!("welcome for uid={} names {}", plan.user, frame["user"]));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 by hand.

/// One keep-alive HTTP/1.1 connection: requests written whole, responses
/// read from one buffer.
pub(crate) struct Http {
    stream: TcpStream,
    buf: BytesMut,
    host: String,
    cookie: String,
}

/// A response head.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
}

impl Http {
    async fn open(plan: &Plan) -> Result<Self, String> {
        Ok(Self {
            stream: client::tcp(plan).await?,
            buf: BytesMut::new(),
            host: plan.target.to_string(),
            cookie: format!("uid={}", plan.user),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        extra: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n{extra}",
            self.host, self.cookie
        );
        if method == "POST" {
            req += &format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req += "\r\n";
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("io: write: {}", e.kind()))
    }

    /// Reads more bytes into the buffer; an error at the end of the stream.
    async fn fill(&mut self) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("closed by the server".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("io: read: {}", e.kind())),
        }
    }

    async fn head(&mut self) -> Result<Head, String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 4);
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let mut head = Head {
            status,
            chunked: false,
            length: None,
        };
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            } else if k == "content-length" {
                head.length = v.parse().ok();
            }
        }
        Ok(head)
    }

    /// The next chunk of a chunked body; `None` after the last.
    async fn chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        let line_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        self.buf.advance(line_end + 2);
        if size == 0 {
            // No trailers are sent: the final CRLF.
            while self.buf.len() < 2 {
                self.fill().await?;
            }
            self.buf.advance(2);
            return Ok(None);
        }
        while self.buf.len() < size + 2 {
            self.fill().await?;
        }
        let data = self.buf.split_to(size).to_vec();
        self.buf.advance(2);
        Ok(Some(data))
    }

    /// A whole response: status and body.
    async fn response(&mut self) -> Result<(u16, Vec<u8>), String> {
        let head = self.head().await?;
        let body = if head.chunked {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await? {
                body.extend_from_slice(&c);
            }
            body
        } else {
            let n = head.length.unwrap_or(0);
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.split_to(n).to_vec()
        };
        Ok((head.status, body))
    }
}

// ---------------------------------------------------------------------------
// Server-Sent Events.

/// An open event stream.
pub(crate) struct SseStream {
    http: Http,
    /// Decoded body bytes not yet split into events.
    pending: Vec<u8>,
}

impl SseStream {
    /// The data of the next event that has some (`data:` lines joined with
    /// `\n`); comments, `id:` and `retry:` lines are skipped. `None` when
    /// the stream ends.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(end) = find(&self.pending, b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let mut data = Vec::new();
                for line in block.split(|&b| b == b'\n') {
                    if let Some(d) = line.strip_prefix(b"data:") {
                        if !data.is_empty() {
                            data.push(b'\n');
                        }
                        data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
                    }
                }
                if !data.is_empty() {
                    return Ok(Some(data));
                }
                continue;
            }
            match self.http.chunk().await? {
                Some(c) => self.pending.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }
}

/// Opens `GET /sse` with the plan's cookie and reads up to the welcome.
pub(crate) async fn connect_sse(plan: &Plan, shared: &Shared) -> Result<SseStream, String> {
    let mut http = Http::open(plan).await?;
    http.send(
        "GET",
        path_of(&plan.url),
        "Accept: text/event-stream\r\n",
        b"",
    )
    .await?;
    let head = http.head().await?;
    if head.status != 200 {
        return Err(format!("http {}", head.status));
    }
    if !head.chunked {
        return Err("event stream not chunked".to_owned());
    }
    let mut stream = SseStream {
        http,
        pending: Vec::new(),
    };
    loop {
        let data = stream.next().await?.ok_or("stream ended before welcome")?;
        let v: serde_json::Value =
            serde_json::from_slice(&data).map_err(|_| "event: not JSON".to_owned())?;
        if v["type"] == "sse" {
            continue;
        }
        check_welcome(&v, plan, shared)?;
        stream.pending.shrink_to_fit();
        return Ok(stream);
    }
}

/// Reads events until the task is aborted or the stream ends.
pub(crate) async fn read_sse(mut stream: SseStream, plan: &Plan, shared: &Shared) {
    loop {
        match stream.next().await {
            Ok(Some(data)) => on_text(&data, plan, shared),
            Ok(None) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} stream ended by the gateway", plan.user));
                return;
            }
            Err(e) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} stream error: {e}", plan.user));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Socket.IO.

/// Parses `42["notification",{"t":T,"s":S,"u":U},{"channel":"..."}]`.
pub(crate) fn parse_notification(packet: &[u8]) -> Option<Parsed<'_>> {
    let c = find(packet, b"\"channel\":\"")? + 11;
    let end = packet[c..].iter().position(|&b| b == b'"')? + c;
    Some(Parsed {
        channel: &packet[c..end],
        t: number_after(packet, b"\"t\":")?,
        seq: number_after(packet, b"\"s\":")?,
        user: number_after(packet, b"\"u\":")?,
    })
}

/// What one Engine.IO packet from the server asks of the client.
enum Packet<'a> {
    /// `2`: answer `3`.
    Ping,
    /// `0{...}`: the open packet.
    Open(&'a [u8]),
    /// `40{...}`: connected to the default namespace.
    Connected,
    /// `42["tidings",FRAME]`: a protocol v1 frame.
    Tidings(&'a [u8]),
    /// `42["notification",...]`.
    Notification(&'a [u8]),
    /// `1` or `41`: the session or the namespace closed.
    Closed,
    /// `6` (noop) and the like.
    Other(&'a [u8]),
}

fn packet(p: &[u8]) -> Packet<'_> {
    const TIDINGS: &[u8] = b"42[\"tidings\",";
    if p == b"2" {
        Packet::Ping
    } else if p == b"1" || p.starts_with(b"41") {
        Packet::Closed
    } else if p.starts_with(b"40") {
        Packet::Connected
    } else if let Some(rest) = p.strip_prefix(b"0") {
        Packet::Open(rest)
    } else if p.starts_with(b"42[\"notification\",") {
        Packet::Notification(p)
    } else if p.starts_with(TIDINGS) && p.ends_with(b"]") {
        Packet::Tidings(&p[TIDINGS.len()..p.len() - 1])
    } else {
        Packet::Other(p)
    }
}

fn on_notification(p: &[u8], plan: &Plan, shared: &Shared) {
    let now = now_ns();
    match parse_notification(p) {
        Some(m) => account(&m, now, p, plan, shared),
        None => {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            shared.sample(|| format!("unparsable event: {}", String::from_utf8_lossy(p)));
        }
    }
}

fn on_other(p: &[u8], plan: &Plan, shared: &Shared) {
    shared.other_frames.fetch_add(1, Ordering::Relaxed);
    shared.sample(|| {
        let s = String::from_utf8_lossy(&p[..p.len().min(300)]);
        format!("uid={} got {s}", plan.user)
    });
}

/// Opens the Engine.IO WebSocket, joins the default namespace and reads up
/// to the welcome.
pub(crate) async fn connect_socketio(plan: &Plan, shared: &Shared) -> Result<Ws, String> {
    let mut ws = client::handshake(plan).await?;
    let send = |m: &'static str| Message::text(m);
    loop {
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected message: {other:?}")),
            Some(Err(e)) => return Err(format!("before welcome: {e}")),
            None => return Err("closed before welcome".to_owned()),
        };
        match packet(t.as_bytes()) {
            Packet::Open(_) => ws.send(send("40")).await.map_err(|e| e.to_string())?,
            Packet::Ping => ws.send(send("3")).await.map_err(|e| e.to_string())?,
            Packet::Connected | Packet::Other(_) => {}
            Packet::Tidings(frame) => {
                let v: serde_json::Value =
                    serde_json::from_slice(frame).map_err(|_| "welcome: not JSON".to_owned())?;
                check_welcome(&v, plan, shared)?;
                return Ok(ws);
            }
            Packet::Notification(_) => return Err("notification before welcome".to_owned()),
            Packet::Closed => {
                return Err(format!(
                    "refused: {}",
                    String::from_utf8_lossy(&t.as_bytes()[..t.len().min(200)])
                ))
            }
        }
    }
}

/// Reads Engine.IO packets until the task is aborted or the socket ends,
/// answering pings.
pub(crate) async fn read_socketio(mut ws: Ws, plan: &Plan, shared: &Shared) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => match packet(t.as_bytes()) {
                Packet::Ping => {
                    if ws.send(Message::text("3")).await.is_err() {
                        break;
                    }
                }
                Packet::Notification(p) => on_notification(p, plan, shared),
                Packet::Closed => {
                    shared.disconnected.fetch_add(1, Ordering::Relaxed);
                    shared.sample(|| format!("uid={} closed by the server: {t}", plan.user));
                    return;
                }
                Packet::Tidings(p) | Packet::Other(p) | Packet::Open(p) => {
                    on_other(p, plan, shared);
                }
                Packet::Connected => on_other(t.as_bytes(), plan, shared),
            },
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(other) => on_other(format!("{other:?}").as_bytes(), plan, shared),
            Err(e) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} socket error: {e}", plan.user));
                return;
            }
        }
    }
    shared.disconnected.fetch_add(1, Ordering::Relaxed);
    shared.sample(|| format!("uid={} socket ended", plan.user));
}

/// A Socket.IO session over long-polling: one keep-alive connection, one
/// request at a time (a `GET` held by the server until it has packets, a
/// `POST` for the pongs).
pub(crate) struct Polling {
    http: Http,
    /// The polling path with `&sid=…`.
    path: String,
}

impl Polling {
    /// One poll: the packets of the payload (separated by `\x1e`).
    async fn poll(&mut self) -> Result<Vec<Vec<u8>>, String> {
        self.http.send("GET", &self.path, "", b"").await?;
        let (status, body) = self.http.response().await?;
        if status != 200 {
            return Err(format!(
                "poll: http {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body.split(|&b| b == 0x1e).map(<[u8]>::to_vec).collect())
    }

    async fn post(&mut self, packet: &[u8]) -> Result<(), String> {
        self.http.send("POST", &self.path, "", packet).await?;
        let (status, _) = self.http.response().await?;
        if status != 200 {
            return Err(format!("post: http {status}"));
        }
        Ok(())
    }
}

/// The Engine.IO handshake over polling, the namespace connect, then polls
/// up to the welcome.
pub(crate) async fn connect_polling(plan: &Plan, shared: &Shared) -> Result<Polling, String> {
    let mut http = Http::open(plan).await?;
    let path = path_of(&plan.url).to_owned();
    http.send("GET", &path, "", b"").await?;
    let (status, body) = http.response().await?;
    if status != 200 {
        return Err(format!("http {status}"));
    }
    let open = body.strip_prefix(b"0").ok_or("handshake: no open packet")?;
    let v: serde_json::Value =
        serde_json::from_slice(open).map_err(|_| "handshake: open packet not JSON".to_owned())?;
    let sid = v["sid"].as_str().ok_or("handshake: no sid")?;
    let mut p = Polling {
        http,
        path: format!("{path}&sid={sid}"),
    };
    p.post(b"40").await?;
    loop {
        let mut pong = false;
        for packet_bytes in p.poll().await? {
            match packet(&packet_bytes) {
                Packet::Ping => pong = true,
                Packet::Connected | Packet::Other(_) | Packet::Open(_) => {}
                Packet::Tidings(frame) => {
                    let v: serde_json::Value = serde_json::from_slice(frame)
                        .map_err(|_| "welcome: not JSON".to_owned())?;
                    check_welcome(&v, plan, shared)?;
                    return Ok(p);
                }
                Packet::Notification(_) => return Err("notification before welcome".to_owned()),
                Packet::Closed => return Err("closed before welcome".to_owned()),
            }
        }
        if pong {
            p.post(b"3").await?;
        }
    }
}

/// Polls until the task is aborted or the session ends, answering pings.
pub(crate) async fn read_polling(mut p: Polling, plan: &Plan, shared: &Shared) {
    loop {
        let packets = match p.poll().await {
            Ok(ps) => ps,
            Err(e) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} poll failed: {e}", plan.user));
                return;
            }
        };
        let mut pong = false;
        for bytes in &packets {
            match packet(bytes) {
                Packet::Ping => pong = true,
                Packet::Notification(n) => on_notification(n, plan, shared),
                Packet::Closed => {
                    shared.disconnected.fetch_add(1, Ordering::Relaxed);
                    shared.sample(|| {
                        format!(
                            "uid={} closed by the server: {}",
                            plan.user,
                            String::from_utf8_lossy(bytes)
                        )
                    });
                    return;
                }
                Packet::Other(b"6") => {}
                Packet::Tidings(o) | Packet::Other(o) | Packet::Open(o) => {
                    on_other(o, plan, shared)
                }
                Packet::Connected => on_other(bytes, plan, shared),
            }
        }
        if pong {
            if let Err(e) = p.post(b"3").await {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} pong failed: {e}", plan.user));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Pusher Channels.

/// Opens the Pusher WebSocket, waits for `pusher:connection_established`,
/// subscribes to `broadcast` and waits for the subscription.
pub(crate) async fn connect_pusher(plan: &Plan) -> Result<Ws, String> {
    let mut ws = client::handshake(plan).await?;
    loop {
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected message: {other:?}")),
            Some(Err(e)) => return Err(format!("before subscription: {e}")),
            None => return Err("closed before subscription".to_owned()),
        };
        let b = t.as_bytes();
        let is = |event: &[u8]| find(b, event).is_some();
        if is(br#""event":"pusher:connection_established""#) {
            ws.send(Message::text(
                r#"{"event":"pusher:subscribe","data":{"channel":"broadcast"}}"#,
            ))
            .await
            .map_err(|e| e.to_string())?;
        } else if is(br#""event":"pusher_internal:subscription_succeeded""#) {
            return Ok(ws);
        } else if is(br#""event":"pusher:ping""#) {
            ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#))
                .await
                .map_err(|e| e.to_string())?;
        } else {
            return Err(format!(
                "refused: {}",
                String::from_utf8_lossy(&b[..b.len().min(200)])
            ));
        }
    }
}

/// Parses a Pusher event of the bench's broadcast,
/// `{"event":"message","channel":"broadcast","data":{"t":T,"s":S,"u":U}}`
/// (the data as published; also as a JSON string, as the HTTP API's
/// events carry it), as the broadcast channel's message.
pub(crate) fn parse_pusher(frame: &[u8]) -> Option<Parsed<'_>> {
    let data = frame.strip_prefix(br#"{"event":"message","channel":"broadcast","data":"#)?;
    let field = |k: u8| {
        number_after(data, &[b'"', k, b'"', b':'])
            .or_else(|| number_after(data, &[k, b'\\', b'"', b':']))
    };
    Some(Parsed {
        channel: b"/app/broadcast",
        t: field(b't')?,
        seq: field(b's')?,
        user: field(b'u')?,
    })
}

/// Reads Pusher events until the task is aborted or the socket ends,
/// answering the server's `pusher:ping`.
pub(crate) async fn read_pusher(mut ws: Ws, plan: &Plan, shared: &Shared) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                let b = t.as_bytes();
                if find(b, br#""event":"pusher:ping""#).is_some() {
                    if ws
                        .send(Message::text(r#"{"event":"pusher:pong","data":{}}"#))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                let now = now_ns();
                match parse_pusher(b) {
                    Some(m) => account(&m, now, b, plan, shared),
                    None => on_other(b, plan, shared),
                }
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} closed by the gateway: {frame:?}", plan.user));
                return;
            }
            Ok(other) => on_other(format!("{other:?}").as_bytes(), plan, shared),
            Err(e) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} socket error: {e}", plan.user));
                return;
            }
        }
    }
    shared.disconnected.fetch_add(1, Ordering::Relaxed);
    shared.sample(|| format!("uid={} socket ended", plan.user));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pusher_broadcast_event() {
        let f = br#"{"event":"message","channel":"broadcast","data":"{\"t\":1700000000000000000,\"s\":7,\"u\":0}"}"#;
        let m = parse_pusher(f).unwrap();
        assert_eq!(m.channel, b"/app/broadcast");
        assert_eq!((m.t, m.seq, m.user), (1_700_000_000_000_000_000, 7, 0));
        let raw = br#"{"event":"message","channel":"broadcast","data":{"t":5,"s":8,"u":0}}"#;
        let m = parse_pusher(raw).unwrap();
        assert_eq!((m.t, m.seq, m.user), (5, 8, 0));
        assert!(parse_pusher(br#"{"event":"message","channel":"other","data":"{}"}"#).is_none());
    }

    #[test]
    fn parses_a_notification_event() {
        let p = br#"42["notification",{"t":1700000000000000000,"s":7,"u":42},{"channel":"/app/user/42/notifications"}]"#;
        let m = parse_notification(p).unwrap();
        assert_eq!(m.channel, b"/app/user/42/notifications");
        assert_eq!((m.t, m.seq, m.user), (1_700_000_000_000_000_000, 7, 42));
        assert!(matches!(packet(p), Packet::Notification(_)));
        assert!(matches!(packet(b"2"), Packet::Ping));
        assert!(matches!(packet(b"40{\"sid\":\"1\"}"), Packet::Connected));
        assert!(matches!(packet(b"41"), Packet::Closed));
        match packet(br#"42["tidings",{"type":"welcome","user":"3"}]"#) {
            Packet::Tidings(f) => assert_eq!(f, br#"{"type":"welcome","user":"3"}"#),
            _ => panic!("not a tidings frame"),
        }
        assert_eq!(
            path_of("http://127.0.0.1:80/socket.io/?EIO=4&transport=polling"),
            "/socket.io/?EIO=4&transport=polling"
        );
    }
}
