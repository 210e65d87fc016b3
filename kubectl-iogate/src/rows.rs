//! From the nodes' answers to the sorted rows the plugin prints: one row per
//! container, with its rates and tightest limit, and its pod's p99 latency
//! and bottleneck (the sidecar measures those per pod, not per container).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use iogate_api::{ContainerMetrics, DeviceMetrics, Guarantee, Limits, MetricsResponse, PodMetrics};
use iogate_core::Knob;

use crate::workload::Workload;

/// One sidecar's answer, named by the node it runs on (or the endpoint's
/// address when queried directly).
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node: String,
    pub response: MetricsResponse,
}

/// A pod as one node reported it.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub node: String,
    pub metrics: PodMetrics,
    pub bottleneck: Option<String>,
}

/// Every node's pods together, and which nodes could not measure latency.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub pods: Vec<PodEntry>,
    pub degraded_nodes: Vec<String>,
}

/// Puts the nodes' pods together. The map keys are only unique per node
/// (each sidecar qualifies a clashing name by namespace on its own), so
/// pods are identified by their namespace, name and UID instead; a pod
/// reported twice (the same sidecar given twice) is kept once.
pub fn merge(nodes: Vec<NodeReport>) -> Merged {
    let mut merged = Merged::default();
    let mut seen = HashSet::new();
    for NodeReport { node, response } in nodes {
        if response.degraded() {
            merged.degraded_nodes.push(node.clone());
        }
        for (key, metrics) in response.pod_metrics {
            let identity = (metrics.namespace.clone(), metrics.pod_name.clone(), metrics.pod_uid.clone());
            if !seen.insert(identity) {
                continue;
            }
            let bottleneck = response.bottlenecks.get(&key).cloned();
            merged.pods.push(PodEntry { node: node.clone(), metrics, bottleneck });
        }
    }
    merged.degraded_nodes.sort();
    merged.degraded_nodes.dedup();
    merged
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The worse of read and write p99.
    Latency,
    /// Reads plus writes per second.
    Iops,
    /// Bytes read plus written per second.
    Throughput,
}

impl FromStr for SortKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latency" => Ok(SortKey::Latency),
            "iops" => Ok(SortKey::Iops),
            "throughput" => Ok(SortKey::Throughput),
            other => Err(format!("expected latency, iops or throughput, found {other:?}")),
        }
    }
}

/// Which pods to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllNamespaces,
    Namespace(String),
}

impl Scope {
    fn admits(&self, namespace: &str) -> bool {
        match self {
            Scope::AllNamespaces => true,
            Scope::Namespace(ns) => ns == namespace,
        }
    }
}

/// Bytes knobs are shown in binary units, IOPS knobs as counts.
fn is_bytes(knob: Knob) -> bool {
    matches!(knob, Knob::ReadBps | Knob::WriteBps)
}

/// What the LIMIT column says about a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitCell {
    /// No knob set on any device it used.
    Unlimited,
    /// The sidecar could not read the limits.
    Unknown,
    /// The knob it is closest to, as a fraction of that limit.
    Tightest { knob: Knob, value: u64, utilization: f64 },
}

impl fmt::Display for LimitCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LimitCell::Unlimited => f.write_str("-"),
            LimitCell::Unknown => f.write_str("?"),
            LimitCell::Tightest { knob, value, utilization } => {
                let value = if is_bytes(knob) { binary_size(value) } else { value.to_string() };
                write!(f, "{value} {} {:.0}%", knob.io_max_key(), utilization * 100.0)
            }
        }
    }
}

/// `10485760` → `10Mi`, the way iogate's annotations write sizes; a value
/// that is no whole multiple stays in bytes.
fn binary_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    UNITS
        .iter()
        .find(|(_, size)| bytes >= *size && bytes.is_multiple_of(*size))
        .map(|(unit, size)| format!("{}{unit}", bytes / size))
        .unwrap_or_else(|| bytes.to_string())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub workload: Workload,
    pub pod: String,
    /// `-` for a pod-level cgroup without a container name.
    pub container: String,
    pub node: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bps: f64,
    pub write_bps: f64,
    pub read_p99_ns: Option<u64>,
    pub write_p99_ns: Option<u64>,
    pub limit: LimitCell,
    /// The NRI plugin's word on the limits, as the sidecar passed it on.
    pub guarantee: Option<Guarantee>,
    /// The pod's share of its I/O time spent held back by its own limit
    /// (0..=1); `None` where the node does not measure the wait.
    pub limit_wait: Option<f64>,
    pub bottleneck: Option<String>,
}

impl Row {
    fn sort_value(&self, key: SortKey) -> Option<f64> {
        match key {
            SortKey::Latency => self.read_p99_ns.max(self.write_p99_ns).map(|ns| ns as f64),
            SortKey::Iops => Some(self.read_iops + self.write_iops),
            SortKey::Throughput => Some(self.read_bps + self.write_bps),
        }
    }
}

