//! Buffered writes: the one case where a write limit is about more than the
//! writer. fio writes into the page cache; the kernel writes the pages back
//! later, from its flusher threads, and the question is which cgroup that
//! writeback is charged to.
//!
//! * cgroup v2 (memory and io controllers together, ext4): to the cgroup
//!   that dirtied the pages, so the pod's `wbps` holds its buffered writes,
//!   with or without fsync ([`buffered_writes_held`]).
//! * cgroup v1: to the root cgroup, so a pod's buffered writes reach the
//!   disk at the disk's speed whatever its limit says
//!   ([`buffered_writes_escape_on_v1`]); only the part an fsync writes back
//!   in the writer's own context is throttled. Kernel documentation:
//!   `Documentation/admin-guide/cgroup-v2.rst`, "Writeback".

use std::process::Command;
use std::time::{Duration, Instant};

use iogate_core::{CgroupVersion, Device};

use super::notes::Notes;
use crate::host_io::diskstats;
use crate::sidecar::{sum, Sidecar};
use crate::stack::{Stack, DATA_IN_CONTAINER};

/// The write limit the pod asks for, and what fio writes under it: 6 s
/// worth. The policy's IOPS limits do not bind: writeback requests are
/// large (a few dozen for the whole run).
const WRITE_BPS: &str = "4Mi";
const WRITE_BPS_VALUE: u64 = 4 << 20;
const SIZE_MIB: u64 = 24;

/// What one buffered write run took.
#[derive(Debug, Clone)]
pub struct BufferedRun {
    /// From fio's first write to its exit.
    pub fio_seconds: f64,
    /// From fio's first write until a sync of the data filesystem
    /// returned: the data is on the disk.
    pub on_disk_seconds: f64,
    /// Bytes the device wrote meanwhile (`/proc/diskstats`).
    pub device_bytes: u64,
    /// The container cgroup's limits and (v2) `io.stat` line for the
    /// device, as the kernel saw them after the run.
    pub cgroup: String,
}

impl BufferedRun {
    /// The rate the data reached the disk at, in bytes per second.
    pub fn rate(&self) -> f64 {
        (SIZE_MIB << 20) as f64 / self.on_disk_seconds
    }
}

