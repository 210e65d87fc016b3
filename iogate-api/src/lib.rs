//! The documents of the iogate metrics sidecar's REST API, for the sidecar
//! that writes them and for the clients that read them (`kubectl iogate`).
//!
//! | request | document |
//! |---|---|
//! | `GET /api/v1/metrics` | [`MetricsResponse`] |
//! | `GET /api/v1/metrics/pod/{pod}[?namespace=ns]` | [`PodResponse`] |
//! | `GET /api/v1/metrics/topslow[?limit=n]` | [`TopSlowResponse`] |
//! | `GET /healthz`, `GET /api/v1/health` | [`HealthResponse`] |
//! | `GET /readyz` | [`ReadyResponse`] |
//! | `GET /api/v1/guarantee` (the NRI plugin's pod-local port) | [`GuaranteeResponse`] |
//! | any error | [`ErrorResponse`], with the HTTP status |
//!
//! Field names are IOEye's where IOEye has the field, so existing scripts
//! keep working. Latency fields are `null` when latency is unavailable (the
//! cgroup statistics fallback, or no I/O), never zero: a zero would read as
//! "fast".
//!
//! Forward compatible both ways: unknown fields are ignored, and fields
//! that sidecars added over time, or may leave out, take their default when
//! absent, so a client reads older and newer sidecars alike. Vocabularies
//! that may grow (`source`, `bottleneck`, `kind`, a trend's `direction`) are
//! strings, with the values known today as constants here.
//!
//! The envelopes are generic over the pod document so that a server can
//! serialize borrowed [`PodMetrics`] (`MetricsResponse<&PodMetrics>`) and a
//! client deserialize owned ones (the default).
//!
//! Every document's fields are declared in alphabetical order: the sidecar
//! used to build its answers as JSON maps, whose keys serde_json sorts, and
//! declaring them so keeps the bytes it serves the same. (IOEye's own fields
//! of a pod are `pod_name`, `namespace`, `read_latency_ns`,
//! `write_latency_ns`, `read_iops`, `write_iops`, `read_throughput_bps`,
//! `write_throughput_bps`, `queue_latency_ns`, `disk_latency_ns` and
//! `timestamp`; the others are iogate's.)

use std::collections::BTreeMap;

pub use iogate_core::Limits;
use serde::{Deserialize, Serialize};

mod guarantee;
pub use guarantee::{ContainerGuarantee, Guarantee, GuaranteeResponse};

/// `source` when the eBPF program counts: rates and latency.
pub const SOURCE_EBPF: &str = "ebpf";
/// `source` when eBPF could not load and the cgroups' own statistics are
/// read: rates only, no latency.
pub const SOURCE_CGROUP_STATS: &str = "cgroup-stats";

/// `kind` of a pod's metrics.
pub const KIND_POD: &str = "pod";
/// `kind` of a cgroup that belongs to no pod (a system service).
pub const KIND_CGROUP: &str = "cgroup";

fn yes() -> bool {
    true
}

/// `GET /api/v1/metrics`: every pod (and plain cgroup) of the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResponse<P = PodMetrics> {
    /// Same keys as `pod_metrics`.
    #[serde(default)]
    pub anomalies: BTreeMap<String, bool>,
    /// Same keys as `pod_metrics`: where the pod's I/O time goes, `none`,
    /// `queue`, `unknown`, `disk` or `network` (see the sidecar's rule).
    #[serde(default)]
    pub bottlenecks: BTreeMap<String, String>,
    /// Same keys as `cgroup_metrics`.
    #[serde(default)]
    pub cgroup_bottlenecks: BTreeMap<String, String>,
    /// Cgroups outside pods, by path.
    #[serde(default = "BTreeMap::new")]
    pub cgroup_metrics: BTreeMap<String, P>,
    #[serde(default = "yes")]
    pub latency_available: bool,
    /// By pod name, or `namespace/name` where the name clashes on that node.
    pub pod_metrics: BTreeMap<String, P>,
    /// [`SOURCE_EBPF`] or [`SOURCE_CGROUP_STATS`].
    pub source: String,
    #[serde(default)]
    pub timestamp: String,
    /// The slowest pods by mean latency (at most five).
    #[serde(default = "Vec::new")]
    pub top_slow_pods: Vec<P>,
    #[serde(default)]
    pub window_seconds: f64,
}

