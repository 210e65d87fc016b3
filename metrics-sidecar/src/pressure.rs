//! How long a pod's and a container's tasks stalled on I/O: the pressure
//! stall information (PSI) cgroup v2 keeps per cgroup in `io.pressure`.
//!
//! It answers a different question from the throttle's wait. The wait is
//! per bio, and counts every bio the pod's own limit held, whether or not a
//! task waited for it. The stall is per task: time in which `some` (at
//! least one) or `full` (all non-idle) of the cgroup's tasks were blocked
//! in an I/O wait — a read from a page not in the cache, `fsync`, a
//! synchronous `read(2)`, whatever the disk or a limit made slow. A task
//! that submits asynchronously (libaio, io_uring) and waits interruptibly
//! for completions does not stall by this measure, however long its I/O is
//! held.
//!
//! The kernel keeps the totals in microseconds since the cgroup was made.
//! Stall time does not add up over a pod's containers (two containers
//! stalled in the same second are one second of the pod's `some`), so the
//! pod's figure is read from the pod's own cgroup, not summed.

use iogate_core::cgroup::v2::io::IoPressure;

/// A cgroup's stall totals (or their growth over a window), microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StallTotals {
    pub some_us: u64,
    pub full_us: u64,
}

impl StallTotals {
    pub fn of(p: &IoPressure) -> StallTotals {
        StallTotals { some_us: p.some.total_us, full_us: p.full.total_us }
    }

    /// The growth since `earlier` (a total never shrinks while its cgroup
    /// lives; a path reused by a new cgroup starts again from zero, and
    /// counts as no growth rather than a negative one).
    pub fn since(&self, earlier: &StallTotals) -> StallTotals {
        StallTotals {
            some_us: self.some_us.saturating_sub(earlier.some_us),
            full_us: self.full_us.saturating_sub(earlier.full_us),
        }
    }

    pub fn some_seconds(&self) -> f64 {
        self.some_us as f64 / 1e6
    }

    pub fn full_seconds(&self) -> f64 {
        self.full_us as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_over_a_window_and_a_reused_path() {
        let earlier = StallTotals { some_us: 1_500_000, full_us: 500_000 };
        let later = StallTotals { some_us: 4_000_000, full_us: 2_000_000 };
        let grown = later.since(&earlier);
        assert_eq!((grown.some_seconds(), grown.full_seconds()), (2.5, 1.5));
        assert_eq!(earlier.since(&later), StallTotals::default());
    }
}