/// One row per container of every pod in scope, each pod's workload found by
/// `workload_of`.
pub fn rows(merged: &Merged, scope: &Scope, workload_of: impl Fn(&PodMetrics) -> Workload) -> Vec<Row> {
    merged
        .pods
        .iter()
        .filter(|p| scope.admits(&p.metrics.namespace))
        .flat_map(|p| pod_rows(p, workload_of(&p.metrics)))
        .collect()
}

fn pod_rows(entry: &PodEntry, workload: Workload) -> Vec<Row> {
    let pod = &entry.metrics;
    let row = |container: &str| Row {
        namespace: pod.namespace.clone(),
        workload: workload.clone(),
        pod: pod.pod_name.clone(),
        container: container.to_string(),
        node: entry.node.clone(),
        read_iops: pod.read_iops as f64,
        write_iops: pod.write_iops as f64,
        read_bps: pod.read_throughput_bps as f64,
        write_bps: pod.write_throughput_bps as f64,
        read_p99_ns: pod.read_latency_p99_ns,
        write_p99_ns: pod.write_latency_p99_ns,
        limit: LimitCell::Unknown,
        guarantee: None,
        limit_wait: limit_wait(pod),
        bottleneck: entry.bottleneck.clone(),
    };
    if pod.containers.is_empty() {
        // An older sidecar without the breakdown: the pod as one row.
        return vec![row("-")];
    }
    pod.containers
        .iter()
        .map(|c| {
            let devices: Vec<&DeviceMetrics> = c.devices.iter().filter(|d| d.lower_layer_of.is_none()).collect();
            Row {
                read_iops: devices.iter().map(|d| d.read_iops).sum(),
                write_iops: devices.iter().map(|d| d.write_iops).sum(),
                read_bps: devices.iter().map(|d| d.read_throughput_bps).sum(),
                write_bps: devices.iter().map(|d| d.write_throughput_bps).sum(),
                limit: tightest(c),
                guarantee: c.guarantee,
                ..row(c.container.as_deref().unwrap_or("-"))
            }
        })
        .collect()
}

/// Of the pod's I/O time in the window, the share it spent held back by its
/// own limit: the throttle's wait against that wait plus its requests' own
/// time in the queue and on the device. Per I/O, not per second: a pod at
/// iodepth 32 waits 32 seconds a second.
fn limit_wait(pod: &PodMetrics) -> Option<f64> {
    let held = pod.throttled_seconds?;
    let busy = |iops: u64, latency_ns: Option<u64>| iops as f64 * latency_ns.unwrap_or(0) as f64 / 1e9;
    let served =
        (busy(pod.read_iops, pod.read_latency_ns) + busy(pod.write_iops, pod.write_latency_ns)) * pod.window_seconds;
    let total = held + served;
    Some(if total > 0.0 { held / total } else { 0.0 })
}

/// The knob, over all the container's devices, that its usage comes closest
/// to: the one that throttles first.
fn tightest(container: &ContainerMetrics) -> LimitCell {
    let mut best: Option<(Knob, u64, f64)> = None;
    let mut unread = false;
    for device in &container.devices {
        let Some(limits) = device.limits else {
            unread = true;
            continue;
        };
        for (knob, value, rate) in knobs(&limits, device) {
            let utilization = rate / value as f64;
            // Strictly greater keeps the first knob on ties (riops before wiops …).
            if best.is_none_or(|(_, _, u)| utilization > u) {
                best = Some((knob, value, utilization));
            }
        }
    }
    match best {
        Some((knob, value, utilization)) => LimitCell::Tightest { knob, value, utilization },
        None if unread => LimitCell::Unknown,
        None => LimitCell::Unlimited,
    }
}

fn knobs(limits: &Limits, d: &DeviceMetrics) -> impl Iterator<Item = (Knob, u64, f64)> {
    [
        (Knob::ReadIops, limits.read_iops, d.read_iops),
        (Knob::WriteIops, limits.write_iops, d.write_iops),
        (Knob::ReadBps, limits.read_bps, d.read_throughput_bps),
        (Knob::WriteBps, limits.write_bps, d.write_throughput_bps),
    ]
    .into_iter()
    .filter_map(|(knob, value, rate)| value.filter(|v| *v > 0).map(|v| (knob, v, rate)))
}

