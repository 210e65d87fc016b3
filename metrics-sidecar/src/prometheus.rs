//! `GET /metrics`: the Prometheus text exposition format (0.0.4).
//!
//! Everything is rendered from the latest cumulative frame, so counters only
//! grow and `rate()` works across scrapes. Labels on every series:
//! `namespace`, `pod`, `container` (empty for cgroups outside pods),
//! `cgroup` (the path of a cgroup outside pods, so two of them never
//! collide; empty for containers, which namespace/pod/container already name
//! — a pod's cgroup path is long, and repeating it on every bucket line
//! would triple the size of a scrape), `device` (`MAJ:MIN`), `direction`
//! (`read`/`write`).
//!
//! Latency histograms exist only when the source measures latency; in the
//! cgroup-statistics fallback they are absent, not zero.
//!
//! # Stacked devices: each request once
//!
//! A loop device (or request-based multipath) passes each request down to
//! the device below, and the kernel charges both to the same cgroup
//! ([`crate::stacking`]). The lower layer's series are therefore a family
//! of their own, `iogate_io_lower_layer_*`, with a `lower_layer_of="MAJ:MIN"`
//! label naming the device above; `iogate_io_requests_total`,
//! `iogate_io_bytes_total` and the `iogate_io_*latency_seconds` histograms
//! hold the top layer only. A label (`layer="lower"`) on the same family
//! was the alternative, and was rejected: Prometheus's naming guidance is
//! that the `sum()` over all of a metric's dimensions be meaningful, and
//! with both layers in one family every `sum by (pod)` not filtering on the
//! label — any query written before this, or by a user in a hurry —
//! counts each request twice and blends the two devices' latencies. With
//! two families the plain sum is the pod's I/O, counted once, and
//! per-device truth stays: a disk's whole load is the sum of both families
//! for its `device`. `iogate_io_limit` is one family for every device (a
//! limit on a lower device is in force there too, and gauges of limits are
//! never summed).

use std::collections::BTreeMap;
use std::fmt::Write;

use iogate_core::cgroup::paths::PodCgroup;
use iogate_core::Knob;

use crate::counters::{Log2Histogram, SourceKind};
use crate::frame::{Frame, Series};
use crate::host_cgroups::CgroupOwner;
use crate::pressure::StallTotals;

