//! A minimal whoami backend for the gateway's cookie proxy: `GET` with
//! `Cookie: uid=<n>` answers `{"user":"<n>"}`, anything else
//! `{"user":null}`. It counts the requests it answers.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// A running whoami backend (its accept loop is a tokio task).
pub(crate) struct Whoami {
    pub(crate) addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl Whoami {
    /// Listens on `listen` (port 0: a free port) and serves until the
    /// runtime ends.
    pub(crate) async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        // A deep accept queue: the gateway opens many connections at once
        // during a storm, and a full queue drops SYNs (1 s retransmits).
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(answer(&counter, &req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, requests })
    }

    /// The URL to configure as `identity.cookie_proxy.url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/whoami", self.addr)
    }

    /// Requests answered so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

fn answer(counter: &AtomicU64, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    counter.fetch_add(1, Ordering::Relaxed);
    let user = req
        .headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "uid")
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let body = match user {
        Some(u) => format!("{{\"user\":\"{u}\"}}"),
        None => "{\"user\":null}".to_owned(),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}
