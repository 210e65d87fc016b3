//! What the sampler publishes and the HTTP handlers read.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
pub use iogate_api::PodsStatus;
use tokio::sync::OnceCell;

use crate::bodies::Body;
use crate::counters::SourceKind;
use crate::encoding::Encoding;
use crate::plugin_guarantee::GuaranteeBoard;
pub use crate::published::Published;

/// One tick's results and, once a request has asked for each, their
/// rendered bodies.
#[derive(Debug)]
pub struct Tick {
    pub published: Published,
    /// The pods status as it was when the tick was published.
    pods_synced: bool,
    /// Each body plain and gzipped.
    prometheus: [OnceCell<Bytes>; 2],
    all_metrics: [OnceCell<Bytes>; 2],
}

impl Tick {
    fn new(published: Published, pods_synced: bool) -> Tick {
        Tick { published, pods_synced, prometheus: Default::default(), all_metrics: Default::default() }
    }

    fn cell(&self, body: Body, encoding: Encoding) -> &OnceCell<Bytes> {
        let cells = match body {
            Body::Prometheus => &self.prometheus,
            Body::AllMetrics => &self.all_metrics,
        };
        match encoding {
            Encoding::Identity => &cells[0],
            Encoding::Gzip => &cells[1],
        }
    }
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
    /// Why blk-throttle's wait is not measured (`None` when it is).
    pub throttle_wait_error: Option<String>,
    /// Why the I/O stall time is not measured (`None` when it is).
    pub io_pressure_error: Option<String>,
    current: ArcSwap<Tick>,
    pub pods: RwLock<PodsStatus>,
    /// The NRI plugin's latest word on each container.
    pub guarantee: GuaranteeBoard,
}

impl SidecarState {
    pub fn new(interval: Duration, source: SourceKind, ebpf_error: Option<String>, pods: PodsStatus) -> SidecarState {
        let first = Tick::new(Published::default(), pods.synced);
        SidecarState {
            interval,
            source,
            ebpf_error,
            throttle_wait_error: Some("not reported by the counter source".into()),
            io_pressure_error: Some("not reported by the cgroup hierarchy".into()),
            current: ArcSwap::from_pointee(first),
            pods: RwLock::new(pods),
            guarantee: GuaranteeBoard::default(),
        }
    }

    /// Whether the source measures blk-throttle's wait
    /// (`CounterSource::throttle_wait`).
    pub fn with_throttle_wait(mut self, measured: Result<(), &str>) -> SidecarState {
        self.throttle_wait_error = measured.err().map(str::to_string);
        self
    }

    /// Whether the host keeps I/O stall information per cgroup
    /// (`HostCgroups::pressure_kept`).
    pub fn with_io_pressure(mut self, kept: Result<(), &str>) -> SidecarState {
        self.io_pressure_error = kept.err().map(str::to_string);
        self
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
        self.current.store(Arc::new(Tick::new(p, self.pods().synced)));
    }

    /// `body` for the last tick, rendered (and encoded) at most once per
    /// tick: by the first request that wants it (requests meanwhile wait
    /// for that render; later ones get the same bytes), and not at all in a
    /// tick nobody asks for it.
    pub async fn body(&self, body: Body, encoding: Encoding) -> Bytes {
        let tick = self.read();
        let source = self.source;
        let for_render = tick.clone();
        let render = || async move {
            // Megabytes at 1,000 pods: off the async workers, so that probes
            // are answered meanwhile.
            tokio::task::spawn_blocking(move || body.render(&for_render.published, source, for_render.pods_synced))
                .await
                .expect("rendering a body panicked")
        };
        let plain = tick.cell(body, Encoding::Identity).get_or_init(render).await.clone();
        if encoding == Encoding::Identity {
            return plain;
        }
        let encode = || async move {
            tokio::task::spawn_blocking(move || encoding.encode(&plain)).await.expect("encoding a body panicked")
        };
        tick.cell(body, encoding).get_or_init(encode).await.clone()
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
        for body in [Body::Prometheus, Body::AllMetrics] {
            for encoding in [Encoding::Identity, Encoding::Gzip] {
                let (first, second) = tokio::join!(shared.body(body, encoding), shared.body(body, encoding));
                assert_eq!(first.as_ptr(), second.as_ptr(), "{body:?} {encoding:?} made twice in one tick");
                assert_eq!(shared.body(body, encoding).await.as_ptr(), first.as_ptr());
            }
        }
        let first = shared.body(Body::Prometheus, Encoding::Identity).await;
        assert!(text(&first).contains("iogate_sidecar_pods_synced 0\n"));

        shared.set_pods(status(true));
        // Until the tick publishes, the last tick's bodies stand.
        assert!(
            text(&shared.body(Body::Prometheus, Encoding::Identity).await).contains("iogate_sidecar_pods_synced 0\n")
        );
        shared.publish(Published { window_seconds: 1.0, at: Some(Instant::now()), ..Published::default() });
        assert!(
            text(&shared.body(Body::Prometheus, Encoding::Identity).await).contains("iogate_sidecar_pods_synced 1\n")
        );
        let document: serde_json::Value =
            serde_json::from_slice(&shared.body(Body::AllMetrics, Encoding::Identity).await).unwrap();
        assert_eq!(document["window_seconds"], 1.0);
        assert_eq!(document["source"], "ebpf");
        // A request still holding the old body keeps it whole.
        assert!(text(&first).contains("iogate_sidecar_pods_synced 0\n"));
    }
}
