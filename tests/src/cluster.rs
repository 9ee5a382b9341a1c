//! A real Redis Cluster (`redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create`) and a real Sentinel setup (a master, a
//! replica and `redis-sentinel`, or `redis-server --sentinel`), on free
//! loopback ports.

use std::{process::Stdio, time::Duration};

use bytes::Bytes;
use tokio::{
    process::{Child, Command},
    sync::mpsc,
    time::{sleep, Instant},
};

use crate::{
    redis::{free_port, RedisServer, Reply, Resp},
    PATIENCE,
};

/// How long cluster operations (creation, failover) may take.
pub const CLUSTER_PATIENCE: Duration = Duration::from_secs(30);

/// A Redis Cluster the test owns: 3 masters, each with `replicas`
/// replicas. Every process is killed on drop.
pub struct RedisCluster {
    /// Every node, masters first as created (roles change with failovers).
    pub nodes: Vec<RedisServer>,
}

fn cluster_args() -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        // Failures are detected within about a second.
        "--cluster-node-timeout",
        "1000",
        // A replica may be promoted however far behind it is.
        "--cluster-replica-validity-factor",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `host:port` of a `CLUSTER SLOTS` node entry.
fn node_port(entry: &Reply) -> Option<u16> {
    match entry {
        Reply::Array(v) => v.get(1)?.as_int().map(|p| p as u16),
        _ => None,
    }
}

