//! A loop device with an ext4 filesystem, mounted: the test's data disk;
//! and [`RamLoop`], a raw loop device on tmpfs for benchmarks.
//!
//! Their `Drop` unmounts, detaches and deletes, whatever happened in the test.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

// <linux/loop.h>: LOOP_CTL_REMOVE on /dev/loop-control.
nix::ioctl_write_int_bad!(loop_ctl_remove, 0x4C81);

pub struct LoopDisk {
    device: PathBuf,
    mount_point: PathBuf,
    backing: PathBuf,
    /// The tmpfs under the backing file, for [`LoopDisk::in_memory`].
    tmpfs: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A fresh directory `at` with a tmpfs mounted on it, for a `size_mib`
/// backing file and a little headroom; the caller's Drop unmounts it.
fn mount_tmpfs(at: &Path, size_mib: u64) -> Result<()> {
    std::fs::create_dir(at).with_context(|| format!("creating {}", at.display()))?;
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={}m,mode=0700", size_mib + 16), "iogate-ramdisk"])
        .arg(at))?;
    Ok(())
}

impl LoopDisk {
    /// A `size_mib` disk whose backing file sits on the root disk (not
    /// tmpfs), attached with direct I/O so the loop device does not add a
    /// page cache between the throttle and the disk. What it can do depends
    /// on the host's disk: tests that need a device faster than a limit use
    /// [`LoopDisk::in_memory`].
    pub fn new(size_mib: u64) -> Result<LoopDisk> {
        let dir =
            tempfile::Builder::new().prefix("iogate-disk-").tempdir_in("/var/tmp").context("creating disk dir")?;
        let backing = dir.path().join("disk.img");
        LoopDisk::attach(dir, backing, None, size_mib)
    }

    /// A `size_mib` disk whose backing file lives on a tmpfs mounted for
    /// it: thousands of IOPS however busy the host's disk is, so a limit of
    /// a few hundred is what holds fio back. The file is sparse; only what
    /// is written takes memory.
    pub fn in_memory(size_mib: u64) -> Result<LoopDisk> {
        let dir =
            tempfile::Builder::new().prefix("iogate-ramdisk-").tempdir_in("/var/tmp").context("creating disk dir")?;
        let tmpfs = dir.path().join("tmpfs");
        mount_tmpfs(&tmpfs, size_mib)?;
        let backing = tmpfs.join("disk.img");
        LoopDisk::attach(dir, backing, Some(tmpfs), size_mib)
    }

    fn attach(dir: tempfile::TempDir, backing: PathBuf, tmpfs: Option<PathBuf>, size_mib: u64) -> Result<LoopDisk> {
        let mount_point = dir.path().join("mnt");
        // From here on Drop cleans up whatever was set up.
        let mut disk = LoopDisk { device: PathBuf::new(), mount_point, backing, tmpfs, _dir: dir };
        let f = std::fs::File::create(&disk.backing).with_context(|| format!("creating {}", disk.backing.display()))?;
        f.set_len(size_mib << 20).context("sizing backing file")?;
        drop(f);
        disk.device = PathBuf::from(run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&disk.backing))?);
        std::fs::create_dir(&disk.mount_point).context("creating mount point")?;
        // No lazy init: ext4 would otherwise keep zeroing inode tables and the
        // journal from a kernel thread after mount, I/O outside any container
        // that skews what the tests measure.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&disk.device))?;
        run(Command::new("mount").arg(&disk.device).arg(&disk.mount_point))?;
        Ok(disk)
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// `MAJ:MIN` of the loop device, as the cgroup files name it.
    pub fn major_minor(&self) -> Result<(u32, u32)> {
        device_numbers(&self.device)
    }

    /// Takes the disk away from the kernel, as an unplugged disk goes:
    /// unmounted, detached, and its loop device removed (`LOOP_CTL_REMOVE`),
    /// so that its `MAJ:MIN` names no device any more. A detached loop
    /// device stays busy until its last user closes it (a container's bind
    /// mount of the disk, say): the removal is retried until `timeout`.
    pub fn unplug(self, timeout: Duration) -> Result<()> {
        let (_, minor) = self.major_minor()?;
        drop(self);
        let control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .context("opening /dev/loop-control")?;
        let minor = nix::libc::c_int::try_from(minor).context("loop minor out of range")?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: LOOP_CTL_REMOVE takes the minor by value and touches
            // no memory of ours.
            match unsafe { loop_ctl_remove(control.as_raw_fd(), minor) } {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(nix::errno::Errno::EBUSY) => bail!(
                    "removing loop device 7:{minor} after detaching it: still busy after {timeout:?} (still open, or attached again by another process)"
                ),
                Err(e) => bail!("removing loop device 7:{minor} after detaching it: expected it gone, got {e}"),
            }
        }
    }

    /// A fresh directory on the disk (what a test bind-mounts into a container).
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.mount_point.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(self.mount_point.to_str().unwrap_or(""))))
                .unwrap_or(false)
        };
        for _ in 0..20 {
            if !mounted() {
                break;
            }
            let _ = Command::new("umount").arg(&self.mount_point).status();
            if mounted() {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
        if mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
        }
        if !self.device.as_os_str().is_empty() {
            let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        }
        let _ = std::fs::remove_file(&self.backing);
        if let Some(tmpfs) = &self.tmpfs {
            if Command::new("umount").arg(tmpfs).status().map_or(true, |s| !s.success()) {
                let _ = Command::new("umount").arg("-l").arg(tmpfs).status();
            }
        }
    }
}