impl<P> MetricsResponse<P> {
    /// A node whose sidecar serves cgroup statistics instead of eBPF.
    pub fn degraded(&self) -> bool {
        self.source == SOURCE_CGROUP_STATS || !self.latency_available
    }
}

/// `GET /api/v1/metrics/pod/{pod}`: one pod, with IOEye's judgements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodResponse<P = PodMetrics> {
    #[serde(default)]
    pub anomaly: bool,
    #[serde(default)]
    pub bottleneck: String,
    pub pod_metrics: P,
    #[serde(default)]
    pub timestamp: String,
    /// `null` until a minute of windows exists.
    #[serde(default)]
    pub trend: Option<Trend>,
}

/// `GET /api/v1/metrics/topslow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopSlowResponse<P = PodMetrics> {
    #[serde(default)]
    pub timestamp: String,
    pub top_slow_pods: Vec<P>,
}

/// Mean latency of the newest minute against the oldest minute of the
/// period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub change_percent: f64,
    /// `increasing`, `decreasing` or `stable` (within ±10 %).
    pub direction: String,
    /// `5m`.
    #[serde(default)]
    pub period: String,
}

/// One pod's (or plain cgroup's) metrics over the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodMetrics {
    /// Per container (cgroup) and device.
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
    /// Mean device time (issue → complete).
    #[serde(default)]
    pub disk_latency_ns: Option<u64>,
    /// Seconds of the window in which all of the pod's non-idle tasks
    /// were stalled on I/O at once (PSI `full`, from the pod's own cgroup's
    /// `io.pressure`); `null` where not measured (see `/readyz`'s
    /// `io_pressure_unavailable`) and in a pod's first window, never zero
    /// for that.
    #[serde(default)]
    pub io_pressure_full_seconds: Option<f64>,
    /// Seconds of the window in which at least one of the pod's tasks was
    /// stalled on I/O (PSI `some`): up to the window, however many tasks
    /// stalled. `null` as for `io_pressure_full_seconds`.
    #[serde(default)]
    pub io_pressure_some_seconds: Option<f64>,
    /// [`KIND_POD`], or [`KIND_CGROUP`] for a cgroup that belongs to no pod.
    #[serde(default = "pod_kind")]
    pub kind: String,
    #[serde(default = "yes")]
    pub latency_available: bool,
    pub namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Mean queue time (insert → issue), over the requests that queued.
    #[serde(default)]
    pub queue_latency_ns: Option<u64>,
    pub read_iops: u64,
    /// Mean latency, queue and device together.
    #[serde(default)]
    pub read_latency_ns: Option<u64>,
    #[serde(default)]
    pub read_latency_p50_ns: Option<u64>,
    #[serde(default)]
    pub read_latency_p95_ns: Option<u64>,
    #[serde(default)]
    pub read_latency_p99_ns: Option<u64>,
    pub read_throughput_bps: u64,
    /// Mean time blk-throttle held a bio of the pod back because the pod
    /// was over its own limit, over the bios it held in the window; `null`
    /// when it held none, or where the wait is not measured
    /// (`throttled_seconds` null).
    #[serde(default)]
    pub throttle_wait_ns: Option<u64>,
    /// The 99th percentile of that wait.
    #[serde(default)]
    pub throttle_wait_p99_ns: Option<u64>,
    /// Seconds of I/O the pod spent held back by its own limit in the
    /// window, summed over its bios (so up to the window times the pod's
    /// queue depth). `null` where the wait is not measured (see `/readyz`'s
    /// `throttle_wait_unavailable`), never zero for that.
    #[serde(default)]
    pub throttled_seconds: Option<f64>,
    #[serde(default)]
    pub timestamp: String,
    /// The window these rates are over.
    #[serde(default)]
    pub window_seconds: f64,
    pub write_iops: u64,
    #[serde(default)]
    pub write_latency_ns: Option<u64>,
    #[serde(default)]
    pub write_latency_p50_ns: Option<u64>,
    #[serde(default)]
    pub write_latency_p95_ns: Option<u64>,
    #[serde(default)]
    pub write_latency_p99_ns: Option<u64>,
    pub write_throughput_bps: u64,
}

