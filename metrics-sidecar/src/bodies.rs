//! The bodies every scrape gets. `/metrics` and `/api/v1/metrics` take no
//! choice from the request, so they are rendered at most once per tick (see
//! [`crate::state::SidecarState::bodies`]) and every request of the tick is
//! handed the same bytes: at 1,000 pods a render is megabytes and tens of
//! milliseconds of CPU, while a handed-out body is a reference count, and no
//! lock is held while it is written out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use iogate_api::{MetricsResponse, PodMetrics};

use crate::counters::SourceKind;
use crate::prometheus::{self, SelfState};
use crate::published::Published;
use crate::query::DEFAULT_TOP;
use crate::report::{map_keys, rfc3339, Assessed};
use crate::window::GroupKey;

/// A body rendered from one tick's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `GET /metrics`: Prometheus text.
    Prometheus,
    /// `GET /api/v1/metrics`: IOEye's JSON document.
    AllMetrics,
}

impl Body {
    pub fn render(self, published: &Published, source: SourceKind, pods_synced: bool) -> Bytes {
        match self {
            Body::Prometheus => {
                let me = SelfState { ebpf_loaded: source.has_latency(), pods_synced };
                prometheus::render(published.frame.as_deref(), me).into()
            }
            Body::AllMetrics => all_metrics(published, source).into(),
        }
    }
}

/// The pods among the judged groups (plain cgroups are the rest).
pub fn pods(assessed: &[Assessed]) -> Vec<&Assessed> {
    assessed.iter().filter(|a| matches!(a.key, GroupKey::Pod { .. })).collect()
}

/// The `n` slowest pods with latency figures, slowest first (ties in key
/// order, so the list is stable from one request to the next).
pub fn slowest<'a>(pods: &[&'a Assessed], n: usize) -> Vec<&'a Assessed> {
    let mut with_latency: Vec<&Assessed> = pods.iter().copied().filter(|a| a.slowness().is_some()).collect();
    with_latency.sort_by(|a, b| b.slowness().cmp(&a.slowness()).then_with(|| a.key.cmp(&b.key)));
    with_latency.truncate(n);
    with_latency
}

fn all_metrics(published: &Published, source: SourceKind) -> Vec<u8> {
    let pods = pods(&published.assessed);
    let keys = map_keys(&pods);
    let mut pod_metrics = BTreeMap::new();
    let mut bottlenecks = BTreeMap::new();
    let mut anomalies = BTreeMap::new();
    for (key, pod) in keys.iter().zip(&pods) {
        pod_metrics.insert(key.clone(), &pod.metrics);
        bottlenecks.insert(key.clone(), pod.bottleneck.name().to_string());
        anomalies.insert(key.clone(), pod.anomaly);
    }
    let mut cgroup_metrics = BTreeMap::new();
    let mut cgroup_bottlenecks = BTreeMap::new();
    for a in &published.assessed {
        if let GroupKey::Cgroup(path) = &a.key {
            cgroup_metrics.insert(path.clone(), &a.metrics);
            cgroup_bottlenecks.insert(path.clone(), a.bottleneck.name().to_string());
        }
    }
    let top = slowest(&pods, DEFAULT_TOP);
    let document: MetricsResponse<&PodMetrics> = MetricsResponse {
        timestamp: rfc3339(SystemTime::now()),
        source: source.name().to_string(),
        latency_available: source.has_latency(),
        window_seconds: published.window_seconds,
        pod_metrics,
        top_slow_pods: top.iter().map(|a| &a.metrics).collect(),
        bottlenecks,
        anomalies,
        cgroup_metrics,
        cgroup_bottlenecks,
    };
    serde_json::to_vec(&document).expect("the metrics document is plain data and always serialises")
}
