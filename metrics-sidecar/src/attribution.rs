//! Who an I/O counter belongs to, as the rest of the sidecar sees it.
//!
//! The sampler only needs two answers per cgroup: who owns it, and
//! which limits are in force on it. Keeping that behind a trait lets the
//! window and report code be tested with a table instead of a live host.

use iogate_core::{Device, Limits};

use crate::counters::CgroupId;
use crate::host_cgroups::{CgroupOwner, HostCgroups};

pub trait Attribution {
    /// `None` for a cgroup that no longer exists (its counters expire).
    fn owner(&self, id: CgroupId) -> Option<CgroupOwner>;
    /// The limits in force on that cgroup for that device; `None` when they
    /// could not be read.
    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits>;
    /// Shown the cgroups a snapshot names before any is asked about: the
    /// moment to learn those born since the last look. A fixed table knows
    /// all it ever will.
    fn discover(&mut self, _ids: &mut dyn Iterator<Item = CgroupId>) {}
}

impl Attribution for HostCgroups {
    fn owner(&self, id: CgroupId) -> Option<CgroupOwner> {
        HostCgroups::owner(self, id)
    }

    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
        HostCgroups::limits(self, id, device)
    }

    fn discover(&mut self, ids: &mut dyn Iterator<Item = CgroupId>) {
        // The previous tree stays; a later scan is the correction.
        if let Err(e) = HostCgroups::discover(self, ids) {
            tracing::warn!("rescanning cgroups: {e}; keeping the previous map");
        }
    }
}
