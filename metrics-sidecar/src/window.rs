//! What happened between two frames, grouped the way people ask about it:
//! pod → container → device, and plain cgroups (system services, anything
//! that is not a pod) on their own.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use iogate_core::cgroup::paths::PodCgroup;
use iogate_core::{Device, Limits};

use crate::counters::{CgroupId, Direction, IoCounters, SourceKind};
use crate::frame::Frame;
use crate::host_cgroups::CgroupOwner;
use crate::pressure::StallTotals;
use crate::stacking::Stacking;

/// A pod (by namespace and name, the names users query) or a cgroup that
/// belongs to no pod (by path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    Pod { namespace: String, name: String },
    Cgroup(String),
}

impl GroupKey {
    pub fn of(owner: &CgroupOwner) -> GroupKey {
        let name = owner.pod.clone().or_else(|| owner.pod_uid.as_ref().map(|u| u.to_string()));
        match name {
            Some(name) => GroupKey::Pod { namespace: owner.namespace.clone().unwrap_or_default(), name },
            None => GroupKey::Cgroup(owner.cgroup.clone()),
        }
    }
}

/// Usage of one device by one container (or cgroup) over the window.
#[derive(Debug, Clone)]
pub struct DeviceUsage {
    pub device: Device,
    pub read: IoCounters,
    pub write: IoCounters,
    pub limits: Option<Limits>,
    /// The stacked device (loop, multipath) whose requests this device's I/O
    /// carries for the container; such usage is left out of group totals.
    pub lower_layer_of: Option<Device>,
}

#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub owner: CgroupOwner,
    pub devices: Vec<DeviceUsage>,
    /// Its tasks' I/O stall time in the window ([`Window::stall`]).
    pub pressure: Option<StallTotals>,
}

#[derive(Debug, Clone)]
pub struct GroupUsage {
    pub key: GroupKey,
    pub pod_uid: Option<String>,
    pub containers: Vec<ContainerUsage>,
    /// All containers and devices together, each request counted once (on
    /// the topmost device of a stack).
    pub read: IoCounters,
    pub write: IoCounters,
    /// The pod's I/O stall time in the window, from the pod's own cgroup
    /// (a plain cgroup's: its own) ([`Window::stall`]).
    pub pressure: Option<StallTotals>,
}

