//! Real `redis-server` processes on free ports (the pattern of
//! tests/src/redis.rs), a fred pool, and a minimal RESP connection for
//! SUBSCRIBE and key checks.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::ClientLike,
    types::{
        config::{Config, ReconnectPolicy},
        Builder,
    },
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::mpsc,
};

/// A `redis-server` the test owns. Killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    dir: PathBuf,
    persistent: bool,
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tidings-history-{}-{n}-{name}", std::process::id()))
}

impl RedisServer {
    /// Starts `redis-server` on a free port, without persistence.
    pub(crate) async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// Starts `redis-server` on a free port; with `persistent`, an
    /// append-only file fsynced on every write (`appendfsync always`), so a
    /// SIGKILL loses nothing that was acknowledged.
    pub(crate) async fn start_with(persistent: bool) -> RedisServer {
        let port = free_port();
        let dir = temp_dir(&format!("redis-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = RedisServer {
            child: None,
            port,
            dir,
            persistent,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = Resp::connect(self.port).await {
                if c.cmd(&[b"PING"]).await == Reply::Simple("PONG".into()) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new RESP connection.
    pub(crate) async fn client(&self) -> Resp {
        Resp::connect(self.port).await.expect("connect to redis")
    }

    /// A connected fred pool of two connections that reconnects quickly
    /// and never repeats a command (a repeated publish would publish twice).
    pub(crate) async fn pool(&self) -> Pool {
        let config = Config::from_url(&self.url()).expect("url");
        let pool = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 50))
            .with_connection_config(|c| {
                c.max_command_attempts = 1;
                c.connection_timeout = Duration::from_secs(2);
            })
            .build_pool(2)
            .expect("pool");
        pool.init().await.expect("connect");
        pool
    }

    /// Kills the server (SIGKILL), then starts it again on the same port
    /// with the same directory (and so its append-only file, if any).
    pub(crate) async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` bulk (None for nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` array.
    Array(Vec<Reply>),
}

/// A minimal RESP2 connection.
pub(crate) struct Resp {
    r: BufReader<TcpStream>,
}

impl Resp {
    /// Connects to 127.0.0.1:`port`.
    pub(crate) async fn connect(port: u16) -> std::io::Result<Resp> {
        let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        Ok(Resp {
            r: BufReader::new(s),
        })
    }

    /// Sends a command.
    pub(crate) async fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).await.expect("write");
        self.read().await
    }

    /// A command's integer reply.
    pub(crate) async fn int(&mut self, args: &[&[u8]]) -> i64 {
        match self.cmd(args).await {
            Reply::Int(i) => i,
            other => panic!("{other:?}"),
        }
    }

    /// Subscribes to `channel` and hands every message's payload to the
    /// returned receiver, in the order Redis sent them.
    pub(crate) async fn subscribe(mut self, channel: &str) -> mpsc::UnboundedReceiver<Bytes> {
        let confirm = self.cmd(&[b"SUBSCRIBE", channel.as_bytes()]).await;
        assert!(matches!(confirm, Reply::Array(_)), "{confirm:?}");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match self.read().await {
                    Reply::Array(mut v) if v.len() == 3 => {
                        if let Reply::Bulk(Some(p)) = v.pop().expect("3") {
                            if tx.send(Bytes::from(p)).is_err() {
                                return;
                            }
                        }
                    }
                    other => panic!("unexpected on a subscription: {other:?}"),
                }
            }
        });
        rx
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.r.read_line(&mut line).await.expect("read");
            let line = line.trim_end_matches("\r\n");
            assert!(!line.is_empty(), "connection closed");
            let (t, rest) = line.split_at(1);
            match t {
                "+" => Reply::Simple(rest.to_owned()),
                "-" => Reply::Error(rest.to_owned()),
                ":" => Reply::Int(rest.parse().expect("int")),
                "$" => {
                    let n: i64 = rest.parse().expect("len");
                    if n < 0 {
                        return Reply::Bulk(None);
                    }
                    let mut b = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut b).await.expect("bulk");
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
                "*" => {
                    let n: i64 = rest.parse().expect("len");
                    let mut v = Vec::new();
                    for _ in 0..n.max(0) {
                        v.push(self.read().await);
                    }
                    Reply::Array(v)
                }
                other => panic!("bad RESP type {other}"),
            }
        })
    }
}
