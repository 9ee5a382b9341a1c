//! Shared counters and latency histograms, written by thousands of
//! connection tasks with little contention.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes.
const HIGHEST_US: u64 = 600_000_000;

/// A histogram split into shards, so that concurrent writers rarely meet on
/// the same lock. A writer picks its shard by any number it owns (its
/// connection index).
pub(crate) struct Sharded {
    shards: Vec<Mutex<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

impl Sharded {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
        }
    }

    /// Records `us` microseconds (clamped into the histogram's range).
    pub(crate) fn record(&self, shard: usize, us: u64) {
        let us = us.clamp(1, HIGHEST_US);
        // In range by construction: recording cannot fail.
        let _ = self.shards[shard % self.shards.len()].lock().record(us);
    }

    /// All shards merged.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.shards {
            let _ = all.add(&*s.lock());
        }
        all
    }
}

/// A latency summary, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// Number of samples.
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// What every connection task reports into.
pub(crate) struct Shared {
    /// Connections that received their welcome frame.
    pub(crate) opened: AtomicU64,
    /// Connection attempts that failed (any reason).
    pub(crate) failed: AtomicU64,
    /// Connections that ended (closed by the gateway, or errored) after
    /// their welcome, while the run was going on.
    pub(crate) disconnected: AtomicU64,
    /// Welcome frames naming another user than the cookie's.
    pub(crate) wrong_welcome: AtomicU64,
    /// `message` frames received on the right socket with a known sequence.
    pub(crate) received: AtomicU64,
    /// Messages for user A received on a socket of user B.
    pub(crate) wrong_user: AtomicU64,
    /// `message` frames that could not be attributed (unknown sequence,
    /// unparsable data, an unexpected channel).
    pub(crate) foreign: AtomicU64,
    /// Frames other than `message` after the welcome (`gap`, `dropped`,
    /// `error`, ...).
    pub(crate) other_frames: AtomicU64,
    /// Per published sequence number: deliveries expected.
    pub(crate) expected: Vec<AtomicU32>,
    /// Per published sequence number: deliveries received on a right socket.
    pub(crate) got: Vec<AtomicU32>,
    /// Delivery latency (publish timestamp to receipt), µs.
    pub(crate) delivery: Sharded,
    /// Connect latency (TCP connect start to welcome frame), µs.
    pub(crate) connect: Sharded,
    /// The first few unexpected things seen, for the report.
    pub(crate) samples: Mutex<Vec<String>>,
    /// Per user id: sockets that received their welcome.
    pub(crate) user_sockets: Vec<AtomicU32>,
    /// Failed connection attempts by cause (`http 503`, `io: ...`, `timeout`).
    pub(crate) errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Shared {
    pub(crate) fn new(max_messages: usize, max_user: u64) -> Self {
        Self {
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            wrong_welcome: AtomicU64::new(0),
            received: AtomicU64::new(0),
            wrong_user: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            expected: (0..max_messages).map(|_| AtomicU32::new(0)).collect(),
            got: (0..max_messages).map(|_| AtomicU32::new(0)).collect(),
            delivery: Sharded::new(16),
            connect: Sharded::new(16),
            samples: Mutex::new(Vec::new()),
            errors: Mutex::new(std::collections::BTreeMap::new()),
            user_sockets: (0..=max_user).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Keeps `what` as an example of something unexpected (the first 20).
    pub(crate) fn sample(&self, what: impl FnOnce() -> String) {
        let mut s = self.samples.lock();
        if s.len() < 20 {
            s.push(what());
        }
    }

    /// Sockets of `user` that are open (welcomed).
    pub(crate) fn sockets_of(&self, user: u64) -> u32 {
        usize::try_from(user)
            .ok()
            .and_then(|u| self.user_sockets.get(u))
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Sockets open now: welcomed and not ended.
    pub(crate) fn live(&self) -> u64 {
        self.opened
            .load(Ordering::Relaxed)
            .saturating_sub(self.disconnected.load(Ordering::Relaxed))
    }

    /// Counts a failed connection attempt.
    pub(crate) fn failure(&self, cause: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().entry(cause).or_insert(0) += 1;
    }

    /// Sum of expected deliveries over the first `published` sequences.
    pub(crate) fn expected_total(&self, published: usize) -> u64 {
        self.expected[..published.min(self.expected.len())]
            .iter()
            .map(|e| u64::from(e.load(Ordering::Relaxed)))
            .sum()
    }

    /// (lost, duplicated) deliveries over the first `published` sequences.
    pub(crate) fn loss(&self, published: usize) -> (u64, u64) {
        let n = published.min(self.expected.len());
        let mut lost = 0;
        let mut dup = 0;
        for (e, g) in self.expected[..n].iter().zip(&self.got[..n]) {
            let e = u64::from(e.load(Ordering::Relaxed));
            let g = u64::from(g.load(Ordering::Relaxed));
            lost += e.saturating_sub(g);
            dup += g.saturating_sub(e);
        }
        (lost, dup)
    }
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcSample {
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size, KiB.
    pub(crate) hwm_kib: u64,
    /// utime + stime, clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Threads.
    pub(crate) threads: u64,
}

impl ProcSample {
    /// Reads the process `pid` (`None`: this process). `None` when it is gone.
    pub(crate) fn read(pid: Option<u32>) -> Option<Self> {
        let base = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_owned(),
        };
        let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields
        // count from after the last ')'. utime and stime are fields 14 and
        // 15, i.e. the 12th and 13th after the state field (3).
        let after = stat.rsplit_once(')').map(|(_, r)| r)?;
        let f: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(Self {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            cpu_ticks: utime + stime,
            threads: field("Threads:"),
        })
    }
}

/// The sum of several processes' samples (`None` if any is missing).
pub(crate) fn total(samples: &[Option<ProcSample>]) -> Option<ProcSample> {
    samples.iter().try_fold(ProcSample::default(), |t, s| {
        let s = (*s)?;
        Some(ProcSample {
            rss_kib: t.rss_kib + s.rss_kib,
            hwm_kib: t.hwm_kib + s.hwm_kib,
            cpu_ticks: t.cpu_ticks + s.cpu_ticks,
            threads: t.threads + s.threads,
        })
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100
/// on every mainstream Linux).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Machine-wide CPU time from `/proc/stat`: (busy, total) clock ticks over
/// all cores.
pub(crate) fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The share of all cores that was busy between two [`machine_cpu`] reads.
pub(crate) fn machine_busy_percent(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    let dt = t1.checked_sub(t0)?;
    (dt > 0).then(|| (b1.saturating_sub(b0)) as f64 / dt as f64 * 100.0)
}
