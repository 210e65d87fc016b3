//! Who an I/O counter belongs to, as the rest of the sidecar sees it.
//!
//! The sampler only needs two answers per cgroup: which workload it is, and
//! which limits are in force on it. Keeping that behind a trait lets the
//! window and report code be tested with a table instead of a live host.

use iogate_core::{Device, Limits};

use crate::counters::CgroupId;
use crate::identity::{Identities, Workload};

pub trait Attribution {
    /// `None` for a cgroup that no longer exists (its counters expire).
    fn workload(&self, id: CgroupId) -> Option<Workload>;
    /// The limits in force on that cgroup for that device; `None` when they
    /// could not be read.
    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits>;
}

impl Attribution for Identities {
    fn workload(&self, id: CgroupId) -> Option<Workload> {
        Identities::workload(self, id)
    }

    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits> {
        Identities::limits(self, id, device)
    }
}
