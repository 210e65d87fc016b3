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

use std::fmt::Write;

use iogate_core::Knob;

use crate::counters::{Log2Histogram, SourceKind};
use crate::frame::{Frame, Series};

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

fn labels(s: &Series) -> String {
    let w = &s.owner;
    format!(
        "namespace=\"{}\",pod=\"{}\",container=\"{}\",cgroup=\"{}\",device=\"{}\",direction=\"{}\"",
        escape(w.namespace.as_deref().unwrap_or("")),
        escape(w.pod.as_deref().unwrap_or("")),
        escape(w.container.as_deref().unwrap_or("")),
        if w.pod.is_some() { String::new() } else { escape(&w.cgroup) },
        s.device,
        s.direction
    )
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
    let rows: Vec<(String, &Series)> = frame.series.iter().map(|s| (labels(s), s)).collect();

    header(
        &mut out,
        "iogate_io_requests_total",
        "counter",
        "Block I/O requests completed, by the cgroup they are charged to.",
    );
    for (l, s) in &rows {
        let _ = writeln!(out, "iogate_io_requests_total{{{l}}} {}", s.counters.ops);
    }
    header(&mut out, "iogate_io_bytes_total", "counter", "Bytes of block I/O completed.");
    for (l, s) in &rows {
        let _ = writeln!(out, "iogate_io_bytes_total{{{l}}} {}", s.counters.bytes);
    }
    if frame.source == SourceKind::Ebpf {
        header(
            &mut out,
            "iogate_io_latency_seconds",
            "histogram",
            "Request latency from insert (or issue, if issued directly) to completion.",
        );
        for (l, s) in &rows {
            let c = &s.counters;
            histogram(&mut out, "iogate_io_latency_seconds", l, &c.total_hist, c.ops, c.queue_ns + c.disk_ns);
        }
        header(
            &mut out,
            "iogate_io_queue_latency_seconds",
            "histogram",
            "Time from insert into the I/O scheduler to issue to the driver.",
        );
        for (l, s) in &rows {
            let c = &s.counters;
            histogram(&mut out, "iogate_io_queue_latency_seconds", l, &c.queue_hist, c.queued_ops, c.queue_ns);
        }
        header(
            &mut out,
            "iogate_io_device_latency_seconds",
            "histogram",
            "Time from issue to the driver to completion.",
        );
        for (l, s) in &rows {
            let c = &s.counters;
            histogram(&mut out, "iogate_io_device_latency_seconds", l, &c.disk_hist, c.ops, c.disk_ns);
        }
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

    #[test]
    fn the_fallback_has_no_latency_series() {
        let text = render(Some(&frame(SourceKind::CgroupStats)), SelfState { ebpf_loaded: false, pods_synced: false });
        assert!(!text.contains("latency_seconds"));
        assert!(text.contains("iogate_io_requests_total{"));
        assert!(text.contains("iogate_sidecar_ebpf_loaded 0"));
    }
}
