//! I/O on the host, charged to a cgroup the test made: a blkio v1 cgroup
//! (removed on drop), fio run inside it, the loop disk's scheduler, and
//! `/proc/diskstats` as ground truth for a device.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iogate_core::Device;
use iogate_metrics_sidecar::counters::CgroupId;

use crate::fio::{read_json, Job};
use crate::loop_disk::LoopDisk;

pub const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A fresh blkio v1 cgroup, removed on drop (after ending any process the
/// test left in it: only fio, which the test started).
pub struct BlkioCgroup {
    pub path: PathBuf,
}

impl BlkioCgroup {
    pub fn create(tag: &str) -> Result<BlkioCgroup> {
        let path = Path::new(BLKIO).join(format!("iogate-test-{}-{tag}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(BlkioCgroup { path })
    }

    pub fn id(&self) -> Result<CgroupId> {
        Ok(CgroupId(std::fs::metadata(&self.path).with_context(|| format!("stat {}", self.path.display()))?.ino()))
    }

    /// Makes the kernel keep `blkio.throttle.io_serviced` and
    /// `io_service_bytes` for `device`: on cgroup v1 it counts only on
    /// queues where some cgroup has a throttle limit. The limit set here
    /// (reads at 1 PB/s) never binds, and leaves the IOPS knobs to tests.
    pub fn count_throttle_stats(&self, device: Device) -> Result<()> {
        self.set("blkio.throttle.read_bps_device", &format!("{device} 1000000000000000"))
    }

    pub fn set(&self, file: &str, value: &str) -> Result<()> {
        let p = self.path.join(file);
        std::fs::write(&p, value).with_context(|| format!("writing {value:?} to {}", p.display()))
    }
}

impl Drop for BlkioCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// Sets the loop device's I/O scheduler for the test, and puts the old one
/// back on drop (the device may outlive it only if the disk guard failed).
pub struct Scheduler {
    file: PathBuf,
    old: String,
}

impl Scheduler {
    pub fn set(disk: &LoopDisk, name: &str) -> Result<Scheduler> {
        let dev = disk.device().file_name().context("loop device has no name")?.to_string_lossy().to_string();
        let file = PathBuf::from(format!("/sys/block/{dev}/queue/scheduler"));
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let old = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .with_context(|| {
                format!("expected the active scheduler in [brackets] in {}, found {text:?}", file.display())
            })?
            .to_string();
        std::fs::write(&file, name).with_context(|| format!("writing {name} to {}", file.display()))?;
        Ok(Scheduler { file, old })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, &self.old);
    }
}

/// What fio reported for one direction.
#[derive(Debug, Clone, Copy)]
pub struct FioTotals {
    pub ios: u64,
    pub bytes: u64,
    /// Mean completion latency in ns: from `io_submit` returning to the
    /// completion.
    pub clat_mean_ns: f64,
    /// Mean total latency in ns (fio's `lat`: submission latency plus
    /// completion latency), from entering `io_submit` to the completion.
    pub lat_mean_ns: f64,
    /// Requests per second over the run, as fio timed it.
    pub iops: f64,
}

/// Runs a time-based 4 KiB direct-I/O fio job inside `cgroup` and waits for it.
pub fn run_fio(cgroup: &BlkioCgroup, dir: &Path, job: &Job) -> Result<FioTotals> {
    run_fio_on(cgroup, &dir.join(format!("{}.dat", job.name)), dir, job)
}

/// [`run_fio`] against `target` (a file, or a whole block device), with
/// fio's JSON summary written into `dir`.
pub fn run_fio_on(cgroup: &BlkioCgroup, target: &Path, dir: &Path, job: &Job) -> Result<FioTotals> {
    let json = dir.join(format!("{}.json", job.name));
    // The shell joins the cgroup, then becomes fio: every I/O fio does is
    // charged to the cgroup from its first one.
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
        .arg(cgroup.path.join("cgroup.procs"))
        .arg("fio")
        .args(job.args(&target.display().to_string(), "libaio", &json.display().to_string()))
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let v = read_json(&json)?;
    let side = &v["jobs"][0][job.rw.json_side()];
    let field = |name: &str| side[name].as_u64().with_context(|| format!("expected integer {name} in fio JSON"));
    Ok(FioTotals {
        ios: field("total_ios")?,
        bytes: field("io_bytes")?,
        clat_mean_ns: side["clat_ns"]["mean"].as_f64().context("expected clat_ns.mean in fio JSON")?,
        lat_mean_ns: side["lat_ns"]["mean"].as_f64().context("expected lat_ns.mean in fio JSON")?,
        iops: side["iops"].as_f64().context("expected iops in fio JSON")?,
    })
}

/// Requests completed and bytes, per direction, from /proc/diskstats.
pub fn diskstats(device: Device) -> Result<[(u64, u64); 2]> {
    let text = std::fs::read_to_string("/proc/diskstats").context("reading /proc/diskstats")?;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[0] != device.major.to_string() || f[1] != device.minor.to_string() {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().with_context(|| format!("diskstats field {i} in {line:?}"));
        return Ok([(n(3)?, n(5)? * 512), (n(7)?, n(9)? * 512)]);
    }
    bail!("expected {device} in /proc/diskstats, found no such line")
}