impl GroupUsage {
    pub fn direction(&self, d: Direction) -> &IoCounters {
        match d {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Window {
    pub seconds: f64,
    pub ended: SystemTime,
    pub source: SourceKind,
    /// The counters hold blk-throttle's wait ([`Frame::throttle_wait`]).
    pub throttle_wait: bool,
    /// The host keeps I/O stall information per cgroup ([`Frame::pressure`]).
    pub pressure: bool,
    pub groups: Vec<GroupUsage>,
}

impl Window {
    /// Usage between `earlier` and `later`. A series absent from `earlier`
    /// started inside the window (sources count from zero), so all of it
    /// counts.
    pub fn between(earlier: &Frame, later: &Frame, stacking: &Stacking) -> Window {
        let before: HashMap<(CgroupId, Device, Direction), &IoCounters> =
            earlier.series.iter().map(|s| ((s.cgroup, s.device, s.direction), &s.counters)).collect();
        let zero = IoCounters::default();

        // group → container (cgroup) → device
        let mut groups: BTreeMap<GroupKey, BTreeMap<CgroupId, ContainerUsage>> = BTreeMap::new();
        for s in &later.series {
            let prev = before.get(&(s.cgroup, s.device, s.direction)).copied().unwrap_or(&zero);
            let delta = s.counters.since(prev);
            let container =
                groups.entry(GroupKey::of(&s.owner)).or_default().entry(s.cgroup).or_insert_with(|| ContainerUsage {
                    owner: s.owner.clone(),
                    devices: Vec::new(),
                    pressure: Window::stall(earlier, later, &s.owner.cgroup),
                });
            let device = match container.devices.iter_mut().position(|d| d.device == s.device) {
                Some(i) => &mut container.devices[i],
                None => {
                    container.devices.push(DeviceUsage {
                        device: s.device,
                        read: IoCounters::default(),
                        write: IoCounters::default(),
                        limits: s.limits,
                        lower_layer_of: None,
                    });
                    container.devices.last_mut().expect("just pushed")
                }
            };
            match s.direction {
                Direction::Read => device.read.add(&delta),
                Direction::Write => device.write.add(&delta),
            }
        }

        let groups = groups
            .into_iter()
            .map(|(key, containers)| {
                let mut containers: Vec<ContainerUsage> = containers.into_values().collect();
                for c in &mut containers {
                    let usage: Vec<(Device, u64)> =
                        c.devices.iter().map(|d| (d.device, d.read.ops + d.write.ops)).collect();
                    for (d, layer) in c.devices.iter_mut().zip(stacking.lower_layers(&usage)) {
                        d.lower_layer_of = layer;
                    }
                }
                let mut read = IoCounters::default();
                let mut write = IoCounters::default();
                for d in containers.iter().flat_map(|c| &c.devices).filter(|d| d.lower_layer_of.is_none()) {
                    read.add(&d.read);
                    write.add(&d.write);
                }
                let pod_uid = containers.iter().find_map(|c| c.owner.pod_uid.as_ref().map(|u| u.to_string()));
                let own_cgroup = match &key {
                    GroupKey::Pod { .. } => containers.iter().find_map(|c| PodCgroup::pod_dir(&c.owner.cgroup)),
                    GroupKey::Cgroup(path) => Some(path.as_str()),
                };
                let pressure = own_cgroup.and_then(|path| Window::stall(earlier, later, path));
                GroupUsage { key, pod_uid, containers, read, write, pressure }
            })
            .collect();

        Window {
            seconds: later.taken_at.saturating_duration_since(earlier.taken_at).as_secs_f64(),
            ended: later.wall,
            source: later.source,
            throttle_wait: later.throttle_wait,
            pressure: later.pressure.is_some(),
            groups,
        }
    }

    /// The stall time of the cgroup at `path` between the two frames:
    /// `None` unless both read it. Unlike a counter series, a cgroup's
    /// first reading cannot count whole: the kernel's total runs from the
    /// cgroup's birth, which may be long before the sidecar or the
    /// cgroup's first I/O saw it, so that reading is the baseline.
    pub fn stall(earlier: &Frame, later: &Frame, path: &str) -> Option<StallTotals> {
        Some(later.stall(path)?.since(earlier.stall(path)?))
    }

    pub fn per_second(&self, count: u64) -> f64 {
        if self.seconds > 0.0 {
            count as f64 / self.seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::counters::{IoKey, Snapshot};
    use crate::frame::testing::Table;

    fn frame(at: Instant, table: &Table, entries: &[(u64, Direction, u64, u64)]) -> Frame {
        let mut counters = HashMap::new();
        for &(id, direction, ops, bytes) in entries {
            counters.insert(
                IoKey { cgroup: CgroupId(id), device: Device::new(7, 0), direction },
                IoCounters { ops, bytes, ..Default::default() },
            );
        }
        Frame::attribute(Snapshot { taken_at: at, source: SourceKind::Ebpf, counters }, SystemTime::now(), table)
    }

    #[test]
    fn containers_of_one_pod_add_up_and_plain_cgroups_stand_alone() {
        let table = Table::default()
            .pod(1, "shop", "web-0", "app")
            .pod(2, "shop", "web-0", "sidecar")
            .pod(3, "db", "pg-0", "postgres")
            .cgroup(4, "/system.slice/backup.service");
        let t0 = Instant::now();
        let a = frame(t0, &table, &[(1, Direction::Read, 100, 409_600), (2, Direction::Write, 10, 40_960)]);
        let b = frame(
            t0 + Duration::from_secs(2),
            &table,
            &[
                (1, Direction::Read, 300, 1_228_800),
                (2, Direction::Write, 50, 204_800),
                (3, Direction::Read, 40, 163_840),
                (4, Direction::Write, 8, 32_768),
            ],
        );
        let w = Window::between(&a, &b, &Stacking::default());
        assert!((w.seconds - 2.0).abs() < 1e-9);
        let web = w
            .groups
            .iter()
            .find(|g| g.key == GroupKey::Pod { namespace: "shop".into(), name: "web-0".into() })
            .unwrap();
        assert_eq!((web.read.ops, web.write.ops, web.containers.len()), (200, 40, 2));
        assert_eq!(w.per_second(web.read.ops), 100.0);
        // pg-0 appeared inside the window: everything it did counts.
        let pg = w.groups.iter().find(|g| matches!(&g.key, GroupKey::Pod { name, .. } if name == "pg-0")).unwrap();
        assert_eq!(pg.read.ops, 40);
        assert!(w.groups.iter().any(|g| g.key == GroupKey::Cgroup("/system.slice/backup.service".into())));
    }

    #[test]
    fn a_stacked_device_is_counted_once_in_the_totals() {
        let table = Table::default().pod(1, "shop", "web-0", "app");
        let (upper, lower) = (Device::new(7, 0), Device::new(254, 0));
        let t0 = Instant::now();
        let frame = |at, ops: u64| {
            let key = |device| IoKey { cgroup: CgroupId(1), device, direction: Direction::Read };
            let c = IoCounters { ops, bytes: ops * 4096, ..Default::default() };
            let counters = HashMap::from([(key(upper), c), (key(lower), c)]);
            Frame::attribute(Snapshot { taken_at: at, source: SourceKind::Ebpf, counters }, SystemTime::now(), &table)
        };
        let stacking = Stacking::with(&[(upper, lower)]);
        let w = Window::between(&frame(t0, 0), &frame(t0 + Duration::from_secs(1), 200), &stacking);
        let g = &w.groups[0];
        assert_eq!(g.read.ops, 200, "the loop device's requests, not twice");
        let devices = &g.containers[0].devices;
        assert_eq!(devices.len(), 2, "both devices stay visible");
        assert_eq!(devices.iter().find(|d| d.device == lower).unwrap().lower_layer_of, Some(upper));
    }

    #[test]
    fn stall_time_is_the_pods_own_and_needs_two_readings() {
        let table = Table::default().pod(1, "shop", "web-0", "app").pod(2, "shop", "web-0", "sidecar");
        let app = table.owners[&CgroupId(1)].cgroup.clone();
        let sidecar = table.owners[&CgroupId(2)].cgroup.clone();
        let pod = PodCgroup::pod_dir(&app).unwrap().to_string();
        let t0 = Instant::now();
        let entries = [(1, Direction::Read, 1, 4096), (2, Direction::Read, 1, 4096)];
        // The sidecar saw the pod before app's cgroup had a readable file.
        let first = Table { owners: table.owners.clone(), ..Default::default() }.stalled(&pod, 9_000_000, 1_000_000);
        let second =
            first.clone().stalled(&pod, 11_000_000, 2_000_000).stalled(&app, 500_000, 0).stalled(&sidecar, 0, 0);
        let a = frame(t0, &first, &entries);
        let b = frame(t0 + Duration::from_secs(2), &second, &entries);
        let w = Window::between(&a, &b, &Stacking::default());
        assert!(w.pressure);
        let web = &w.groups[0];
        // Two seconds of the pod's stall, not the 11 s since its birth.
        assert_eq!(web.pressure, Some(StallTotals { some_us: 2_000_000, full_us: 1_000_000 }));
        assert!(web.containers.iter().all(|c| c.pressure.is_none()), "a first reading is a baseline");
        let c = frame(t0 + Duration::from_secs(4), &second.clone().stalled(&app, 1_500_000, 0), &entries);
        let w = Window::between(&b, &c, &Stacking::default());
        let app_usage = w.groups[0].containers.iter().find(|c| c.owner.cgroup == app).unwrap();
        assert_eq!(app_usage.pressure.map(|p| p.some_us), Some(1_000_000));
        assert_eq!(w.groups[0].pressure, Some(StallTotals::default()), "the pod's file unchanged: no stall");
    }

    #[test]
    fn no_stall_information_where_the_host_keeps_none() {
        let table = Table::default().pod(1, "shop", "web-0", "app");
        let t0 = Instant::now();
        let entries = [(1, Direction::Read, 1, 4096)];
        let w = Window::between(
            &frame(t0, &table, &entries),
            &frame(t0 + Duration::from_secs(1), &table, &entries),
            &Stacking::default(),
        );
        assert!(!w.pressure);
        assert_eq!(w.groups[0].pressure, None);
    }
}
