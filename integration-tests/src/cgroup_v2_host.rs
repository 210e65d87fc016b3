//! Real cgroup v2 on a hybrid host, for the duration of one test.
//!
//! The machine keeps the block controller on a cgroup v1 hierarchy
//! (`/sys/fs/cgroup/blkio`) and a cgroup2 at `/sys/fs/cgroup/unified` without
//! it. A controller lives in one hierarchy at a time, and the kernel frees
//! it from v1 once that hierarchy is unmounted and has no child cgroups. So:
//! unmount v1 blkio, wait for `io` to appear in cgroup2, enable it, and run
//! containerd in a private mount namespace where cgroup2 is mounted at
//! `/sys/fs/cgroup` (runc and containerd detect v2 by that mount). `Drop`
//! disables `io` again and remounts v1 blkio, so the host is as it was.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const V1_BLKIO: &str = "/sys/fs/cgroup/blkio";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

pub struct CgroupV2Io {
    _private: (),
}

fn controllers() -> String {
    std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers")).unwrap_or_default()
}

fn blkio_v1_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(V1_BLKIO)))
        .unwrap_or(false)
}

impl CgroupV2Io {
    /// Callers hold [`crate::host_lock::HostLock`]: no v1 test may run meanwhile.
    pub fn acquire() -> Result<CgroupV2Io> {
        if blkio_v1_mounted() {
            let children: Vec<String> = std::fs::read_dir(V1_BLKIO)?
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !children.is_empty() {
                bail!("cannot move the io controller to cgroup v2: v1 blkio still has child cgroups {children:?}");
            }
            let st = Command::new("umount").arg(V1_BLKIO).status()?;
            anyhow::ensure!(st.success(), "umount {V1_BLKIO} failed");
        }
        // From here on Drop restores v1.
        let guard = CgroupV2Io { _private: () };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !controllers().split_whitespace().any(|c| c == "io") {
            if Instant::now() > deadline {
                bail!("io did not appear in {UNIFIED}/cgroup.controllers after unmounting v1 blkio (found {:?})", controllers());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(Path::new(UNIFIED).join("cgroup.subtree_control"), "+io").context("enabling +io in cgroup2 root")?;
        Ok(guard)
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
        let _ = std::fs::write(Path::new(UNIFIED).join("cgroup.subtree_control"), "-io");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !blkio_v1_mounted() && Instant::now() < deadline {
            let _ = std::fs::create_dir_all(V1_BLKIO);
            let ok = Command::new("mount")
                .args(["-t", "cgroup", "-o", "blkio", "cgroup", V1_BLKIO])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if !blkio_v1_mounted() {
            eprintln!("WARNING: could not remount cgroup v1 blkio at {V1_BLKIO}; io controllers: {}", controllers());
        }
    }
}
