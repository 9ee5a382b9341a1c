//! Publishing through Redis on raw RESP connections: `PUBLISH` (or, for
//! sharded channels, `SPUBLISH`) commands are pipelined in batches at the
//! requested rate, on one connection to a server or one per master of a
//! Redis Cluster; reader tasks count the replies (and the publishes no
//! subscriber received).

use std::{
    io::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::tcp::OwnedWriteHalf,
    time::Instant,
};

use crate::{client::now_ns, stats::Shared};

/// What the reply reader saw.
#[derive(Default)]
pub(crate) struct Replies {
    /// Replies to `PUBLISH`.
    pub(crate) replies: AtomicU64,
    /// `PUBLISH` replies of 0: no subscriber (no gateway) had the channel.
    /// (On a cluster a classic `PUBLISH` counts only the receiving node's
    /// subscribers, so 0 there is normal.)
    pub(crate) zero_receivers: AtomicU64,
    /// Error replies.
    pub(crate) errors: AtomicU64,
}

/// Where the messages go.
pub(crate) enum Target {
    /// `/app/user/<u>/notifications` for a random user `u` in `1..=users`,
    /// expected on every socket of that user.
    PerUser { users: u64 },
    /// `channel` (`/app/broadcast`; the Pusher wire's is
    /// `/pusher/bench/broadcast`), expected on every open socket.
    Broadcast { channel: &'static str },
}

/// Publishing connections: one to a single server, or one per master of a
/// Redis Cluster, each message going to its channel's slot owner.
pub(crate) struct Publisher {
    writers: Vec<OwnedWriteHalf>,
    /// On a cluster: for each user id, the writer (master) owning the slot
    /// of that user's channel (at 0: `/app/broadcast`'s).
    routes: Option<Vec<u8>>,
    /// `PUBLISH`, or `SPUBLISH` for sharded channels.
    verb: &'static [u8],
    pub(crate) replies: Arc<Replies>,
    /// Messages written so far.
    pub(crate) sent: Arc<AtomicU64>,
}

/// `redis://[user:password@]host:port[/db]` → (`host:port`, AUTH arguments).
pub(crate) fn parse_url(url: &str) -> Result<(String, Vec<String>), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("only redis:// URLs are supported")?;
    let rest = rest.split('/').next().unwrap_or(rest);
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let auth = match auth {
        None => Vec::new(),
        Some(a) => match a.split_once(':') {
            Some(("", pw)) => vec![pw.to_owned()],
            Some((user, pw)) => vec![user.to_owned(), pw.to_owned()],
            None => vec![a.to_owned()],
        },
    };
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:6379")
    };
    Ok((hostport, auth))
}

pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl Publisher {
    /// Publishes through the server at `url` (`PUBLISH`, or `SPUBLISH` when
    /// `sharded`).
    pub(crate) async fn connect(url: &str, sharded: bool) -> Result<Self, String> {
        let (hostport, auth) = parse_url(url)?;
        let replies = Arc::new(Replies::default());
        let writer = Self::open(&hostport, &auth, &replies).await?;
        Ok(Self {
            writers: vec![writer],
            routes: None,
            verb: if sharded { b"SPUBLISH" } else { b"PUBLISH" },
            replies,
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Publishes on the Redis Cluster `map` describes, to users `1..=users`
    /// or everyone: one connection per master, each message sent to the
    /// master owning its channel's slot, as a cluster client routes it
    /// (`SPUBLISH` must go there; a classic `PUBLISH` may go to any node,
    /// and routing it the same way spreads the publishing evenly over the
    /// masters).
    pub(crate) async fn connect_cluster(
        map: &crate::resp::ClusterMap,
        sharded: bool,
        users: u64,
    ) -> Result<Self, String> {
        let replies = Arc::new(Replies::default());
        let mut writers = Vec::new();
        for m in &map.masters {
            writers.push(Self::open(m, &map.auth, &replies).await?);
        }
        let channels: Vec<Vec<u8>> = (0..=users)
            .map(|u| {
                let mut c = Vec::new();
                channel_of(u, &mut c);
                c
            })
            .collect();
        Ok(Self {
            writers,
            routes: Some(map.masters_of(&channels).await?),
            verb: if sharded { b"SPUBLISH" } else { b"PUBLISH" },
            replies,
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A connection whose replies a task counts into `replies`.
    async fn open(
        hostport: &str,
        auth: &[String],
        replies: &Arc<Replies>,
    ) -> Result<OwnedWriteHalf, String> {
        let conn = crate::resp::Conn::connect(hostport, auth).await?;
        let (read, write) = conn.into_stream().into_split();
        let mut read = BufReader::new(read);
        let counts = replies.clone();
        tokio::spawn(async move {
            let mut line = Vec::with_capacity(64);
            loop {
                line.clear();
                match read.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                match line.first() {
                    Some(b':') => {
                        counts.replies.fetch_add(1, Ordering::Relaxed);
                        if line.starts_with(b":0\r") {
                            counts.zero_receivers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(b'-') => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
        Ok(write)
    }

    /// Publishes `shared.expected.len()` messages at `rate` per second to
    /// `target`, recording for each sequence number how many deliveries
    /// are expected. Returns how many were published.
    pub(crate) async fn run(
        &mut self,
        rate: f64,
        target: &Target,
        shared: &Shared,
    ) -> Result<usize, String> {
        let total = shared.expected.len();
        let start = Instant::now();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ now_ns());
        let mut outs: Vec<Vec<u8>> = self
            .writers
            .iter()
            .map(|_| Vec::with_capacity(64 * 1024))
            .collect();
        let mut payload = Vec::with_capacity(96);
        let mut channel = Vec::with_capacity(64);
        let mut seq = 0usize;
        while seq < total {
            let elapsed = start.elapsed().as_secs_f64();
            // The first message goes at once, then one every 1/rate s.
            let due = ((elapsed * rate) as usize + 1).min(total);
            if due > seq {
                for out in &mut outs {
                    out.clear();
                }
                for s in seq..due {
                    let (user, expected) = match *target {
                        Target::PerUser { users } => {
                            let u = rng.below(users) + 1;
                            (u, u64::from(shared.sockets_of(u)))
                        }
                        Target::Broadcast { .. } => (0, shared.live()),
                    };
                    match *target {
                        Target::Broadcast { channel: c } => {
                            channel.clear();
                            channel.extend_from_slice(c.as_bytes());
                        }
                        Target::PerUser { .. } => channel_of(user, &mut channel),
                    }
                    shared.expected[s].store(
                        u32::try_from(expected).unwrap_or(u32::MAX),
                        Ordering::Relaxed,
                    );
                    payload.clear();
                    let _ = write!(payload, "{{\"t\":{},\"s\":{s},\"u\":{user}}}", now_ns());
                    let to = self.routes.as_ref().map_or(0, |r| {
                        usize::from(r.get(user as usize).copied().unwrap_or(0))
                    });
                    command(&mut outs[to], &[self.verb, &channel, &payload]);
                }
                for (write, out) in self.writers.iter_mut().zip(&outs) {
                    if !out.is_empty() {
                        write
                            .write_all(out)
                            .await
                            .map_err(|e| format!("writing to Redis: {e}"))?;
                    }
                }
                seq = due;
                self.sent.store(seq as u64, Ordering::Relaxed);
            }
            if seq < total {
                let next = start + Duration::from_secs_f64(seq as f64 / rate);
                tokio::time::sleep_until(next).await;
            }
        }
        Ok(seq)
    }
}

/// The channel of user `user` (`/app/user/<user>/notifications`), or
/// `/app/broadcast` for 0, into `out`.
fn channel_of(user: u64, out: &mut Vec<u8>) {
    out.clear();
    if user == 0 {
        out.extend_from_slice(b"/app/broadcast");
    } else {
        let _ = write!(out, "/app/user/{user}/notifications");
    }
}

/// xorshift64*: random enough to pick users, cheap, no dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:7000").unwrap(),
            ("127.0.0.1:7000".to_owned(), vec![])
        );
        assert_eq!(
            parse_url("redis://:pw@h:1/2").unwrap(),
            ("h:1".to_owned(), vec!["pw".to_owned()])
        );
        assert_eq!(
            parse_url("redis://u:pw@h").unwrap(),
            ("h:6379".to_owned(), vec!["u".to_owned(), "pw".to_owned()])
        );
        assert!(parse_url("rediss://h").is_err());
    }
}