/// Highest first; rows without a value (latency on a degraded node) last,
/// whatever the direction, so they never crowd out measured ones; ties in
/// name order, so the output is stable from one run to the next.
pub fn sort(rows: &mut [Row], key: SortKey) {
    rows.sort_by(|a, b| {
        let by_value = match (a.sort_value(key), b.sort_value(key)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_value.then_with(|| {
            (&a.namespace, &a.workload, &a.pod, &a.container).cmp(&(&b.namespace, &b.workload, &b.pod, &b.container))
        })
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workload;

    /// Two nodes' answers, shared with the end-to-end test: `node-a` with
    /// eBPF, `node-b` on the cgroup-stats fallback (latency `null`).
    pub(crate) const NODE_A: &str = include_str!("../tests/data/node-a.json");
    pub(crate) const NODE_B: &str = include_str!("../tests/data/node-b.json");

    pub(crate) fn node(name: &str, json: &str) -> NodeReport {
        NodeReport { node: name.into(), response: serde_json::from_str(json).unwrap() }
    }

    pub(crate) fn canned_rows(key: SortKey) -> Vec<Row> {
        let merged = merge(vec![node("node-a", NODE_A), node("node-b", NODE_B)]);
        let mut rows = rows(&merged, &Scope::AllNamespaces, |p| workload::infer(&p.pod_name));
        sort(&mut rows, key);
        rows
    }

    fn order(rows: &[Row]) -> Vec<String> {
        rows.iter().map(|r| format!("{}/{}", r.pod, r.container)).collect()
    }

    #[test]
    fn merging_two_nodes_keeps_every_pod_and_names_the_degraded_node() {
        let merged = merge(vec![node("node-a", NODE_A), node("node-b", NODE_B), node("node-a", NODE_A)]);
        let mut pods: Vec<(&str, &str)> =
            merged.pods.iter().map(|p| (p.node.as_str(), p.metrics.pod_name.as_str())).collect();
        pods.sort();
        assert_eq!(pods, [("node-a", "pg-0"), ("node-a", "web-7d9f8b6c5d-x2kq9"), ("node-b", "backup-x")]);
        assert_eq!(merged.degraded_nodes, ["node-b"]);
        let pg = merged.pods.iter().find(|p| p.metrics.pod_name == "pg-0").unwrap();
        assert_eq!(pg.bottleneck.as_deref(), Some("disk"));
    }

    #[test]
    fn sorting_by_each_key_puts_missing_values_last() {
        assert_eq!(
            order(&canned_rows(SortKey::Latency)),
            ["pg-0/exporter", "pg-0/postgres", "web-7d9f8b6c5d-x2kq9/app", "backup-x/restic"],
            "backup-x has no latency (degraded node): last, though busiest"
        );
        assert_eq!(
            order(&canned_rows(SortKey::Iops)),
            ["backup-x/restic", "pg-0/postgres", "web-7d9f8b6c5d-x2kq9/app", "pg-0/exporter"]
        );
        assert_eq!(
            order(&canned_rows(SortKey::Throughput)),
            ["backup-x/restic", "pg-0/postgres", "pg-0/exporter", "web-7d9f8b6c5d-x2kq9/app"]
        );
    }

    #[test]
    fn container_rates_skip_lower_layers_and_find_the_tightest_limit() {
        let rows = canned_rows(SortKey::Iops);
        let postgres = rows.iter().find(|r| r.container == "postgres").unwrap();
        assert_eq!((postgres.read_iops, postgres.write_iops), (40.0, 200.0), "8:0 carries 8:16's requests");
        assert_eq!(postgres.limit.to_string(), "10Mi wbps 80%");
        let app = rows.iter().find(|r| r.container == "app").unwrap();
        assert_eq!(app.limit.to_string(), "150 riops 97%");
        let exporter = rows.iter().find(|r| r.container == "exporter").unwrap();
        assert_eq!(exporter.limit, LimitCell::Unlimited);
        assert_eq!(exporter.guarantee, Some(Guarantee::UnlimitedUnexpectedly));
        assert_eq!(postgres.guarantee, None, "a sidecar that had no word from the plugin");
    }

    #[test]
    fn scope_filters_by_namespace() {
        let merged = merge(vec![node("node-a", NODE_A)]);
        let rows = rows(&merged, &Scope::Namespace("db".into()), |p| workload::infer(&p.pod_name));
        assert_eq!(order(&rows), ["pg-0/postgres", "pg-0/exporter"]);
    }

    #[test]
    fn a_bad_sort_key_says_what_is_expected() {
        assert_eq!("speed".parse::<SortKey>().unwrap_err(), r#"expected latency, iops or throughput, found "speed""#);
        assert_eq!("iops".parse::<SortKey>(), Ok(SortKey::Iops));
    }

    #[test]
    fn sizes_in_binary_units_when_whole() {
        assert_eq!(binary_size(10 << 20), "10Mi");
        assert_eq!(binary_size(1536), "1536");
        assert_eq!(binary_size(3 << 30), "3Gi");
    }
}
