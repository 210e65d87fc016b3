//! A snapshot with owners attached: every counter series knows its owner
//! and the limits in force on it. Frames are cumulative; `window` turns two
//! of them into rates.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use iogate_core::cgroup::paths::PodCgroup;
use iogate_core::{Device, Limits};

use crate::attribution::Attribution;
use crate::counters::{CgroupId, Direction, IoCounters, Snapshot, SourceKind};
use crate::host_cgroups::CgroupOwner;
use crate::pressure::StallTotals;
use crate::stacking::Stacking;

/// One cgroup's counters for one device and direction.
#[derive(Debug, Clone)]
pub struct Series {
    pub cgroup: CgroupId,
    pub owner: CgroupOwner,
    pub device: Device,
    pub direction: Direction,
    pub counters: IoCounters,
    /// Limits in force on the cgroup for this device (`None`: unreadable).
    pub limits: Option<Limits>,
    /// The stacked device (loop, multipath) whose requests this series
    /// carries again for the cgroup ([`Frame::mark_layers`]); `None` on the
    /// top layer.
    pub lower_layer_of: Option<Device>,
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub taken_at: Instant,
    pub wall: SystemTime,
    pub source: SourceKind,
    pub series: Vec<Series>,
    /// Cgroups with counters that the attribution could not name (no
    /// directory in the last rescan): their counts are still reported (as
    /// `cgroup = "(removed) <id>"`) until the source forgets them, when a
    /// second tick cannot name them either.
    pub removed: Vec<CgroupId>,
    /// The counters hold blk-throttle's wait (the source measures it; see
    /// `CounterSource::throttle_wait`). Set by the sampler.
    pub throttle_wait: bool,
    /// The I/O stall totals of each series' cgroup and of its pod's own
    /// cgroup, by hierarchy path ([`crate::pressure`]); a path is missing
    /// where its file could not be read. `None` where the host keeps no
    /// stall information per cgroup ([`Attribution::pressure_kept`]).
    pub pressure: Option<HashMap<String, StallTotals>>,
}

impl Frame {
    pub fn attribute(snapshot: Snapshot, wall: SystemTime, who: &dyn Attribution) -> Frame {
        let mut removed = Vec::new();
        // A cgroup has a series per device and direction: name it, and read
        // its limit files, once per cgroup (and device), not per series.
        let mut owners: HashMap<CgroupId, CgroupOwner> = HashMap::new();
        let mut limits_of: HashMap<(CgroupId, Device), Option<Limits>> = HashMap::new();
        let mut series: Vec<Series> = snapshot
            .counters
            .into_iter()
            .map(|(key, counters)| {
                let owner = owners
                    .entry(key.cgroup)
                    .or_insert_with(|| {
                        if key.cgroup == CgroupId::NONE {
                            return CgroupOwner::outside_pods("(no cgroup)".into());
                        }
                        who.owner(key.cgroup).unwrap_or_else(|| {
                            removed.push(key.cgroup);
                            CgroupOwner::outside_pods(format!("(removed) {}", key.cgroup))
                        })
                    })
                    .clone();
                let limits =
                    *limits_of.entry((key.cgroup, key.device)).or_insert_with(|| who.limits(key.cgroup, key.device));
                Series {
                    cgroup: key.cgroup,
                    owner,
                    device: key.device,
                    direction: key.direction,
                    counters,
                    limits,
                    lower_layer_of: None,
                }
            })
            .collect();
        // Stable order: reports and /metrics read the same way every scrape.
        series.sort_by(|a, b| {
            (&a.owner.cgroup, a.device, a.direction, a.cgroup).cmp(&(&b.owner.cgroup, b.device, b.direction, b.cgroup))
        });
        removed.sort();
        let pressure = who.pressure_kept().is_ok().then(|| {
            let named = owners.iter().filter(|(id, _)| **id != CgroupId::NONE && removed.binary_search(id).is_err());
            // Each cgroup once, and each pod once however many containers
            // it has.
            let mut paths: Vec<&str> = named
                .flat_map(|(_, owner)| [Some(owner.cgroup.as_str()), PodCgroup::pod_dir(&owner.cgroup)])
                .flatten()
                .collect();
            paths.sort_unstable();
            paths.dedup();
            paths.into_iter().filter_map(|path| Some((path.to_string(), who.io_pressure(path)?))).collect()
        });
        Frame {
            taken_at: snapshot.taken_at,
            wall,
            source: snapshot.source,
            series,
            removed,
            throttle_wait: false,
            pressure,
        }
    }

