//! The client's reading of `GET /api/v1/metrics`: only the fields the
//! plugin shows, mirrored from [`crate::report`] rather than shared, because
//! the server's types hold `&'static str` and other borrowed pieces that do
//! not deserialize, and because a plugin should read an older or newer
//! sidecar: unknown fields are ignored, and fields the sidecar has added
//! over time default when absent.

use std::collections::BTreeMap;

pub use iogate_core::Limits;
use serde::Deserialize;

/// The sidecar's `source` when eBPF could not load: rates only, no latency.
pub const DEGRADED_SOURCE: &str = "cgroup-stats";

/// One node's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsResponse {
    pub source: String,
    #[serde(default = "yes")]
    pub latency_available: bool,
    /// By pod name, or `namespace/name` where the name clashes on that node.
    pub pod_metrics: BTreeMap<String, PodMetrics>,
    /// Same keys as `pod_metrics`.
    #[serde(default)]
    pub bottlenecks: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl MetricsResponse {
    /// A node whose sidecar serves cgroup statistics instead of eBPF.
    pub fn degraded(&self) -> bool {
        self.source == DEGRADED_SOURCE || !self.latency_available
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodMetrics {
    pub pod_name: String,
    pub namespace: String,
    pub read_iops: u64,
    pub write_iops: u64,
    pub read_throughput_bps: u64,
    pub write_throughput_bps: u64,
    #[serde(default)]
    pub read_latency_p99_ns: Option<u64>,
    #[serde(default)]
    pub write_latency_p99_ns: Option<u64>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContainerMetrics {
    /// `null` for a pod-level cgroup no container name was found for.
    pub container: Option<String>,
    #[serde(default)]
    pub devices: Vec<DeviceMetrics>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceMetrics {
    pub device: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_throughput_bps: f64,
    pub write_throughput_bps: f64,
    /// `null`: the limits could not be read; a `null` knob: unlimited.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Set on a stacked device's backing disk, whose requests are already
    /// counted on the device above: the sidecar leaves it out of the pod's
    /// totals, and so does the plugin.
    #[serde(default)]
    pub lower_layer_of: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;

    /// The mirror must read what the server writes: serialize the server's
    /// own type and read it back here.
    #[test]
    fn reads_what_the_sidecar_serializes() {
        let server = report::PodMetrics {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            read_latency_ns: Some(1),
            write_latency_ns: None,
            read_iops: 150,
            write_iops: 2,
            read_throughput_bps: 614_400,
            write_throughput_bps: 8192,
            queue_latency_ns: None,
            disk_latency_ns: None,
            timestamp: "1970-01-01T00:00:00Z".into(),
            pod_uid: Some("u-1".into()),
            kind: "pod",
            latency_available: true,
            read_latency_p50_ns: None,
            read_latency_p95_ns: None,
            read_latency_p99_ns: Some(5_000_000),
            write_latency_p50_ns: None,
            write_latency_p95_ns: None,
            write_latency_p99_ns: None,
            window_seconds: 5.0,
            containers: vec![report::ContainerMetrics {
                container: Some("app".into()),
                container_id: None,
                cgroup: "/kubepods/x".into(),
                devices: vec![report::DeviceMetrics {
                    device: "7:0".into(),
                    read_iops: 150.0,
                    write_iops: 2.0,
                    read_throughput_bps: 614_400.0,
                    write_throughput_bps: 8192.0,
                    limits: Some(Limits { read_iops: Some(150), ..Limits::UNLIMITED }),
                    limit_utilization: 1.0,
                    lower_layer_of: None,
                }],
            }],
        };
        let text = serde_json::to_string(&server).unwrap();
        let read: PodMetrics = serde_json::from_str(&text).unwrap();
        assert_eq!((read.pod_name.as_str(), read.read_iops, read.read_latency_p99_ns), ("web-0", 150, Some(5_000_000)));
        let device = &read.containers[0].devices[0];
        assert_eq!(device.limits, Some(Limits { read_iops: Some(150), ..Limits::default() }));
    }
}
