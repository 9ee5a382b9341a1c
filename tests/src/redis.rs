//! Real `redis-server` processes on free ports, and a minimal RESP client.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::mpsc,
};

/// The channel every gateway subscribes to for control commands (its
/// default `control.channel`).
pub const CONTROL_CHANNEL: &str = "tidings:control";

/// A `redis-server` the test owns. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// An append-only file fsynced on every write (`appendfsync always`).
    persistent: bool,
    /// More `redis-server` arguments (cluster mode, replication).
    extra: Vec<String>,
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl RedisServer {
    /// Starts `redis-server` on a free port.
    pub async fn start() -> RedisServer {
        Self::start_on(free_port()).await
    }

    /// Starts `redis-server` on a free port with an append-only file
    /// fsynced on every write (`appendfsync always`), so a SIGKILL loses
    /// nothing that was acknowledged and [`RedisServer::restart`] keeps
    /// the data.
    pub async fn start_persistent() -> RedisServer {
        Self::start_as(free_port(), true).await
    }

    /// Starts `redis-server` on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> RedisServer {
        Self::start_as(port, false).await
    }

    async fn start_as(port: u16, persistent: bool) -> RedisServer {
        Self::start_with_args(port, persistent, Vec::new()).await
    }

    /// Starts `redis-server` on `port` with more arguments (for example
    /// `--cluster-enabled yes`), and waits until it answers PING.
    pub async fn start_with_args(port: u16, persistent: bool, extra: Vec<String>) -> RedisServer {
        let dir = crate::gateway::temp_path(&format!("redis-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = RedisServer {
            child: None,
            port,
            dir,
            persistent,
            extra,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        crate::raise_open_file_limit();
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
        cmd.args(&self.extra);
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
                if c.cmd(&["PING"]).await.as_str() == Some("PONG") {
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
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new RESP connection.
    pub async fn client(&self) -> Resp {
        Resp::connect(self.port).await.expect("connect to redis")
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port (and directory: a persistent
    /// server keeps its data).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// The directory it runs in (its files: `nodes.conf`, the AOF).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Freezes the server (SIGSTOP): its port still accepts connections
    /// (into the kernel's backlog) but nothing is answered until
    /// [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
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
pub enum Reply {
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

impl Reply {
    /// The reply as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) => Some(s),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    /// The reply as an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A minimal RESP2 client.
pub struct Resp {
    r: BufReader<TcpStream>,
}

impl Resp {
    /// Connects to 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> std::io::Result<Resp> {
        let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        Ok(Resp {
            r: BufReader::new(s),
        })
    }

    /// Sends a command with byte arguments.
    pub async fn cmd_bytes(&mut self, args: &[&[u8]]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).await.expect("write");
        self.read().await
    }

    /// A command's integer reply (byte arguments).
    pub async fn int(&mut self, args: &[&[u8]]) -> i64 {
        match self.cmd_bytes(args).await {
            Reply::Int(i) => i,
            other => panic!("{other:?}"),
        }
    }

    /// Subscribes to `channel` and hands every message's payload to the
    /// returned receiver, in the order Redis sent them.
    pub async fn subscribe(self, channel: &str) -> mpsc::UnboundedReceiver<Bytes> {
        self.subscribe_with("SUBSCRIBE", channel).await
    }

    /// Like [`Resp::subscribe`], with `command` (`SUBSCRIBE` or
    /// `SSUBSCRIBE`).
    pub async fn subscribe_with(
        mut self,
        command: &str,
        channel: &str,
    ) -> mpsc::UnboundedReceiver<Bytes> {
        let confirm = self
            .cmd_bytes(&[command.as_bytes(), channel.as_bytes()])
            .await;
        assert!(matches!(confirm, Reply::Array(_)), "{confirm:?}");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match self.read().await {
                    Reply::Array(mut v) if v.len() == 3 => {
                        if let Some(Reply::Bulk(Some(p))) = v.pop() {
                            if tx.send(Bytes::from(p)).is_err() {
                                return;
                            }
                        }
                    }
                    // A slot that moved away drops the subscription.
                    Reply::Array(v)
                        if v.first().and_then(Reply::as_str) == Some("sunsubscribe") =>
                    {
                        return
                    }
                    other => panic!("unexpected on a subscription: {other:?}"),
                }
            }
        });
        rx
    }

    /// The documented one-command publish with history:
    /// `FCALL tidings_publish 1 <channel> <payload> <size> <ttl_secs>`;
    /// `(offset, epoch)`, or the reply when it is not a position.
    pub async fn fcall_publish(
        &mut self,
        channel: &str,
        payload: &str,
        size: u64,
        ttl_secs: u64,
    ) -> Result<(u64, String), Reply> {
        let reply = self
            .cmd(&[
                "FCALL",
                "tidings_publish",
                "1",
                channel,
                payload,
                &size.to_string(),
                &ttl_secs.to_string(),
            ])
            .await;
        let position = match &reply {
            Reply::Array(items) => items
                .first()
                .and_then(Reply::as_int)
                .zip(items.get(1).and_then(Reply::as_str)),
            _ => None,
        };
        match position {
            Some((offset, epoch)) => Ok((offset as u64, epoch.to_owned())),
            None => Err(reply),
        }
    }

    /// Sends a command.
    pub async fn cmd(&mut self, args: &[&str]) -> Reply {
        let v: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&v).await
    }

    /// `PUBLISH channel payload`: the number of receivers.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> i64 {
        self.cmd_bytes(&[b"PUBLISH", channel.as_bytes(), payload])
            .await
            .as_int()
            .expect("int")
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&mut self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]).await {
            Reply::Array(v) => v.get(1).and_then(Reply::as_int).unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }

    /// `PUBSUB NUMPAT`.
    pub async fn numpat(&mut self) -> i64 {
        self.cmd(&["PUBSUB", "NUMPAT"]).await.as_int().expect("int")
    }

    /// `PUBSUB CHANNELS`, without the gateways' own control channel
    /// (`tidings:control`, which every gateway holds): the channels
    /// subscribed for sockets.
    pub async fn channels(&mut self) -> Vec<String> {
        match self.cmd(&["PUBSUB", "CHANNELS"]).await {
            Reply::Array(v) => v
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .filter(|c| c != CONTROL_CHANNEL)
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// How many times the server has run the commands named `commands`
    /// (lowercase, for example `["getdel", "eval"]`), from `INFO
    /// commandstats`, summed.
    pub async fn command_calls(&mut self, commands: &[&str]) -> i64 {
        let info = self.cmd(&["INFO", "commandstats"]).await;
        let info = info.as_str().expect("INFO answers text").to_owned();
        info.lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| commands.contains(name))
            .filter_map(|(_, stats)| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse::<i64>().ok())
            })
            .sum()
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.r.read_line(&mut line).await.expect("read");
            let line = line.trim_end_matches("\r\n");
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

/// A transparent TCP proxy in front of a Redis server, which can write
/// commands into the gateway's subscription connection behind the
/// gateway's back (a real fault: Redis then really holds something other
/// than what the gateway believes).
pub struct Tap {
    /// Its port on 127.0.0.1 (give the gateway `redis://127.0.0.1:<port>`).
    pub port: u16,
    /// Upstream writers of the proxied connections that sent a `SUBSCRIBE`.
    subscribers: std::sync::Arc<
        std::sync::Mutex<Vec<std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>>>,
    >,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    /// Starts a proxy to the Redis server on `redis_port`.
    pub async fn start(redis_port: u16) -> Tap {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tap");
        let port = listener.local_addr().expect("addr").port();
        let subscribers: Arc<Mutex<Vec<_>>> = Arc::new(Mutex::new(Vec::new()));
        let found = subscribers.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) =
                    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], redis_port))).await
                else {
                    continue;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, server_w) = server.into_split();
                let server_w = Arc::new(tokio::sync::Mutex::new(server_w));
                let found = found.clone();
                tokio::spawn(async move {
                    let mut seen = false;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !seen && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                            seen = true;
                            found.lock().expect("tap").push(server_w.clone());
                        }
                        if server_w.lock().await.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_w.lock().await.shutdown().await;
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                    let _ = client_w.shutdown().await;
                });
            }
        });
        Tap {
            port,
            subscribers,
            task,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Writes the command `args` into every proxied connection that has
    /// sent a `SUBSCRIBE` (the gateway's subscription connection), as if the
    /// gateway had sent it. Returns how many connections it went to.
    pub async fn inject_into_subscriber(&self, args: &[&str]) -> usize {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        let writers = self.subscribers.lock().expect("tap").clone();
        let mut n = 0;
        for w in writers {
            if w.lock().await.write_all(&out).await.is_ok() {
                n += 1;
            }
        }
        n
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