fn pod_kind() -> String {
    KIND_POD.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerMetrics {
    /// The cgroup's path in its hierarchy.
    #[serde(default)]
    pub cgroup: String,
    /// `null` for a pod-level cgroup no container name was found for.
    pub container: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub devices: Vec<DeviceMetrics>,
    /// The NRI plugin's word on its limits; `null` when the sidecar has
    /// none (no plugin to ask, the plugin not answering, or the container
    /// not yet verified).
    #[serde(default)]
    pub guarantee: Option<Guarantee>,
    /// As the pod's `io_pressure_full_seconds`, for this cgroup alone.
    #[serde(default)]
    pub io_pressure_full_seconds: Option<f64>,
    /// As the pod's `io_pressure_some_seconds`, for this cgroup alone.
    #[serde(default)]
    pub io_pressure_some_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    /// `MAJ:MIN`.
    pub device: String,
    /// Usage as a fraction of the tightest limit (0 when unlimited).
    #[serde(default)]
    pub limit_utilization: f64,
    /// The limits in force (a `null` knob: unlimited); `null` when they
    /// could not be read.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Set when this device only carries the requests of a stacked device
    /// above it (a loop device's backing disk): its requests are already
    /// counted on that device, and it is left out of the pod's totals.
    #[serde(default)]
    pub lower_layer_of: Option<String>,
    pub read_iops: f64,
    pub read_throughput_bps: f64,
    pub write_iops: f64,
    pub write_throughput_bps: f64,
}

/// `GET /healthz`, `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Why it is unhealthy; absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `healthy` or `unhealthy`.
    pub status: String,
    #[serde(default)]
    pub timestamp: String,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    /// Why the sidecar runs without eBPF, and what that costs; `null` when
    /// it has eBPF.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Whether pods' and containers' `io_pressure_*_seconds` are measured
    /// (cgroup v2 with PSI on).
    #[serde(default)]
    pub io_pressure_available: bool,
    /// Why not, where they are not.
    #[serde(default)]
    pub io_pressure_unavailable: Option<String>,
    #[serde(default = "yes")]
    pub latency_available: bool,
    #[serde(default)]
    pub pods: PodsStatus,
    pub ready: bool,
    #[serde(default)]
    pub source: String,
    /// Whether pods' `throttle_wait_ns` and `throttled_seconds` are
    /// measured.
    #[serde(default)]
    pub throttle_wait_available: bool,
    /// Why not, where they are not.
    #[serde(default)]
    pub throttle_wait_unavailable: Option<String>,
    /// Loop devices whose backing file the sidecar cannot see, each with
    /// what that costs (their pods' requests counted on the disk below
    /// too) and the remedy; empty where every stacked device is known.
    #[serde(default)]
    pub stacking_unresolved: Vec<String>,
}

/// Where pod names come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodsStatus {
    #[serde(default)]
    pub detail: String,
    /// `kubernetes` (watching this node's pods) or `none` (pods named by
    /// UID).
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub synced: bool,
}

