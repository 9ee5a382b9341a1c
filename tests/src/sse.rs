//! A Server-Sent Events client over hyper: opens `GET /sse`, and reads the
//! events one by one (comments counted, not returned).

use std::{collections::VecDeque, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `id:`, when it has one.
    pub id: Option<String>,
    /// Its `data:` lines, joined with `\n`.
    pub data: String,
}

impl Event {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// An open event stream.
pub struct SseClient {
    /// The response status.
    pub status: u16,
    /// The response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    body: Incoming,
    buf: String,
    events: VecDeque<Event>,
    /// Comment blocks (heartbeats) seen so far.
    pub comments: usize,
    /// The `retry:` announced, if any.
    pub retry: Option<u64>,
}

/// A refused stream: status and body.
#[derive(Debug)]
pub struct Refused {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: String,
}

impl SseClient {
    /// Opens `path` on `addr` with extra `headers`.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient, Refused> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = sender
            .send_request(req.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("response");
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = res.into_body();
        if status != 200 {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Refused {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(SseClient {
            status,
            headers,
            body,
            buf: String::new(),
            events: VecDeque::new(),
            comments: 0,
            retry: None,
        })
    }

    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event (within [`crate::PATIENCE`]); `None` when the stream
    /// ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let frame = tokio::time::timeout(crate::PATIENCE, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                        self.parse();
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next event's data as JSON (panics if the stream ended).
    pub async fn next_json(&mut self) -> Value {
        self.next().await.expect("the stream ended").json()
    }

    fn parse(&mut self) {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data: Option<String> = None;
            let mut comment = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(v);
                        }
                        None => data = Some(v.to_owned()),
                    }
                } else if let Some(v) = line.strip_prefix("retry: ") {
                    self.retry = v.parse().ok();
                } else if line.starts_with(':') {
                    comment = true;
                }
            }
            match data {
                Some(data) => self.events.push_back(Event { id, data }),
                None if comment => self.comments += 1,
                None => {}
            }
        }
    }
}