impl RedisCluster {
    /// Starts `3 * (1 + replicas)` nodes and joins them into a cluster
    /// with `redis-cli --cluster create`; returns once every node reports
    /// `cluster_state:ok` and agrees on the slot map.
    pub async fn start(replicas: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(RedisServer::start_with_args(free_port(), false, cluster_args()).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        if replicas > 0 {
            cluster.wait_replicas_synced().await;
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of the first node.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The ports of every node still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.port)
            .collect()
    }

    /// A connection to the first running node.
    pub async fn any(&self) -> Resp {
        for p in self.ports() {
            if let Ok(c) = Resp::connect(p).await {
                return c;
            }
        }
        panic!("no cluster node is up")
    }

    /// Waits until every running node says `cluster_state:ok` and they all
    /// report the same owner for every slot.
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let mut ok = true;
            let mut maps = Vec::new();
            for p in self.ports() {
                let Ok(mut c) = Resp::connect(p).await else {
                    ok = false;
                    continue;
                };
                let info = c.cmd(&["CLUSTER", "INFO"]).await;
                ok &= info
                    .as_str()
                    .is_some_and(|i| i.contains("cluster_state:ok"));
                maps.push(slot_map(&mut c).await);
            }
            ok &= maps.windows(2).all(|w| w[0] == w[1]);
            ok &= maps.first().is_some_and(|m| m.iter().all(|p| *p != 0));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never settled");
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        'all: loop {
            assert!(Instant::now() < deadline, "replicas never synced");
            for p in self.ports() {
                let mut c = Resp::connect(p).await.expect("node");
                let info = c.cmd(&["INFO", "replication"]).await;
                let info = info.as_str().unwrap_or_default().to_owned();
                if info.contains("role:slave") && !info.contains("master_link_status:up") {
                    sleep(Duration::from_millis(100)).await;
                    continue 'all;
                }
            }
            return;
        }
    }

    /// The slot of `key` (or channel).
    pub async fn keyslot(&self, key: &str) -> u16 {
        let mut c = self.any().await;
        c.cmd(&["CLUSTER", "KEYSLOT", key])
            .await
            .as_int()
            .expect("keyslot") as u16
    }

    /// The port of the master owning `slot`, as the first running node
    /// sees it.
    pub async fn owner(&self, slot: u16) -> u16 {
        let mut c = self.any().await;
        slot_map(&mut c).await[slot as usize]
    }

    /// The port of the master owning `channel`'s slot.
    pub async fn owner_of(&self, channel: &str) -> u16 {
        let slot = self.keyslot(channel).await;
        self.owner(slot).await
    }

    /// The ports of the masters, sorted.
    pub async fn masters(&self) -> Vec<u16> {
        let mut c = self.any().await;
        let mut m = slot_map(&mut c).await;
        m.sort_unstable();
        m.dedup();
        m.retain(|p| *p != 0);
        m
    }

    /// The node id of the node on `port`.
    pub async fn node_id(&self, port: u16) -> String {
        let mut c = Resp::connect(port).await.expect("node");
        c.cmd(&["CLUSTER", "MYID"])
            .await
            .as_str()
            .expect("id")
            .to_owned()
    }

    /// Moves `slot` (and any keys in it) from the master on `from` to the
    /// master on `to`, the way `redis-cli --cluster reshard` does:
    /// `IMPORTING`/`MIGRATING`, `MIGRATE` of the keys, then `SETSLOT ...
    /// NODE` on both and on every other master.
    pub async fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        let from_id = self.node_id(from).await;
        let to_id = self.node_id(to).await;
        let slot_s = slot.to_string();
        let mut src = Resp::connect(from).await.expect("source");
        let mut dst = Resp::connect(to).await.expect("target");
        let ok = |r: Reply, what: &str| assert_eq!(r.as_str(), Some("OK"), "{what}: {r:?}");
        ok(
            dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])
                .await,
            "IMPORTING",
        );
        ok(
            src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])
                .await,
            "MIGRATING",
        );
        loop {
            let keys = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]).await;
            let keys: Vec<String> = match keys {
                Reply::Array(v) => v
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
                other => panic!("GETKEYSINSLOT: {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let r = src.cmd(&args).await;
            assert!(matches!(r, Reply::Simple(_)), "MIGRATE: {r:?}");
        }
        ok(
            dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id])
                .await,
            "NODE on the target",
        );
        ok(
            src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id])
                .await,
            "NODE on the source",
        );
        for m in self.masters().await {
            if m != from && m != to {
                let mut c = Resp::connect(m).await.expect("master");
                let _ = c
                    .cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id])
                    .await;
            }
        }
    }

    /// A replica of the master on `master`.
    pub async fn replica_of(&self, master: u16) -> u16 {
        let id = self.node_id(master).await;
        for p in self.ports() {
            let mut c = Resp::connect(p).await.expect("node");
            let info = c.cmd(&["INFO", "replication"]).await;
            let info = info.as_str().unwrap_or_default().to_owned();
            if info.contains("role:slave") && info.contains(&format!("master_port:{master}")) {
                return p;
            }
        }
        panic!("no replica of {master} ({id})")
    }

    /// `CLUSTER FAILOVER` on a replica of the master on `master`: the
    /// replica is promoted (the old master becomes its replica). Returns
    /// the new master's port once every node agrees.
    pub async fn failover(&self, master: u16) -> u16 {
        let replica = self.replica_of(master).await;
        let mut c = Resp::connect(replica).await.expect("replica");
        let r = c.cmd(&["CLUSTER", "FAILOVER"]).await;
        assert_eq!(r.as_str(), Some("OK"), "CLUSTER FAILOVER: {r:?}");
        self.wait_master(replica).await;
        replica
    }

    /// Kills the node on `port` (SIGKILL).
    pub async fn kill(&mut self, port: u16) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        n.kill().await;
    }

    /// Kills every node (the whole cluster unreachable).
    pub async fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill().await;
        }
    }

    /// Starts every node again on its port and directory (each keeps its
    /// identity and slots from its `nodes.conf`), and waits until the
    /// cluster is ok.
    pub async fn restart_all(&mut self) {
        for n in &mut self.nodes {
            n.restart().await;
        }
        self.wait_ok().await;
    }

    /// Waits until the node on `port` is a master owning slots, as every
    /// running node sees it.
    pub async fn wait_master(&self, port: u16) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let mut all = true;
            for p in self.ports() {
                let Ok(mut c) = Resp::connect(p).await else {
                    all = false;
                    continue;
                };
                all &= slot_map(&mut c).await.contains(&port);
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{port} never became a master everywhere"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SPUBLISH` on the owner of `channel`'s slot (following `MOVED`):
    /// how many subscribers got it.
    pub async fn spublish(&self, channel: &str, payload: &[u8]) -> i64 {
        self.publish_with("SPUBLISH", channel, payload).await
    }

    /// `PUBLISH` on any node: how many subscribers of that node got it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        self.publish_with("PUBLISH", channel, payload).await
    }

    async fn publish_with(&self, command: &str, channel: &str, payload: &[u8]) -> i64 {
        let mut port = if command == "SPUBLISH" {
            self.owner_of(channel).await
        } else {
            self.ports()[0]
        };
        for _ in 0..5 {
            let mut c = Resp::connect(port).await.expect("node");
            match c
                .cmd_bytes(&[command.as_bytes(), channel.as_bytes(), payload])
                .await
            {
                Reply::Int(n) => return n,
                Reply::Error(e) if e.starts_with("MOVED") => {
                    port = e
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("MOVED names host:port");
                }
                other => panic!("{command}: {other:?}"),
            }
        }
        panic!("{command} {channel}: too many redirections")
    }

    /// `PUBSUB SHARDNUMSUB channel` on the owner of its slot.
    pub async fn shardnumsub(&self, channel: &str) -> i64 {
        let mut c = Resp::connect(self.owner_of(channel).await)
            .await
            .expect("node");
        match c.cmd(&["PUBSUB", "SHARDNUMSUB", channel]).await {
            Reply::Array(v) => v.get(1).and_then(Reply::as_int).unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }

    /// `SSUBSCRIBE channel` on the owner of its slot, from a plain client:
    /// every message's payload, in order.
    pub async fn ssubscribe(&self, channel: &str) -> mpsc::UnboundedReceiver<Bytes> {
        let c = Resp::connect(self.owner_of(channel).await)
            .await
            .expect("node");
        c.subscribe_with("SSUBSCRIBE", channel).await
    }
}