/// Every error: the message, and the HTTP status it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(default)]
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodMetrics {
        PodMetrics {
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
            throttle_wait_ns: Some(313_000_000),
            throttle_wait_p99_ns: Some(330_000_000),
            throttled_seconds: Some(9.7),
            io_pressure_some_seconds: Some(4.5),
            io_pressure_full_seconds: None,
            timestamp: "1970-01-01T00:00:00Z".into(),
            pod_uid: Some("u-1".into()),
            kind: KIND_POD.into(),
            latency_available: true,
            read_latency_p50_ns: None,
            read_latency_p95_ns: None,
            read_latency_p99_ns: Some(5_000_000),
            write_latency_p50_ns: None,
            write_latency_p95_ns: None,
            write_latency_p99_ns: None,
            window_seconds: 5.0,
            containers: vec![ContainerMetrics {
                container: Some("app".into()),
                container_id: None,
                cgroup: "/kubepods/x".into(),
                devices: vec![DeviceMetrics {
                    device: "7:0".into(),
                    read_iops: 150.0,
                    write_iops: 2.0,
                    read_throughput_bps: 614_400.0,
                    write_throughput_bps: 8192.0,
                    limits: Some(Limits { read_iops: Some(150), ..Limits::UNLIMITED }),
                    limit_utilization: 1.0,
                    lower_layer_of: None,
                }],
                guarantee: Some(Guarantee::Limited),
                io_pressure_some_seconds: Some(4.5),
                io_pressure_full_seconds: Some(0.5),
            }],
        }
    }

    #[test]
    fn a_borrowed_document_reads_back_as_an_owned_one() {
        let web = pod();
        let served = MetricsResponse {
            anomalies: BTreeMap::from([("web-0".to_string(), false)]),
            bottlenecks: BTreeMap::from([("web-0".to_string(), "queue".to_string())]),
            cgroup_bottlenecks: BTreeMap::new(),
            cgroup_metrics: BTreeMap::new(),
            latency_available: true,
            pod_metrics: BTreeMap::from([("web-0".to_string(), &web)]),
            source: SOURCE_EBPF.into(),
            timestamp: "1970-01-01T00:00:00Z".into(),
            top_slow_pods: vec![&web],
            window_seconds: 5.0,
        };
        let text = serde_json::to_string(&served).unwrap();
        let read: MetricsResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(read.pod_metrics["web-0"], web);
        assert_eq!(read.top_slow_pods.len(), 1);
        assert_eq!(read.top_slow_pods[0], web);
        assert_eq!(read.bottlenecks["web-0"], "queue");
        assert!(!read.degraded());
        // Keys in the order the sidecar always served them: sorted.
        let head = r#"{"anomalies":{"web-0":false},"bottlenecks":{"web-0":"queue"},"cgroup_bottlenecks":{},"cgroup_metrics":{},"latency_available":true,"pod_metrics":{"web-0":{"containers":[{"cgroup":"/kubepods/x","#;
        assert!(text.starts_with(head), "{text}");
        assert!(text.ends_with(r#"}],"window_seconds":5.0}"#), "{text}");
    }

    #[test]
    fn unknown_fields_are_ignored_and_newer_fields_default() {
        // What an early sidecar served, plus a field from a future one.
        let text = r#"{
            "source": "cgroup-stats",
            "pod_metrics": {"web-0": {
                "pod_name": "web-0", "namespace": "shop",
                "read_iops": 3, "write_iops": 4, "read_throughput_bps": 5, "write_throughput_bps": 6,
                "containers": [{"container": null, "devices": [{
                    "device": "8:0", "read_iops": 3.0, "write_iops": 4.0,
                    "read_throughput_bps": 5.0, "write_throughput_bps": 6.0,
                    "queue_depth": 7
                }]}],
                "io_pressure": {"some": 0.5}
            }},
            "from_the_future": [1, 2, 3]
        }"#;
        let read: MetricsResponse = serde_json::from_str(text).unwrap();
        assert!(read.degraded());
        assert!(read.latency_available, "sidecars without the field always had latency when not degraded");
        let web = &read.pod_metrics["web-0"];
        assert_eq!((web.read_iops, web.kind.as_str(), web.read_latency_p99_ns), (3, KIND_POD, None));
        let device = &web.containers[0].devices[0];
        assert_eq!((device.limits, device.lower_layer_of.as_deref(), device.limit_utilization), (None, None, 0.0));
        assert!(read.top_slow_pods.is_empty() && read.bottlenecks.is_empty());
    }

    #[test]
    fn health_leaves_out_the_error_when_healthy() {
        let healthy = HealthResponse { error: None, status: "healthy".into(), timestamp: "t".into() };
        assert_eq!(serde_json::to_string(&healthy).unwrap(), r#"{"status":"healthy","timestamp":"t"}"#);
        let error: ErrorResponse = serde_json::from_str(r#"{"error": "no such path", "status": 404}"#).unwrap();
        assert_eq!((error.error.as_str(), error.status), ("no such path", 404));
    }
}
