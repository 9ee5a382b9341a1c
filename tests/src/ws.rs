//! A well-behaved WebSocket client (tokio-tungstenite) speaking protocol v1.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

/// A connected client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The welcome frame it received.
    pub welcome: Value,
}

/// How a connection attempt ended when it did not open.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status of the refusal.
    pub status: u16,
    /// The response body.
    pub body: String,
    /// The response headers.
    pub headers: Vec<(String, String)>,
}

impl Client {
    /// Connects and reads the welcome frame.
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, &[]).await.expect("connect")
    }

    /// Connects with extra request headers; returns the refusal if the
    /// upgrade was refused.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                let mut c = Client {
                    ws,
                    welcome: Value::Null,
                };
                let w = c.next_json().await;
                assert_eq!(w["type"], "welcome", "first frame must be welcome: {w}");
                c.welcome = w;
                Ok(c)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(Refused {
                status: res.status().as_u16(),
                body: res
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
                headers: res
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
            }),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.expect("send");
    }

    /// Next JSON frame, within [`crate::PATIENCE`]. Panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        match self.next_json_within(crate::PATIENCE).await {
            Some(v) => v,
            None => panic!("no frame within {:?}", crate::PATIENCE),
        }
    }

    /// Next JSON frame within `limit`, or `None` if nothing came.
    pub async fn next_json_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// Sends a request and returns the reply (the next non-message frame).
    pub async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        loop {
            let f = self.next_json().await;
            if f["type"] != "message" {
                return f;
            }
        }
    }

    /// Subscribes and asserts it was accepted.
    pub async fn subscribe(&mut self, channel: &str) {
        let r = self
            .request(serde_json::json!({"type":"subscribe","channel":channel}))
            .await;
        assert_eq!(r["type"], "subscribed", "subscribe {channel}: {r}");
    }

    /// Reads until the server closes; returns the close code (None if the
    /// TCP connection ended without a close frame). Skips other frames.
    pub async fn closed_with(&mut self, limit: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("socket still open after {limit:?}"),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f: CloseFrame| u16::from(f.code))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return None,
            }
        }
    }

    /// The next JSON frame, or how the socket ended: `Ok(frame)`,
    /// `Err(Some(code))` on a close frame, `Err(None)` when the connection
    /// dropped without one. Panics after `limit` with nothing.
    pub async fn next_or_end(&mut self, limit: Duration) -> Result<Value, Option<u16>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("nothing within {limit:?}"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Ok(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return Err(None),
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Stops reading and writing but keeps the TCP connection open: gives
    /// back the raw stream, which the caller may hold without reading.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }
}
