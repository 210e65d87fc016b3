//! The raw material every metric is made of: monotonically growing counters
//! per cgroup, device and direction, as a source (the eBPF program, or the
//! cgroup's own statistics when eBPF cannot load) last saw them.
//!
//! Sources only ever add to counters; rates and percentiles come from the
//! difference of two snapshots (see `window`). That keeps the kernel side
//! free of timers and makes a missed scrape harmless.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use iogate_core::Device;

/// Number of log2 latency buckets. Bucket `i` counts latencies `v` (ns) with
/// `2^i <= v < 2^(i+1)` (bucket 0 also takes `v == 0`); the last bucket takes
/// everything from `2^(BUCKETS-1)` ns (about 34 s) up.
pub const BUCKETS: usize = 36;

/// Read or write, as the cgroup statistics count them too.
pub use iogate_core::cgroup::Direction;

/// Identifies one cgroup as the kernel does: its kernfs node id, which is
/// also the inode number of the cgroup's directory in its hierarchy (blkio on
/// cgroup v1, the unified hierarchy on v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupId(pub u64);

impl CgroupId {
    /// I/O whose bio carries no block cgroup: counted, so that per-device
    /// totals match `/proc/diskstats`, but charged to nobody.
    pub const NONE: CgroupId = CgroupId(0);
}

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one set of counters belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoKey {
    pub cgroup: CgroupId,
    pub device: Device,
    pub direction: Direction,
}

/// A log2 histogram of latencies in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log2Histogram(pub [u64; BUCKETS]);

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram([0; BUCKETS])
    }
}

impl Log2Histogram {
    /// The bucket a latency falls in, the same rule the eBPF program uses.
    pub fn bucket_of(ns: u64) -> usize {
        if ns == 0 {
            0
        } else {
            (63 - ns.leading_zeros() as usize).min(BUCKETS - 1)
        }
    }

    /// Exclusive upper bound of bucket `i` in ns (`None` for the last,
    /// open-ended bucket).
    pub fn upper_bound_ns(i: usize) -> Option<u64> {
        (i + 1 < BUCKETS).then(|| 1u64 << (i + 1))
    }

    pub fn record(&mut self, ns: u64) {
        self.0[Self::bucket_of(ns)] += 1;
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts added since `earlier` (saturating, so a counter reset reads as
    /// zero rather than as a huge number).
    pub fn since(&self, earlier: &Log2Histogram) -> Log2Histogram {
        let mut out = Log2Histogram::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            *slot = self.0[i].saturating_sub(earlier.0[i]);
        }
        out
    }

    /// The `q` quantile (0..=1) in ns, interpolated linearly inside its
    /// bucket; `None` for an empty histogram.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { 1u64 << i };
                let upper = Self::upper_bound_ns(i).unwrap_or(lower.saturating_mul(2));
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + ((upper - lower) as f64 * within) as u64);
            }
            seen += n;
        }
        None
    }
}

/// Counters for one [`IoKey`]. All of them only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Completed requests.
    pub ops: u64,
    /// Bytes completed.
    pub bytes: u64,
    /// Requests whose queue time was seen (inserted into the scheduler before
    /// issue). Requests issued directly count in `ops` but not here.
    pub queued_ops: u64,
    /// Sum of issue − insert over `queued_ops`.
    pub queue_ns: u64,
    /// Sum of complete − issue over `ops`.
    pub disk_ns: u64,
    /// Whole latency per request (queue + device), for percentiles.
    pub total_hist: Log2Histogram,
    pub queue_hist: Log2Histogram,
    pub disk_hist: Log2Histogram,
    /// Bios blk-throttle held back because the cgroup was over its limit
    /// on the device, counted when released (eBPF on kernels that allow
    /// fentry, see [`CounterSource::throttle_wait`]).
    pub throttled_ios: u64,
    /// Sum of their waits, queued by the throttle → released.
    pub throttle_wait_ns: u64,
    pub throttle_hist: Log2Histogram,
}

