//! One WebSocket client per task: connect from its own source address with
//! its own cookie, read the welcome, then read every frame until aborted,
//! attributing each `message` to its sequence number.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use tokio::{net::TcpSocket, sync::Semaphore};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Error as WsError,
    Message,
};

use crate::{
    stats::Shared,
    wire::{self, Wire},
};

/// Longest a connection attempt (TCP connect to welcome frame) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom one client connects.
pub(crate) struct Plan {
    /// Its index among all clients (picks the histogram shard).
    pub(crate) index: usize,
    /// Its user id (the cookie `uid=<user>`).
    pub(crate) user: u64,
    /// The local address to bind before connecting, if any.
    pub(crate) source: Option<IpAddr>,
    /// The gateway's address.
    pub(crate) target: SocketAddr,
    /// The gateway's URL for this wire (`ws://…/ws`, `http://…/sse`,
    /// `ws://…/socket.io/?EIO=4&transport=websocket`, or
    /// `http://…/socket.io/?EIO=4&transport=polling`).
    pub(crate) url: Arc<str>,
    /// How it talks to the gateway.
    pub(crate) wire: Wire,
}

/// Nanoseconds since the UNIX epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn config() -> WebSocketConfig {
    // Small buffers: thousands of clients live in this process. Frames
    // here are ~150 bytes; the buffers grow when a larger one comes.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

/// Connects, then reads until the task is aborted or the socket ends.
/// `permit` bounds how many clients are connecting at once; it is released
/// once the welcome has arrived.
pub(crate) async fn run(plan: Plan, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let Ok(permit) = permits.acquire_owned().await else {
        return;
    };
    let started = Instant::now();
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect_any(&plan, &shared)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(cause)) => {
            shared.failure(cause);
            return;
        }
        Err(_) => {
            shared.failure("timeout".to_owned());
            return;
        }
    };
    shared
        .connect
        .record(plan.index, started.elapsed().as_micros() as u64);
    let sockets = usize::try_from(plan.user)
        .ok()
        .and_then(|u| shared.user_sockets.get(u));
    if let Some(n) = sockets {
        n.fetch_add(1, Ordering::Relaxed);
    }
    shared.opened.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    match conn {
        Conn::Ws(ws) => read(ws, &plan, &shared).await,
        Conn::Sse(stream) => wire::read_sse(stream, &plan, &shared).await,
        Conn::SocketIo(ws) => wire::read_socketio(ws, &plan, &shared).await,
        Conn::Polling(p) => wire::read_polling(p, &plan, &shared).await,
        Conn::Pusher(ws) => wire::read_pusher(ws, &plan, &shared).await,
    }
    if let Some(n) = sockets {
        n.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// An open client, whatever its wire.
enum Conn {
    Ws(Ws),
    Sse(wire::SseStream),
    SocketIo(Ws),
    Polling(wire::Polling),
    Pusher(Ws),
}

async fn connect_any(plan: &Plan, shared: &Shared) -> Result<Conn, String> {
    Ok(match plan.wire {
        Wire::Websocket => Conn::Ws(connect(plan, shared).await?),
        Wire::Sse => Conn::Sse(wire::connect_sse(plan, shared).await?),
        Wire::Socketio => Conn::SocketIo(wire::connect_socketio(plan, shared).await?),
        Wire::SocketioPolling => Conn::Polling(wire::connect_polling(plan, shared).await?),
        Wire::Pusher => Conn::Pusher(wire::connect_pusher(plan).await?),
    })
}

/// A TCP connection to the gateway from the plan's source address.
pub(crate) async fn tcp(plan: &Plan) -> Result<tokio::net::TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("io: socket: {e}"))?;
    if let Some(ip) = plan.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("io: bind {ip}: {}", e.kind()))?;
    }
    let stream = socket
        .connect(plan.target)
        .await
        .map_err(|e| format!("io: connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects to `plan.url` and completes the WebSocket handshake with the
/// plan's user in the cookie (every wire's first step).
pub(crate) async fn handshake(plan: &Plan) -> Result<Ws, String> {
    let stream = tcp(plan).await?;
    let mut req = (&*plan.url)
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    req.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("uid={}", plan.user)).map_err(|e| e.to_string())?,
    );
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config()))
        .await
        .map_err(|e| match e {
            WsError::Http(res) => format!("http {}", res.status().as_u16()),
            WsError::Io(e) => format!("io: handshake: {}", e.kind()),
            other => format!("handshake: {other}"),
        })?;
    Ok(ws)
}

