//! One tick of the pipeline: snapshot → frame → window → judged metrics.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;

use crate::attribution::Attribution;
use crate::counters::{CgroupId, CounterSource};
use crate::diagnosis::NetworkMajors;
use crate::frame::Frame;
use crate::history::History;
use crate::published::Published;
use crate::report::assess;
use crate::stacking::{Stacking, UnresolvedLoop};
use crate::window::Window;

pub struct Sampler {
    source: Box<dyn CounterSource>,
    previous: Option<Arc<Frame>>,
    history: History,
    network: NetworkMajors,
    /// Cgroups the last frame could not name. An attribution that has not
    /// yet learnt of a newborn cgroup leaves it unknown for one tick, so
    /// counters are dropped only when a second tick still cannot name it.
    unknown_last_tick: BTreeSet<CgroupId>,
    /// Unresolved loop devices already warned of, so the log says each once.
    warned: HashSet<UnresolvedLoop>,
}

impl Sampler {
    pub fn new(source: Box<dyn CounterSource>, network: NetworkMajors) -> Sampler {
        Sampler {
            source,
            previous: None,
            history: History::default(),
            network,
            unknown_last_tick: BTreeSet::new(),
            warned: HashSet::new(),
        }
    }

    pub fn tick(&mut self, who: &mut dyn Attribution) -> anyhow::Result<Published> {
        let snapshot =
            self.source.snapshot().with_context(|| format!("reading the {} counters", self.source.kind().name()))?;
        who.discover(&mut snapshot.counters.keys().map(|key| key.cgroup));
        let mut frame = Frame::attribute(snapshot, SystemTime::now(), who);
        frame.throttle_wait = self.source.throttle_wait().is_ok();
        let stacking = Stacking::load();
        for u in stacking.unresolved() {
            if self.warned.insert(u.clone()) {
                tracing::warn!("{u}");
            }
        }
        frame.mark_layers(&stacking);
        let (assessed, window_seconds) = match &self.previous {
            Some(previous) => {
                let window = Window::between(previous, &frame, &stacking);
                (assess(&window, &mut self.history, &self.network), window.seconds)
            }
            None => (Vec::new(), 0.0),
        };
        // Cgroups unknown in two ticks in a row were just reported for the
        // last time.
        let gone: Vec<CgroupId> =
            frame.removed.iter().copied().filter(|id| self.unknown_last_tick.contains(id)).collect();
        if !gone.is_empty() {
            if let Err(e) = self.source.forget(&gone) {
                tracing::warn!("dropping the counters of {} removed cgroup(s): {e:#}", gone.len());
            }
        }
        self.unknown_last_tick = frame.removed.iter().copied().filter(|id| !gone.contains(id)).collect();
        let at = frame.taken_at;
        // The next window starts from this frame, and /metrics renders it:
        // one frame, shared.
        let frame = Arc::new(frame);
        self.previous = Some(frame.clone());
        let stacking_unresolved = stacking.unresolved().iter().map(ToString::to_string).collect();
        Ok(Published { frame: Some(frame), assessed, window_seconds, at: Some(at), stacking_unresolved })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    use iogate_core::Device;

    use super::*;
    use crate::counters::{Direction, IoCounters, IoKey, Snapshot, SourceKind};
    use crate::frame::testing::Table;

    /// One cgroup that has done 10 reads, and the ids it was told to forget.
    struct OneCgroup(Arc<Mutex<Vec<CgroupId>>>);

    impl CounterSource for OneCgroup {
        fn kind(&self) -> SourceKind {
            SourceKind::Ebpf
        }
        fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
            let key = IoKey { cgroup: CgroupId(9), device: Device::new(7, 0), direction: Direction::Read };
            let counters = IoCounters { ops: 10, bytes: 40960, ..Default::default() };
            Ok(Snapshot {
                taken_at: Instant::now(),
                source: SourceKind::Ebpf,
                counters: HashMap::from([(key, counters)]),
            })
        }
        fn forget(&mut self, removed: &[CgroupId]) -> anyhow::Result<()> {
            self.0.lock().unwrap().extend_from_slice(removed);
            Ok(())
        }
    }

    #[test]
    fn a_cgroup_born_after_the_rescan_keeps_its_counts() {
        let forgotten = Arc::new(Mutex::new(Vec::new()));
        let mut sampler = Sampler::new(Box::new(OneCgroup(forgotten.clone())), NetworkMajors::default());
        // Its I/O reached the maps before the tree's rescan saw its directory.
        sampler.tick(&mut Table::default()).unwrap();
        assert!(forgotten.lock().unwrap().is_empty(), "counts dropped after one tick unknown");
        // The next rescan names it: nothing was lost.
        sampler.tick(&mut Table::default().pod(9, "shop", "web-0", "app")).unwrap();
        assert!(forgotten.lock().unwrap().is_empty());
    }

    #[test]
    fn a_cgroup_missed_by_two_rescans_is_forgotten_once() {
        let forgotten = Arc::new(Mutex::new(Vec::new()));
        let mut sampler = Sampler::new(Box::new(OneCgroup(forgotten.clone())), NetworkMajors::default());
        sampler.tick(&mut Table::default().pod(9, "shop", "web-0", "app")).unwrap();
        sampler.tick(&mut Table::default()).unwrap();
        assert!(forgotten.lock().unwrap().is_empty(), "its last counts are reported first");
        sampler.tick(&mut Table::default()).unwrap();
        assert_eq!(*forgotten.lock().unwrap(), vec![CgroupId(9)]);
    }
}
