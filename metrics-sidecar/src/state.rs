//! What the sampler publishes and the HTTP handlers read.

use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

pub use iogate_api::PodsStatus;

use crate::bodies::Bodies;
use crate::counters::SourceKind;
use crate::frame::Frame;
use crate::plugin_guarantee::GuaranteeBoard;
use crate::report::Assessed;

/// The latest results, replaced whole at every tick.
#[derive(Debug, Default)]
pub struct Published {
    /// Cumulative counters (for `/metrics`).
    pub frame: Option<Arc<Frame>>,
    /// The last window's judged metrics (for the REST API); empty until two
    /// frames exist.
    pub assessed: Vec<Assessed>,
    pub window_seconds: f64,
    pub at: Option<Instant>,
}

#[derive(Debug)]
pub struct SidecarState {
    pub interval: Duration,
    pub source: SourceKind,
    /// Why eBPF is not in use (`None` when it is).
    pub ebpf_error: Option<String>,
    pub published: RwLock<Published>,
    /// `published` rendered, swapped whole with it.
    bodies: ArcSwap<Bodies>,
    pub pods: RwLock<PodsStatus>,
    /// The NRI plugin's latest word on each container.
    pub guarantee: GuaranteeBoard,
}

impl SidecarState {
    pub fn new(interval: Duration, source: SourceKind, ebpf_error: Option<String>, pods: PodsStatus) -> SidecarState {
        let bodies = Bodies::render(&Published::default(), source, pods.synced);
        SidecarState {
            interval,
            source,
            ebpf_error,
            published: RwLock::default(),
            bodies: ArcSwap::from_pointee(bodies),
            pods: RwLock::new(pods),
            guarantee: GuaranteeBoard::default(),
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.published.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bodies of `/metrics` and `/api/v1/metrics` as of the last
    /// [`SidecarState::publish`].
    pub fn bodies(&self) -> Arc<Bodies> {
        self.bodies.load_full()
    }

    /// Replaces the published results, and renders their bodies (with the
    /// pods status as last set: set it first).
    pub fn publish(&self, mut p: Published) {
        self.guarantee.annotate(&mut p.assessed);
        let bodies = Bodies::render(&p, self.source, self.pods().synced);
        *self.published.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = p;
        self.bodies.store(Arc::new(bodies));
    }

    pub fn pods(&self) -> PodsStatus {
        self.pods.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_pods(&self, status: PodsStatus) {
        *self.pods.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }

    /// The sampler is alive if it ticked recently (three intervals, at least
    /// ten seconds, so one slow tick is not an outage).
    pub fn healthy(&self, now: Instant) -> bool {
        let grace = (self.interval * 3).max(Duration::from_secs(10));
        match self.read().at {
            Some(at) => now.saturating_duration_since(at) <= grace,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(synced: bool) -> PodsStatus {
        PodsStatus { mode: "none".into(), synced, detail: String::new() }
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn every_request_between_two_ticks_gets_the_same_rendered_bytes() {
        let shared = SidecarState::new(Duration::from_secs(1), SourceKind::Ebpf, None, status(false));
        let (first, second) = (shared.bodies(), shared.bodies());
        assert_eq!(first.prometheus.as_ptr(), second.prometheus.as_ptr(), "rendered again for a second request");
        assert_eq!(first.all_metrics.as_ptr(), second.all_metrics.as_ptr());
        assert!(text(&first.prometheus).contains("iogate_sidecar_pods_synced 0\n"));

        shared.set_pods(status(true));
        // Until the tick publishes, the last tick's bodies stand.
        assert!(text(&shared.bodies().prometheus).contains("iogate_sidecar_pods_synced 0\n"));
        shared.publish(Published { window_seconds: 1.0, at: Some(Instant::now()), ..Published::default() });
        let after = shared.bodies();
        assert!(text(&after.prometheus).contains("iogate_sidecar_pods_synced 1\n"));
        let document: serde_json::Value = serde_json::from_slice(&after.all_metrics).unwrap();
        assert_eq!(document["window_seconds"], 1.0);
        assert_eq!(document["source"], "ebpf");
        // A request still holding the old bodies keeps them whole.
        assert!(text(&first.prometheus).contains("iogate_sidecar_pods_synced 0\n"));
    }
}
