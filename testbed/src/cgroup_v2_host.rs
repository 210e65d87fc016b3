//! Real cgroup v2 on a hybrid host, for the duration of one test.
//!
//! The machine keeps the block controller on a cgroup v1 hierarchy
//! (`/sys/fs/cgroup/blkio`) and a cgroup2 at `/sys/fs/cgroup/unified`
//! without it. A controller lives in one hierarchy at a time, and the kernel
//! frees it from v1 once that hierarchy is unmounted and has no cgroups
//! left. So: unmount v1 `blkio` (and `cpu`, because CRI always sets a CPU
//! weight on the sandbox and runc then needs `cpu.weight`), wait for `io`
//! and `cpu` to appear in cgroup2, enable them, and run containerd in a
//! private mount namespace where cgroup2 is mounted at `/sys/fs/cgroup`
//! (runc and containerd detect v2 by that mount). `Drop` disables them
//! again and remounts the v1 hierarchies, so the host is as it was.
//!
//! Both moves wait for dying cgroups: the loop driver keeps a reference to
//! the cgroup of every recent I/O submitter in an idle worker for 60 s, and
//! the kernel will not move a controller while any of its cgroups, dying or
//! not, remains. Hence the generous [`SETTLE`] timeout.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const UNIFIED: &str = "/sys/fs/cgroup/unified";
/// (v1 mount point, v1 mount option, v2 controller name)
const MOVED: [(&str, &str, &str); 2] = [("/sys/fs/cgroup/blkio", "blkio", "io"), ("/sys/fs/cgroup/cpu", "cpu", "cpu")];
/// Longer than the loop driver's 60 s idle-worker timeout.
const SETTLE: Duration = Duration::from_secs(100);

pub struct CgroupV2Io {
    _private: (),
}

/// The v1 hierarchy cannot be unmounted, and no process this test can see
/// holds it: something outside the test's reach (seen on one sandbox
/// machine, where even `pids`, which no test touches, was pinned) keeps
/// the controller on v1, so cgroup v2 cannot be had on this machine.
#[derive(Debug)]
pub struct PinnedHierarchy {
    pub point: String,
}

impl std::fmt::Display for PinnedHierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "umount {} stays busy and no visible process has a file or working directory on it: the hierarchy \
             is pinned from outside this machine's processes, so its controller cannot move to cgroup v2 here",
            self.point
        )
    }
}

impl std::error::Error for PinnedHierarchy {}

/// How long a busy umount is retried before looking for who holds it.
const BUSY_GRACE: Duration = Duration::from_secs(20);

/// Processes with an open file or working directory on the mount at `point`.
fn visible_holders(point: &str) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mnt_id) = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some(point)).and_then(|l| l.split(' ').next())
    else {
        return Vec::new();
    };
    let wanted = format!("mnt_id:\t{mnt_id}");
    let mut holders = Vec::new();
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = proc.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cwd_inside = std::fs::read_link(proc.path().join("cwd")).is_ok_and(|c| c.starts_with(point));
        let fd_inside = std::fs::read_dir(proc.path().join("fdinfo")).into_iter().flatten().flatten().any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| info.lines().any(|l| l.trim_end() == wanted))
        });
        if cwd_inside || fd_inside {
            holders.push(pid);
        }
    }
    holders
}

fn controllers() -> String {
    std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers")).unwrap_or_default()
}

fn has_controller(name: &str) -> bool {
    controllers().split_whitespace().any(|c| c == name)
}

fn v1_mounted(point: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(point)))
        .unwrap_or(false)
}

/// `num_cgroups` of a v1 controller's hierarchy (0 when it has none).
fn v1_cgroup_count(controller: &str) -> u64 {
    proc_cgroups_fields(controller).map_or(0, |(hierarchy, count)| if hierarchy == 0 { 0 } else { count })
}

fn v1_hierarchy_alive(controller: &str) -> bool {
    proc_cgroups_fields(controller).is_some_and(|(hierarchy, _)| hierarchy != 0)
}

/// (hierarchy id, num_cgroups) from /proc/cgroups; hierarchy 0 is cgroup2.
fn proc_cgroups_fields(controller: &str) -> Option<(u64, u64)> {
    proc_cgroups().lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&controller)).then(|| Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?)))?
    })
}

