//! What the sampler publishes and the HTTP handlers read.

use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

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

/// One tick's results and, once a request has asked for them, their
/// rendered bodies.
#[derive(Debug)]
pub struct Tick {
    pub published: Published,
    /// The pods status as it was when the tick was published.
    pods_synced: bool,
    bodies: OnceCell<Arc<Bodies>>,
}

impl std::ops::Deref for Tick {
    type Target = Published;
    fn deref(&self) -> &Published {
        &self.published
    }
}

#[derive(Debug)]
pub struct SidecarState {
    pub interval: Duration,
    pub source: SourceKind,
    /// Why eBPF is not in use (`None` when it is).
    pub ebpf_error: Option<String>,
    current: ArcSwap<Tick>,
    pub pods: RwLock<PodsStatus>,
    /// The NRI plugin's latest word on each container.
    pub guarantee: GuaranteeBoard,
}

impl SidecarState {
    pub fn new(interval: Duration, source: SourceKind, ebpf_error: Option<String>, pods: PodsStatus) -> SidecarState {
        let first = Tick { published: Published::default(), pods_synced: pods.synced, bodies: OnceCell::new() };
        SidecarState {
            interval,
            source,
            ebpf_error,
            current: ArcSwap::from_pointee(first),
            pods: RwLock::new(pods),
            guarantee: GuaranteeBoard::default(),
        }
    }

    /// The last tick's results; a handler keeps them whole for as long as
    /// it holds them, whatever the sampler publishes meanwhile.
    pub fn read(&self) -> Arc<Tick> {
        self.current.load_full()
    }

    /// Replaces the published results (with the pods status as last set:
    /// set it first, it is rendered into `/metrics`).
    pub fn publish(&self, mut p: Published) {
        self.guarantee.annotate(&mut p.assessed);
        self.current.store(Arc::new(Tick { published: p, pods_synced: self.pods().synced, bodies: OnceCell::new() }));
    }

    /// The bodies of `/metrics` and `/api/v1/metrics` for the last tick,
    /// rendered at most once per tick: by the first request that wants
    /// them (requests meanwhile wait for that render; later ones get the
    /// same bytes), and not at all in a tick nobody scrapes.
    pub async fn bodies(&self) -> Arc<Bodies> {
        let tick = self.read();
        let source = self.source;
        let for_render = tick.clone();
        let render = || async move {
            // Megabytes at 1,000 pods: off the async workers, so that probes
            // are answered meanwhile.
            tokio::task::spawn_blocking(move || {
                Arc::new(Bodies::render(&for_render.published, source, for_render.pods_synced))
            })
            .await
            .expect("rendering the bodies panicked")
        };
        tick.bodies.get_or_init(render).await.clone()
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

    #[tokio::test]
    async fn every_request_of_a_tick_gets_the_same_rendered_bytes() {
        let shared = SidecarState::new(Duration::from_secs(1), SourceKind::Ebpf, None, status(false));
        let (first, second) = tokio::join!(shared.bodies(), shared.bodies());
        assert_eq!(first.prometheus.as_ptr(), second.prometheus.as_ptr(), "rendered twice in one tick");
        assert_eq!(first.all_metrics.as_ptr(), second.all_metrics.as_ptr());
        assert_eq!(shared.bodies().await.prometheus.as_ptr(), first.prometheus.as_ptr());
        assert!(text(&first.prometheus).contains("iogate_sidecar_pods_synced 0\n"));

        shared.set_pods(status(true));
        // Until the tick publishes, the last tick's bodies stand.
        assert!(text(&shared.bodies().await.prometheus).contains("iogate_sidecar_pods_synced 0\n"));
        shared.publish(Published { window_seconds: 1.0, at: Some(Instant::now()), ..Published::default() });
        let after = shared.bodies().await;
        assert!(text(&after.prometheus).contains("iogate_sidecar_pods_synced 1\n"));
        let document: serde_json::Value = serde_json::from_slice(&after.all_metrics).unwrap();
        assert_eq!(document["window_seconds"], 1.0);
        assert_eq!(document["source"], "ebpf");
        // A request still holding the old bodies keeps them whole.
        assert!(text(&first.prometheus).contains("iogate_sidecar_pods_synced 0\n"));
    }
}