    /// The stall totals of the cgroup at `path`, where measured and read.
    pub fn stall(&self, path: &str) -> Option<&StallTotals> {
        self.pressure.as_ref()?.get(path)
    }

    /// Marks each series below a stacked device the same cgroup has used
    /// (cumulative counts: once a pod has used its loop device, the disk
    /// under it stays marked for that pod, so a series does not change
    /// layer from one scrape to the next).
    pub fn mark_layers(&mut self, stacking: &Stacking) {
        let mut devices: BTreeMap<CgroupId, Vec<(Device, u64)>> = BTreeMap::new();
        for s in &self.series {
            let list = devices.entry(s.cgroup).or_default();
            match list.iter_mut().find(|(d, _)| *d == s.device) {
                Some((_, ops)) => *ops += s.counters.ops,
                None => list.push((s.device, s.counters.ops)),
            }
        }
        let layers: HashMap<(CgroupId, Device), Option<Device>> = devices
            .into_iter()
            .flat_map(|(cgroup, list)| {
                let layers = stacking.lower_layers(&list);
                list.into_iter().zip(layers).map(move |((device, _), layer)| ((cgroup, device), layer))
            })
            .collect();
        for s in &mut self.series {
            s.lower_layer_of = layers.get(&(s.cgroup, s.device)).copied().flatten();
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use super::*;

    /// A fixed table of owners and limits.
    #[derive(Default, Clone)]
    pub struct Table {
        pub owners: HashMap<CgroupId, CgroupOwner>,
        pub limits: HashMap<(CgroupId, Device), Limits>,
        /// Stall totals by path; `None`: the host keeps none.
        pub pressure: Option<HashMap<String, StallTotals>>,
    }

    impl Table {
        pub fn pod(mut self, id: u64, namespace: &str, pod: &str, container: &str) -> Self {
            // Distinct, valid ids derived from the cgroup id.
            let uid = format!("00000000-0000-4000-8000-{:012x}", id);
            let cid = format!("{:064x}", id);
            let mut w = CgroupOwner::outside_pods(format!("/kubepods/pod{uid}/{cid}"));
            w.namespace = Some(namespace.into());
            w.pod = Some(pod.into());
            w.pod_uid = Some(uid.parse().expect("valid uid"));
            w.container = Some(container.into());
            w.container_id = Some(cid.parse().expect("valid container id"));
            w.pod_name_from_api = true;
            w.container_name_from_api = true;
            self.owners.insert(CgroupId(id), w);
            self
        }

        pub fn cgroup(mut self, id: u64, path: &str) -> Self {
            self.owners.insert(CgroupId(id), CgroupOwner::outside_pods(path.into()));
            self
        }

        pub fn limit(mut self, id: u64, device: Device, limits: Limits) -> Self {
            self.limits.insert((CgroupId(id), device), limits);
            self
        }

        /// The host keeps stall information; `path` (a cgroup's or a
        /// pod's own) stalled this long so far.
        pub fn stalled(mut self, path: &str, some_us: u64, full_us: u64) -> Self {
            self.pressure.get_or_insert_with(HashMap::new).insert(path.into(), StallTotals { some_us, full_us });
            self
        }
    }

    impl Attribution for Table {
        fn owner(&self, id: CgroupId) -> Option<CgroupOwner> {
            self.owners.get(&id).cloned()
        }

        fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
            Some(self.limits.get(&(id, device)).copied().unwrap_or(Limits::UNLIMITED))
        }

        fn pressure_kept(&self) -> Result<(), &str> {
            self.pressure.as_ref().map(|_| ()).ok_or("the table keeps no stall information")
        }

        fn io_pressure(&self, cgroup: &str) -> Option<StallTotals> {
            self.pressure.as_ref()?.get(cgroup).copied()
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
        assert!(frame.series.iter().any(|s| s.owner.cgroup == "(removed) 9" && s.counters.ops == 3));
    }

    #[test]
    fn the_disk_under_a_loop_device_is_a_lower_layer_only_for_cgroups_that_used_the_loop_device() {
        let table = Table::default().pod(1, "ns", "web", "app").pod(2, "ns", "db", "pg");
        let (lo, disk) = (Device::new(7, 0), Device::new(8, 0));
        let ops = |n| IoCounters { ops: n, ..Default::default() };
        let key = |id, device| IoKey { cgroup: CgroupId(id), device, direction: Direction::Write };
        // web writes through the loop device; db writes to the disk itself.
        let counters = HashMap::from([(key(1, lo), ops(5)), (key(1, disk), ops(5)), (key(2, disk), ops(7))]);
        let snap = Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters };
        let mut frame = Frame::attribute(snap, SystemTime::now(), &table);
        frame.mark_layers(&Stacking::with(&[(lo, disk)]));
        let layer = |id, device| {
            frame.series.iter().find(|s| s.cgroup == CgroupId(id) && s.device == device).unwrap().lower_layer_of
        };
        assert_eq!((layer(1, lo), layer(1, disk), layer(2, disk)), (None, Some(lo), None));
    }

    /// Counts what the frame asks: limit files are real reads on a host.
    struct Counting(Table, std::cell::Cell<usize>, std::cell::Cell<usize>, std::cell::RefCell<Vec<String>>);

    impl Attribution for Counting {
        fn owner(&self, id: CgroupId) -> Option<CgroupOwner> {
            self.1.set(self.1.get() + 1);
            self.0.owner(id)
        }

        fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
            self.2.set(self.2.get() + 1);
            self.0.limits(id, device)
        }

        fn pressure_kept(&self) -> Result<(), &str> {
            self.0.pressure_kept()
        }

        fn io_pressure(&self, cgroup: &str) -> Option<StallTotals> {
            self.3.borrow_mut().push(cgroup.to_string());
            self.0.io_pressure(cgroup)
        }
    }

