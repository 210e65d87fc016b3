//! The eBPF maps' key and value layouts, mirroring `bpf/iogate.h`, and their
//! translation into the counters contract.

use iogate_core::Device;
use thiserror::Error;

use crate::counters::{CgroupId, Direction, IoCounters, IoKey, Log2Histogram, BUCKETS};

/// Name of the per-key statistics map in the object file.
pub const STATS_MAP: &str = "stats";
/// Name of the per-CPU count of requests the program could not track.
pub const UNTRACKED_MAP: &str = "untracked";
/// Name of the per-key throttle-wait map (same keys as [`STATS_MAP`]).
pub const THROTTLE_MAP: &str = "throttle";

/// `IOGATE_MINOR_BITS`: the kernel's `MKDEV` packing.
const MINOR_BITS: u32 = 20;

/// `struct iogate_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawKey {
    pub cgroup_id: u64,
    pub dev: u32,
    pub dir: u32,
}

/// `struct iogate_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawStats {
    pub ops: u64,
    pub bytes: u64,
    pub queued_ops: u64,
    pub queue_ns: u64,
    pub disk_ns: u64,
    pub total_hist: [u64; BUCKETS],
    pub queue_hist: [u64; BUCKETS],
    pub disk_hist: [u64; BUCKETS],
}

/// `struct iogate_throttle`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawThrottle {
    pub bios: u64,
    pub wait_ns: u64,
    pub wait_hist: [u64; BUCKETS],
}

// The C side is plain integers with no padding; a size change means the two
// definitions drifted apart.
const _: () = assert!(std::mem::size_of::<RawKey>() == 16);
const _: () = assert!(std::mem::size_of::<RawStats>() == 8 * (5 + 3 * BUCKETS));
const _: () = assert!(std::mem::size_of::<RawThrottle>() == 8 * (2 + BUCKETS));

// SAFETY: both are repr(C), made only of integers, with no padding (asserted
// above), so every bit pattern is a valid value.
unsafe impl aya::Pod for RawKey {}
unsafe impl aya::Pod for RawStats {}
unsafe impl aya::Pod for RawThrottle {}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("expected a stats key with direction 0 (read) or 1 (write), found {0:?}")]
pub struct BadKey(pub RawKey);

impl RawKey {
    pub fn to_io_key(self) -> Result<IoKey, BadKey> {
        let direction = match self.dir {
            0 => Direction::Read,
            1 => Direction::Write,
            _ => return Err(BadKey(self)),
        };
        let device = Device::new(self.dev >> MINOR_BITS, self.dev & ((1 << MINOR_BITS) - 1));
        Ok(IoKey { cgroup: CgroupId(self.cgroup_id), device, direction })
    }
}

impl RawStats {
    pub fn counters(&self) -> IoCounters {
        IoCounters {
            ops: self.ops,
            bytes: self.bytes,
            queued_ops: self.queued_ops,
            queue_ns: self.queue_ns,
            disk_ns: self.disk_ns,
            total_hist: Log2Histogram(self.total_hist),
            queue_hist: Log2Histogram(self.queue_hist),
            disk_hist: Log2Histogram(self.disk_hist),
            ..IoCounters::default()
        }
    }
}

impl RawThrottle {
    /// Adds the throttle's wait to `counters`.
    pub fn add_to(&self, counters: &mut IoCounters) {
        counters.throttled_ios += self.bios;
        counters.throttle_wait_ns += self.wait_ns;
        for (sum, n) in counters.throttle_hist.0.iter_mut().zip(self.wait_hist) {
            *sum += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_unpack_the_kernels_dev_t() {
        let k = RawKey { cgroup_id: 42, dev: (259 << 20) | 3, dir: 1 };
        let io = k.to_io_key().unwrap();
        assert_eq!(io.device, Device::new(259, 3));
        assert_eq!(io.direction, Direction::Write);
        assert_eq!(io.cgroup, CgroupId(42));
        assert_eq!(RawKey { dir: 0, ..k }.to_io_key().unwrap().direction, Direction::Read);
        let e = RawKey { dir: 7, ..k }.to_io_key().unwrap_err().to_string();
        assert!(e.contains("direction 0 (read) or 1 (write)"), "{e}");
    }

    #[test]
    fn stats_keep_every_bucket_in_place() {
        let mut raw = RawStats {
            ops: 3,
            bytes: 12288,
            queued_ops: 2,
            queue_ns: 500,
            disk_ns: 9000,
            total_hist: [0; BUCKETS],
            queue_hist: [0; BUCKETS],
            disk_hist: [0; BUCKETS],
        };
        raw.total_hist[BUCKETS - 1] = 1;
        raw.queue_hist[Log2Histogram::bucket_of(250)] = 2;
        raw.disk_hist[0] = 3;
        let c = raw.counters();
        assert_eq!((c.ops, c.bytes, c.queued_ops, c.queue_ns, c.disk_ns), (3, 12288, 2, 500, 9000));
        assert_eq!(c.total_hist.0[BUCKETS - 1], 1);
        assert_eq!(c.queue_hist.0[7], 2);
        assert_eq!(c.disk_hist.count(), 3);
        assert_eq!((c.throttled_ios, c.throttle_wait_ns), (0, 0), "the stats map knows no throttle");
    }

    #[test]
    fn throttle_waits_add_to_the_keys_counters() {
        let mut raw = RawThrottle { bios: 2, wait_ns: 600_000_000, wait_hist: [0; BUCKETS] };
        raw.wait_hist[Log2Histogram::bucket_of(300_000_000)] = 2;
        let mut c = IoCounters { ops: 5, ..Default::default() };
        raw.add_to(&mut c);
        raw.add_to(&mut c);
        assert_eq!((c.ops, c.throttled_ios, c.throttle_wait_ns), (5, 4, 1_200_000_000));
        assert_eq!(c.throttle_hist.0[28], 4);
    }
}