/// fio's buffered job; the container then stays up (sleeping), as a real
/// writer's would, so its cgroup is alive while its pages are written back.
fn fio_command(fsync: bool) -> Vec<String> {
    // No preallocation: the file grows with fio's first write, which is
    // when the host starts its clock (fio takes seconds to start under
    // emulation, and that is not the disk's time).
    let mut fio = format!(
        "fio --name=buffered --filename={DATA_IN_CONTAINER}/buffered.dat --rw=write --bs=1M --direct=0 \
         --ioengine=psync --fallocate=none --size={SIZE_MIB}M --output-format=json \
         --output={DATA_IN_CONTAINER}/buffered.json"
    );
    if fsync {
        fio.push_str(" --end_fsync=1");
    }
    // Written whole or not at all: the host polls for the file.
    let script = format!(
        "{fio}; echo $? > {DATA_IN_CONTAINER}/fio.rc.new && mv {DATA_IN_CONTAINER}/fio.rc.new {DATA_IN_CONTAINER}/fio.rc; exec sleep 600"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// Runs one buffered write pod (`name`) until fio is done and syncs the
/// data filesystem, timing both.
pub fn run_buffered(stack: &mut Stack, name: &str, fsync: bool) -> BufferedRun {
    let spec = stack.pod_spec("shop", name, &[("iogate.io/write-bps", WRITE_BPS)]);
    let data = stack.data_dir(name).unwrap();
    let device = stack.device;
    // Whatever is dirty from setting up must not count against the run.
    sync_fs(&data);
    let before = diskstats(device).unwrap()[1].1;
    let run = stack.run(&spec, "fio", fio_command(fsync), &data).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let target = data.join("buffered.dat");
    while std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "fio wrote nothing to {} within 300 s", target.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let rc = loop {
        if let Ok(text) = std::fs::read_to_string(data.join("fio.rc")) {
            break text;
        }
        assert!(Instant::now() < deadline, "fio did not finish within 300 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let fio_seconds = started.elapsed().as_secs_f64();
    assert_eq!(rc.trim(), "0", "buffered fio failed: {}", stack.cri().logs(&run.pod, "fio"));
    sync_fs(&data);
    let on_disk_seconds = started.elapsed().as_secs_f64();
    let device_bytes = diskstats(device).unwrap()[1].1 - before;
    let cg = stack.cgroup_of(run.pid).unwrap();
    let stat = std::fs::read_to_string(cg.as_path().join("io.stat")).unwrap_or_default();
    let cgroup = format!(
        "{cg}: limits {}; io.stat {}",
        stack.limits_of(run.pid).unwrap(),
        stat.lines().find(|l| l.starts_with(&format!("{device} "))).unwrap_or("(no line for the device)")
    );
    assert!(
        device_bytes >= SIZE_MIB << 20,
        "expected the device to have written the pod's {SIZE_MIB} MiB, found {device_bytes} bytes"
    );
    BufferedRun { fio_seconds, on_disk_seconds, device_bytes, cgroup }
}

/// `sync -f`: writes back the one filesystem and waits for it.
fn sync_fs(path: &std::path::Path) {
    let st = Command::new("sync").arg("-f").arg(path).status().expect("running sync -f");
    assert!(st.success(), "sync -f {} failed: {st}", path.display());
}

fn label(stack: &Stack) -> String {
    let version = stack.containerd.as_ref().map(|c| c.version().to_string()).unwrap_or_default();
    format!("{} {version} {}", stack.cgroup_version(), stack.driver)
}

/// cgroup v2: a pod's buffered writes, with fsync at the end and without,
/// reach the disk no faster than its write limit.
pub fn buffered_writes_held(stack: &mut Stack, notes: &mut Notes) {
    assert_eq!(stack.cgroup_version(), CgroupVersion::V2, "buffered writes are held only on cgroup v2");
    let limit = WRITE_BPS_VALUE as f64;
    let what = label(stack);
    for fsync in [true, false] {
        let name = if fsync { "buffered-fsync" } else { "buffered-nofsync" };
        let run = run_buffered(stack, name, fsync);
        let how = if fsync { "fio with end_fsync=1" } else { "fio without fsync, then sync" };
        notes.note(format!(
            "{what}: {SIZE_MIB} MiB buffered ({how}) under write-bps {WRITE_BPS}: fio {:.2} s, on disk after {:.2} s = {:.2} MiB/s (limit {:.2} MiB/s)",
            run.fio_seconds,
            run.on_disk_seconds,
            run.rate() / f64::from(1 << 20),
            limit / f64::from(1 << 20)
        ));
        notes.note(format!("  {}", run.cgroup));
        assert!(
            run.rate() <= limit * 1.15,
            "{how}: the data reached the disk at {:.0} B/s, above the {limit} B/s limit: buffered writes escaped",
            run.rate()
        );
        // Held, not stalled: writeback under a byte limit runs below it
        // (the flusher and the fsync wait on throttled pages in turn), and
        // further below on a loaded emulated node, but never near zero.
        assert!(
            run.rate() >= limit * 0.3,
            "{how}: the data reached the disk at {:.0} B/s, stalled far below the {limit} B/s limit",
            run.rate()
        );
    }
}

/// cgroup v1 (this host): the same pod's buffered writes without fsync
/// reach the disk far faster than its write limit, and the metrics sidecar
/// shows that writeback charged outside the pod, so an operator can see it.
pub fn buffered_writes_escape_on_v1(stack: &mut Stack, notes: &mut Notes) {
    assert_eq!(stack.cgroup_version(), CgroupVersion::V1, "this check is about cgroup v1");
    let sidecar = Sidecar::start(Duration::from_secs(1), &["--source", "ebpf"]).unwrap();
    let spec = stack.pod_spec("shop", "buffered-v1", &[("iogate.io/write-bps", WRITE_BPS)]);
    let limit = WRITE_BPS_VALUE as f64;
    let what = label(stack);
    let run = run_buffered(stack, "buffered-v1", false);
    notes.note(format!(
        "{what}: {SIZE_MIB} MiB buffered (fio without fsync, then sync) under write-bps {WRITE_BPS}: on disk after {:.2} s = {:.1} MiB/s, {:.1}x the limit",
        run.on_disk_seconds,
        run.rate() / f64::from(1 << 20),
        run.rate() / limit
    ));
    assert!(
        run.rate() > limit * 3.0,
        "expected cgroup v1 to let buffered writeback past the limit (it is charged to the root cgroup), \
         found the data on disk at {:.0} B/s against a {limit} B/s limit",
        run.rate()
    );
    sidecar.wait_windows(2);
    let (pod_bytes, outside_bytes) = writes_by_owner(&sidecar, stack.device, &spec.uid);
    notes.note(format!(
        "{what}: the sidecar charged {:.1} MiB of the device's writes to the pod and {:.1} MiB to cgroups outside pods",
        pod_bytes / f64::from(1 << 20),
        outside_bytes / f64::from(1 << 20)
    ));
    assert!(
        outside_bytes >= (SIZE_MIB << 20) as f64 * 0.9,
        "expected the sidecar to show the writeback charged outside the pod, found {outside_bytes} bytes outside and {pod_bytes} in the pod"
    );
}

/// Write bytes on `device` the sidecar charged to the pod `uid`, and to
/// cgroups outside any pod.
fn writes_by_owner(sidecar: &Sidecar, device: Device, uid: &str) -> (f64, f64) {
    let m = sidecar.metrics().unwrap();
    let dev = device.to_string();
    let pod = sum(&m, "iogate_io_bytes_total", &[("pod", uid), ("device", &dev), ("direction", "write")]);
    let outside = m
        .iter()
        .filter(|s| s.name == "iogate_io_bytes_total")
        .filter(|s| {
            s.labels.get("device") == Some(&dev) && s.labels.get("direction").map(String::as_str) == Some("write")
        })
        .filter(|s| s.labels.get("pod").is_none_or(|p| p.is_empty()))
        .map(|s| s.value)
        .sum::<f64>();
    // An empty float sum is -0.0; the notes should say 0.0.
    (pod + 0.0, outside + 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffered_job_writes_through_the_page_cache() {
        let with = fio_command(true).join(" ");
        assert!(with.contains("--direct=0") && with.contains("--end_fsync=1"), "{with}");
        assert!(!fio_command(false).join(" ").contains("--end_fsync"));
        assert!(
            with.contains("echo $? > /data/fio.rc.new && mv /data/fio.rc.new /data/fio.rc; exec sleep 600"),
            "{with}"
        );
    }
}
