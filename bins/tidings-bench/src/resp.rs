//! A minimal RESP2 request/reply connection, for the few commands the bench
//! sends outside its publishing pipeline: `AUTH`, `CLUSTER SLOTS` and
//! `CLUSTER KEYSLOT` (where a Redis Cluster's channels live) and `INFO cpu`
//! (a node's CPU time).

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::publish::{command, parse_url};

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// One reply at the start of `buf`, and its length; `None` while
/// incomplete.
pub(crate) fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).ok()?;
    let after = end + 2;
    match *buf.first()? {
        b'+' => Some((Reply::Simple(line.to_owned()), after)),
        b'-' => Some((Reply::Error(line.to_owned()), after)),
        b':' => Some((Reply::Int(line.parse().ok()?), after)),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some((Reply::Nil, after));
            }
            let len = usize::try_from(len).ok()?;
            if buf.len() < after + len + 2 {
                return None;
            }
            Some((
                Reply::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            ))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Nil, after));
            }
            let mut at = after;
            let mut items = Vec::new();
            for _ in 0..n {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        // Not RESP2: treat as a protocol error the caller reports.
        other => Some((
            Reply::Error(format!("unexpected reply type {:?}", other as char)),
            after,
        )),
    }
}

/// A connection for one command at a time.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// `host:port` it is connected to.
    pub(crate) addr: String,
}

impl Conn {
    /// Connects to `hostport` and authenticates with `auth` (the `AUTH`
    /// arguments, or none).
    pub(crate) async fn connect(hostport: &str, auth: &[String]) -> Result<Self, String> {
        let stream = TcpStream::connect(hostport)
            .await
            .map_err(|e| format!("cannot connect to Redis at {hostport}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            addr: hostport.to_owned(),
        };
        if !auth.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(|a| a.as_bytes()));
            match conn.cmd(&args).await? {
                Reply::Simple(s) if s == "OK" => {}
                _ => return Err(format!("Redis at {hostport} refused AUTH")),
            }
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut out = Vec::new();
        command(&mut out, args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("writing to Redis at {}: {e}", self.addr))?;
        self.read_reply().await
    }

    /// Sends `commands` at once and reads their replies, in order.
    pub(crate) async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::new();
        for args in commands {
            command(&mut out, args);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("writing to Redis at {}: {e}", self.addr))?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some((reply, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading from Redis at {}: {e}", self.addr))?;
            if n == 0 {
                return Err(format!("Redis at {} closed the connection", self.addr));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The stream, for pipelining once the request/reply part is over.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// The server's CPU time so far, user + system, in seconds (`INFO
    /// cpu`: `used_cpu_sys` + `used_cpu_user`, every thread of the server).
    pub(crate) async fn cpu_secs(&mut self) -> Result<f64, String> {
        let reply = self.cmd(&[b"INFO", b"cpu"]).await?;
        let text = reply
            .text()
            .ok_or_else(|| format!("INFO cpu on {}: {reply:?}", self.addr))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        match (field("used_cpu_sys:"), field("used_cpu_user:")) {
            (Some(s), Some(u)) => Ok(s + u),
            _ => Err(format!("INFO cpu on {}: no used_cpu_sys/user", self.addr)),
        }
    }
}

/// A Redis Cluster's layout, from `CLUSTER SLOTS`.
#[derive(Clone)]
pub(crate) struct ClusterMap {
    /// The masters' `host:port`, in the order first seen.
    pub(crate) masters: Vec<String>,
    /// Every node named (masters and replicas).
    pub(crate) nodes: Vec<String>,
    /// For each of the 16,384 slots, its master's index in `masters`.
    pub(crate) slot_master: Vec<u8>,
    /// The `AUTH` arguments that worked on the seed.
    pub(crate) auth: Vec<String>,
}

/// `host:port`, or a `redis://` URL: (`host:port`, AUTH arguments).
pub(crate) fn node_address(node: &str) -> Result<(String, Vec<String>), String> {
    if node.starts_with("redis://") {
        parse_url(node)
    } else if node.contains(':') {
        Ok((node.to_owned(), Vec::new()))
    } else {
        Err(format!("{node}: expected host:port or redis://host:port"))
    }
}

impl ClusterMap {
    /// Reads the slot map from the first of `seeds` that answers.
    pub(crate) async fn read(seeds: &[String]) -> Result<Self, String> {
        let mut last = "no cluster node given".to_owned();
        for seed in seeds {
            let (hostport, auth) = node_address(seed)?;
            let mut conn = match Conn::connect(&hostport, &auth).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let seed_host = hostport
                .rsplit_once(':')
                .map_or("127.0.0.1", |(h, _)| h)
                .to_owned();
            let reply = conn.cmd(&[b"CLUSTER", b"SLOTS"]).await?;
            return Self::from_slots(&reply, &seed_host, auth)
                .ok_or_else(|| format!("CLUSTER SLOTS on {hostport}: unexpected {reply:?}"));
        }
        Err(last)
    }

    fn from_slots(reply: &Reply, seed_host: &str, auth: Vec<String>) -> Option<Self> {
        let Reply::Array(ranges) = reply else {
            return None;
        };
        let mut map = ClusterMap {
            masters: Vec::new(),
            nodes: Vec::new(),
            slot_master: vec![u8::MAX; 16_384],
            auth,
        };
        let addr = |node: &Reply| -> Option<String> {
            let Reply::Array(parts) = node else {
                return None;
            };
            let host = parts.first()?.text()?;
            let host = if host.is_empty() || host == "?" {
                seed_host.to_owned()
            } else {
                host
            };
            Some(format!("{host}:{}", parts.get(1)?.int()?))
        };
        for range in ranges {
            let Reply::Array(parts) = range else {
                return None;
            };
            let start = usize::try_from(parts.first()?.int()?).ok()?;
            let end = usize::try_from(parts.get(1)?.int()?).ok()?;
            let master = addr(parts.get(2)?)?;
            let index = match map.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    map.masters.push(master.clone());
                    map.masters.len() - 1
                }
            };
            let index = u8::try_from(index).ok()?;
            for slot in map.slot_master.get_mut(start..=end)? {
                *slot = index;
            }
            for node in &parts[2..] {
                let a = addr(node)?;
                if !map.nodes.contains(&a) {
                    map.nodes.push(a);
                }
            }
        }
        if map.masters.is_empty() || map.slot_master.contains(&u8::MAX) {
            return None;
        }
        Some(map)
    }

    /// For each of `channels`, the index in `masters` of the master owning
    /// its slot, as the cluster computes it (`CLUSTER KEYSLOT`, pipelined;
    /// hash tags included).
    pub(crate) async fn masters_of(&self, channels: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let mut conn = Conn::connect(&self.masters[0], &self.auth).await?;
        let mut out = Vec::with_capacity(channels.len());
        for chunk in channels.chunks(1000) {
            let commands: Vec<Vec<&[u8]>> = chunk
                .iter()
                .map(|c| vec![&b"CLUSTER"[..], b"KEYSLOT", c])
                .collect();
            for reply in conn.pipeline(&commands).await? {
                let slot = reply
                    .int()
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|s| *s < 16_384)
                    .ok_or_else(|| format!("CLUSTER KEYSLOT: {reply:?}"))?;
                out.push(self.slot_master[slot]);
            }
        }
        Ok(out)
    }
}

