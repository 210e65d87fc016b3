//! Who an I/O counter belongs to, as the rest of the sidecar sees it.
//!
//! The sampler only needs two answers per cgroup: which workload it is, and
//! which limits are in force on it. Keeping that behind a trait lets the
//! window and report code be tested with a table instead of a live host.

use iogate_core::{Device, Limits};

use crate::counters::CgroupId;

/// A cgroup's owner. Fields that are `None` are unknown (not a pod, or the
/// API was not reachable).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Workload {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub cgroup: String,
}

pub trait Attribution {
    /// `None` for a cgroup that no longer exists (its counters expire).
    fn workload(&self, id: CgroupId) -> Option<Workload>;
    /// The limits in force on that cgroup for that device; `None` when they
    /// could not be read.
    fn limits(&self, id: CgroupId, device: Device) -> Option<Limits>;
}
