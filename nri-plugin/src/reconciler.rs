//! Limits that hold. The one place that changes the limits of running
//! containers on this node: it reads every container's limits back from its
//! cgroup and compares them with what the policy decides *now*, and writes
//! the difference.
//!
//! * When a container starts (NRI StartContainer: runc has created its
//!   cgroup, run the injected hook, and not yet started the user's
//!   process), its limits are read back and its hook's report is read; a
//!   mismatch is repaired there and then, by a cgroup write (a call to the
//!   runtime from inside its own request would deadlock).
//! * Every interval (10 s by default), at every Synchronize, and whenever
//!   the policy or a pod's annotations change, one pass over every running
//!   container repairs what differs: containers created while the plugin was
//!   away, limits reverted or overwritten, policy changes.
//!
//! How a repair is written: on cgroup v2 with one data disk, through the
//! runtime (NRI UpdateContainers with `unified["io.max"]`, which containerd
//! turns into a CRI UpdateContainerResources, so its stored spec agrees with
//! the cgroup) when that is seen to land; otherwise, and always on cgroup
//! v1 (runc refuses unified resources there), a direct cgroup write. Either
//! way the result is read back before it counts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use iogate_api::{ContainerGuarantee, GuaranteeResponse};
use iogate_core::{CgroupPath, CgroupVersion, ContainerInfo, Device, DeviceLimits, Limits};
use nri::{api, RuntimeHandle};
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::current_policy::CurrentPolicy;
use crate::expectation::{describe, expected, Expected};
use crate::hook_reports::{HookReport, HookReports};
use crate::inventory::{Inventory, Origin, Tracked};
use crate::pod_annotations::PodAnnotations;
use crate::telemetry::{Guarantee, Outcome, RepairCause, Telemetry};

/// How often every running container is checked unless something wakes
/// the reconciler earlier.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Which way repairs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairVia {
    /// Through the runtime where it can carry the limits (cgroup v2, one
    /// device) and is seen to apply them; else a cgroup write.
    Auto,
    /// Always a cgroup write.
    Cgroup,
    /// Always try the runtime first, whatever the cgroup version (to find
    /// out what a runtime does with it), then a cgroup write if it did not
    /// land.
    Nri,
}

impl std::str::FromStr for RepairVia {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RepairVia::Auto),
            "cgroup" => Ok(RepairVia::Cgroup),
            "nri" => Ok(RepairVia::Nri),
            other => Err(format!("expected auto, cgroup or nri, found {other:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub repair_via: RepairVia,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { interval: DEFAULT_INTERVAL, repair_via: RepairVia::Auto }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub checked: usize,
    pub repaired: usize,
    pub failed: usize,
    pub took: Duration,
}

/// Whether NRI UpdateContainers puts `io.max` into the cgroup on the
/// connected runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Landing {
    Untried,
    Lands,
    DoesNot(String),
}

/// Where a check runs: inside a runtime request the runtime cannot be
/// called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    StartContainer,
    Pass,
}

/// A check's verdict on one container.
enum Verdict {
    /// Its cgroup is gone: the container has stopped.
    Gone,
    Checked {
        state: Guarantee,
        applied: Option<Vec<DeviceLimits>>,
        cgroup: Option<CgroupPath>,
        repair: Option<Outcome>,
    },
}

