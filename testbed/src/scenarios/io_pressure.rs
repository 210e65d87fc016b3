//! The I/O stall time per pod, on cgroup v2: a pod whose one busy task
//! reads synchronously (psync, iodepth 1), held to 100 read IOPS by its own
//! limit, spends nearly all its time blocked in the read. PSI's `some`
//! total for the pod must then be within 20 % of the time fio itself spent
//! in reads (its read count times its mean latency), and its REST window
//! must show the pod stalled for most of the window.
//!
//! The host (cgroup v1, no stall information per cgroup) checks the other
//! side in `metrics_sidecar_e2e`: the reason in `/readyz`, null fields.

use std::time::Duration;

use serde_json::Value;

use super::attribution::{held_reader, kernel, wait_for_fio};
use super::notes::Notes;
use crate::fio::{read_json, Job, Rw};
use crate::sidecar::{sum, Sidecar};
use crate::stack::Stack;

const SECONDS: u32 = 8;

fn seconds(doc: &Value, field: &str) -> f64 {
    doc[field].as_f64().unwrap_or_else(|| panic!("expected {field} in {doc}"))
}

pub fn stall_of_a_throttled_reader(stack: &mut Stack, notes: &mut Notes) {
    let sidecar = Sidecar::start(Duration::from_secs(1), &["--source", "ebpf"]).unwrap();
    let (_, ready) = sidecar.json("/readyz").unwrap();
    assert_eq!(ready["io_pressure_available"], true, "kernel {}: expected stall time measured: {ready}", kernel());
    let (spec, data, run) = held_reader(stack, "stalled", &Job::new("fio", Rw::RandRead, SECONDS), "psync");

    // A window in fio's steady state: the pod, and fio's container, stalled
    // for most of it (`some`), and with nothing else busy, `full` as well.
    std::thread::sleep(Duration::from_secs(u64::from(SECONDS) / 2));
    let (status, live) = sidecar.json(&format!("/api/v1/metrics/pod/{}", spec.uid)).unwrap();
    assert_eq!(status, 200, "{live}");
    let pod = &live["pod_metrics"];
    let window = seconds(pod, "window_seconds");
    let container = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["container_id"] == run.container_id.as_str()))
        .unwrap_or_else(|| panic!("expected container {} in {pod}", run.container_id));
    for (whose, doc) in [("pod", pod), ("container", container)] {
        for field in ["io_pressure_some_seconds", "io_pressure_full_seconds"] {
            let stalled = seconds(doc, field);
            assert!(
                stalled >= 0.5 * window && stalled <= window * 1.05,
                "expected the {whose}'s {field} between half and all of the {window:.2} s window, found {stalled}: {doc}"
            );
        }
    }

    wait_for_fio(stack, &run, &data, Duration::from_secs(120));
    sidecar.wait_windows(2);
    let m = sidecar.metrics().unwrap();
    let pod_some = sum(&m, "iogate_pod_io_pressure_some_seconds_total", &[("pod", &spec.uid)]);
    let pod_full = sum(&m, "iogate_pod_io_pressure_full_seconds_total", &[("pod", &spec.uid)]);
    let fio = read_json(&data.join("fio.json")).unwrap();
    let read = &fio["jobs"][0]["read"];
    let ios = read["total_ios"].as_f64().expect("fio's jobs[0].read.total_ios");
    let in_reads = ios * read["lat_ns"]["mean"].as_f64().expect("fio's jobs[0].read.lat_ns.mean") / 1e9;
    notes.note(format!(
        "kernel {}: fio spent {in_reads:.2} s in {ios} reads; the pod's PSI some {pod_some:.2} s ({:+.1} %), full {pod_full:.2} s; \
         last window {window:.2} s: some {:.2} s, full {:.2} s",
        kernel(),
        (pod_some - in_reads) / in_reads * 100.0,
        seconds(pod, "io_pressure_some_seconds"),
        seconds(pod, "io_pressure_full_seconds"),
    ));
    assert!(
        (pod_some - in_reads).abs() <= 0.2 * in_reads,
        "the pod's stall time {pod_some:.2} s is not within 20 % of the {in_reads:.2} s fio spent in reads"
    );
    assert!(
        pod_full > 0.5 * pod_some,
        "one busy task: full ({pod_full:.2} s) should be most of some ({pod_some:.2} s)"
    );
}
