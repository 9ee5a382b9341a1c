//! Connection limits: in total, per client address, per user.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use http::HeaderMap;
use parking_lot::Mutex;

/// How many sockets may be open, and who counts as one client.
///
/// A limit of 0 refuses every socket it applies to (and keeps no count for
/// the refused ones); `tidings_transport::TransportConfig::validate` reports it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most sockets open at once. Beyond: 503. Default 100,000.
    pub max_connections: usize,
    /// Most sockets from one client address. Beyond: 429. Default 10,000.
    pub max_connections_per_ip: usize,
    /// Most sockets of one user id (anonymous sockets are not counted
    /// here). Beyond: 429. Default 1,000.
    pub max_connections_per_user: usize,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR
    /// ranges). From any other peer, the header is ignored and the TCP peer
    /// is the client. Default: none.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            max_connections_per_user: 1_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address range: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has an invalid prefix length"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Limits {
    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the rightmost `X-Forwarded-For` entry that is not itself a
    /// trusted proxy (entries further left are the client's own claims).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
        let peer = peer.to_canonical();
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last good address.
                Err(_) => break,
            }
        }
        client
    }
}

/// Which limit refused a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections`.
    Total,
    /// `max_connections_per_ip`.
    PerIp,
    /// `max_connections_per_user`.
    PerUser,
}

/// The live counts the limits are checked against.
#[derive(Debug, Default)]
pub struct Counts {
    /// Randomly keyed, so user ids cannot be chosen to collide.
    hasher: std::collections::hash_map::RandomState,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Keyed by a hash of the user id: a collision only makes two users
    /// share a count (stricter, never looser), and no id is copied.
    per_user: Mutex<HashMap<u64, usize>>,
}

/// One socket's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
    user: Option<u64>,
}

impl Counts {
    fn user_key(&self, user: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(user)
    }

    /// Takes a place for a socket from `ip`, if the total and per-address
    /// limits allow.
    pub fn admit(self: &Arc<Self>, limits: &Limits, ip: IpAddr) -> Result<Slot, LimitHit> {
        // One IPv6 client usually holds a whole /64: count it as one address.
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64)))
            }
            v4 => v4,
        };
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::Total);
        }
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            // A refusal leaves no trace: with a limit of 0, an entry kept
            // for every refused address would grow the map without bound.
            if *n == 0 {
                per_ip.remove(&ip);
            }
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        Ok(Slot {
            counts: self.clone(),
            ip,
            user: None,
        })
    }
}

impl Slot {
    /// Counts the socket against `user` too, if the per-user limit allows.
    pub fn for_user(&mut self, limits: &Limits, user: &str) -> Result<(), LimitHit> {
        let key = self.counts.user_key(user);
        let mut per_user = self.counts.per_user.lock();
        let n = per_user.entry(key).or_insert(0);
        if *n >= limits.max_connections_per_user {
            if *n == 0 {
                per_user.remove(&key);
            }
            return Err(LimitHit::PerUser);
        }
        *n += 1;
        self.user = Some(key);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        {
            let mut per_ip = self.counts.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        if let Some(key) = self.user {
            let mut per_user = self.counts.per_user.lock();
            if let Some(n) = per_user.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    per_user.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = Limits {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..Limits::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        // Via the trusted chain: the rightmost untrusted hop.
        assert_eq!(limits.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // From an untrusted peer the header is ignored.
        assert_eq!(limits.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // No header: the peer.
        assert_eq!(
            limits.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn zero_limits_refuse_without_keeping_entries() {
        let limits = Limits {
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            ..Limits::default()
        };
        let counts = Arc::new(Counts::default());
        for i in 0..1000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            assert_eq!(counts.admit(&limits, addr).unwrap_err(), LimitHit::PerIp);
        }
        assert_eq!(counts.per_ip.lock().len(), 0, "refused addresses kept");
        assert_eq!(counts.total.load(Ordering::Acquire), 0);
        let open = Limits::default();
        let mut slot = counts.admit(&open, ip("1.1.1.1")).unwrap();
        for i in 0..1000 {
            assert_eq!(
                slot.for_user(&limits, &format!("user-{i}")).unwrap_err(),
                LimitHit::PerUser
            );
        }
        assert_eq!(counts.per_user.lock().len(), 0, "refused users kept");
    }

    #[test]
    fn slots_count_and_give_back() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            max_connections_per_user: 1,
            ..Limits::default()
        };
        let counts = Arc::new(Counts::default());
        let mut a = counts.admit(&limits, ip("1.1.1.1")).unwrap();
        let _b = counts.admit(&limits, ip("1.1.1.1")).unwrap();
        assert_eq!(
            counts.admit(&limits, ip("1.1.1.1")).unwrap_err(),
            LimitHit::PerIp
        );
        let mut c = counts.admit(&limits, ip("2.2.2.2")).unwrap();
        assert_eq!(
            counts.admit(&limits, ip("3.3.3.3")).unwrap_err(),
            LimitHit::Total
        );
        a.for_user(&limits, "u").unwrap();
        assert_eq!(c.for_user(&limits, "u").unwrap_err(), LimitHit::PerUser);
        drop(a);
        c.for_user(&limits, "u").unwrap();
        drop(c);
        let _d = counts.admit(&limits, ip("1.1.1.1")).unwrap();
        assert_eq!(counts.per_user.lock().len(), 0);
    }
}
