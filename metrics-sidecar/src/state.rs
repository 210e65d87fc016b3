//! What the sampler publishes and the HTTP handlers read.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use iogate_api::PodsStatus;

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
    pub pods: RwLock<PodsStatus>,
    /// The NRI plugin's latest word on each container.
    pub guarantee: GuaranteeBoard,
}

impl SidecarState {
    pub fn new(interval: Duration, source: SourceKind, ebpf_error: Option<String>, pods: PodsStatus) -> SidecarState {
        SidecarState {
            interval,
            source,
            ebpf_error,
            published: RwLock::default(),
            pods: RwLock::new(pods),
            guarantee: GuaranteeBoard::default(),
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.published.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn publish(&self, mut p: Published) {
        self.guarantee.annotate(&mut p.assessed);
        *self.published.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = p;
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
