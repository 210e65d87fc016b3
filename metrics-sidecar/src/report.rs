//! A window's groups as the REST API's pod documents ([`iogate_api`]'s
//! types), judged: bottleneck, anomaly, trend.
//!
//! Latency fields are `null` when latency is unavailable (the cgroup
//! statistics fallback), never zero: a zero would read as "fast". So are
//! the throttle's wait and the stall time where they are not measured.

use std::collections::BTreeMap;
use std::time::SystemTime;

use iogate_api::{ContainerMetrics, DeviceMetrics, PodMetrics, Trend, KIND_CGROUP, KIND_POD};

use crate::counters::{IoCounters, Log2Histogram};
use crate::diagnosis::{diagnose, limit_fraction, Bottleneck, NetworkMajors};
use crate::history::History;
use crate::window::{GroupKey, GroupUsage, Window};

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A pod's metrics with the judgements IOEye puts next to them.
#[derive(Debug, Clone)]
pub struct Assessed {
    pub key: GroupKey,
    pub metrics: PodMetrics,
    pub bottleneck: Bottleneck,
    pub anomaly: bool,
    pub trend: Option<Trend>,
}

impl Assessed {
    /// The latency topslow sorts by: the slower direction's mean.
    pub fn slowness(&self) -> Option<u64> {
        self.metrics.read_latency_ns.max(self.metrics.write_latency_ns)
    }
}

fn mean(sum: u64, n: u64) -> Option<u64> {
    (n > 0).then(|| sum / n)
}

fn quantile(h: &Log2Histogram, q: f64, available: bool) -> Option<u64> {
    if available {
        h.quantile_ns(q)
    } else {
        None
    }
}

fn pod_metrics(group: &GroupUsage, window: &Window) -> PodMetrics {
    let available = window.source.has_latency();
    let latency = |c: &IoCounters| if available { mean(c.queue_ns + c.disk_ns, c.ops) } else { None };
    let mut both = group.read;
    both.add(&group.write);
    let (pod_name, namespace, kind) = match &group.key {
        GroupKey::Pod { namespace, name } => (name.clone(), namespace.clone(), KIND_POD),
        GroupKey::Cgroup(path) => (path.clone(), String::new(), KIND_CGROUP),
    };
    let rate = |n: u64| window.per_second(n).round() as u64;
    PodMetrics {
        pod_name,
        namespace,
        read_latency_ns: latency(&group.read),
        write_latency_ns: latency(&group.write),
        read_iops: rate(group.read.ops),
        write_iops: rate(group.write.ops),
        read_throughput_bps: rate(group.read.bytes),
        write_throughput_bps: rate(group.write.bytes),
        queue_latency_ns: if available { mean(both.queue_ns, both.queued_ops) } else { None },
        disk_latency_ns: if available { mean(both.disk_ns, both.ops) } else { None },
        timestamp: rfc3339(window.ended),
        pod_uid: group.pod_uid.clone(),
        kind: kind.to_string(),
        latency_available: available,
        read_latency_p50_ns: quantile(&group.read.total_hist, 0.50, available),
        read_latency_p95_ns: quantile(&group.read.total_hist, 0.95, available),
        read_latency_p99_ns: quantile(&group.read.total_hist, 0.99, available),
        write_latency_p50_ns: quantile(&group.write.total_hist, 0.50, available),
        write_latency_p95_ns: quantile(&group.write.total_hist, 0.95, available),
        write_latency_p99_ns: quantile(&group.write.total_hist, 0.99, available),
        throttle_wait_ns: if window.throttle_wait { mean(both.throttle_wait_ns, both.throttled_ios) } else { None },
        throttle_wait_p99_ns: quantile(&both.throttle_hist, 0.99, window.throttle_wait),
        throttled_seconds: window.throttle_wait.then(|| both.throttle_wait_ns as f64 / 1e9),
        io_pressure_some_seconds: group.pressure.map(|p| p.some_seconds()),
        io_pressure_full_seconds: group.pressure.map(|p| p.full_seconds()),
        window_seconds: window.seconds,
        containers: group
            .containers
            .iter()
            .map(|c| ContainerMetrics {
                container: c.owner.container.clone(),
                container_id: c.owner.container_id.as_ref().map(|c| c.to_string()),
                cgroup: c.owner.cgroup.clone(),
                devices: c
                    .devices
                    .iter()
                    .map(|d| DeviceMetrics {
                        device: d.device.to_string(),
                        read_iops: window.per_second(d.read.ops),
                        write_iops: window.per_second(d.write.ops),
                        read_throughput_bps: window.per_second(d.read.bytes),
                        write_throughput_bps: window.per_second(d.write.bytes),
                        limits: d.limits,
                        limit_utilization: limit_fraction(d, window.seconds),
                        lower_layer_of: d.lower_layer_of.map(|u| u.to_string()),
                    })
                    .collect(),
                // Filled in from the NRI plugin's answer before publishing.
                guarantee: None,
                io_pressure_some_seconds: c.pressure.map(|p| p.some_seconds()),
                io_pressure_full_seconds: c.pressure.map(|p| p.full_seconds()),
            })
            .collect(),
    }
}