fn proc_cgroups() -> String {
    std::fs::read_to_string("/proc/cgroups").unwrap_or_default()
}

impl CgroupV2Io {
    /// Callers hold [`crate::host_lock::HostLock`]: no v1 test may run meanwhile.
    pub fn acquire() -> Result<CgroupV2Io> {
        for (point, _, _) in MOVED {
            if !v1_mounted(point) {
                continue;
            }
            // Leftovers of an earlier, killed test run of ours are removed;
            // anything else is another program's and stops the switch.
            for e in std::fs::read_dir(point)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("iogate-") && e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    crate::containerd_daemon::remove_cgroup_tree(&format!("/{name}"));
                }
            }
            let children: Vec<String> = std::fs::read_dir(point)?
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !children.is_empty() {
                bail!("cannot move {point} to cgroup v2: it still has child cgroups {children:?}");
            }
        }
        // From here on Drop restores v1.
        let guard = CgroupV2Io { _private: () };
        let deadline = Instant::now() + SETTLE;
        for (point, option, _) in MOVED {
            // The kernel destroys a v1 hierarchy only if it has no child
            // cgroups, dying ones included, at the moment of its unmount;
            // otherwise it lingers unmounted and keeps the controller. So
            // wait for the dying ones first (remounting a lingering one).
            if !v1_mounted(point) && v1_hierarchy_alive(option) {
                let _ = Command::new("mount").args(["-t", "cgroup", "-o", option, "cgroup", point]).status();
            }
            while v1_cgroup_count(option) > 1 {
                if Instant::now() > deadline {
                    bail!("v1 {option} still has dying cgroups after {SETTLE:?}; /proc/cgroups:\n{}", proc_cgroups());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // A process that has a file of the hierarchy open for a moment
            // (a cgroup walker, a monitoring agent) makes umount EBUSY;
            // wait for it rather than fail or detach lazily.
            let busy_since = Instant::now();
            while v1_mounted(point) {
                let st = Command::new("umount").arg(point).stderr(std::process::Stdio::null()).status()?;
                if st.success() {
                    break;
                }
                if busy_since.elapsed() > BUSY_GRACE {
                    let holders = visible_holders(point);
                    if holders.is_empty() {
                        return Err(PinnedHierarchy { point: point.to_string() }.into());
                    }
                    bail!("umount {point} still fails after {BUSY_GRACE:?}: busy, held by PIDs {holders:?}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let deadline = Instant::now() + SETTLE;
        for (_, _, v2) in MOVED {
            while !has_controller(v2) {
                if Instant::now() > deadline {
                    bail!(
                        "{v2} did not appear in {UNIFIED}/cgroup.controllers within {SETTLE:?} of unmounting its v1 hierarchy (found {:?}; /proc/cgroups:\n{})",
                        controllers(),
                        proc_cgroups()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::fs::write(Path::new(UNIFIED).join("cgroup.subtree_control"), "+io +cpu")
            .context("enabling +io +cpu in the cgroup2 root")?;
        Ok(guard)
    }

    /// Whether cgroup2 currently has the io controller.
    pub fn active() -> bool {
        has_controller("io")
    }

    /// Prefix that runs a program in a private mount namespace with cgroup2
    /// at /sys/fs/cgroup.
    pub fn wrapper() -> Vec<String> {
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Where the test (outside the namespace) sees the same hierarchy.
    pub fn unified_mount() -> &'static Path {
        Path::new(UNIFIED)
    }
}

impl Drop for CgroupV2Io {
    fn drop(&mut self) {
        let deadline = Instant::now() + SETTLE;
        for (point, option, _) in MOVED {
            while !v1_mounted(point) && Instant::now() < deadline {
                let _ = std::fs::write(Path::new(UNIFIED).join("cgroup.subtree_control"), "-io -cpu");
                let _ = std::fs::create_dir_all(point);
                let ok = Command::new("mount")
                    .args(["-t", "cgroup", "-o", option, "cgroup", point])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            if !v1_mounted(point) {
                eprintln!(
                    "WARNING: could not remount cgroup v1 {option} at {point}; cgroup2 controllers: {}",
                    controllers()
                );
            }
        }
    }
}
