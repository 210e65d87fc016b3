//! The throttle's wait, per pod: a pod held to 100 read IOPS by its own
//! limit, reading at iodepth 32, waits about a third of a second per I/O
//! in blk-throttle. The sidecar's `throttle_wait_ns` (mean per held bio)
//! must be within 20 % of fio's extra latency: fio's mean latency less the
//! block layer's own (the sidecar's queue + device time for the same
//! requests), which is what the throttle added.
//!
//! Where the kernel refuses the programs (a locked-down kernel refuses
//! fentry), the host's `metrics_sidecar_e2e` checks what users get
//! instead: the reason in `/readyz`, and null (never zero) in the fields.

use std::time::Duration;

use serde_json::Value;

use super::attribution::{held_reader, kernel, wait_for_fio};
use super::notes::Notes;
use crate::fio::{read_json, Job, Rw};
use crate::sidecar::{sum, Sidecar};
use crate::stack::Stack;

const IODEPTH: u32 = 32;
const SECONDS: u32 = 8;

/// `/readyz`'s word on the throttle's wait: `Err(reason)` where it is not
/// measured.
pub fn availability(sidecar: &Sidecar) -> Result<(), String> {
    let (_, ready) = sidecar.json("/readyz").unwrap();
    match ready["throttle_wait_available"].as_bool() {
        Some(true) => Ok(()),
        _ => Err(ready["throttle_wait_unavailable"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a reason in /readyz's throttle_wait_unavailable, found {ready}"))
            .to_string()),
    }
}

fn pod_of<'a>(metrics: &'a Value, uid: &str) -> Option<&'a Value> {
    metrics["pod_metrics"].as_object()?.values().find(|p| p["pod_uid"] == uid || p["pod_name"] == uid)
}

/// The measured check: the kernel must let the programs in.
pub fn wait_within_20_percent_of_fio(stack: &mut Stack, notes: &mut Notes) {
    let sidecar = Sidecar::start(Duration::from_secs(1), &["--source", "ebpf"]).unwrap();
    if let Err(why) = availability(&sidecar) {
        panic!("kernel {}: expected the throttle's wait to be measured, /readyz says: {why}", kernel());
    }
    let mut job = Job::new("fio", Rw::RandRead, SECONDS);
    job.iodepth = IODEPTH;
    let (spec, data, run) = held_reader(stack, "held", &job, "libaio");

    // A window in fio's steady state: the pod's REST fields.
    std::thread::sleep(Duration::from_secs(u64::from(SECONDS) / 2));
    let (_, live) = sidecar.json("/api/v1/metrics").unwrap();
    let pod =
        pod_of(&live, &spec.uid).unwrap_or_else(|| panic!("expected pod {} in /api/v1/metrics: {live}", spec.uid));
    let held = pod["throttled_seconds"].as_f64().unwrap_or_else(|| panic!("expected throttled_seconds: {pod}"));
    assert!(pod["throttle_wait_ns"].as_u64().is_some() && pod["throttle_wait_p99_ns"].as_u64().is_some(), "{pod}");
    // 32 bios waiting the whole second, give or take the window's edges.
    assert!(held > 0.5 * IODEPTH as f64 * pod["window_seconds"].as_f64().unwrap_or(1.0), "{pod}");

    wait_for_fio(stack, &run, &data, Duration::from_secs(120));
    sidecar.wait_windows(2);
    let m = sidecar.metrics().unwrap();
    let device = stack.device.to_string();
    let of = |name: &str| sum(&m, name, &[("pod", &spec.uid), ("device", &device), ("direction", "read")]);
    let (held_bios, held_seconds) =
        (of("iogate_io_throttle_wait_seconds_count"), of("iogate_io_throttle_wait_seconds_sum"));
    let (requests, request_seconds) = (of("iogate_io_latency_seconds_count"), of("iogate_io_latency_seconds_sum"));
    let fio = read_json(&data.join("fio.json")).unwrap();
    let read = &fio["jobs"][0]["read"];
    let fio_mean_ms = read["lat_ns"]["mean"].as_f64().expect("fio's jobs[0].read.lat_ns.mean") / 1e6;
    assert!(
        held_bios > 0.0 && requests > 0.0,
        "expected held bios and requests for the pod, found {held_bios} and {requests}"
    );
    let wait_ms = held_seconds / held_bios * 1e3;
    let block_ms = request_seconds / requests * 1e3;
    let extra_ms = fio_mean_ms - block_ms;
    notes.note(format!(
        "kernel {}: {held_bios} of {} reads held by the throttle, mean wait {wait_ms:.1} ms; fio's mean latency {fio_mean_ms:.1} ms \
         less the block layer's {block_ms:.2} ms = {extra_ms:.1} ms extra ({:+.1} %)",
        kernel(),
        read["total_ios"],
        (wait_ms - extra_ms) / extra_ms * 100.0
    ));
    assert!(
        (wait_ms - extra_ms).abs() <= 0.2 * extra_ms,
        "the sidecar's mean throttle wait {wait_ms:.1} ms is not within 20 % of fio's extra latency {extra_ms:.1} ms"
    );
}