/// Bucket bounds exposed, as powers of two nanoseconds: 16 µs … 4.3 s in
/// steps of 4×. They fall on the log2 buckets' edges, so the cumulative
/// counts are exact.
const EXPOSED_POWERS: [u32; 10] = [14, 16, 18, 20, 22, 24, 26, 28, 30, 32];

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Facts about the sidecar itself.
#[derive(Debug, Clone, Copy)]
pub struct SelfState {
    pub ebpf_loaded: bool,
    pub pods_synced: bool,
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `namespace`, `pod`, `container` and `cgroup`: who, without the device.
fn owner_labels(w: &CgroupOwner) -> String {
    format!(
        "namespace=\"{}\",pod=\"{}\",container=\"{}\",cgroup=\"{}\"",
        escape(w.namespace.as_deref().unwrap_or("")),
        escape(w.pod.as_deref().unwrap_or("")),
        escape(w.container.as_deref().unwrap_or("")),
        if w.pod.is_some() { String::new() } else { escape(&w.cgroup) },
    )
}

fn labels(s: &Series) -> String {
    format!("{},device=\"{}\",direction=\"{}\"", owner_labels(&s.owner), s.device, s.direction)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Log2Histogram, count: u64, sum_ns: u64) {
    let mut cumulative = 0u64;
    let mut next_bucket = 0usize;
    for power in EXPOSED_POWERS {
        // Buckets 0..power cover latencies below 2^power ns.
        while next_bucket < power as usize {
            cumulative += h.0[next_bucket];
            next_bucket += 1;
        }
        let le = (1u64 << power) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// The counter and histogram families of one layer (`prefix`: `iogate_io`
/// for the top, `iogate_io_lower_layer` for the devices below it).
fn families(out: &mut String, prefix: &str, note: &str, rows: &[(&str, &Series)], latency: bool) {
    let name = |what: &str| format!("{prefix}_{what}");
    let requests = name("requests_total");
    header(
        out,
        &requests,
        "counter",
        &format!("Block I/O requests completed, by the cgroup they are charged to.{note}"),
    );
    for (l, s) in rows {
        let _ = writeln!(out, "{requests}{{{l}}} {}", s.counters.ops);
    }
    let bytes = name("bytes_total");
    header(out, &bytes, "counter", &format!("Bytes of block I/O completed.{note}"));
    for (l, s) in rows {
        let _ = writeln!(out, "{bytes}{{{l}}} {}", s.counters.bytes);
    }
    if !latency {
        return;
    }
    let total = name("latency_seconds");
    header(
        out,
        &total,
        "histogram",
        &format!("Request latency from insert (or issue, if issued directly) to completion.{note}"),
    );
    for (l, s) in rows {
        let c = &s.counters;
        histogram(out, &total, l, &c.total_hist, c.ops, c.queue_ns + c.disk_ns);
    }
    let queue = name("queue_latency_seconds");
    header(out, &queue, "histogram", &format!("Time from insert into the I/O scheduler to issue to the driver.{note}"));
    for (l, s) in rows {
        let c = &s.counters;
        histogram(out, &queue, l, &c.queue_hist, c.queued_ops, c.queue_ns);
    }
    let device = name("device_latency_seconds");
    header(out, &device, "histogram", &format!("Time from issue to the driver to completion.{note}"));
    for (l, s) in rows {
        let c = &s.counters;
        histogram(out, &device, l, &c.disk_hist, c.ops, c.disk_ns);
    }
}

/// blk-throttle's wait, on the series it ever held a bio of (a cgroup the
/// throttle never touched has none: at 1,000 pods, a histogram on every
/// series would add a tenth to every scrape to say zero). `_sum` is the
/// seconds held back, `_count` the bios.
fn throttle_family(out: &mut String, rows: &[(&str, &Series)]) {
    let name = "iogate_io_throttle_wait_seconds";
    header(
        out,
        name,
        "histogram",
        "Time blk-throttle held a bio back because its cgroup was over its own limit on the device (queued by the throttle to released).",
    );
    for (l, s) in rows.iter().filter(|(_, s)| s.counters.throttled_ios > 0) {
        let c = &s.counters;
        histogram(out, name, l, &c.throttle_hist, c.throttled_ios, c.throttle_wait_ns);
    }
}

/// The I/O stall totals ([`crate::pressure`]): per pod, from the pod's own
/// cgroup, and per container (or cgroup outside pods), from its own. Two
/// families, as stall time does not add up: the pod's is not the sum of
/// its containers'. Only cgroups that ever stalled have a series (a zero
/// on every idle pod would only grow the scrape), and `full` never
/// exceeds `some`, so both appear once `some` does.
fn pressure_families(out: &mut String, frame: &Frame) {
    let mut containers: BTreeMap<&str, &CgroupOwner> = BTreeMap::new();
    let mut pods: BTreeMap<&str, &CgroupOwner> = BTreeMap::new();
    for s in &frame.series {
        containers.insert(&s.owner.cgroup, &s.owner);
        if let Some(pod) = PodCgroup::pod_dir(&s.owner.cgroup) {
            pods.insert(pod, &s.owner);
        }
    }
    let stalled = |path: &str| frame.stall(path).filter(|t| t.some_us > 0).copied();
    let pod_rows: Vec<(String, StallTotals)> = pods
        .into_iter()
        .filter_map(|(path, w)| {
            let l = format!(
                "namespace=\"{}\",pod=\"{}\"",
                escape(w.namespace.as_deref().unwrap_or("")),
                escape(w.pod.as_deref().unwrap_or(""))
            );
            Some((l, stalled(path)?))
        })
        .collect();
    let container_rows: Vec<(String, StallTotals)> =
        containers.into_iter().filter_map(|(path, w)| Some((owner_labels(w), stalled(path)?))).collect();
    for (family, rows, whose) in [
        ("iogate_pod_io_pressure", &pod_rows, "the pod's (its own cgroup's, not a sum over its containers)"),
        ("iogate_container_io_pressure", &container_rows, "the container's (or the cgroup's, outside pods)"),
    ] {
        let some = format!("{family}_some_seconds_total");
        header(
            out,
            &some,
            "counter",
            &format!("Time in which at least one of {whose} tasks was stalled on I/O (PSI some, io.pressure)."),
        );
        for (l, t) in rows.iter() {
            let _ = writeln!(out, "{some}{{{l}}} {}", t.some_seconds());
        }
        let full = format!("{family}_full_seconds_total");
        header(
            out,
            &full,
            "counter",
            &format!(
                "Time in which all of {whose} non-idle tasks were stalled on I/O at once (PSI full, io.pressure)."
            ),
        );
        for (l, t) in rows.iter() {
            let _ = writeln!(out, "{full}{{{l}}} {}", t.full_seconds());
        }
    }
}

pub fn render(frame: Option<&Frame>, me: SelfState) -> String {
    let mut out = String::with_capacity(64 * 1024);
    header(
        &mut out,
        "iogate_sidecar_ebpf_loaded",
        "gauge",
        "1 when the eBPF program is attached; 0 in the cgroup-statistics fallback (no latency).",
    );
    let _ = writeln!(out, "iogate_sidecar_ebpf_loaded {}", u8::from(me.ebpf_loaded));
    header(
        &mut out,
        "iogate_sidecar_pods_synced",
        "gauge",
        "1 once the pods of this node have been listed from the Kubernetes API.",
    );
    let _ = writeln!(out, "iogate_sidecar_pods_synced {}", u8::from(me.pods_synced));
    let Some(frame) = frame else {
        return out;
    };
    header(
        &mut out,
        "iogate_sidecar_throttle_wait_measured",
        "gauge",
        "1 when blk-throttle's wait is timed per bio (iogate_io_throttle_wait_seconds); 0 where the kernel refuses the programs (see /readyz).",
    );
    let _ = writeln!(out, "iogate_sidecar_throttle_wait_measured {}", u8::from(frame.throttle_wait));
    header(
        &mut out,
        "iogate_sidecar_io_pressure_measured",
        "gauge",
        "1 when pods' and containers' I/O stall time is read (iogate_pod_io_pressure_*); 0 on cgroup v1 or without PSI (see /readyz).",
    );
    let _ = writeln!(out, "iogate_sidecar_io_pressure_measured {}", u8::from(frame.pressure.is_some()));
    let rows: Vec<(String, &Series)> = frame.series.iter().map(|s| (labels(s), s)).collect();
    let top: Vec<(&str, &Series)> =
        rows.iter().filter(|(_, s)| s.lower_layer_of.is_none()).map(|(l, s)| (l.as_str(), *s)).collect();
    let lower_labels: Vec<(String, &Series)> = rows
        .iter()
        .filter_map(|(l, s)| s.lower_layer_of.map(|upper| (format!("{l},lower_layer_of=\"{upper}\""), *s)))
        .collect();
    let lower: Vec<(&str, &Series)> = lower_labels.iter().map(|(l, s)| (l.as_str(), *s)).collect();
    let latency = frame.source == SourceKind::Ebpf;
    families(&mut out, "iogate_io", "", &top, latency);
    if frame.throttle_wait {
        throttle_family(&mut out, &top);
    }
    // No stacked device in use: no lower-layer family at all.
    if !lower.is_empty() {
        families(
        &mut out,
        "iogate_io_lower_layer",
        " The lower layer of a stacked device: requests a loop or multipath device (lower_layer_of) passed down to this device, already counted in the iogate_io_ family on that device.",
        &lower,
        latency,
    );
    }
    if frame.pressure.is_some() {
        pressure_families(&mut out, frame);
    }
    header(&mut out, "iogate_io_limit", "gauge", "Block I/O limit in force on the cgroup for the device (unit: iops or bytes_per_second); absent when unlimited.");
    for (l, s) in &rows {
        let Some(limits) = s.limits else { continue };
        let (iops, bps) = match s.direction {
            crate::counters::Direction::Read => (Knob::ReadIops, Knob::ReadBps),
            crate::counters::Direction::Write => (Knob::WriteIops, Knob::WriteBps),
        };
        if let Some(v) = limits.get(iops) {
            let _ = writeln!(out, "iogate_io_limit{{{l},unit=\"iops\"}} {v}");
        }
        if let Some(v) = limits.get(bps) {
            let _ = writeln!(out, "iogate_io_limit{{{l},unit=\"bytes_per_second\"}} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Instant, SystemTime};

    use iogate_core::{Device, Limits};

    use super::*;
    use crate::counters::{CgroupId, Direction, IoCounters, IoKey, Snapshot};
    use crate::frame::testing::Table;
    use crate::stacking::Stacking;

    fn frame(source: SourceKind) -> Frame {
        let dev = Device::new(7, 0);
        let table = Table::default().pod(1, "shop", "web-0", "app").cgroup(2, "/we\"ird\\path").limit(
            1,
            dev,
            Limits { read_iops: Some(200), read_bps: Some(1 << 20), ..Limits::UNLIMITED },
        );
        let mut c = IoCounters {
            ops: 3,
            bytes: 12_288,
            queued_ops: 2,
            queue_ns: 30_000,
            disk_ns: 270_000,
            ..Default::default()
        };
        c.total_hist.record(20_000); // bucket 14: [16384, 32768)
        c.total_hist.record(100_000); // bucket 16
        c.total_hist.record(200_000); // bucket 17
        let counters = HashMap::from([
            (IoKey { cgroup: CgroupId(1), device: dev, direction: Direction::Read }, c),
            (
                IoKey { cgroup: CgroupId(2), device: dev, direction: Direction::Write },
                IoCounters { ops: 1, ..Default::default() },
            ),
        ]);
        Frame::attribute(Snapshot { taken_at: Instant::now(), source, counters }, SystemTime::now(), &table)
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_the_count() {
        let text = render(Some(&frame(SourceKind::Ebpf)), SelfState { ebpf_loaded: true, pods_synced: true });
        let l = "namespace=\"shop\",pod=\"web-0\",container=\"app\",cgroup=\"\",device=\"7:0\",direction=\"read\"";
        for line in [
            format!("iogate_io_requests_total{{{l}}} 3"),
            format!("iogate_io_bytes_total{{{l}}} 12288"),
            format!("iogate_io_latency_seconds_bucket{{{l},le=\"0.000016384\"}} 0"),
            format!("iogate_io_latency_seconds_bucket{{{l},le=\"0.000065536\"}} 1"),
            format!("iogate_io_latency_seconds_bucket{{{l},le=\"0.000262144\"}} 3"),
            format!("iogate_io_latency_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("iogate_io_latency_seconds_sum{{{l}}} 0.0003"),
            format!("iogate_io_queue_latency_seconds_count{{{l}}} 2"),
            format!("iogate_io_limit{{{l},unit=\"iops\"}} 200"),
            format!("iogate_io_limit{{{l},unit=\"bytes_per_second\"}} 1048576"),
            "iogate_sidecar_ebpf_loaded 1".to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("cgroup=\"/we\\\"ird\\\\path\""), "label values are escaped");
    }

    /// A loop device over a disk, both charged to one container: the disk's
    /// series are the lower layer's, marked with the loop device, and the
    /// plain families sum to the loop device's requests only.
    #[test]
    fn a_stacked_pair_puts_the_lower_device_in_its_own_marked_family() {
        let (lo, disk) = (Device::new(7, 0), Device::new(8, 0));
        let table = Table::default().pod(1, "shop", "web-0", "app");
        let key = |device| IoKey { cgroup: CgroupId(1), device, direction: Direction::Write };
        let mut c = IoCounters { ops: 300, bytes: 300 * 4096, queued_ops: 300, disk_ns: 300_000, ..Default::default() };
        c.total_hist.record(1_000);
        let counters = HashMap::from([(key(lo), c), (key(disk), c)]);
        let snapshot = Snapshot { taken_at: Instant::now(), source: SourceKind::Ebpf, counters };
        let mut frame = Frame::attribute(snapshot, SystemTime::now(), &table);
        frame.mark_layers(&Stacking::with(&[(lo, disk)]));
        let text = render(Some(&frame), SelfState { ebpf_loaded: true, pods_synced: true });
        let samples: Vec<(&str, &str)> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('{')).collect();
        let top = "namespace=\"shop\",pod=\"web-0\",container=\"app\",cgroup=\"\",device=\"7:0\",direction=\"write\"";
        let low = "namespace=\"shop\",pod=\"web-0\",container=\"app\",cgroup=\"\",device=\"8:0\",direction=\"write\",\
                   lower_layer_of=\"7:0\"";
        for line in [
            format!("iogate_io_requests_total{{{top}}} 300"),
            format!("iogate_io_latency_seconds_count{{{top}}} 300"),
            format!("iogate_io_lower_layer_requests_total{{{low}}} 300"),
            format!("iogate_io_lower_layer_bytes_total{{{low}}} 1228800"),
            format!("iogate_io_lower_layer_device_latency_seconds_count{{{low}}} 300"),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in\n{text}");
        }
        for (name, labels) in &samples {
            let is_lower = name.starts_with("iogate_io_lower_layer_");
            assert_eq!(labels.contains("device=\"8:0\""), is_lower, "{name}{{{labels}");
            assert_eq!(labels.contains("lower_layer_of=\"7:0\""), is_lower, "{name}{{{labels}");
        }
        assert!(text.contains("# TYPE iogate_io_lower_layer_latency_seconds histogram"));

        // Without the stacking known (or the loop device unused) the disk is
        // a top-layer device like any other.
        frame.mark_layers(&Stacking::default());
        let text = render(Some(&frame), SelfState { ebpf_loaded: true, pods_synced: true });
        assert!(!text.contains("lower_layer"), "{text}");
        assert_eq!(text.matches("iogate_io_requests_total{").count(), 2);
    }

    #[test]
    fn throttle_waits_are_a_histogram_on_the_series_the_throttle_held() {
        let mut f = frame(SourceKind::Ebpf);
        let text = render(Some(&f), SelfState { ebpf_loaded: true, pods_synced: true });
        assert!(text.lines().any(|x| x == "iogate_sidecar_throttle_wait_measured 0"), "{text}");
        assert!(!text.contains("TYPE iogate_io_throttle_wait_seconds"), "not measured: no family at all");

        f.throttle_wait = true;
        let read = f.series.iter_mut().find(|s| s.direction == Direction::Read).unwrap();
        read.counters.throttled_ios = 2;
        read.counters.throttle_wait_ns = 600_000_000;
        read.counters.throttle_hist.record(300_000_000); // bucket 28
        read.counters.throttle_hist.record(300_000_000);
        let text = render(Some(&f), SelfState { ebpf_loaded: true, pods_synced: true });
        let l = "namespace=\"shop\",pod=\"web-0\",container=\"app\",cgroup=\"\",device=\"7:0\",direction=\"read\"";
        for line in [
            "iogate_sidecar_throttle_wait_measured 1".to_string(),
            format!("iogate_io_throttle_wait_seconds_bucket{{{l},le=\"0.268435456\"}} 0"),
            format!("iogate_io_throttle_wait_seconds_bucket{{{l},le=\"1.073741824\"}} 2"),
            format!("iogate_io_throttle_wait_seconds_sum{{{l}}} 0.6"),
            format!("iogate_io_throttle_wait_seconds_count{{{l}}} 2"),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("iogate_io_throttle_wait_seconds_count{").count(), 1, "only the held series");
    }

    #[test]
    fn the_fallback_has_no_latency_series() {
        let text = render(Some(&frame(SourceKind::CgroupStats)), SelfState { ebpf_loaded: false, pods_synced: false });
        assert!(!text.contains("latency_seconds"));
        assert!(text.contains("iogate_io_requests_total{"));
        assert!(text.contains("iogate_sidecar_ebpf_loaded 0"));
    }

    #[test]
    fn stall_time_is_a_counter_per_pod_and_per_container_that_stalled() {
        let f = frame(SourceKind::Ebpf);
        let text = render(Some(&f), SelfState { ebpf_loaded: true, pods_synced: true });
        assert!(text.lines().any(|x| x == "iogate_sidecar_io_pressure_measured 0"), "{text}");
        assert!(!text.contains("io_pressure_some"), "not measured: no family at all");

        let app = f.series.iter().find(|s| s.owner.pod.is_some()).unwrap().owner.cgroup.clone();
        let pod = PodCgroup::pod_dir(&app).unwrap().to_string();
        let mut f = f;
        f.pressure = Some(HashMap::from([
            (pod, StallTotals { some_us: 2_500_000, full_us: 1_000_000 }),
            (app, StallTotals { some_us: 2_000_000, full_us: 1_000_000 }),
            // Measured and never stalled: no series.
            ("/we\"ird\\path".to_string(), StallTotals::default()),
        ]));
        let text = render(Some(&f), SelfState { ebpf_loaded: true, pods_synced: true });
        let c = "namespace=\"shop\",pod=\"web-0\",container=\"app\",cgroup=\"\"";
        for line in [
            "iogate_sidecar_io_pressure_measured 1".to_string(),
            "iogate_pod_io_pressure_some_seconds_total{namespace=\"shop\",pod=\"web-0\"} 2.5".to_string(),
            "iogate_pod_io_pressure_full_seconds_total{namespace=\"shop\",pod=\"web-0\"} 1".to_string(),
            format!("iogate_container_io_pressure_some_seconds_total{{{c}}} 2"),
            format!("iogate_container_io_pressure_full_seconds_total{{{c}}} 1"),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("iogate_container_io_pressure_some_seconds_total{").count(), 1, "{text}");
        assert!(text.contains("# TYPE iogate_pod_io_pressure_some_seconds_total counter"));
    }
}
