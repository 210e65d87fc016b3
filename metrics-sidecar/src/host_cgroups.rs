//! From a [`CgroupId`] to *who*: the cgroup's path, its pod and container
//! with names when the API knows them, and the block-I/O limits in force.
//!
//! [`HostCgroups`] joins three sources: the [`CgroupTree`] (id → path,
//! rescanned by [`HostCgroups::discover`] when a snapshot names a cgroup it
//! does not know and at least every [`RESCAN_MAX_AGE`] to learn which
//! died), the path itself
//! ([`PodCgroup`]: pod UID and container id), and the [`PodDirectory`]
//! (UID → names). Each can be missing something without the others failing:
//! without the API, pods are named by UID; without a pod on the path, only
//! the cgroup path is known.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iogate_core::cgroup::paths::{ContainerId, PodCgroup, PodUid, QosClass};
use iogate_core::cgroup::CgroupError;
use iogate_core::{CgroupFs, Device, Limits};
use serde::Serialize;

use crate::cgroup_tree::CgroupTree;
use crate::counters::CgroupId;
use crate::limits_cache::{LimitsCache, LIMITS_MAX_AGE};
use crate::pods::PodDirectory;
use crate::pressure::StallTotals;

/// The longest the tree goes without a rescan. New cgroups do not wait for
/// it (a snapshot that names one rescans at once); dead ones do, so it is
/// how long a removed cgroup's last counts may still carry its pod's name.
/// A whole walk is 40 % of the sidecar's CPU at 1,000 pods when done every
/// 5 s tick (`perf record` under `iogate-sidecar-bench pods`).
pub const RESCAN_MAX_AGE: Duration = Duration::from_secs(30);

/// Who one cgroup's I/O belongs to.
///
/// Names come from the API when it knows the pod and container; otherwise
/// they fall back, and the `*_name_from_api` flags say so:
/// * `pod` falls back to the pod UID (and `namespace` stays `None`);
/// * `container` falls back to the container id. That also happens for the
///   pod's sandbox ("pause") container, which the API never lists, and for a
///   container younger than the pod's last status update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupOwner {
    /// The cgroup's path in its hierarchy (`/kubepods/burstable/pod…/…`).
    pub cgroup: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<PodUid>,
    pub qos: Option<QosClass>,
    pub container: Option<String>,
    pub container_id: Option<ContainerId>,
    pub pod_name_from_api: bool,
    pub container_name_from_api: bool,
}

impl CgroupOwner {
    /// A cgroup that belongs to no pod (a system service, the root, a test
    /// cgroup): known only by its path.
    pub fn outside_pods(cgroup: String) -> CgroupOwner {
        CgroupOwner {
            cgroup,
            namespace: None,
            pod: None,
            pod_uid: None,
            qos: None,
            container: None,
            container_id: None,
            pod_name_from_api: false,
            container_name_from_api: false,
        }
    }

    /// Combines what the path says with what the directory knows.
    pub fn resolve(cgroup: String, pods: &PodDirectory) -> CgroupOwner {
        let Some(parsed) = PodCgroup::parse(&cgroup) else {
            return CgroupOwner::outside_pods(cgroup);
        };
        let names = pods.pod(&parsed.pod_uid);
        let api_container =
            names.as_ref().zip(parsed.container_id.as_ref()).and_then(|(n, id)| n.containers.get(id).cloned());
        CgroupOwner {
            cgroup,
            namespace: names.as_ref().map(|n| n.namespace.clone()),
            pod: Some(names.as_ref().map_or_else(|| parsed.pod_uid.to_string(), |n| n.name.clone())),
            pod_uid: Some(parsed.pod_uid),
            qos: parsed.qos,
            container_name_from_api: api_container.is_some(),
            container: api_container.or_else(|| parsed.container_id.as_ref().map(ContainerId::to_string)),
            container_id: parsed.container_id,
            pod_name_from_api: names.is_some(),
        }
    }
}

