//! The metrics sidecar on this kernel: its eBPF program loads (or the
//! fallback says why not), and a pod's I/O is charged to the pod, counted
//! within 5% of what fio did.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::notes::Notes;
use super::policy::limits;
use crate::cri_client::PodSpec;
use crate::fio::{read_json, Job, Rw};
use crate::sidecar::{sum, Sidecar};
use crate::stack::{Running, Stack, DATA_IN_CONTAINER};

pub fn pod_attributed(stack: &mut Stack, notes: &mut Notes) {
    // The default source: eBPF where it loads, the cgroup statistics where
    // it does not (said in /readyz).
    let sidecar = Sidecar::start(Duration::from_secs(1), &[]).unwrap();
    let (_, ready) = sidecar.json("/readyz").unwrap();
    let kernel = kernel();
    match ready["source"].as_str() {
        Some("ebpf") => notes.note(format!("kernel {kernel}: the eBPF program loaded")),
        other => {
            notes.note(format!("kernel {kernel}: eBPF did NOT load, the sidecar uses {other:?}: {}", ready["degraded"]))
        }
    }

    let spec = stack.pod_spec("shop", "counted", &[]);
    let data = stack.data_dir("counted").unwrap();
    let job = Job::new("fio", Rw::RandRead, 6);
    job.prepare(&data).unwrap();
    let device = stack.device.to_string();
    let counted = |sidecar: &Sidecar| {
        let m = sidecar.metrics().unwrap();
        sum(&m, "iogate_io_requests_total", &[("pod", &spec.uid), ("device", &device), ("direction", "read")])
    };
    let before = counted(&sidecar);
    let run = run_fio_and_stay(stack, &spec, job.command(DATA_IN_CONTAINER), &data);
    assert_eq!(stack.limits_of(run.pid).unwrap(), limits(HELD_READ_IOPS, HELD_READ_IOPS));
    wait_for_fio(stack, &run, &data, Duration::from_secs(120));
    sidecar.wait_windows(2);
    let seen = counted(&sidecar) - before;
    let fio = read_json(&data.join("fio.json")).unwrap();
    let did = fio["jobs"][0]["read"]["total_ios"].as_f64().expect("fio's jobs[0].read.total_ios");
    notes.note(format!(
        "kernel {kernel}: fio read {did} times, the sidecar counted {seen} reads for pod {} on {device} ({:+.2}%)",
        spec.uid,
        (seen - did) / did * 100.0
    ));
    assert!(did > 0.0, "fio did no reads");
    assert!((seen - did).abs() <= did * 0.05, "the sidecar counted {seen} reads for the pod, fio did {did}");
}

/// The running kernel's release, for the notes.
pub(super) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// The test policy's default read limit, which holds every reader below.
const HELD_READ_IOPS: u64 = 100;

/// A pod `name` whose fio reads as `job` says through `ioengine`, held by
/// the test policy's default limits (asserted in its cgroup), and staying
/// up after fio ends ([`run_fio_and_stay`]).
pub(super) fn held_reader(stack: &mut Stack, name: &str, job: &Job, ioengine: &str) -> (PodSpec, PathBuf, Running) {
    let spec = stack.pod_spec("shop", name, &[]);
    let data = stack.data_dir(name).unwrap();
    job.prepare(&data).unwrap();
    let mut fio = vec!["/usr/bin/fio".to_string()];
    fio.extend(job.args(&format!("{DATA_IN_CONTAINER}/fio.dat"), ioengine, &format!("{DATA_IN_CONTAINER}/fio.json")));
    let run = run_fio_and_stay(stack, &spec, fio, &data);
    assert_eq!(stack.limits_of(run.pid).unwrap(), limits(HELD_READ_IOPS, HELD_READ_IOPS));
    (spec, data, run)
}

/// Runs `fio` (a command line) in a container of `spec` that stays up after
/// fio ends, with fio's exit code in `fio.rc` on the data disk: the sidecar
/// forgets a cgroup once it is gone, and counts are read from the live one.
pub(super) fn run_fio_and_stay(stack: &mut Stack, spec: &PodSpec, fio: Vec<String>, data: &Path) -> Running {
    let fio = fio.join(" ");
    let script = format!(
        "{fio}; echo $? > {DATA_IN_CONTAINER}/fio.rc.new && mv {DATA_IN_CONTAINER}/fio.rc.new {DATA_IN_CONTAINER}/fio.rc; exec sleep 600"
    );
    stack.run(spec, "fio", vec!["/bin/sh".into(), "-c".into(), script], data).unwrap()
}

/// Waits for [`run_fio_and_stay`]'s fio to end, and asserts it succeeded.
pub(super) fn wait_for_fio(stack: &mut Stack, run: &Running, data: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    let rc = loop {
        if let Ok(rc) = std::fs::read_to_string(data.join("fio.rc")) {
            break rc;
        }
        assert!(
            Instant::now() < deadline,
            "fio did not finish within {within:?}: {}",
            stack.cri().logs(&run.pod, "fio")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rc.trim(), "0", "fio failed: {}", stack.cri().logs(&run.pod, "fio"));
}
