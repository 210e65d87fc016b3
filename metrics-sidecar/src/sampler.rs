//! One tick of the pipeline: snapshot → frame → window → judged metrics.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;

use crate::attribution::Attribution;
use crate::counters::CounterSource;
use crate::diagnosis::NetworkMajors;
use crate::frame::Frame;
use crate::history::History;
use crate::report::assess;
use crate::stacking::Stacking;
use crate::state::Published;
use crate::window::Window;

pub struct Sampler {
    source: Box<dyn CounterSource>,
    previous: Option<Arc<Frame>>,
    history: History,
    network: NetworkMajors,
}

impl Sampler {
    pub fn new(source: Box<dyn CounterSource>, network: NetworkMajors) -> Sampler {
        Sampler { source, previous: None, history: History::default(), network }
    }

    pub fn tick(&mut self, who: &dyn Attribution) -> anyhow::Result<Published> {
        let snapshot =
            self.source.snapshot().with_context(|| format!("reading the {} counters", self.source.kind().name()))?;
        let mut frame = Frame::attribute(snapshot, SystemTime::now(), who);
        let stacking = Stacking::load();
        frame.mark_layers(&stacking);
        let (assessed, window_seconds) = match &self.previous {
            Some(previous) => {
                let window = Window::between(previous, &frame, &stacking);
                (assess(&window, &mut self.history, &self.network), window.seconds)
            }
            None => (Vec::new(), 0.0),
        };
        // Removed cgroups were just reported for the last time.
        if let Err(e) = self.source.forget(&frame.removed) {
            tracing::warn!("dropping the counters of {} removed cgroup(s): {e:#}", frame.removed.len());
        }
        let at = frame.taken_at;
        // The next window starts from this frame, and /metrics renders it:
        // one frame, shared.
        let frame = Arc::new(frame);
        self.previous = Some(frame.clone());
        Ok(Published { frame: Some(frame), assessed, window_seconds, at: Some(at) })
    }
}