/// CPU time of a set of Redis servers, read with `INFO cpu`.
pub(crate) struct RedisCpu {
    conns: Vec<Conn>,
}

impl RedisCpu {
    /// One connection per `host:port`, authenticated with `auth`.
    pub(crate) async fn connect(nodes: &[String], auth: &[String]) -> Result<Self, String> {
        let mut conns = Vec::new();
        for n in nodes {
            conns.push(Conn::connect(n, auth).await?);
        }
        Ok(Self { conns })
    }

    /// The nodes, in sampling order.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.conns.iter().map(|c| c.addr.clone()).collect()
    }

    /// Each node's CPU seconds so far (`None`: it did not answer).
    pub(crate) async fn sample(&mut self) -> Vec<Option<f64>> {
        let mut out = Vec::with_capacity(self.conns.len());
        for c in &mut self.conns {
            out.push(c.cpu_secs().await.ok());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_slot_map_and_waits_for_a_whole_reply() {
        let full: &[u8] = b"*2\r\n\
            *4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$0\r\n\r\n:7003\r\n$2\r\nir\r\n\
            *3\r\n:8192\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nix\r\n";
        assert!(parse(&full[..full.len() - 3]).is_none());
        let (reply, used) = parse(full).unwrap();
        assert_eq!(used, full.len());
        let map = ClusterMap::from_slots(&reply, "10.0.0.1", Vec::new()).unwrap();
        assert_eq!(map.masters, ["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert_eq!(
            map.nodes,
            ["127.0.0.1:7000", "10.0.0.1:7003", "127.0.0.1:7001"]
        );
        assert_eq!((map.slot_master[0], map.slot_master[16_383]), (0, 1));
        // A map with a hole is refused.
        let (partial, _) = parse(b"*1\r\n*3\r\n:0\r\n:100\r\n*2\r\n$1\r\nh\r\n:1\r\n").unwrap();
        assert!(ClusterMap::from_slots(&partial, "h", Vec::new()).is_none());
        assert_eq!(parse(b":-3\r\n"), Some((Reply::Int(-3), 5)));
        assert_eq!(parse(b"$-1\r\n"), Some((Reply::Nil, 5)));
    }
}