    #[test]
    fn each_cgroup_is_named_and_its_limits_read_once_per_device() {
        let who = Counting(
            Table::default().pod(7, "ns", "web", "app"),
            Default::default(),
            Default::default(),
            Default::default(),
        );
        let mut counters = HashMap::new();
        for device in [Device::new(7, 0), Device::new(8, 0)] {
            for direction in Direction::BOTH {
                counters.insert(IoKey { cgroup: CgroupId(7), device, direction }, IoCounters::default());
            }
        }
        let snap = Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters };
        let frame = Frame::attribute(snap, SystemTime::now(), &who);
        assert_eq!(frame.series.len(), 4);
        assert_eq!((who.1.get(), who.2.get()), (1, 2));
    }

    #[test]
    fn each_cgroup_and_each_pod_has_its_pressure_read_once() {
        let mut table = Table::default().pod(1, "ns", "web", "app").cgroup(3, "/system.slice");
        let app = table.owners[&CgroupId(1)].cgroup.clone();
        let pod = PodCgroup::pod_dir(&app).unwrap().to_string();
        // A second container of the same pod.
        let mut sidecar = table.owners[&CgroupId(1)].clone();
        sidecar.cgroup = format!("{pod}/{:064x}", 2);
        table.owners.insert(CgroupId(2), sidecar);
        let table = table.stalled(&app, 30, 10).stalled(&pod, 40, 10);
        let who = Counting(table, Default::default(), Default::default(), Default::default());
        let mut counters = HashMap::new();
        for id in [1, 2, 3, 9] {
            for direction in Direction::BOTH {
                let key = IoKey { cgroup: CgroupId(id), device: Device::new(7, 0), direction };
                counters.insert(key, IoCounters::default());
            }
        }
        let snap = Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters };
        let frame = Frame::attribute(snap, SystemTime::now(), &who);
        let mut asked = who.3.borrow().clone();
        asked.sort();
        let sidecar = who.0.owners[&CgroupId(2)].cgroup.clone();
        // The pod's own cgroup once for its two containers.
        let mut want = vec![app.clone(), pod.clone(), sidecar, "/system.slice".to_string()];
        want.sort();
        assert_eq!(asked, want, "the removed cgroup 9 has no path to read");
        assert_eq!(frame.stall(&pod), Some(&StallTotals { some_us: 40, full_us: 10 }));
        assert_eq!(frame.stall("/system.slice"), None, "unreadable: absent, not zero");

        let unkept = Frame::attribute(
            Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters: HashMap::new() },
            SystemTime::now(),
            &Table::default(),
        );
        assert_eq!(unkept.pressure, None);
    }
}
