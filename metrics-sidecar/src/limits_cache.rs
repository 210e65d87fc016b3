//! The limits in force per cgroup and device, remembered between ticks.
//!
//! Reading them is the sampler's dearest step at scale: on cgroup v1 four
//! `blkio.throttle.*` files per cgroup, each an open, a read and a close
//! through a long path — 37 % of the sidecar's CPU at 1,000 pods, read
//! every 5 s (measured with `perf record` under `iogate-sidecar-bench
//! pods`). Limits change seldom: the plugin writes them before a container
//! starts, the reconciler when a policy changes or drifts. So a cgroup's
//! limits are read when it is first seen and again once they are older
//! than the cache's age, and that age is what a change waits, at most, to
//! show. A read that failed is not remembered: it is tried again next time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iogate_core::{Device, Limits};

use crate::counters::CgroupId;

/// How long a read of the limits is shown before they are read again.
pub const LIMITS_MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct LimitsCache {
    max_age: Duration,
    entries: HashMap<(CgroupId, Device), (Limits, Instant)>,
}

impl LimitsCache {
    pub fn new(max_age: Duration) -> LimitsCache {
        LimitsCache { max_age, entries: HashMap::new() }
    }

    /// The limits last read for `id` on `device` if younger than the
    /// cache's age at `now`; otherwise `read`'s answer, remembered when it
    /// is one.
    pub fn get_or_read(
        &mut self,
        id: CgroupId,
        device: Device,
        now: Instant,
        read: impl FnOnce() -> Option<Limits>,
    ) -> Option<Limits> {
        if let Some((limits, at)) = self.entries.get(&(id, device)) {
            if now.saturating_duration_since(*at) < self.max_age {
                return Some(*limits);
            }
        }
        let fresh = read();
        match fresh {
            Some(limits) => {
                self.entries.insert((id, device), (limits, now));
            }
            None => {
                self.entries.remove(&(id, device));
            }
        }
        fresh
    }

    /// Forgets every cgroup `alive` says is gone.
    pub fn retain(&mut self, alive: impl Fn(CgroupId) -> bool) {
        self.entries.retain(|(id, _), _| alive(*id));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const DISK: Device = Device { major: 8, minor: 0 };

    fn limited(read_iops: u64) -> Limits {
        Limits { read_iops: Some(read_iops), ..Limits::UNLIMITED }
    }

    #[test]
    fn read_once_per_age_then_again() {
        let mut cache = LimitsCache::new(Duration::from_secs(30));
        let reads = Cell::new(0);
        let t0 = Instant::now();
        let read = |v| {
            reads.set(reads.get() + 1);
            Some(limited(v))
        };
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, t0, || read(100)), Some(limited(100)));
        // A change within the age is not read yet: the cache answers.
        let later = t0 + Duration::from_secs(29);
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, later, || read(50)), Some(limited(100)));
        assert_eq!(reads.get(), 1);
        // Once the age has passed, the change shows.
        let aged = t0 + Duration::from_secs(30);
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, aged, || read(50)), Some(limited(50)));
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn devices_and_cgroups_are_read_apart() {
        let mut cache = LimitsCache::new(Duration::from_secs(30));
        let now = Instant::now();
        cache.get_or_read(CgroupId(1), DISK, now, || Some(limited(100)));
        let other_disk = Device::new(8, 16);
        assert_eq!(
            cache.get_or_read(CgroupId(1), other_disk, now, || Some(Limits::UNLIMITED)),
            Some(Limits::UNLIMITED)
        );
        assert_eq!(cache.get_or_read(CgroupId(2), DISK, now, || Some(limited(7))), Some(limited(7)));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_failed_read_is_tried_again_and_drops_the_old_answer() {
        let mut cache = LimitsCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, t0, || None), None);
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, t0, || Some(limited(100))), Some(limited(100)));
        let aged = t0 + Duration::from_secs(31);
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, aged, || None), None);
        assert!(cache.is_empty(), "an unreadable cgroup keeps no stale limits");
    }

    #[test]
    fn gone_cgroups_are_forgotten() {
        let mut cache = LimitsCache::new(Duration::from_secs(30));
        let now = Instant::now();
        cache.get_or_read(CgroupId(1), DISK, now, || Some(limited(100)));
        cache.get_or_read(CgroupId(2), DISK, now, || Some(limited(100)));
        cache.retain(|id| id == CgroupId(2));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get_or_read(CgroupId(1), DISK, now, || Some(limited(9))), Some(limited(9)));
    }
}