/// Judges every group of a window, and records it in the history.
pub fn assess(window: &Window, history: &mut History, network: &NetworkMajors) -> Vec<Assessed> {
    let now = std::time::Instant::now();
    let available = window.source.has_latency();
    let out = window
        .groups
        .iter()
        .map(|group| {
            let metrics = pod_metrics(group, window);
            let mut both = group.read;
            both.add(&group.write);
            let mean_latency = if available && both.ops > 0 {
                Some((both.queue_ns + both.disk_ns) as f64 / both.ops as f64)
            } else {
                None
            };
            let anomaly = history.record(&group.key, now, mean_latency);
            Assessed {
                key: group.key.clone(),
                bottleneck: diagnose(group, window.seconds, available, network),
                anomaly,
                trend: history.trend(&group.key),
                metrics,
            }
        })
        .collect();
    history.expire(now);
    out
}

/// Map keys for `pod_metrics`: the pod name, as IOEye has it, except where
/// the same name exists in several namespaces; those become
/// `namespace/name` so that no pod hides another.
pub fn map_keys(pods: &[&Assessed]) -> Vec<String> {
    let mut namespaces_of: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pods {
        *namespaces_of.entry(p.metrics.pod_name.as_str()).or_default() += 1;
    }
    pods.iter()
        .map(|p| {
            if namespaces_of[p.metrics.pod_name.as_str()] > 1 {
                format!("{}/{}", p.metrics.namespace, p.metrics.pod_name)
            } else {
                p.metrics.pod_name.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use iogate_core::{Device, Limits};

    use super::*;
    use crate::counters::{CgroupId, Direction, IoKey, Snapshot, SourceKind};
    use crate::frame::testing::Table;
    use crate::frame::Frame;
    use crate::pressure::StallTotals;
    use crate::stacking::Stacking;

    fn window(source: SourceKind) -> Window {
        let dev = Device::new(7, 0);
        let table = Table::default().pod(1, "shop", "web-0", "app").limit(
            1,
            dev,
            Limits { read_iops: Some(200), ..Limits::UNLIMITED },
        );
        let t0 = Instant::now();
        let frame = |at, ops: u64| {
            let mut c = IoCounters { ops, bytes: ops * 4096, queued_ops: ops, ..Default::default() };
            c.queue_ns = ops * 10_000;
            c.disk_ns = ops * 90_000;
            for _ in 0..ops {
                c.total_hist.record(100_000);
            }
            let counters = HashMap::from([(IoKey { cgroup: CgroupId(1), device: dev, direction: Direction::Read }, c)]);
            Frame::attribute(Snapshot { taken_at: at, source, counters }, SystemTime::UNIX_EPOCH, &table)
        };
        Window::between(&frame(t0, 100), &frame(t0 + Duration::from_secs(2), 300), &Stacking::default())
    }

    #[test]
    fn ioeye_fields_come_from_the_window() {
        let mut history = History::default();
        let a = assess(&window(SourceKind::Ebpf), &mut history, &NetworkMajors::default());
        let m = &a[0].metrics;
        assert_eq!((m.pod_name.as_str(), m.namespace.as_str()), ("web-0", "shop"));
        assert_eq!((m.read_iops, m.read_throughput_bps, m.write_iops), (100, 409_600, 0));
        assert_eq!(
            (m.read_latency_ns, m.queue_latency_ns, m.disk_latency_ns),
            (Some(100_000), Some(10_000), Some(90_000))
        );
        assert!((65_536..131_072).contains(&m.read_latency_p50_ns.unwrap()));
        assert_eq!(m.write_latency_ns, None, "no writes: no write latency");
        assert_eq!(m.timestamp, "1970-01-01T00:00:00Z");
        let dev = &m.containers[0].devices[0];
        assert_eq!(dev.limits.unwrap().read_iops, Some(200));
        assert!((dev.limit_utilization - 0.5).abs() < 1e-9);
        assert_eq!(a[0].bottleneck, Bottleneck::None);
    }

    #[test]
    fn the_fallback_marks_latency_unavailable_instead_of_zero() {
        let mut history = History::default();
        let a = assess(&window(SourceKind::CgroupStats), &mut history, &NetworkMajors::default());
        let m = &a[0].metrics;
        assert_eq!(m.read_iops, 100);
        assert!(!m.latency_available);
        assert_eq!(
            (m.read_latency_ns, m.queue_latency_ns, m.disk_latency_ns, m.read_latency_p99_ns),
            (None, None, None, None)
        );
        assert_eq!(a[0].bottleneck, Bottleneck::Unknown);
        let json = serde_json::to_value(m).unwrap();
        assert!(json["read_latency_ns"].is_null());
    }

    #[test]
    fn the_throttle_wait_is_null_where_unmeasured_and_a_mean_where_measured() {
        let mut history = History::default();
        let mut w = window(SourceKind::Ebpf);
        let m = &assess(&w, &mut history, &NetworkMajors::default())[0].metrics;
        assert_eq!((m.throttled_seconds, m.throttle_wait_ns, m.throttle_wait_p99_ns), (None, None, None));
        assert!(serde_json::to_value(m).unwrap()["throttled_seconds"].is_null(), "unmeasured is null, not 0");

        w.throttle_wait = true;
        let m = &assess(&w, &mut history, &NetworkMajors::default())[0].metrics;
        assert_eq!((m.throttled_seconds, m.throttle_wait_ns), (Some(0.0), None), "measured, and none held");

        let read = &mut w.groups[0].read;
        read.throttled_ios = 4;
        read.throttle_wait_ns = 4 * 300_000_000;
        for _ in 0..4 {
            read.throttle_hist.record(300_000_000);
        }
        let m = &assess(&w, &mut history, &NetworkMajors::default())[0].metrics;
        assert_eq!((m.throttled_seconds, m.throttle_wait_ns), (Some(1.2), Some(300_000_000)));
        assert!((268_435_456..536_870_912).contains(&m.throttle_wait_p99_ns.unwrap()));
    }

    #[test]
    fn stall_time_is_null_where_unmeasured_and_seconds_where_measured() {
        let mut history = History::default();
        let mut w = window(SourceKind::Ebpf);
        let m = &assess(&w, &mut history, &NetworkMajors::default())[0].metrics;
        assert_eq!((m.io_pressure_some_seconds, m.io_pressure_full_seconds), (None, None));
        let json = serde_json::to_value(m).unwrap();
        assert!(
            json["io_pressure_some_seconds"].is_null() && json["containers"][0]["io_pressure_some_seconds"].is_null()
        );

        w.groups[0].pressure = Some(StallTotals { some_us: 1_750_000, full_us: 250_000 });
        w.groups[0].containers[0].pressure = Some(StallTotals { some_us: 1_500_000, full_us: 0 });
        let m = &assess(&w, &mut history, &NetworkMajors::default())[0].metrics;
        assert_eq!((m.io_pressure_some_seconds, m.io_pressure_full_seconds), (Some(1.75), Some(0.25)));
        let c = &m.containers[0];
        assert_eq!((c.io_pressure_some_seconds, c.io_pressure_full_seconds), (Some(1.5), Some(0.0)));
    }

    #[test]
    fn clashing_pod_names_are_qualified_by_namespace() {
        let mut history = History::default();
        let base = &assess(&window(SourceKind::Ebpf), &mut history, &NetworkMajors::default())[0];
        let mut other = base.clone();
        other.metrics.namespace = "staging".into();
        let mut alone = base.clone();
        alone.metrics.pod_name = "db-0".into();
        assert_eq!(map_keys(&[base, &other, &alone]), vec!["shop/web-0", "staging/web-0", "db-0"]);
    }
}