impl IoCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        IoCounters {
            ops: self.ops.saturating_sub(earlier.ops),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            queued_ops: self.queued_ops.saturating_sub(earlier.queued_ops),
            queue_ns: self.queue_ns.saturating_sub(earlier.queue_ns),
            disk_ns: self.disk_ns.saturating_sub(earlier.disk_ns),
            total_hist: self.total_hist.since(&earlier.total_hist),
            queue_hist: self.queue_hist.since(&earlier.queue_hist),
            disk_hist: self.disk_hist.since(&earlier.disk_hist),
            throttled_ios: self.throttled_ios.saturating_sub(earlier.throttled_ios),
            throttle_wait_ns: self.throttle_wait_ns.saturating_sub(earlier.throttle_wait_ns),
            throttle_hist: self.throttle_hist.since(&earlier.throttle_hist),
        }
    }

    pub fn add(&mut self, other: &IoCounters) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.queued_ops += other.queued_ops;
        self.queue_ns += other.queue_ns;
        self.disk_ns += other.disk_ns;
        self.throttled_ios += other.throttled_ios;
        self.throttle_wait_ns += other.throttle_wait_ns;
        for i in 0..BUCKETS {
            self.total_hist.0[i] += other.total_hist.0[i];
            self.queue_hist.0[i] += other.queue_hist.0[i];
            self.disk_hist.0[i] += other.disk_hist.0[i];
            self.throttle_hist.0[i] += other.throttle_hist.0[i];
        }
    }
}

/// Which kind of source produced a snapshot, and so what it can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The eBPF program: counts, bytes and latencies.
    Ebpf,
    /// The cgroups' own statistics: counts and bytes only. Latency fields are
    /// unavailable (reported as such, never as zero).
    CgroupStats,
}

impl SourceKind {
    pub fn has_latency(self) -> bool {
        matches!(self, SourceKind::Ebpf)
    }

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Ebpf => iogate_api::SOURCE_EBPF,
            SourceKind::CgroupStats => iogate_api::SOURCE_CGROUP_STATS,
        }
    }
}

/// Every counter a source holds, read at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: Instant,
    pub source: SourceKind,
    pub counters: HashMap<IoKey, IoCounters>,
}

/// Anything that can produce snapshots: the eBPF probe, or the cgroup
/// statistics fallback.
pub trait CounterSource: Send {
    fn kind(&self) -> SourceKind;
    fn snapshot(&mut self) -> anyhow::Result<Snapshot>;
    /// Drops what the source keeps for cgroups that no longer exist, once
    /// their last counts have been reported. Sources that read live cgroups
    /// only (the statistics fallback) keep nothing, hence the default.
    fn forget(&mut self, _removed: &[CgroupId]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Whether the snapshots carry blk-throttle's wait
    /// ([`IoCounters::throttle_wait_ns`]); `Err` says why not. The cgroup
    /// statistics have no per-I/O wait, hence the default.
    fn throttle_wait(&self) -> Result<(), &str> {
        Err("the cgroup statistics do not time the throttle's wait; it needs the eBPF source")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_powers_of_two() {
        assert_eq!(Log2Histogram::bucket_of(0), 0);
        assert_eq!(Log2Histogram::bucket_of(1), 0);
        assert_eq!(Log2Histogram::bucket_of(2), 1);
        assert_eq!(Log2Histogram::bucket_of(3), 1);
        assert_eq!(Log2Histogram::bucket_of(1024), 10);
        assert_eq!(Log2Histogram::bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let mut h = Log2Histogram::default();
        for _ in 0..90 {
            h.record(1_500); // bucket 10: [1024, 2048)
        }
        for _ in 0..10 {
            h.record(1_000_000); // bucket 19: [524288, 1048576)
        }
        let p50 = h.quantile_ns(0.5).unwrap();
        assert!((1024..2048).contains(&p50), "p50 {p50}");
        let p99 = h.quantile_ns(0.99).unwrap();
        assert!((524_288..1_048_576).contains(&p99), "p99 {p99}");
        assert_eq!(Log2Histogram::default().quantile_ns(0.5), None);
    }

    #[test]
    fn since_is_the_difference_and_never_negative() {
        let mut a = IoCounters { ops: 10, bytes: 4096, ..Default::default() };
        a.total_hist.record(100);
        let mut b = a;
        b.ops = 15;
        b.bytes = 8192;
        b.total_hist.record(100);
        let d = b.since(&a);
        assert_eq!((d.ops, d.bytes, d.total_hist.count()), (5, 4096, 1));
        // A source that restarted (counters reset) reads as no activity.
        assert_eq!(a.since(&b).ops, 0);
    }
}