/// A raw loop device (no filesystem) whose backing file lives on a tmpfs
/// mounted for it: a device fast enough that per-request costs show up in
/// fio's IOPS rather than vanish under a disk's latency.
///
/// Its `Drop` detaches the device and unmounts the tmpfs (taking the file
/// with it).
pub struct RamLoop {
    device: PathBuf,
    mount_point: PathBuf,
    size_mib: u32,
    _dir: tempfile::TempDir,
}

impl RamLoop {
    /// A `size_mib` device on a tmpfs with a little headroom, its backing
    /// file written with real (non-zero) data so reads copy bytes rather
    /// than hit holes.
    pub fn new(size_mib: u32) -> Result<RamLoop> {
        let dir = tempfile::Builder::new().prefix("iogate-ramdisk-").tempdir().context("creating ramdisk dir")?;
        let mount_point = dir.path().join("tmpfs");
        mount_tmpfs(&mount_point, u64::from(size_mib))?;
        // From here on Drop cleans up whatever was set up.
        let mut disk = RamLoop { device: PathBuf::new(), mount_point, size_mib, _dir: dir };
        let backing = disk.mount_point.join("disk.img");
        write_pattern(&backing, size_mib)?;
        // Direct I/O from the loop driver to tmpfs: no second page cache.
        disk.device =
            PathBuf::from(run(Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&backing))?);
        Ok(disk)
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn size_mib(&self) -> u32 {
        self.size_mib
    }

    /// `MAJ:MIN` of the loop device.
    pub fn major_minor(&self) -> Result<(u32, u32)> {
        device_numbers(&self.device)
    }

    /// The active I/O scheduler of the device (`none`, `mq-deadline`, …).
    pub fn scheduler(&self) -> Result<String> {
        let name = self.device.file_name().context("loop device has no name")?.to_string_lossy().to_string();
        let file = format!("/sys/block/{name}/queue/scheduler");
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        text.split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .map(str::to_string)
            .with_context(|| format!("expected the active scheduler in [brackets] in {file}, found {text:?}"))
    }
}

fn write_pattern(path: &Path, size_mib: u32) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    for _ in 0..size_mib {
        f.write_all(&chunk).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl Drop for RamLoop {
    fn drop(&mut self) {
        if !self.device.as_os_str().is_empty() {
            let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        }
        for _ in 0..20 {
            if Command::new("umount").arg(&self.mount_point).status().is_ok_and(|s| s.success()) {
                return;
            }
            // The loop driver lets go of the file asynchronously.
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

fn device_numbers(device: &Path) -> Result<(u32, u32)> {
    let meta = std::fs::metadata(device).with_context(|| format!("stat {}", device.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", device.display());
    }
    let dev = meta.rdev();
    Ok((((dev >> 8) & 0xfff) as u32 | ((dev >> 32) & !0xfff) as u32, ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};

    /// One test at a time: a loop device one test frees is the next one
    /// another test gets, and its "gone after drop" check would see it.
    fn one_at_a_time() -> MutexGuard<'static, ()> {
        static LOOPS: Mutex<()> = Mutex::new(());
        LOOPS.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mounts_and_cleans_up(disk: LoopDisk) {
        let dev = disk.device().to_path_buf();
        let mnt = disk.mount_point().to_path_buf();
        let (maj, _) = disk.major_minor().unwrap();
        assert_eq!(maj, 7, "loop devices have major 7");
        std::fs::write(disk.subdir("d").unwrap().join("f"), b"x").unwrap();
        assert!(run(Command::new("losetup").arg("-a")).unwrap().contains(dev.to_str().unwrap()));
        let tmpfs = disk.tmpfs.clone();
        drop(disk);
        assert!(!run(Command::new("losetup").arg("-a")).unwrap().contains(&format!("{}:", dev.display())));
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(mnt.to_str().unwrap()), "{} still mounted", mnt.display());
        if let Some(tmpfs) = tmpfs {
            assert!(!mi.contains(tmpfs.to_str().unwrap()), "{} still mounted", tmpfs.display());
        }
    }

    #[test]
    fn a_disk_on_the_root_disk_mounts_and_cleans_up() {
        crate::require_root();
        let _one = one_at_a_time();
        mounts_and_cleans_up(LoopDisk::new(64).unwrap());
    }

    #[test]
    fn an_unplugged_disk_names_no_device() {
        crate::require_root();
        let _one = one_at_a_time();
        let disk = LoopDisk::new(64).unwrap();
        let (maj, min) = disk.major_minor().unwrap();
        let node = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
        assert!(node.exists(), "{} while attached", node.display());
        disk.unplug(Duration::from_secs(10)).unwrap();
        assert!(!node.exists(), "{} still there after unplug", node.display());
    }

    #[test]
    fn a_disk_in_memory_mounts_and_cleans_up() {
        crate::require_root();
        let _one = one_at_a_time();
        mounts_and_cleans_up(LoopDisk::in_memory(64).unwrap());
    }
}
