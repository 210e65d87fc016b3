//! A snapshot with owners attached: every counter series knows its workload
//! and the limits in force on it. Frames are cumulative; `window` turns two
//! of them into rates.

use std::time::{Instant, SystemTime};

use iogate_core::{Device, Limits};

use crate::attribution::{Attribution, Workload};
use crate::counters::{CgroupId, Direction, IoCounters, Snapshot, SourceKind};

/// One cgroup's counters for one device and direction.
#[derive(Debug, Clone)]
pub struct Series {
    pub cgroup: CgroupId,
    pub workload: Workload,
    pub device: Device,
    pub direction: Direction,
    pub counters: IoCounters,
    /// Limits in force on the cgroup for this device (`None`: unreadable).
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub taken_at: Instant,
    pub wall: SystemTime,
    pub source: SourceKind,
    pub series: Vec<Series>,
    /// Cgroups with counters but no directory any more: their counts are
    /// still reported (as `cgroup = "(removed) <id>"`) until the source
    /// forgets them.
    pub removed: Vec<CgroupId>,
}

impl Frame {
    pub fn attribute(snapshot: Snapshot, wall: SystemTime, who: &dyn Attribution) -> Frame {
        let mut removed = Vec::new();
        let mut series: Vec<Series> = snapshot
            .counters
            .into_iter()
            .map(|(key, counters)| {
                let workload = who.workload(key.cgroup).unwrap_or_else(|| {
                    removed.push(key.cgroup);
                    Workload {
                        namespace: None,
                        pod: None,
                        pod_uid: None,
                        container: None,
                        container_id: None,
                        cgroup: format!("(removed) {}", key.cgroup),
                    }
                });
                let limits = who.limits(key.cgroup, key.device);
                Series { cgroup: key.cgroup, workload, device: key.device, direction: key.direction, counters, limits }
            })
            .collect();
        // Stable order: reports and /metrics read the same way every scrape.
        series.sort_by(|a, b| {
            (&a.workload, a.device, a.direction, a.cgroup).cmp(&(&b.workload, b.device, b.direction, b.cgroup))
        });
        removed.sort();
        removed.dedup();
        Frame { taken_at: snapshot.taken_at, wall, source: snapshot.source, series, removed }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use super::*;

    /// A fixed table of owners and limits.
    #[derive(Default)]
    pub struct Table {
        pub owners: HashMap<CgroupId, Workload>,
        pub limits: HashMap<(CgroupId, Device), Limits>,
    }

    impl Table {
        pub fn pod(mut self, id: u64, namespace: &str, pod: &str, container: &str) -> Self {
            self.owners.insert(
                CgroupId(id),
                Workload {
                    namespace: Some(namespace.into()),
                    pod: Some(pod.into()),
                    pod_uid: Some(format!("uid-{pod}")),
                    container: Some(container.into()),
                    container_id: Some(format!("cid-{container}")),
                    cgroup: format!("/kubepods/pod-{pod}/{container}"),
                },
            );
            self
        }

        pub fn cgroup(mut self, id: u64, path: &str) -> Self {
            self.owners.insert(
                CgroupId(id),
                Workload {
                    namespace: None,
                    pod: None,
                    pod_uid: None,
                    container: None,
                    container_id: None,
                    cgroup: path.into(),
                },
            );
            self
        }

        pub fn limit(mut self, id: u64, device: Device, limits: Limits) -> Self {
            self.limits.insert((CgroupId(id), device), limits);
            self
        }
    }

    impl Attribution for Table {
        fn workload(&self, id: CgroupId) -> Option<Workload> {
            self.owners.get(&id).cloned()
        }

        fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
            Some(self.limits.get(&(id, device)).copied().unwrap_or(Limits::UNLIMITED))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::testing::Table;
    use super::*;
    use crate::counters::IoKey;

    #[test]
    fn counters_of_a_removed_cgroup_stay_visible() {
        let table = Table::default().pod(7, "ns", "web", "app");
        let dev = Device::new(7, 0);
        let mut counters = HashMap::new();
        for id in [7, 9] {
            counters.insert(
                IoKey { cgroup: CgroupId(id), device: dev, direction: Direction::Read },
                IoCounters { ops: 3, ..Default::default() },
            );
        }
        let snap = Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters };
        let frame = Frame::attribute(snap, SystemTime::now(), &table);
        assert_eq!(frame.series.len(), 2);
        assert_eq!(frame.removed, vec![CgroupId(9)]);
        assert!(frame.series.iter().any(|s| s.workload.cgroup == "(removed) 9" && s.counters.ops == 3));
    }
}