pub(crate) async fn connect(plan: &Plan, shared: &Shared) -> Result<Ws, String> {
    let mut ws = handshake(plan).await?;
    // The first frame must be the welcome, naming the cookie's user.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).map_err(|_| "welcome: not JSON".to_owned())?;
                if v["type"] != "welcome" {
                    return Err(format!("first frame is not welcome: {}", v["type"]));
                }
                let want = plan.user.to_string();
                if v["user"].as_str() != Some(want.as_str()) {
                    shared.wrong_welcome.fetch_add(1, Ordering::Relaxed);
                    shared.sample(|| format!("welcome for uid={} names {}", plan.user, v["user"]));
                }
                return Ok(ws);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected first frame: {other:?}")),
            Some(Err(e)) => return Err(format!("before welcome: {e}")),
            None => return Err("closed before welcome".to_owned()),
        }
    }
}

async fn read(mut ws: Ws, plan: &Plan, shared: &Shared) {
    // tungstenite answers the gateway's pings while we read.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => on_text(t.as_bytes(), plan, shared),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Binary(_)) => {
                shared.other_frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Message::Close(frame)) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} closed by the gateway: {frame:?}", plan.user));
                return;
            }
            Err(e) => {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.sample(|| format!("uid={} socket error: {e}", plan.user));
                return;
            }
        }
    }
    shared.disconnected.fetch_add(1, Ordering::Relaxed);
    shared.sample(|| format!("uid={} socket ended without a close frame", plan.user));
}

/// The fields of a benchmark message frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) channel: &'a [u8],
    pub(crate) t: u64,
    pub(crate) seq: u64,
    pub(crate) user: u64,
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&hay[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Parses `{"type":"message","channel":"...","data":{"t":T,"s":S,"u":U}}`
/// without building a JSON tree.
pub(crate) fn parse(frame: &[u8]) -> Option<Parsed<'_>> {
    let c = find(frame, b"\"channel\":\"")? + 11;
    let end = frame[c..].iter().position(|&b| b == b'"')? + c;
    let d = find(&frame[end..], b"\"data\":")? + end;
    let data = &frame[d..];
    Some(Parsed {
        channel: &frame[c..end],
        t: number_after(data, b"\"t\":")?,
        seq: number_after(data, b"\"s\":")?,
        user: number_after(data, b"\"u\":")?,
    })
}

/// The user id in `/app/user/<id>/notifications`.
pub(crate) fn channel_user(channel: &[u8]) -> Option<u64> {
    let rest = channel.strip_prefix(b"/app/user/")?;
    let id = rest.strip_suffix(b"/notifications")?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

pub(crate) fn on_text(frame: &[u8], plan: &Plan, shared: &Shared) {
    if !frame.starts_with(b"{\"type\":\"message\"") {
        shared.other_frames.fetch_add(1, Ordering::Relaxed);
        shared.sample(|| {
            let s = String::from_utf8_lossy(&frame[..frame.len().min(300)]);
            format!("uid={} got {s}", plan.user)
        });
        return;
    }
    let now = now_ns();
    let Some(m) = parse(frame) else {
        shared.foreign.fetch_add(1, Ordering::Relaxed);
        shared.sample(|| format!("unparsable message: {}", String::from_utf8_lossy(frame)));
        return;
    };
    account(&m, now, frame, plan, shared);
}

/// Counts one benchmark message `m` received at `now` (ns since the UNIX
/// epoch) on the client of `plan`: right user, expected sequence, latency.
/// `frame` is what arrived, for the anomaly samples.
pub(crate) fn account(m: &Parsed<'_>, now: u64, frame: &[u8], plan: &Plan, shared: &Shared) {
    let right = if m.channel == b"/app/broadcast" {
        m.user == 0
    } else if let Some(u) = channel_user(m.channel) {
        if u != plan.user || m.user != plan.user {
            shared.wrong_user.fetch_add(1, Ordering::Relaxed);
            shared.sample(|| {
                format!(
                    "WRONG USER: socket of uid={} got {}",
                    plan.user,
                    String::from_utf8_lossy(frame)
                )
            });
            return;
        }
        true
    } else {
        false
    };
    let Some(got) = usize::try_from(m.seq).ok().and_then(|s| shared.got.get(s)) else {
        shared.foreign.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if !right {
        shared.foreign.fetch_add(1, Ordering::Relaxed);
        shared.sample(|| format!("unexpected message: {}", String::from_utf8_lossy(frame)));
        return;
    }
    got.fetch_add(1, Ordering::Relaxed);
    shared.received.fetch_add(1, Ordering::Relaxed);
    shared
        .delivery
        .record(plan.index, now.saturating_sub(m.t) / 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_message_frame() {
        let f = br#"{"type":"message","channel":"/app/user/42/notifications","data":{"t":1700000000000000000,"s":7,"u":42}}"#;
        let m = parse(f).unwrap();
        assert_eq!(m.channel, b"/app/user/42/notifications");
        assert_eq!((m.t, m.seq, m.user), (1_700_000_000_000_000_000, 7, 42));
        assert_eq!(channel_user(m.channel), Some(42));
        assert_eq!(channel_user(b"/app/broadcast"), None);
        assert!(parse(br#"{"type":"message","channel":"/x","data":"hi"}"#).is_none());
    }
}