/// The owner (port) of every slot, from `CLUSTER SLOTS` (0: none).
pub async fn slot_map(c: &mut Resp) -> Vec<u16> {
    let mut map = vec![0u16; 16_384];
    if let Reply::Array(ranges) = c.cmd(&["CLUSTER", "SLOTS"]).await {
        for r in ranges {
            let Reply::Array(parts) = r else { continue };
            let (Some(start), Some(end), Some(port)) = (
                parts.first().and_then(Reply::as_int),
                parts.get(1).and_then(Reply::as_int),
                parts.get(2).and_then(node_port),
            ) else {
                continue;
            };
            for slot in &mut map[start as usize..=end as usize] {
                *slot = port;
            }
        }
    }
    map
}

/// A Sentinel setup the test owns: a master, one replica and one Sentinel
/// (quorum 1) watching them as `mymaster`. Killed on drop.
pub struct RedisSentinel {
    /// The data nodes: `[master, replica]` as started.
    pub nodes: Vec<RedisServer>,
    /// The Sentinel's port.
    pub sentinel_port: u16,
    sentinel: Child,
    dir: std::path::PathBuf,
}

/// The service name the Sentinel watches.
pub const SERVICE: &str = "mymaster";

impl RedisSentinel {
    /// Starts the master, the replica (waits until it is in sync) and the
    /// Sentinel (waits until it knows the replica). Uses `redis-sentinel`
    /// when installed, else `redis-server --sentinel`.
    pub async fn start() -> RedisSentinel {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with_args(
            free_port(),
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        )
        .await;
        let dir = crate::gateway::temp_path("sentinel");
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 10000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir.display(),
                master.port
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = if which("redis-sentinel") {
            let mut c = Command::new("redis-sentinel");
            c.arg(&conf);
            c
        } else {
            let mut c = Command::new("redis-server");
            c.arg(&conf).arg("--sentinel");
            c
        };
        let sentinel = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-sentinel or redis-server must be installed");
        let s = RedisSentinel {
            nodes: vec![master, replica],
            sentinel_port: port,
            sentinel,
            dir,
        };
        s.wait_replica_known().await;
        s
    }

    /// `redis://127.0.0.1:<sentinel port>` (the gateway's `redis_url`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// A connection to the Sentinel.
    pub async fn sentinel(&self) -> Resp {
        Resp::connect(self.sentinel_port).await.expect("sentinel")
    }

    /// The master's port, as the Sentinel says.
    pub async fn master_port(&self) -> u16 {
        let mut s = self.sentinel().await;
        match s
            .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            .await
        {
            Reply::Array(v) => v
                .get(1)
                .and_then(Reply::as_str)
                .and_then(|p| p.parse().ok())
                .expect("port"),
            other => panic!("{other:?}"),
        }
    }

    /// A connection to the current master.
    pub async fn master(&self) -> Resp {
        Resp::connect(self.master_port().await)
            .await
            .expect("master")
    }

    /// Waits until the Sentinel knows a replica in sync with the master.
    pub async fn wait_replica_known(&self) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            if let Ok(mut s) = Resp::connect(self.sentinel_port).await {
                if let Reply::Array(v) = s.cmd(&["SENTINEL", "REPLICAS", SERVICE]).await {
                    let synced = v.iter().any(|r| {
                        let Reply::Array(kv) = r else { return false };
                        kv.chunks(2).any(|p| {
                            p.first().and_then(Reply::as_str) == Some("master-link-status")
                                && p.get(1).and_then(Reply::as_str) == Some("ok")
                        })
                    });
                    if synced {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel never saw the replica"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the data node on `port` (SIGKILL).
    pub async fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this setup")
            .kill()
            .await;
    }

    /// `SENTINEL FAILOVER`: waits until the Sentinel names another master,
    /// makes the old master its replica (the Sentinel would, seconds later),
    /// and returns the new master's port.
    pub async fn failover(&self) -> u16 {
        let before = self.master_port().await;
        let mut s = self.sentinel().await;
        let r = s.cmd(&["SENTINEL", "FAILOVER", SERVICE]).await;
        assert_eq!(r.as_str(), Some("OK"), "SENTINEL FAILOVER: {r:?}");
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let now = self.master_port().await;
            if now != before {
                // And the new master says so itself.
                let mut m = Resp::connect(now).await.expect("new master");
                let role = m.cmd(&["ROLE"]).await;
                if let Reply::Array(v) = role {
                    if v.first().and_then(Reply::as_str) == Some("master") {
                        // Make the old master a replica of the new one now,
                        // as the Sentinel would some seconds later.
                        if let Ok(mut o) = Resp::connect(before).await {
                            let port = now.to_string();
                            o.cmd(&["REPLICAOF", "127.0.0.1", &port]).await;
                        }
                        return now;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the failover never completed");
            sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Polls `probe` until it holds (up to [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !probe().await {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}