/// Everything needed to name cgroups on this host.
#[derive(Debug)]
pub struct HostCgroups {
    fs: CgroupFs,
    tree: CgroupTree,
    scanned_at: Instant,
    /// Set when a limits read finds a known cgroup's directory gone: the
    /// next [`HostCgroups::discover`] rescans.
    saw_one_die: AtomicBool,
    /// Ids that [`HostCgroups::discover`] asked about and its last scan
    /// could not find (dead cgroups whose counts are reported until the
    /// source forgets them): a scan for them again would find nothing new.
    missing_after_scan: HashSet<CgroupId>,
    limits: Mutex<LimitsCache>,
    pods: PodDirectory,
    /// Cgroups whose limits could not be read and were reported, so a
    /// broken cgroup costs one log line, not one per scrape.
    reported: Mutex<HashSet<CgroupId>>,
    /// Whether the kernel keeps stall information per cgroup here, read
    /// once: a kernel's PSI is on or off from boot.
    pressure_kept: Result<(), String>,
    /// Paths whose `io.pressure` could not be parsed, reported once.
    pressure_reported: Mutex<HashSet<String>>,
}

impl HostCgroups {
    /// Scans `fs`'s hierarchy (the one that carries block I/O, from
    /// `CgroupFs::detect`) once.
    pub fn new(fs: CgroupFs, pods: PodDirectory) -> io::Result<HostCgroups> {
        let tree = scan(&fs)?;
        let pressure_kept = fs.io_pressure_kept();
        Ok(HostCgroups {
            pressure_kept,
            pressure_reported: Mutex::new(HashSet::new()),
            fs,
            tree,
            scanned_at: Instant::now(),
            saw_one_die: AtomicBool::new(false),
            missing_after_scan: HashSet::new(),
            limits: Mutex::new(LimitsCache::new(LIMITS_MAX_AGE)),
            pods,
            reported: Mutex::new(HashSet::new()),
        })
    }

    /// Rescans the hierarchy: new cgroups become known, dead ones unknown.
    /// On error the previous tree stays.
    pub fn refresh(&mut self) -> io::Result<()> {
        self.tree = scan(&self.fs)?;
        self.scanned_at = Instant::now();
        *self.saw_one_die.get_mut() = false;
        let tree = &self.tree;
        self.reported.get_mut().unwrap_or_else(|p| p.into_inner()).retain(|id| tree.contains(*id));
        self.limits.get_mut().unwrap_or_else(|p| p.into_inner()).retain(|id| tree.contains(id));
        Ok(())
    }

    /// The one place that decides to rescan, once per tick, shown the ids
    /// the tick's snapshot names: at once when one is unknown and was not
    /// already missed by the last scan (a cgroup born since, so that its
    /// first counts carry its name), and otherwise when the tree is older
    /// than [`RESCAN_MAX_AGE`] or a cgroup in it was seen to die.
    pub fn discover(&mut self, ids: &mut dyn Iterator<Item = CgroupId>) -> io::Result<()> {
        let unknown: Vec<CgroupId> = ids.filter(|id| *id != CgroupId::NONE && !self.tree.contains(*id)).collect();
        let born = unknown.iter().any(|id| !self.missing_after_scan.contains(id));
        let due = *self.saw_one_die.get_mut() || self.scanned_at.elapsed() >= RESCAN_MAX_AGE;
        if born || due {
            self.refresh()?;
            let tree = &self.tree;
            self.missing_after_scan = unknown.into_iter().filter(|id| !tree.contains(*id)).collect();
        }
        Ok(())
    }

    /// Who the cgroup belongs to; `None` when the id is unknown (a cgroup
    /// that died, or one born since the last refresh).
    pub fn owner(&self, id: CgroupId) -> Option<CgroupOwner> {
        let rel = self.tree.path(id)?;
        Some(CgroupOwner::resolve(self.hierarchy_path(rel), &self.pods))
    }

