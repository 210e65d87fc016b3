//! The cgroup file formats of the block-I/O controllers, read and written in
//! this one place, one file per controller per version:
//!
//! * [`v1::blkio`], `blkio.throttle.*_device` (limits, one file per knob)
//!   and `blkio.throttle.io_serviced` / `io_service_bytes` (statistics);
//! * [`v2::io`], `io.max` (limits, all knobs of a device on one line),
//!   `io.stat` (statistics) and `io.pressure` (stall information);
//! * [`systemd`], the systemd driver's slice and scope names and its
//!   `slice:prefix:name` cgroupsPath;
//! * [`paths`], the pod UID and container id a cgroup's path carries;
//! * [`mountinfo`], the mounts the hierarchy is found among.
//!
//! [`CgroupFs`] is the hierarchy that carries block I/O on this host, found
//! from the mount table, and what callers use: it reads and writes a
//! cgroup's [`DeviceLimits`] and reads its [`IoStat`]s without callers
//! seeing the version.
//!
//! Limit writes are idempotent: current values are read first and only knobs
//! that differ are written, so running twice changes nothing and the
//! returned [`Change`] list says exactly what the run did.

mod files;
pub mod mountinfo;
pub mod paths;
mod stat;
pub mod systemd;
pub mod v1;
pub mod v2;
mod version;

use std::fmt;
use std::path::{Path, PathBuf};

pub use files::CgroupError;
pub use stat::{Direction, IoStat};
pub use version::{CgroupMode, CgroupVersion};

use crate::device::{Device, DeviceLimits};
use crate::limits::{Knob, Limits};

/// A container's cgroup directory in the hierarchy that carries block I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CgroupPath(dir.into())
    }
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// One knob of one device that a write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub device: Device,
    pub knob: Knob,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
        write!(f, "{} {} {} -> {}", self.device, self.knob.io_max_key(), show(self.from), show(self.to))
    }
}

/// The mounted hierarchy that carries block I/O on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    pub version: CgroupVersion,
    /// Where the hierarchy is mounted (`/sys/fs/cgroup/blkio`, `/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// The cgroup the mount shows as its root (`/` unless mounted from
    /// inside a cgroup namespace).
    pub root: String,
    proc: PathBuf,
}

impl CgroupFs {
    pub fn new(version: CgroupVersion, mount: impl Into<PathBuf>) -> Self {
        CgroupFs { version, mount: mount.into(), root: "/".into(), proc: PathBuf::from("/proc") }
    }

    /// Uses another `/proc` (tests fake `/proc/<pid>/cgroup`).
    pub fn with_proc(mut self, proc: impl Into<PathBuf>) -> Self {
        self.proc = proc.into();
        self
    }