pub struct Reconciler {
    policy: Arc<CurrentPolicy>,
    inventory: Mutex<Inventory>,
    annotations: RwLock<PodAnnotations>,
    telemetry: Arc<Telemetry>,
    hooks: Option<HookReports>,
    runtime: Mutex<Option<RuntimeHandle>>,
    runtime_name: Mutex<String>,
    settings: Settings,
    landing: Mutex<Landing>,
    /// Policy devices found missing (warned once each).
    gone_devices: Mutex<BTreeSet<Device>>,
    /// Where devices are looked up (tests fake it).
    sys_dev_block: PathBuf,
    /// Cgroup writes one at a time, whoever asks.
    writes: Mutex<()>,
    bell: (Mutex<bool>, Condvar),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reconciler {
    pub fn new(
        policy: Arc<CurrentPolicy>,
        telemetry: Arc<Telemetry>,
        hooks: Option<HookReports>,
        settings: Settings,
    ) -> Self {
        Reconciler {
            policy,
            inventory: Mutex::default(),
            annotations: RwLock::new(PodAnnotations::AtCreation),
            telemetry,
            hooks,
            runtime: Mutex::new(None),
            runtime_name: Mutex::new("the runtime".into()),
            settings,
            landing: Mutex::new(Landing::Untried),
            gone_devices: Mutex::default(),
            sys_dev_block: PathBuf::from("/sys/dev/block"),
            writes: Mutex::new(()),
            bell: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Looks devices up in another `/sys/dev/block`.
    pub fn with_sys_dev_block(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sys_dev_block = dir.into();
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    pub fn hooks(&self) -> Option<&HookReports> {
        self.hooks.as_ref()
    }

    pub fn set_runtime(&self, runtime: RuntimeHandle) {
        *lock(&self.runtime) = Some(runtime);
    }

    pub fn set_annotations(&self, source: PodAnnotations) {
        info!("pod annotations: {}", source.describe());
        *self.annotations.write().unwrap_or_else(|p| p.into_inner()) = source;
        self.wake();
    }

    /// A (re)connection to `name` `version`: whether its UpdateContainers
    /// lands is found out again.
    pub fn connected(&self, name: &str, version: &str) {
        *lock(&self.runtime_name) = format!("{name} {version}");
        *lock(&self.landing) = Landing::Untried;
    }

    /// Runs a pass now instead of at the end of the interval.
    pub fn wake(&self) {
        let (flag, bell) = &self.bell;
        *lock(flag) = true;
        bell.notify_all();
    }

    /// The reconciler's loop; never returns.
    pub fn run(self: Arc<Self>) {
        info!(interval = %humantime::format_duration(self.settings.interval), "reconciler running");
        loop {
            let (flag, bell) = &self.bell;
            let mut woken = lock(flag);
            if !*woken {
                woken = bell.wait_timeout(woken, self.settings.interval).unwrap_or_else(|p| p.into_inner()).0;
            }
            *woken = false;
            drop(woken);
            let pass = self.pass();
            debug!(
                containers = pass.checked,
                repaired = pass.repaired,
                failed = pass.failed,
                took_us = pass.took.as_micros() as u64,
                "reconcile pass"
            );
        }
    }

    pub fn created(&self, pod: &api::PodSandbox, ctr: &api::Container, hook_injected: bool) {
        lock(&self.inventory).created(pod, ctr, hook_injected);
    }

    pub fn gone(&self, id: &str) {
        if lock(&self.inventory).remove(id).is_some() {
            self.publish_states();
        }
        if let Some(hooks) = &self.hooks {
            hooks.forget(id);
        }
    }

    /// The runtime's containers at connect: the unknown ones are checked
    /// (and repaired) by a pass right after.
    pub fn synchronize(&self, pods: &[api::PodSandbox], containers: &[api::Container]) {
        let gone = lock(&self.inventory).synchronize(pods, containers);
        for id in gone {
            if let Some(hooks) = &self.hooks {
                hooks.forget(&id);
            }
        }
        self.wake();
    }

    /// A container is about to run its command: its limits are read back,
    /// and repaired if they differ. Fails (refusing the start) only in
    /// strict mode, when the limits could not be put in place.
    pub fn start_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> anyhow::Result<()> {
        let Ok(admission) = self.policy.get() else { return Ok(()) };
        let snapshot = {
            let mut inventory = lock(&self.inventory);
            let t = inventory.started(pod, ctr);
            if let (Origin::Created { hook_injected: true }, Some(hooks)) = (t.origin, &self.hooks) {
                t.hook = Some(hooks.take(&t.id));
            }
            t.clone()
        };
        let verdict = self.check(&admission, &snapshot, Context::StartContainer);
        let state = self.record(&snapshot.id, verdict);
        self.publish_states();
        if state == Some(Guarantee::UnlimitedUnexpectedly) && admission.policy().config.strict {
            anyhow::bail!(
                "iogate refuses to start pod {} container {}: its block-I/O limits are not in force (strict mode)",
                snapshot.pod.key(),
                snapshot.name
            );
        }
        Ok(())
    }

    /// One pass over every started container.
    pub fn pass(&self) -> Pass {
        let start = Instant::now();
        let Ok(admission) = self.policy.get() else { return Pass::default() };
        let snapshot = lock(&self.inventory).started_snapshot();
        let mut pass = Pass { checked: snapshot.len(), ..Pass::default() };
        for t in &snapshot {
            let verdict = self.check(&admission, t, Context::Pass);
            if let Verdict::Checked { repair: Some(outcome), .. } = &verdict {
                match outcome {
                    Outcome::Repaired => pass.repaired += 1,
                    Outcome::Failed => pass.failed += 1,
                }
            }
            self.record(&t.id, verdict);
        }
        self.publish_states();
        pass.took = start.elapsed();
        self.telemetry.tick(pass.took);
        pass
    }

    /// Each started container and its state (`GET /api/v1/guarantee`).
    pub fn guarantee(&self) -> GuaranteeResponse {
        let containers = lock(&self.inventory)
            .iter()
            .map(|t| ContainerGuarantee {
                container_id: t.id.clone(),
                namespace: t.pod.namespace.clone(),
                pod: t.pod.name.clone(),
                container: t.name.clone(),
                state: t.state,
            })
            .collect();
        GuaranteeResponse { containers }
    }

    fn publish_states(&self) {
        let counts = lock(&self.inventory).states();
        self.telemetry.set_states(&counts);
    }

    /// Stores a verdict; returns the container's state.
    fn record(&self, id: &str, verdict: Verdict) -> Option<Guarantee> {
        let mut inventory = lock(&self.inventory);
        match verdict {
            Verdict::Gone => {
                inventory.remove(id);
                None
            }
            Verdict::Checked { state, applied, cgroup, .. } => {
                let t = inventory.get_mut(id)?;
                t.state = Some(state);
                t.hook = None;
                if applied.is_some() {
                    t.applied = applied;
                }
                if cgroup.is_some() {
                    t.cgroup = cgroup;
                }
                Some(state)
            }
        }
    }

    fn check(&self, admission: &Admission, t: &Tracked, context: Context) -> Verdict {
        let (pod, container) = (t.pod.key(), t.name.as_str());
        let cgroups = admission.cgroups();
        let cgroup = match &t.cgroup {
            Some(cg) => cg.clone(),
            None => match cgroups.cgroup_of_pid(t.pid) {
                Ok(cg) => cg,
                Err(_) if !Path::new(&format!("/proc/{}", t.pid)).exists() => return Verdict::Gone,
                Err(e) => {
                    warn!(%pod, %container, pid = t.pid, "cannot find the container's cgroup, its limits are unknown: {e}");
                    return self.unknown();
                }
            },
        };
        let annotations = self.annotations.read().unwrap_or_else(|p| p.into_inner()).current(&t.pod);
        // The pod's other containers are not needed: they only decide
        // whether a key naming another container is worth a warning, which
        // admission already gave.
        let info = ContainerInfo::new(
            &t.pod.namespace,
            &t.pod.name,
            container,
            &t.image,
            annotations.as_deref().unwrap_or(&t.pod.annotations),
        );
        let expected = match expected(admission.policy(), &info) {
            Ok(e) => e,
            // Strict mode cannot refuse what already runs: what was last
            // enforced stays.
            Err(refusal) => match (&t.applied, t.state) {
                (Some(applied), Some(state)) => {
                    warn!(%pod, %container, "{refusal}; it already runs, so its limits stay as they are");
                    Expected { guarantee: state, want: applied.clone(), why: "as last enforced".into() }
                }
                _ => {
                    warn!(%pod, %container, "{refusal}; it already runs, and its limits were never verified");
                    return self.unknown();
                }
            },
        };
        if expected.guarantee == Guarantee::Excluded {
            if t.state != Some(Guarantee::Excluded) {
                debug!(%pod, %container, "not checked: excluded, {}", expected.why);
            }
            return Verdict::Checked { state: Guarantee::Excluded, applied: None, cgroup: Some(cgroup), repair: None };
        }
        let want = self.present(expected.want.clone());
        let found = match read(cgroups, &cgroup, &want) {
            Ok(found) => found,
            Err(_) if !cgroup.as_path().exists() => return Verdict::Gone,
            Err(e) => {
                warn!(%pod, %container, %cgroup, "cannot read the limits in force: {e}");
                return Verdict::Checked {
                    state: Guarantee::UnlimitedUnexpectedly,
                    applied: None,
                    cgroup: Some(cgroup),
                    repair: None,
                };
            }
        };
        let hook_failed = t.hook.as_ref().filter(|h| h.is_failure());
        if let Some(report) = hook_failed {
            self.telemetry.hook_failure();
            warn!(%pod, %container, id = %t.id, "the injected hook failed: {}", hook_text(report));
        }
        if found == want {
            if t.applied.is_none() {
                self.verified(t, &expected, &cgroup);
            } else if t.applied.as_ref() != Some(&want) {
                info!(%pod, %container, "limits now {} ({}), already in force", describe(&want), expected.why);
            }
            return Verdict::Checked {
                state: expected.guarantee,
                applied: Some(want),
                cgroup: Some(cgroup),
                repair: None,
            };
        }
        let cause = match &t.applied {
            None if hook_failed.is_some() => RepairCause::HookFailed,
            None if t.origin == Origin::Synchronized => RepairCause::Outage,
            None => RepairCause::MissingAtStart,
            Some(applied) if *applied != want => RepairCause::PolicyChange,
            Some(_) => RepairCause::Drift,
        };
        if cause == RepairCause::PolicyChange {
            info!(%pod, %container, %cause, expected = %describe(&want), found = %describe(&found), "applying the policy's new limits: {}", expected.why);
        } else {
            warn!(%pod, %container, %cause, expected = %describe(&want), found = %describe(&found), "limits not in force; repairing");
        }
        let written = self.write(admission, t, &cgroup, &want, context);
        let after = read(cgroups, &cgroup, &want);
        let outcome = match (&written, &after) {
            (Ok(via), Ok(now)) if *now == want => {
                info!(%pod, %container, %cause, via = *via, "limits repaired and verified: {}", describe(now));
                Outcome::Repaired
            }
            (Err(e), _) => {
                warn!(%pod, %container, %cause, expected = %describe(&want), "repair failed, the container runs without its limits: {e}");
                Outcome::Failed
            }
            (Ok(via), Ok(now)) => {
                warn!(%pod, %container, %cause, via = *via, expected = %describe(&want), found = %describe(now), "repair written but not in force");
                Outcome::Failed
            }
            (Ok(_), Err(_)) if !cgroup.as_path().exists() => return Verdict::Gone,
            (Ok(via), Err(e)) => {
                warn!(%pod, %container, %cause, via = *via, "repair written, cannot read it back: {e}");
                Outcome::Failed
            }
        };
        self.telemetry.repair(cause, outcome);
        let (state, applied) = match outcome {
            Outcome::Repaired => {
                if t.applied.is_none() {
                    self.observe_start(t);
                }
                (expected.guarantee, Some(want))
            }
            Outcome::Failed => (Guarantee::UnlimitedUnexpectedly, None),
        };
        Verdict::Checked { state, applied, cgroup: Some(cgroup), repair: Some(outcome) }
    }

    fn unknown(&self) -> Verdict {
        Verdict::Checked { state: Guarantee::UnlimitedUnexpectedly, applied: None, cgroup: None, repair: None }
    }

    /// The first read-back that found the policy's limits.
    fn verified(&self, t: &Tracked, expected: &Expected, cgroup: &CgroupPath) {
        let (pod, container) = (t.pod.key(), t.name.as_str());
        match expected.guarantee {
            Guarantee::Limited => {
                info!(%pod, %container, %cgroup, "limits verified: {} (read back from the cgroup)", expected.describe())
            }
            other => {
                info!(%pod, %container, %cgroup, state = %other, "no limits verified (read back from the cgroup): {}", expected.why)
            }
        }
        self.observe_start(t);
    }

    fn observe_start(&self, t: &Tracked) {
        let since = t.started.and_then(|s| SystemTime::now().duration_since(s).ok()).unwrap_or_default();
        self.telemetry.verified_after(since);
    }

    /// The policy's devices that still exist: a disk that is gone carries no
    /// I/O, and writing a limit for it fails (ENODEV).
    fn present(&self, want: Vec<DeviceLimits>) -> Vec<DeviceLimits> {
        let (here, gone): (Vec<DeviceLimits>, Vec<DeviceLimits>) =
            want.into_iter().partition(|d| self.sys_dev_block.join(d.device.to_string()).exists());
        let mut warned = lock(&self.gone_devices);
        for d in gone {
            if warned.insert(d.device) {
                warn!(device = %d.device, "a device of the policy is gone from this host; its limits are no longer checked");
            }
        }
        here
    }

    /// Writes `want`; returns how.
    fn write(
        &self,
        admission: &Admission,
        t: &Tracked,
        cgroup: &CgroupPath,
        want: &[DeviceLimits],
        context: Context,
    ) -> Result<&'static str, String> {
        if context == Context::Pass && self.runtime_may_carry(admission, want) {
            match self.update_through_runtime(&t.id, want) {
                Ok(()) => {
                    if read(admission.cgroups(), cgroup, want).is_ok_and(|now| now == want) {
                        let mut landing = lock(&self.landing);
                        if *landing != Landing::Lands {
                            info!(runtime = %lock(&self.runtime_name), "NRI UpdateContainers with unified io.max lands: repairs go through the runtime");
                            *landing = Landing::Lands;
                        }
                        return Ok("NRI UpdateContainers");
                    }
                    self.does_not_land(
                        "the runtime accepted the update, but the cgroup's limits did not change".into(),
                    );
                }
                Err(e) => self.does_not_land(e),
            }
        }
        let _one_writer = lock(&self.writes);
        admission.cgroups().write_limits(cgroup, want).map(|_| "cgroup write").map_err(|e| e.to_string())
    }

    fn runtime_may_carry(&self, admission: &Admission, want: &[DeviceLimits]) -> bool {
        match self.settings.repair_via {
            RepairVia::Cgroup => false,
            RepairVia::Nri => !want.is_empty(),
            // unified holds one value per file, io.max takes one device per
            // write; v1 has no unified at all.
            RepairVia::Auto => {
                admission.cgroups().version == CgroupVersion::V2
                    && want.len() == 1
                    && !matches!(*lock(&self.landing), Landing::DoesNot(_))
            }
        }
    }

    fn does_not_land(&self, why: String) {
        let mut landing = lock(&self.landing);
        if *landing != Landing::DoesNot(why.clone()) {
            warn!(runtime = %lock(&self.runtime_name), "NRI UpdateContainers did not put io.max in place ({why}); repairs are cgroup writes");
            *landing = Landing::DoesNot(why);
        }
    }

    fn update_through_runtime(&self, id: &str, want: &[DeviceLimits]) -> Result<(), String> {
        let runtime = lock(&self.runtime).clone().ok_or("no runtime connection")?;
        let mut resources = api::LinuxResources::new();
        resources.unified.insert("io.max".into(), want[0].to_string());
        let mut linux = api::LinuxContainerUpdate::new();
        linux.resources = Some(resources).into();
        let mut update = api::ContainerUpdate::new();
        update.container_id = id.to_string();
        update.linux = Some(linux).into();
        let failed = runtime.update_containers(vec![update]).map_err(|e| e.to_string())?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err("the runtime reported the update as failed (its log says why)".into())
        }
    }
}

fn hook_text(report: &HookReport) -> String {
    match report {
        HookReport::Applied(s) | HookReport::Failed(s) => s.clone(),
        HookReport::Missing { path } => format!("it left no report at {}", path.display()),
        HookReport::Unreadable { path, reason } => format!("its report {} is unreadable: {reason}", path.display()),
    }
}

/// The limits on each of `want`'s devices, in the same order.
fn read(
    cgroups: &iogate_core::CgroupFs,
    cgroup: &CgroupPath,
    want: &[DeviceLimits],
) -> Result<Vec<DeviceLimits>, iogate_core::cgroup::CgroupError> {
    want.iter()
        .map(|d| {
            let limits: Limits = cgroups.read_limits(cgroup, d.device)?;
            Ok(DeviceLimits { device: d.device, limits })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iogate_core::{CgroupFs, Config, Knob, Policy};

    const ID: &str = "c0ffee";

    /// A v1 blkio hierarchy, /proc and /sys/dev/block in a temp dir: the
    /// container's cgroup holds the four throttle files, its init process
    /// is PID 4242, and device 7:0 exists.
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().unwrap();
            let cg = dir.path().join("blkio/pod/c0ffee");
            std::fs::create_dir_all(&cg).unwrap();
            for k in Knob::ALL {
                std::fs::write(cg.join(iogate_core::cgroup::v1::blkio::throttle_file(k)), "").unwrap();
            }
            std::fs::create_dir_all(dir.path().join("proc/4242")).unwrap();
            std::fs::write(dir.path().join("proc/4242/cgroup"), "7:blkio:/pod/c0ffee\n").unwrap();
            std::fs::create_dir_all(dir.path().join("sys/7:0")).unwrap();
            Node { dir }
        }

        fn admission(&self, read_iops: u64) -> Admission {
            let mut config = Config::default();
            config.defaults.read_iops = Some(read_iops);
            let cgroups =
                CgroupFs::new(CgroupVersion::V1, self.dir.path().join("blkio")).with_proc(self.dir.path().join("proc"));
            Admission::new(Policy::new(config, vec![Device::new(7, 0)]), cgroups)
        }

        fn file(&self, knob: Knob) -> PathBuf {
            self.dir.path().join("blkio/pod/c0ffee").join(iogate_core::cgroup::v1::blkio::throttle_file(knob))
        }

        fn reconciler(&self, read_iops: u64) -> (Arc<CurrentPolicy>, Reconciler) {
            let policy = Arc::new(CurrentPolicy::new(self.admission(read_iops)));
            let hooks = HookReports::new(self.dir.path().join("hooks")).unwrap();
            let r = Reconciler::new(policy.clone(), Arc::new(Telemetry::new()), Some(hooks), Settings::default())
                .with_sys_dev_block(self.dir.path().join("sys"));
            (policy, r)
        }
    }

    fn pod() -> api::PodSandbox {
        api::PodSandbox {
            id: "p".into(),
            uid: "u".into(),
            name: "db-0".into(),
            namespace: "shop".into(),
            ..Default::default()
        }
    }

    fn ctr(pid: u32) -> api::Container {
        api::Container { id: ID.into(), pod_sandbox_id: "p".into(), name: "app".into(), pid, ..Default::default() }
    }

    fn metric(r: &Reconciler, line: &str) -> bool {
        r.telemetry().encode().lines().any(|l| l == line)
    }

    #[test]
    fn a_failed_hook_is_counted_and_repaired_at_start_then_drift_and_policy_changes() {
        let node = Node::new();
        let (policy, r) = node.reconciler(300);
        r.created(&pod(), &ctr(0), true);
        std::fs::write(
            r.hooks().unwrap().path_for(ID).unwrap(),
            "iogate-oci-hook: error: No such device (os error 19); the container starts without iogate limits (fail-open)\n",
        )
        .unwrap();
        r.start_container(&pod(), &ctr(4242)).unwrap();
        assert_eq!(std::fs::read_to_string(node.file(Knob::ReadIops)).unwrap(), "7:0 300");
        assert!(metric(&r, "iogate_hook_failures_total 1"));
        assert!(metric(&r, "iogate_repairs_total{cause=\"hook_failed\",outcome=\"repaired\"} 1"));
        assert!(metric(&r, "iogate_containers{state=\"limited\"} 1"));

        // Overwritten by hand: the next pass puts it back.
        std::fs::write(node.file(Knob::ReadIops), "7:0 9999").unwrap();
        let pass = r.pass();
        assert_eq!((pass.checked, pass.repaired, pass.failed), (1, 1, 0));
        assert_eq!(std::fs::read_to_string(node.file(Knob::ReadIops)).unwrap(), "7:0 300");
        assert!(metric(&r, "iogate_repairs_total{cause=\"drift\",outcome=\"repaired\"} 1"));

        // Nothing to do when nothing changed.
        assert_eq!(r.pass().repaired, 0);

        // A new policy reaches the running container.
        policy.set(node.admission(120));
        assert_eq!(r.pass().repaired, 1);
        assert_eq!(std::fs::read_to_string(node.file(Knob::ReadIops)).unwrap(), "7:0 120");
        assert!(metric(&r, "iogate_repairs_total{cause=\"policy_change\",outcome=\"repaired\"} 1"));

        // Annotations changed on the running pod, through the stand-in.
        let pods = crate::pod_annotations::parse_file(r#"{"shop/db-0": {"iogate.io/read-iops": "50"}}"#).unwrap();
        r.set_annotations(PodAnnotations::File(Arc::new(RwLock::new(pods))));
        r.pass();
        assert_eq!(std::fs::read_to_string(node.file(Knob::ReadIops)).unwrap(), "7:0 50");

        // The container stops: its cgroup goes, and so does it.
        std::fs::remove_dir_all(node.dir.path().join("blkio/pod/c0ffee")).unwrap();
        assert_eq!(r.pass().checked, 1);
        assert!(r.guarantee().containers.is_empty());
        assert!(metric(&r, "iogate_containers{state=\"limited\"} 0"));
    }

    #[test]
    fn a_repair_that_cannot_be_written_leaves_it_unlimited_unexpectedly_and_strict_refuses_the_start() {
        let node = Node::new();
        let (policy, r) = node.reconciler(300);
        let mut strict = node.admission(300);
        strict = {
            let mut config = strict.policy().config.clone();
            config.strict = true;
            Admission::new(Policy::new(config, strict.policy().devices.clone()), strict.cgroups().clone())
        };
        policy.set(strict);
        // A read-only throttle file: the write fails.
        std::fs::remove_file(node.file(Knob::ReadIops)).unwrap();
        std::fs::create_dir(node.file(Knob::ReadIops)).unwrap();
        r.created(&pod(), &ctr(0), false);
        let e = r.start_container(&pod(), &ctr(4242)).unwrap_err().to_string();
        assert_eq!(
            e,
            "iogate refuses to start pod shop/db-0 container app: its block-I/O limits are not in force (strict mode)"
        );
        assert!(metric(&r, "iogate_containers{state=\"unlimited_unexpectedly\"} 1"));
    }

    #[test]
    fn a_container_found_at_synchronize_is_an_outage_and_a_vanished_device_is_not_checked() {
        let node = Node::new();
        let (_policy, r) = node.reconciler(300);
        let mut running = ctr(4242);
        running.state = api::ContainerState::CONTAINER_RUNNING.into();
        r.synchronize(&[pod()], &[running]);
        r.pass();
        assert!(metric(&r, "iogate_repairs_total{cause=\"outage\",outcome=\"repaired\"} 1"));
        std::fs::remove_dir(node.dir.path().join("sys/7:0")).unwrap();
        std::fs::write(node.file(Knob::ReadIops), "").unwrap();
        assert_eq!(r.pass().repaired, 0, "a gone device is no repair");
        assert!(metric(&r, "iogate_containers{state=\"limited\"} 1"));
    }
}