    /// The limits in force on `device` in that cgroup: `Limits::UNLIMITED`
    /// when none are set (or the kernel has no throttling files there),
    /// `None` when the cgroup is unknown or gone, or its files unreadable
    /// (logged once per cgroup).
    /// Read at most once per [`LIMITS_MAX_AGE`] ([`LimitsCache`]).
    pub fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
        let rel = self.tree.path(id)?;
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        cache.get_or_read(id, device, Instant::now(), || self.read_limits(id, rel, device))
    }

    fn read_limits(&self, id: CgroupId, rel: &str, device: Device) -> Option<Limits> {
        let dir = self.fs.cgroup_at(rel);
        match self.fs.read_limits(&dir, device) {
            Ok(limits) => Some(limits),
            // Without the io controller enabled for it, a v2 cgroup has no
            // io.max and nothing can throttle it.
            Err(CgroupError::NoIoMax { .. }) => Some(Limits::UNLIMITED),
            Err(CgroupError::Read { ref source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                // Files missing in a live cgroup: a kernel without
                // CONFIG_BLK_DEV_THROTTLING. A missing directory: it died.
                let alive = dir.as_path().is_dir();
                if !alive {
                    self.saw_one_die.store(true, Ordering::Relaxed);
                }
                alive.then_some(Limits::UNLIMITED)
            }
            Err(e) => {
                let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
                if reported.insert(id) {
                    tracing::warn!("cannot read the block-I/O limits of cgroup {}: {e}", self.hierarchy_path(rel));
                }
                None
            }
        }
    }

    /// Whether [`HostCgroups::io_pressure`] answers: cgroup v2 with PSI
    /// on; the reason where not.
    pub fn pressure_kept(&self) -> Result<(), &str> {
        self.pressure_kept.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The stall totals of the cgroup at `cgroup`, a hierarchy path (a
    /// container's, or its pod's own cgroup above it); `None` where PSI is
    /// not kept, the cgroup is gone or lies above a namespaced mount, or
    /// its file does not parse (logged once per path).
    pub fn io_pressure(&self, cgroup: &str) -> Option<StallTotals> {
        self.pressure_kept.as_ref().ok()?;
        let root = self.fs.root.trim_end_matches('/');
        let rel = cgroup.strip_prefix(root).filter(|rel| rel.is_empty() || rel.starts_with('/'))?;
        match self.fs.read_io_pressure(&self.fs.cgroup_at(rel)) {
            Ok(totals) => totals.as_ref().map(StallTotals::of),
            Err(CgroupError::Read { ref source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let mut reported = self.pressure_reported.lock().unwrap_or_else(|p| p.into_inner());
                if reported.insert(cgroup.to_string()) {
                    tracing::warn!("cannot read the I/O pressure of cgroup {cgroup}: {e}");
                }
                None
            }
        }
    }

    pub fn pods(&self) -> &PodDirectory {
        &self.pods
    }

    pub fn tree(&self) -> &CgroupTree {
        &self.tree
    }

    /// A path relative to the mount as the whole hierarchy names it: the
    /// same unless the mount shows a cgroup namespace's subtree, whose
    /// prefix the pod path may need (`/kubepods/…/pod<uid>` mounted as `/`).
    fn hierarchy_path(&self, rel: &str) -> String {
        let root = self.fs.root.trim_end_matches('/');
        if rel == "/" {
            if root.is_empty() {
                "/".to_string()
            } else {
                root.to_string()
            }
        } else {
            format!("{root}{rel}")
        }
    }
}

fn scan(fs: &CgroupFs) -> io::Result<CgroupTree> {
    CgroupTree::scan(&fs.mount)
        .map_err(|e| io::Error::new(e.kind(), format!("scanning the cgroup hierarchy at {}: {e}", fs.mount.display())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use iogate_core::CgroupVersion;
    use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;

    use super::*;

    const UID: &str = "6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    const UID_SYSTEMD: &str = "6f3a1b2c_0d4e_4f5a_8b6c_7d8e9f0a1b2c";
    const APP: &str = "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7";
    const PAUSE: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn id(p: &Path) -> CgroupId {
        CgroupId(std::fs::symlink_metadata(p).unwrap().ino())
    }

    fn web_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(UID.into()),
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    container_id: Some(format!("containerd://{APP}")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A v1 blkio hierarchy with one pod (app + pause) and one system cgroup.
    fn v1_host() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for dir in [format!("kubepods/burstable/pod{UID}/{APP}"), format!("kubepods/burstable/pod{UID}/{PAUSE}")] {
            std::fs::create_dir_all(t.path().join(dir)).unwrap();
        }
        std::fs::create_dir_all(t.path().join("system.slice")).unwrap();
        t
    }

    fn host(t: &tempfile::TempDir, version: CgroupVersion, pods: PodDirectory) -> HostCgroups {
        HostCgroups::new(CgroupFs::new(version, t.path()), pods).unwrap()
    }

    #[test]
    fn names_from_the_api_when_it_knows_the_pod() {
        let t = v1_host();
        let (pods, mut feed) = PodDirectory::by_hand();
        feed.apply(Event::Apply(web_pod()));
        let ids = host(&t, CgroupVersion::V1, pods);
        let app = ids.owner(id(&t.path().join(format!("kubepods/burstable/pod{UID}/{APP}")))).unwrap();
        assert_eq!(
            app,
            CgroupOwner {
                cgroup: format!("/kubepods/burstable/pod{UID}/{APP}"),
                namespace: Some("shop".into()),
                pod: Some("web-0".into()),
                pod_uid: Some(UID.parse().unwrap()),
                qos: Some(QosClass::Burstable),
                container: Some("app".into()),
                container_id: Some(APP.parse().unwrap()),
                pod_name_from_api: true,
                container_name_from_api: true,
            }
        );
        // The sandbox is not in the pod's statuses: named by its id.
        let pause = ids.owner(id(&t.path().join(format!("kubepods/burstable/pod{UID}/{PAUSE}")))).unwrap();
        assert_eq!((pause.pod.as_deref(), pause.container.as_deref()), (Some("web-0"), Some(PAUSE)));
        assert!(pause.pod_name_from_api && !pause.container_name_from_api);
    }

    #[test]
    fn plain_ids_without_the_api() {
        let t = v1_host();
        let ids = host(&t, CgroupVersion::V1, PodDirectory::not_connected("no cluster"));
        let app = ids.owner(id(&t.path().join(format!("kubepods/burstable/pod{UID}/{APP}")))).unwrap();
        assert_eq!(app.namespace, None);
        assert_eq!(app.pod.as_deref(), Some(UID));
        assert_eq!(app.container.as_deref(), Some(APP));
        assert!(!app.pod_name_from_api && !app.container_name_from_api);
        let pod = ids.owner(id(&t.path().join(format!("kubepods/burstable/pod{UID}")))).unwrap();
        assert_eq!((pod.pod.as_deref(), pod.container), (Some(UID), None));
    }

    #[test]
    fn non_pod_cgroups_carry_only_their_path() {
        let t = v1_host();
        let ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        let sys = ids.owner(id(&t.path().join("system.slice"))).unwrap();
        assert_eq!(sys.cgroup, "/system.slice");
        assert_eq!((&sys.pod, &sys.pod_uid, &sys.container, &sys.container_id), (&None, &None, &None, &None));
        assert_eq!(ids.owner(id(t.path())).unwrap().cgroup, "/");
        let json = serde_json::to_value(&sys).unwrap();
        assert_eq!(json["cgroup"], "/system.slice");
        assert!(json["pod"].is_null());
    }

    #[test]
    fn dead_cgroups_become_unknown_at_refresh() {
        let t = v1_host();
        let mut ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        let dir = t.path().join(format!("kubepods/burstable/pod{UID}/{APP}"));
        let app = id(&dir);
        assert!(ids.owner(app).is_some());
        std::fs::remove_dir(&dir).unwrap();
        assert!(ids.owner(app).is_some(), "known until the next refresh");
        ids.refresh().unwrap();
        assert_eq!(ids.owner(app), None);
        assert_eq!(ids.limits(app, Device::new(8, 0)), None);
    }

    #[test]
    fn a_cgroup_born_since_the_scan_is_known_in_the_tick_that_first_counts_it() {
        let t = v1_host();
        let mut ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        let app = id(&t.path().join(format!("kubepods/burstable/pod{UID}/{APP}")));
        let born = t.path().join(format!("kubepods/burstable/pod{UID}/{}", "ab".repeat(32)));
        std::fs::create_dir(&born).unwrap();
        let new = id(&born);
        assert_eq!(ids.owner(new), None, "not scanned yet");
        ids.discover(&mut [app, CgroupId::NONE, new].into_iter()).unwrap();
        assert_eq!(ids.owner(new).unwrap().container_id.unwrap().to_string(), "ab".repeat(32));
    }

    #[test]
    fn known_cgroups_cost_no_rescan_until_one_is_seen_to_die() {
        let t = v1_host();
        let mut ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        let dir = t.path().join(format!("kubepods/burstable/pod{UID}/{APP}"));
        let app = id(&dir);
        std::fs::remove_dir(&dir).unwrap();
        // Every id known: no walk, so the dead one keeps its name...
        ids.discover(&mut [app].into_iter()).unwrap();
        assert!(ids.owner(app).is_some(), "no rescan while the tree is young and nothing died");
        // ...until reading its limits finds the directory gone.
        assert_eq!(ids.limits(app, Device::new(8, 0)), None);
        ids.discover(&mut [app].into_iter()).unwrap();
        assert_eq!(ids.owner(app), None);
    }

    #[test]
    fn a_cgroup_the_last_scan_missed_costs_no_further_scan() {
        let t = v1_host();
        let mut ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        // A dead cgroup's id, which no directory has. Not one removed here:
        // the kernel never hands a cgroup id out twice, but ext4 reuses a
        // removed directory's inode number for the next one made, which
        // then made this test pass or fail by chance.
        let app = CgroupId(u64::MAX - 7);
        // Its counts are still in the snapshot: the first time, a scan
        // looks for it (it might have been born since).
        let born = t.path().join("system.slice/born-first");
        std::fs::create_dir(&born).unwrap();
        ids.discover(&mut [app].into_iter()).unwrap();
        assert!(ids.owner(id(&born)).is_some(), "the first ask scans");
        // The next tick asks again: that scan missed it, so no new one.
        let later = t.path().join("system.slice/born-later");
        std::fs::create_dir(&later).unwrap();
        ids.discover(&mut [app].into_iter()).unwrap();
        assert_eq!(ids.owner(id(&later)), None, "no scan for a cgroup the last scan missed");
        // A cgroup the tree has never seen still scans at once.
        ids.discover(&mut [app, id(&later)].into_iter()).unwrap();
        assert!(ids.owner(id(&later)).is_some());
    }

    #[test]
    fn v1_limits_in_force_per_device() {
        let t = v1_host();
        let app_dir = t.path().join(format!("kubepods/burstable/pod{UID}/{APP}"));
        std::fs::write(app_dir.join("blkio.throttle.read_iops_device"), "8:0 500\n259:0 900\n").unwrap();
        std::fs::write(app_dir.join("blkio.throttle.write_bps_device"), "8:0 1048576\n").unwrap();
        std::fs::write(app_dir.join("blkio.throttle.write_iops_device"), "").unwrap();
        std::fs::write(app_dir.join("blkio.throttle.read_bps_device"), "").unwrap();
        let ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        let app = id(&app_dir);
        let l = ids.limits(app, Device::new(8, 0)).unwrap();
        assert_eq!((l.read_iops, l.write_bps, l.write_iops), (Some(500), Some(1_048_576), None));
        assert_eq!(ids.limits(app, Device::new(259, 0)).unwrap().read_iops, Some(900));
        assert_eq!(ids.limits(app, Device::new(7, 0)), Some(Limits::UNLIMITED));
        // No throttle files at all (kernel without throttling): unlimited.
        assert_eq!(ids.limits(id(&t.path().join("system.slice")), Device::new(8, 0)), Some(Limits::UNLIMITED));
    }

    #[test]
    fn v2_limits_and_unreadable_files() {
        let t = tempfile::tempdir().unwrap();
        let rel = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice");
        let app_dir = t.path().join(format!("{rel}/cri-containerd-{APP}.scope"));
        std::fs::create_dir_all(&app_dir).unwrap();
        std::fs::write(app_dir.join("io.max"), "8:0 rbps=max wbps=2097152 riops=max wiops=300\n").unwrap();
        std::fs::write(t.path().join(&rel).join("io.max"), "8:0 garbage\n").unwrap();
        let ids = host(&t, CgroupVersion::V2, PodDirectory::by_hand().0);
        let l = ids.limits(id(&app_dir), Device::new(8, 0)).unwrap();
        assert_eq!((l.write_bps, l.write_iops, l.read_iops), (Some(2_097_152), Some(300), None));
        // The root has no io.max: nothing throttles it.
        assert_eq!(ids.limits(id(t.path()), Device::new(8, 0)), Some(Limits::UNLIMITED));
        // A malformed file is an error: no limits claimed, reported once.
        let pod = id(&t.path().join(&rel));
        assert_eq!(ids.limits(pod, Device::new(8, 0)), None);
        assert_eq!(ids.limits(pod, Device::new(8, 0)), None);
        assert_eq!(ids.reported.lock().unwrap().len(), 1);
        let w = ids.owner(id(&app_dir)).unwrap();
        assert_eq!((w.pod.as_deref(), w.container.as_deref()), (Some(UID), Some(APP)));
    }

    #[test]
    fn this_process_cgroup_on_this_host() {
        // The real kernfs: a directory's inode is the id the kernel reports.
        let fs = CgroupFs::detect(Default::default()).expect("a host with a block-I/O hierarchy");
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let want = match fs.version {
            CgroupVersion::V1 => ours.lines().find_map(|l| l.split(':').nth(2).filter(|_| l.contains("blkio"))),
            CgroupVersion::V2 => ours.lines().find_map(|l| l.strip_prefix("0::")),
        }
        .unwrap()
        .to_string();
        let ids = HostCgroups::new(fs.clone(), PodDirectory::not_connected("test")).unwrap();
        let dir = fs.mount.join(want.trim_start_matches('/'));
        let us = id(&dir);
        assert_eq!(ids.owner(us).unwrap().cgroup, want);
        assert!(ids.limits(us, Device::new(8, 0)).is_some());
    }

    #[test]
    fn a_namespaced_mount_keeps_the_pod_in_the_path() {
        // Inside a cgroup namespace the mount's root is the pod's own cgroup.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join(APP)).unwrap();
        let mountinfo = format!(
            "38 31 0:35 /kubepods/besteffort/pod{UID} {} rw,relatime - cgroup cgroup rw,blkio\n",
            t.path().display()
        );
        let fs = CgroupFs::from_mountinfo(&mountinfo, Default::default(), |_| String::new()).unwrap();
        let ids = HostCgroups::new(fs, PodDirectory::by_hand().0).unwrap();
        let w = ids.owner(id(&t.path().join(APP))).unwrap();
        assert_eq!(w.cgroup, format!("/kubepods/besteffort/pod{UID}/{APP}"));
        assert_eq!(w.container_id, Some(APP.parse().unwrap()));
        assert_eq!(ids.owner(id(t.path())).unwrap().cgroup, format!("/kubepods/besteffort/pod{UID}"));
    }

    fn pressure_file(dir: &Path, some_us: u64, full_us: u64) {
        std::fs::write(
            dir.join("io.pressure"),
            format!(
                "some avg10=0.00 avg60=0.00 avg300=0.00 total={some_us}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={full_us}\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn v2_pressure_of_a_container_and_its_pod() {
        let t = v1_host();
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("pressure")).unwrap();
        std::fs::write(proc.path().join("pressure/io"), "").unwrap();
        let pod = t.path().join(format!("kubepods/burstable/pod{UID}"));
        pressure_file(&pod.join(APP), 3_000_000, 1_000_000);
        pressure_file(&pod, 4_000_000, 1_000_000);
        let fs = CgroupFs::new(CgroupVersion::V2, t.path()).with_proc(proc.path());
        let ids = HostCgroups::new(fs, PodDirectory::by_hand().0).unwrap();
        assert_eq!(ids.pressure_kept(), Ok(()));
        let app = ids.owner(id(&pod.join(APP))).unwrap().cgroup;
        assert_eq!(ids.io_pressure(&app), Some(StallTotals { some_us: 3_000_000, full_us: 1_000_000 }));
        let pod_dir = PodCgroup::pod_dir(&app).unwrap();
        assert_eq!(ids.io_pressure(pod_dir).map(|p| p.some_us), Some(4_000_000));
        // Gone, never there, or unparsable: no answer, never zeros.
        assert_eq!(ids.io_pressure(&format!("{pod_dir}/{PAUSE}")), None);
        assert_eq!(ids.io_pressure("/gone"), None);
        std::fs::write(pod.join("io.pressure"), "some total=x\n").unwrap();
        assert_eq!(ids.io_pressure(pod_dir), None);
        // Without PSI (or on v1), nothing is read, and the reason is kept.
        let ids = host(&t, CgroupVersion::V1, PodDirectory::by_hand().0);
        assert!(ids.pressure_kept().unwrap_err().contains("cgroup v1"));
        assert_eq!(ids.io_pressure(&app), None);
    }
}