    /// Finds the block-I/O hierarchy from this process's mount table.
    pub fn detect(mode: CgroupMode) -> Result<Self, CgroupError> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        Self::from_mountinfo(&text, mode, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// v1 `blkio` wins in `auto` mode: on a hybrid host the kernel binds the
    /// controller to v1, and a cgroup2 mount then cannot throttle at all.
    pub fn from_mountinfo(
        mountinfo: &str,
        mode: CgroupMode,
        controllers_of: impl Fn(&Path) -> String,
    ) -> Result<Self, CgroupError> {
        let mut v1 = None;
        let mut v2 = None;
        let mut seen = Vec::new();
        for mount in mountinfo::mounts(mountinfo) {
            let (root, mount_point, superopts) = (mount.root, mount.mount_point, mount.super_options);
            match mount.fstype {
                "cgroup" => {
                    seen.push(format!("cgroup v1 at {} ({superopts})", mount_point.display()));
                    if v1.is_none() && superopts.split(',').any(|o| o == "blkio") {
                        v1 = Some((mount_point, root.to_string()));
                    }
                }
                "cgroup2" => {
                    let ctrls = controllers_of(&mount_point);
                    seen.push(format!("cgroup2 at {} (controllers: {})", mount_point.display(), ctrls.trim()));
                    if v2.is_none() && ctrls.split_whitespace().any(|c| c == "io") {
                        v2 = Some((mount_point, root.to_string()));
                    }
                }
                _ => {}
            }
        }
        let found = if seen.is_empty() { "no cgroup mounts".to_string() } else { seen.join("; ") };
        let pick = |version, m: Option<(PathBuf, String)>, expected| {
            m.map(|(mount, root)| CgroupFs { version, mount, root, proc: PathBuf::from("/proc") })
                .ok_or(CgroupError::NoIoController { expected, found: found.clone() })
        };
        const V1: &str = "a cgroup v1 mount with the blkio controller";
        const V2: &str = "a cgroup2 mount whose cgroup.controllers lists io";
        match mode {
            CgroupMode::Only(CgroupVersion::V1) => pick(CgroupVersion::V1, v1, V1),
            CgroupMode::Only(CgroupVersion::V2) => pick(CgroupVersion::V2, v2, V2),
            CgroupMode::Auto => match v1 {
                Some(m) => pick(CgroupVersion::V1, Some(m), V1),
                None => pick(
                    CgroupVersion::V2,
                    v2,
                    "a cgroup v1 blkio mount or a cgroup2 mount whose cgroup.controllers lists io",
                ),
            },
        }
    }

    /// The block-I/O cgroup of a running process, whichever cgroup driver
    /// (cgroupfs or systemd) named it.
    pub fn cgroup_of_pid(&self, pid: u32) -> Result<CgroupPath, CgroupError> {
        let path = self.proc.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path: path.clone(), source })?;
        let (expected, rel) = match self.version {
            CgroupVersion::V1 => (
                "hierarchy-id:...blkio...:/path",
                text.lines().find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, ctrls, p) = (parts.next()?, parts.next()?, parts.next()?);
                    ctrls.split(',').any(|c| c == "blkio").then_some(p)
                }),
            ),
            CgroupVersion::V2 => ("0::/path", text.lines().find_map(|l| l.strip_prefix("0::"))),
        };
        let rel = rel.ok_or_else(|| CgroupError::NoCgroupForPid {
            pid,
            version: self.version,
            path: path.clone(),
            expected,
            found: text.trim().to_string(),
        })?;
        let inside = if self.root == "/" {
            Some(rel)
        } else {
            rel.strip_prefix(self.root.as_str()).filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let inside = inside.ok_or_else(|| CgroupError::OutsideMount {
            pid,
            version: self.version,
            cgroup: rel.to_string(),
            mount: self.mount.clone(),
            root: self.root.clone(),
        })?;
        let inside = inside.trim_start_matches('/');
        // A limit on the root cgroup would throttle every process on the
        // host; no container lives there, so this is always a mistake.
        if inside.is_empty() {
            return Err(CgroupError::RootCgroup { pid, version: self.version });
        }
        Ok(CgroupPath(self.mount.join(inside)))
    }

    /// The cgroup directory for a path relative to the hierarchy root, as in
    /// an OCI spec's `linux.cgroupsPath` with the cgroupfs driver.
    pub fn cgroup_at(&self, relative: &str) -> CgroupPath {
        CgroupPath(self.mount.join(relative.trim_start_matches('/')))
    }

    /// Current limits of one device in a cgroup.
    pub fn read_limits(&self, cg: &CgroupPath, device: Device) -> Result<Limits, CgroupError> {
        match self.version {
            CgroupVersion::V1 => v1::blkio::read_limits(&cg.0, device),
            CgroupVersion::V2 => Ok(v2::io::read_io_max(&cg.0)?
                .into_iter()
                .find(|l| l.device == device)
                .map_or(Limits::UNLIMITED, |l| l.limits)),
        }
    }

    /// Makes the cgroup carry exactly these limits for these devices;
    /// returns what had to change (empty when it already did).
    pub fn write_limits(&self, cg: &CgroupPath, wanted: &[DeviceLimits]) -> Result<Vec<Change>, CgroupError> {
        let mut changes = Vec::new();
        for dl in wanted {
            let current = self.read_limits(cg, dl.device)?;
            let diff: Vec<Change> = Knob::ALL
                .into_iter()
                .filter(|k| current.get(*k) != dl.limits.get(*k))
                .map(|knob| Change { device: dl.device, knob, from: current.get(knob), to: dl.limits.get(knob) })
                .collect();
            if diff.is_empty() {
                continue;
            }
            match self.version {
                CgroupVersion::V1 => {
                    for c in &diff {
                        v1::blkio::write_limit(&cg.0, c.device, c.knob, c.to)?;
                    }
                }
                // io.max takes one device per write, all keys at once.
                CgroupVersion::V2 => v2::io::write_io_max(&cg.0, dl)?,
            }
            changes.extend(diff);
        }
        Ok(changes)
    }

    /// The cgroup's requests and bytes per device, from its controller's
    /// statistics; empty when it keeps none (a vanished cgroup, no io
    /// controller enabled for it on v2).
    pub fn read_io_stats(&self, cg: &CgroupPath) -> Result<Vec<IoStat>, CgroupError> {
        match self.version {
            CgroupVersion::V1 => v1::blkio::read_stats(&cg.0),
            CgroupVersion::V2 => v2::io::read_stats(&cg.0),
        }
    }

    /// The cgroup's I/O pressure stall totals; `None` on cgroup v1, which
    /// keeps none per cgroup, and where the file is missing (a vanished
    /// cgroup, a kernel without PSI or booted with `psi=0`).
    pub fn read_io_pressure(&self, cg: &CgroupPath) -> Result<Option<v2::io::IoPressure>, CgroupError> {
        match self.version {
            CgroupVersion::V1 => Ok(None),
            CgroupVersion::V2 => v2::io::read_io_pressure(&cg.0),
        }
    }

    /// Whether this host's kernel keeps pressure stall information per
    /// cgroup of this hierarchy: `Err` with the reason where it does not.
    pub fn io_pressure_kept(&self) -> Result<(), String> {
        if self.version == CgroupVersion::V1 {
            return Err(format!(
                "the block-I/O hierarchy at {} is cgroup v1, which keeps no pressure stall information per cgroup \
                 (io.pressure is a cgroup v2 file)",
                self.mount.display()
            ));
        }
        let system = self.proc.join("pressure/io");
        match std::fs::read_to_string(&system) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "the kernel keeps no pressure stall information: reading {} failed ({e}); a kernel built without \
                 CONFIG_PSI, or booted with psi=0 or without psi=1 where CONFIG_PSI_DEFAULT_DISABLED is set \
                 (Debian's kernels)",
                system.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    fn ctrls(io_on: &'static str) -> impl Fn(&Path) -> String {
        move |p: &Path| if p == Path::new(io_on) { "cpu io memory".into() } else { "hugetlb".into() }
    }

    #[test]
    fn hybrid_host_uses_v1_blkio() {
        let fs = CgroupFs::from_mountinfo(HYBRID, CgroupMode::Auto, ctrls("/nowhere")).unwrap();
        assert_eq!(fs.version, CgroupVersion::V1);
        assert_eq!(fs.mount, Path::new("/sys/fs/cgroup/blkio"));
        let e = CgroupFs::from_mountinfo(HYBRID, CgroupMode::Only(CgroupVersion::V2), ctrls("/nowhere")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("expected a cgroup2 mount whose cgroup.controllers lists io"), "{msg}");
        assert!(msg.contains("cgroup2 at /sys/fs/cgroup/unified (controllers: hugetlb)"), "{msg}");
    }

    #[test]
    fn pure_v2_host_uses_io_max() {
        let fs = CgroupFs::from_mountinfo(PURE_V2, CgroupMode::Auto, ctrls("/sys/fs/cgroup")).unwrap();
        assert_eq!(fs.version, CgroupVersion::V2);
        assert_eq!(fs.mount, Path::new("/sys/fs/cgroup"));
    }

    fn fake_proc(pid: u32, content: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(pid.to_string())).unwrap();
        std::fs::write(t.path().join(format!("{pid}/cgroup")), content).unwrap();
        t
    }

    #[test]
    fn finds_cgroup_of_pid_for_both_drivers() {
        let p = fake_proc(42, "7:blkio:/kubepods/besteffort/podabc/0123\n4:memory:/x\n0::/\n");
        let fs = CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio").with_proc(p.path());
        assert_eq!(
            fs.cgroup_of_pid(42).unwrap().as_path(),
            Path::new("/sys/fs/cgroup/blkio/kubepods/besteffort/podabc/0123")
        );
        let p = fake_proc(7, "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope\n");
        let fs = CgroupFs::new(CgroupVersion::V2, "/sys/fs/cgroup").with_proc(p.path());
        assert_eq!(
            fs.cgroup_of_pid(7).unwrap().as_path(),
            Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope")
        );
        let e = CgroupFs::new(CgroupVersion::V1, "/x").with_proc(p.path()).cgroup_of_pid(7).unwrap_err();
        assert!(e.to_string().contains("expected a line for hierarchy-id:...blkio...:/path"), "{e}");
        let p = fake_proc(9, "7:blkio:/\n0::/\n");
        let e =
            CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio").with_proc(p.path()).cgroup_of_pid(9).unwrap_err();
        assert_eq!(e.to_string(), "process 9 is in the root v1 cgroup: expected a container's own cgroup; refusing to throttle the whole host");
    }

    #[test]
    fn v1_writes_only_what_differs_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        for k in Knob::ALL {
            std::fs::write(t.path().join(v1::blkio::throttle_file(k)), "").unwrap();
        }
        // A real cgroup file keeps per-device lines; the fake just records the
        // last write, which is enough to observe what was written.
        let fs = CgroupFs::new(CgroupVersion::V1, t.path());
        let cg = CgroupPath::new(t.path());
        let want: DeviceLimits = "7:0 riops=500".parse().unwrap();
        let changes = fs.write_limits(&cg, &[want]).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "7:0 riops max -> 500");
        assert_eq!(std::fs::read_to_string(t.path().join("blkio.throttle.read_iops_device")).unwrap(), "7:0 500");
        assert_eq!(fs.read_limits(&cg, want.device).unwrap(), want.limits);
        assert!(fs.write_limits(&cg, &[want]).unwrap().is_empty(), "second run must change nothing");
    }

    #[test]
    fn v2_writes_one_line_per_device() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("io.max"), "").unwrap();
        let fs = CgroupFs::new(CgroupVersion::V2, t.path());
        let cg = CgroupPath::new(t.path());
        let want: DeviceLimits = "8:0 riops=100 wbps=1Mi".parse().unwrap();
        assert_eq!(fs.write_limits(&cg, &[want]).unwrap().len(), 2);
        assert_eq!(
            std::fs::read_to_string(t.path().join("io.max")).unwrap(),
            "8:0 riops=100 wiops=max rbps=max wbps=1048576"
        );
        let missing = CgroupPath::new(t.path().join("nope"));
        let e = fs.write_limits(&missing, &[want]).unwrap_err().to_string();
        assert!(e.contains("io controller must be enabled"), "{e}");
    }

    #[test]
    fn pressure_is_kept_on_v2_with_psi_only() {
        let t = tempfile::tempdir().unwrap();
        let proc = t.path().join("proc");
        let v1 = CgroupFs::new(CgroupVersion::V1, t.path()).with_proc(&proc);
        assert!(v1.io_pressure_kept().unwrap_err().contains("cgroup v1, which keeps no pressure"));
        assert_eq!(v1.read_io_pressure(&CgroupPath::new(t.path())).unwrap(), None);
        let v2 = CgroupFs::new(CgroupVersion::V2, t.path()).with_proc(&proc);
        let e = v2.io_pressure_kept().unwrap_err();
        assert!(e.contains("pressure/io failed") && e.contains("psi=1"), "{e}");
        std::fs::create_dir_all(proc.join("pressure")).unwrap();
        std::fs::write(proc.join("pressure/io"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(v2.io_pressure_kept(), Ok(()));
        std::fs::write(
            t.path().join("io.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=70\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        let p = v2.read_io_pressure(&CgroupPath::new(t.path())).unwrap().unwrap();
        assert_eq!((p.some.total_us, p.full.total_us), (70, 7));
    }
}
