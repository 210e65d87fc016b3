//! The containers the plugin knows of, as NRI reported them: created and
//! started ones from their events, running ones from Synchronize; gone
//! when stopped or removed, or when their cgroup has vanished.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iogate_core::{CgroupPath, DeviceLimits};
use nri::api;

use crate::hook_reports::HookReport;
use crate::telemetry::Guarantee;

/// Annotations containerd's CRI puts on every container spec.
pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// A pod as NRI described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// As of the pod's creation (NRI does not report later changes).
    pub annotations: HashMap<String, String>,
}

impl PodInfo {
    pub fn from_nri(pod: &api::PodSandbox) -> PodInfo {
        PodInfo {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            annotations: pod.annotations.clone(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How the plugin learnt of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its CreateContainer: the plugin put the limits into its creation.
    Created { hook_injected: bool },
    /// Synchronize: it was created while the plugin was not connected.
    Synchronized,
}

#[derive(Debug, Clone)]
pub struct Tracked {
    pub id: String,
    pub pod: Arc<PodInfo>,
    pub name: String,
    pub image: String,
    /// The init process (0 until started).
    pub pid: u32,
    /// Found from `pid` once, then kept: the path outlives a reused PID.
    pub cgroup: Option<CgroupPath>,
    pub origin: Origin,
    /// When it started, by the runtime's clock if it said, else when the
    /// plugin learnt of the start.
    pub started: Option<SystemTime>,
    /// The injected hook's report, taken at start, until the first check.
    pub hook: Option<HookReport>,
    /// The limits last found in force as the policy wanted them; `None`
    /// until the first successful check.
    pub applied: Option<Vec<DeviceLimits>>,
    /// Its state at the last check; `None` before the first.
    pub state: Option<Guarantee>,
}

impl Tracked {
    pub fn new(pod: &api::PodSandbox, ctr: &api::Container, origin: Origin) -> Tracked {
        Tracked {
            id: ctr.id.clone(),
            pod: Arc::new(PodInfo::from_nri(pod)),
            name: ctr.name.clone(),
            image: image_of(ctr),
            pid: ctr.pid,
            cgroup: None,
            origin,
            started: started_at(ctr),
            hook: None,
            applied: None,
            state: None,
        }
    }

    pub fn is_started(&self) -> bool {
        self.pid != 0 || self.cgroup.is_some()
    }
}

/// The runtime's start time (nanoseconds since the epoch), if it gave one.
fn started_at(ctr: &api::Container) -> Option<SystemTime> {
    (ctr.started_at > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(ctr.started_at as u64))
}

pub fn image_of(ctr: &api::Container) -> String {
    ctr.image
        .as_ref()
        .map(|i| i.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| ctr.annotations.get(CRI_IMAGE_NAME).cloned())
        .unwrap_or_default()
}

#[derive(Debug, Default)]
pub struct Inventory {
    containers: HashMap<String, Tracked>,
}

impl Inventory {
    pub fn created(&mut self, pod: &api::PodSandbox, ctr: &api::Container, hook_injected: bool) {
        self.containers.insert(ctr.id.clone(), Tracked::new(pod, ctr, Origin::Created { hook_injected }));
    }

    /// A container starts: its PID and start time; one the plugin never
    /// saw created (created before it connected) is added.
    pub fn started(&mut self, pod: &api::PodSandbox, ctr: &api::Container) -> &mut Tracked {
        let t = self.containers.entry(ctr.id.clone()).or_insert_with(|| Tracked::new(pod, ctr, Origin::Synchronized));
        t.pid = ctr.pid;
        t.started = started_at(ctr).or_else(|| Some(SystemTime::now()));
        t
    }

    pub fn remove(&mut self, id: &str) -> Option<Tracked> {
        self.containers.remove(id)
    }

    /// The runtime's view at connect: containers not in it are gone,
    /// running and created ones the plugin did not know are added.
    /// Returns the ids that were dropped.
    pub fn synchronize(&mut self, pods: &[api::PodSandbox], containers: &[api::Container]) -> Vec<String> {
        let by_id: HashMap<&str, &api::PodSandbox> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let empty = api::PodSandbox::new();
        let alive = |c: &api::Container| {
            let state = c.state.value();
            state == api::ContainerState::CONTAINER_RUNNING as i32
                || state == api::ContainerState::CONTAINER_CREATED as i32
        };
        let listed: HashMap<&str, &api::Container> =
            containers.iter().filter(|c| alive(c)).map(|c| (c.id.as_str(), c)).collect();
        let gone: Vec<String> =
            self.containers.keys().filter(|id| !listed.contains_key(id.as_str())).cloned().collect();
        for id in &gone {
            self.containers.remove(id);
        }
        for (id, ctr) in listed {
            let pod = by_id.get(ctr.pod_sandbox_id.as_str()).copied().unwrap_or(&empty);
            let t =
                self.containers.entry(id.to_string()).or_insert_with(|| Tracked::new(pod, ctr, Origin::Synchronized));
            if ctr.pid != 0 {
                t.pid = ctr.pid;
            }
        }
        gone
    }

    /// Copies of the started containers, for a pass that must not hold the
    /// inventory while it reads cgroups or calls the runtime.
    pub fn started_snapshot(&self) -> Vec<Tracked> {
        self.containers.values().filter(|t| t.is_started()).cloned().collect()
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Tracked> {
        self.containers.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// How many started containers are in each state.
    pub fn states(&self) -> Vec<(crate::telemetry::Guarantee, usize)> {
        let mut counts: HashMap<Guarantee, usize> = HashMap::new();
        for state in self.containers.values().filter_map(|t| t.state) {
            *counts.entry(state).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Every tracked container, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.containers.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str) -> api::PodSandbox {
        api::PodSandbox { id: id.into(), name: "web-0".into(), namespace: "shop".into(), ..Default::default() }
    }

    fn ctr(id: &str, state: api::ContainerState, pid: u32) -> api::Container {
        api::Container {
            id: id.into(),
            pod_sandbox_id: "p".into(),
            name: "app".into(),
            state: state.into(),
            pid,
            ..Default::default()
        }
    }

    #[test]
    fn synchronize_adds_the_unknown_and_drops_the_vanished() {
        let mut inv = Inventory::default();
        inv.created(&pod("p"), &ctr("old", api::ContainerState::CONTAINER_CREATED, 0), true);
        inv.created(&pod("p"), &ctr("kept", api::ContainerState::CONTAINER_CREATED, 0), true);
        let listed = [
            ctr("kept", api::ContainerState::CONTAINER_RUNNING, 42),
            ctr("new", api::ContainerState::CONTAINER_RUNNING, 43),
            ctr("exited", api::ContainerState::CONTAINER_STOPPED, 0),
        ];
        let gone = inv.synchronize(&[pod("p")], &listed);
        assert_eq!(gone, ["old"]);
        assert_eq!(inv.len(), 2);
        let kept = inv.get_mut("kept").unwrap();
        assert_eq!((kept.pid, kept.origin), (42, Origin::Created { hook_injected: true }));
        let new = inv.get_mut("new").unwrap();
        assert_eq!((new.pid, new.origin, new.pod.key().as_str()), (43, Origin::Synchronized, "shop/web-0"));
        assert_eq!(inv.started_snapshot().len(), 2);
    }

    #[test]
    fn a_start_the_plugin_did_not_see_created_counts_as_an_outage() {
        let mut inv = Inventory::default();
        let t = inv.started(&pod("p"), &ctr("c", api::ContainerState::CONTAINER_CREATED, 7));
        assert_eq!((t.pid, t.origin), (7, Origin::Synchronized));
        assert!(t.started.is_some());
    }
}
