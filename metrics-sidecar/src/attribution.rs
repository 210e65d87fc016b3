//! Who an I/O counter belongs to, as the rest of the sidecar sees it.
//!
//! The sampler needs three answers per cgroup: who owns it, which limits
//! are in force on it, and (where the kernel keeps it) how long its tasks
//! stalled on I/O. Keeping that behind a trait lets the
//! window and report code be tested with a table instead of a live host.

use iogate_core::{Device, Limits};

use crate::counters::CgroupId;
use crate::host_cgroups::{CgroupOwner, HostCgroups};
use crate::pressure::StallTotals;

pub trait Attribution {
    /// `None` for a cgroup that no longer exists (its counters expire).
    fn owner(&self, id: CgroupId) -> Option<CgroupOwner>;
    /// The limits in force on that cgroup for that device; `None` when they
    /// could not be read.
    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits>;
    /// Whether [`Attribution::io_pressure`] answers on this host; the
    /// reason where it does not.
    fn pressure_kept(&self) -> Result<(), &str>;
    /// The stall totals of the cgroup at `cgroup` (a hierarchy path, as
    /// [`CgroupOwner::cgroup`] and the pod's own cgroup have it); `None`
    /// when they could not be read.
    fn io_pressure(&self, cgroup: &str) -> Option<StallTotals>;
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

    fn pressure_kept(&self) -> Result<(), &str> {
        HostCgroups::pressure_kept(self)
    }

    fn io_pressure(&self, cgroup: &str) -> Option<StallTotals> {
        HostCgroups::io_pressure(self, cgroup)
    }

    fn discover(&mut self, ids: &mut dyn Iterator<Item = CgroupId>) {
        // The previous tree stays; a later scan is the correction.
        if let Err(e) = HostCgroups::discover(self, ids) {
            tracing::warn!("rescanning cgroups: {e}; keeping the previous map");
        }
    }
}
