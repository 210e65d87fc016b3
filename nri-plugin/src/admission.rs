//! Admission of each container under iogate's policy: the policy's decision
//! (from `iogate-core`), turned into the NRI container adjustment that makes
//! runc apply the limits *before* the container's process runs:
//!
//! * cgroup v2, one device: `linux.resources.unified["io.max"]`; runc writes
//!   it while creating the cgroup.
//! * cgroup v1 (runc refuses `unified` there), or several devices on v2
//!   (`io.max` takes one device per write, and `unified` holds one value per
//!   file): a `createRuntime` hook running `iogate-oci-hook apply`, which
//!   runs after the init process is in its cgroup and before it execs the
//!   user's command.
//!
//! Nothing here is verified yet: the log says what was asked of the
//! runtime ("hook injected", "io.max in the spec"), and the reconciler reads
//! the limits back once the container starts (`crate::reconciler`), which is
//! also where containers that already run when the plugin connects get
//! theirs.
//!
//! Per-container annotation keys are checked against the pod's containers.
//! NRI hands CreateContainer the pod and the one container, never the pod's
//! container list, so the plugin remembers the names of the containers it
//! has seen in each pod (created, or running at Synchronize) until the pod
//! is removed; a key naming none of them is a warning (never a refusal: the
//! container may still be created).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use iogate_core::exclusion::{Exclusion, ExclusionCounter};
use iogate_core::policy::{Enforce, Refusal};
use iogate_core::{CgroupFs, CgroupVersion, ContainerInfo, Decision, Policy};
use tracing::{info, warn};

use nri::api;

use crate::hook_reports::HookReports;
use crate::inventory::image_of;

/// The `via` of limits written by the injected hook.
const HOOK: &str = "createRuntime hook";

/// Seconds runc gives the injected hook.
const HOOK_TIMEOUT_SECONDS: i64 = 5;

/// Decides, per container, what the policy wants and how the runtime must
/// apply it; the runtime (or, for running containers, a cgroup write) does
/// the limiting.
pub struct Admission {
    policy: Policy,
    cgroups: CgroupFs,
    hook_path: PathBuf,
    /// Where the injected hook reports (`--log`), if anywhere.
    hook_reports: Option<HookReports>,
    exclusions: ExclusionCounter,
    /// Pod sandbox id → the names of its containers seen so far.
    containers: Mutex<HashMap<String, Vec<String>>>,
}

impl Admission {
    pub fn new(policy: Policy, cgroups: CgroupFs) -> Self {
        let hook_path = policy.config.hook_path.clone();
        Admission {
            policy,
            cgroups,
            hook_path,
            hook_reports: None,
            exclusions: ExclusionCounter::default(),
            containers: Mutex::new(HashMap::new()),
        }
    }

    /// Injected hooks report into `reports` (see [`HookReports`]).
    pub fn with_hook_reports(mut self, reports: Option<HookReports>) -> Self {
        self.hook_reports = reports;
        self
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    /// How many containers each exclusion rule left alone so far.
    pub fn exclusion_counts(&self) -> &ExclusionCounter {
        &self.exclusions
    }

    /// The adjustment for a container being created. A refusal (strict mode)
    /// is returned as an error, which containerd turns into a failed
    /// CreateContainer carrying its message.
    pub fn create_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<api::ContainerAdjustment> {
        let image = image_of(ctr);
        let siblings = self.seen(&pod.id, &ctr.name);
        let info = ContainerInfo { siblings: &siblings, ..info_of(pod, ctr, &image) };
        match self.decide(&info)? {
            Some(e) => Ok(self.adjustment(&e, &ctr.id)),
            None => Ok(api::ContainerAdjustment::new()),
        }
    }

    /// Remembers the containers running when the plugin (re)connects
    /// (`Synchronize`), replacing what an earlier connection saw. Their
    /// limits are the reconciler's to check and write.
    pub fn remember_running(&self, containers: &[api::Container]) {
        let mut seen = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        seen.clear();
        for ctr in containers {
            let names = seen.entry(ctr.pod_sandbox_id.clone()).or_default();
            if !names.contains(&ctr.name) {
                names.push(ctr.name.clone());
            }
        }
    }

    /// Records `container` as one of the pod's and returns the pod's other
    /// containers seen so far.
    fn seen(&self, pod_id: &str, container: &str) -> Vec<String> {
        let mut seen = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        let names = seen.entry(pod_id.to_string()).or_default();
        let others = names.iter().filter(|n| *n != container).cloned().collect();
        if !names.iter().any(|n| n == container) {
            names.push(container.to_string());
        }
        others
    }

    /// Forgets a removed pod's containers.
    pub fn forget_pod(&self, pod_id: &str) {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(pod_id);
    }

    /// How many pods' container names are remembered.
    pub fn pods_remembered(&self) -> usize {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs the policy and logs its reasoning; `None` means "leave alone".
    fn decide(&self, info: &ContainerInfo<'_>) -> Result<Option<Enforce>, Refusal> {
        let (pod, container) = (format!("{}/{}", info.namespace, info.pod), info.container);
        match self.policy.decide(info) {
            Err(refusal) => {
                warn!(%pod, %container, "refused (strict mode): {refusal}");
                Err(refusal)
            }
            Ok(Decision::Excluded(exclusion)) => {
                self.exclusions.record(&exclusion);
                // Every exclusion is a container without limits: loud, so
                // an unexpected one is seen.
                match exclusion {
                    Exclusion::Sandbox => info!(%pod, %container, "no limits: excluded, {exclusion}"),
                    _ => warn!(%pod, %container, rule = %exclusion.kind(), "no limits: excluded, {exclusion}"),
                }
                Ok(None)
            }
            Ok(Decision::Exempt { reason }) => {
                info!(%pod, %container, "no limits: exempt by {reason}");
                Ok(None)
            }
            Ok(Decision::Enforce(e)) => {
                for w in &e.warnings {
                    warn!(%pod, %container, "{w}");
                }
                if e.limits.is_unlimited() || e.devices.is_empty() {
                    info!(%pod, %container, "no limits: every knob is unlimited ({})", e.explain());
                    return Ok(None);
                }
                let how = self.mechanism(&e);
                let devices = e.device_limits().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                // Asked of the runtime, not yet seen in force: the
                // reconciler says "limits verified" once it has read them.
                let asked = if how == HOOK { "hook injected" } else { "limits requested" };
                info!(%pod, %container, via = how, "{asked} for {devices}: {}", e.explain());
                Ok(Some(e))
            }
        }
    }

    fn mechanism(&self, e: &Enforce) -> &'static str {
        if self.cgroups.version == CgroupVersion::V2 && e.devices.len() == 1 {
            "io.max in the spec"
        } else {
            HOOK
        }
    }

    /// Whether `adj` carries the createRuntime hook.
    pub fn injects_hook(adj: &api::ContainerAdjustment) -> bool {
        adj.hooks.as_ref().is_some_and(|h| !h.create_runtime.is_empty())
    }

    /// The spec change that carries `e` for container `id`; see the module
    /// docs for the choice.
    pub fn adjustment(&self, e: &Enforce, id: &str) -> api::ContainerAdjustment {
        let mut adj = api::ContainerAdjustment::new();
        let lines = e.device_limits();
        if self.cgroups.version == CgroupVersion::V2 && lines.len() == 1 {
            let mut res = api::LinuxResources::new();
            res.unified.insert("io.max".into(), lines[0].to_string());
            let mut linux = api::LinuxContainerAdjustment::new();
            linux.resources = Some(res).into();
            adj.linux = Some(linux).into();
        } else {
            let mut hook = api::Hook::new();
            hook.path = self.hook_path.display().to_string();
            hook.args = self.hook_args(&lines, id);
            // runc waits for a hook without limit; a stuck one must not hang
            // container creation (the hook itself takes ~2 ms).
            hook.timeout = Some(api::OptionalInt { value: HOOK_TIMEOUT_SECONDS, ..Default::default() }).into();
            let mut hooks = api::Hooks::new();
            hooks.create_runtime.push(hook);
            adj.hooks = Some(hooks).into();
        }
        adj
    }

    /// What the injected hook must agree on with the plugin is passed, not
    /// found again on the host: the cgroup version the plugin chose, strict
    /// mode, and where to log.
    fn hook_args(&self, lines: &[iogate_core::DeviceLimits], id: &str) -> Vec<String> {
        let mut args = vec!["iogate-oci-hook".to_string(), "apply".to_string()];
        args.extend(["--cgroup-version".to_string(), self.cgroups.version.to_string()]);
        for l in lines {
            args.extend(["--io-max".to_string(), l.to_string()]);
        }
        if self.policy.config.strict {
            args.push("--strict".into());
        }
        // A fail-open hook exits 0 whatever happened, and runc discards its
        // output: its report goes where the plugin reads it, else to the
        // configured log.
        let report = self.hook_reports.as_ref().and_then(|r| r.path_for(id));
        if let Some(log) = report.as_ref().or(self.policy.config.hook_log.as_ref()) {
            args.extend(["--log".to_string(), log.display().to_string()]);
        }
        args
    }

    /// Checks at start-up that the hook the plugin will inject exists, so a
    /// missing binary is an error now rather than a failed container later.
    pub fn check_hook(&self) -> Result<()> {
        if self.cgroups.version == CgroupVersion::V2 && self.policy.devices.len() <= 1 {
            return Ok(());
        }
        let meta = std::fs::metadata(&self.hook_path).with_context(|| {
            format!(
                "cgroup {} with {} device(s) needs the OCI hook, expected it at {} (set hook-path / IOGATE_HOOK_PATH)",
                self.cgroups.version,
                self.policy.devices.len(),
                self.hook_path.display()
            )
        })?;
        anyhow::ensure!(meta.is_file(), "expected the OCI hook at {} to be a file", self.hook_path.display());
        Ok(())
    }
}

fn info_of<'a>(pod: &'a api::PodSandbox, ctr: &'a api::Container, image: &'a str) -> ContainerInfo<'a> {
    // NRI sends no CreateContainer for sandboxes: they are pods here.
    ContainerInfo::new(&pod.namespace, &pod.name, &ctr.name, image, &pod.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iogate_core::exclusion::ExclusionKind;
    use iogate_core::{Config, Device};

    fn admission(version: CgroupVersion, devices: Vec<Device>, f: impl FnOnce(&mut Config)) -> Admission {
        let mut c = Config { hook_path: "/opt/iogate/bin/iogate-oci-hook".into(), ..Config::default() };
        f(&mut c);
        Admission::new(Policy::new(c, devices), CgroupFs::new(version, "/sys/fs/cgroup"))
    }

    fn pod(ann: &[(&str, &str)]) -> api::PodSandbox {
        let mut p = api::PodSandbox::new();
        p.id = "p1".into();
        p.name = "web-0".into();
        p.namespace = "shop".into();
        p.annotations = ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p
    }

    fn ctr(name: &str) -> api::Container {
        let mut c = api::Container::new();
        c.id = "c1".into();
        c.pod_sandbox_id = "p1".into();
        c.name = name.into();
        c
    }

    #[test]
    fn v2_single_device_goes_into_unified() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |_| {});
        let adj = l.create_container(&pod(&[("iogate.io/write-iops", "100")]), &ctr("app")).unwrap();
        let res = adj.linux.resources.as_ref().unwrap();
        assert_eq!(res.unified["io.max"], "7:0 riops=500 wiops=100 rbps=max wbps=max");
        assert!(adj.hooks.is_none());
    }

    #[test]
    fn v1_injects_the_create_runtime_hook() {
        let reports = tempfile::tempdir().unwrap();
        let l = admission(CgroupVersion::V1, vec![Device::new(7, 0), Device::new(8, 0)], |c| c.strict = true)
            .with_hook_reports(Some(HookReports::new(reports.path()).unwrap()));
        let adj = l.create_container(&pod(&[]), &ctr("app")).unwrap();
        assert!(Admission::injects_hook(&adj));
        let report = reports.path().join("c1.log").display().to_string();
        assert!(adj.linux.is_none(), "runc refuses unified resources on cgroup v1");
        let hook = &adj.hooks.create_runtime[0];
        assert_eq!(hook.path, "/opt/iogate/bin/iogate-oci-hook");
        assert_eq!(
            hook.args,
            [
                "iogate-oci-hook",
                "apply",
                "--cgroup-version",
                "v1",
                "--io-max",
                "7:0 riops=500 wiops=500 rbps=max wbps=max",
                "--io-max",
                "8:0 riops=500 wiops=500 rbps=max wbps=max",
                "--strict",
                "--log",
                &report
            ]
        );
        assert_eq!(hook.timeout.value, 5);
    }

    #[test]
    fn the_hook_logs_where_the_config_says() {
        let l = admission(CgroupVersion::V1, vec![Device::new(7, 0)], |c| {
            c.hook_log = Some("/var/log/iogate/hook.log".into())
        });
        let adj = l.create_container(&pod(&[]), &ctr("app")).unwrap();
        let args = &adj.hooks.create_runtime[0].args;
        assert_eq!(args[2..4], ["--cgroup-version", "v1"]);
        assert_eq!(args[args.len() - 2..], ["--log", "/var/log/iogate/hook.log"]);
    }

    #[test]
    fn excluded_and_exempt_get_no_adjustment_and_exclusions_are_counted() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| {
            c.exempt_namespaces = vec!["shop".into()];
            c.exclusions.containers = vec!["istio-proxy".into()];
        });
        let adj = l.create_container(&pod(&[]), &ctr("istio-proxy")).unwrap();
        assert_eq!(adj, api::ContainerAdjustment::new());
        assert_eq!(l.exclusion_counts().get(ExclusionKind::Container), 1);
        let adj = l.create_container(&pod(&[("iogate.io/exempt", "true")]), &ctr("app")).unwrap();
        assert_eq!(adj, api::ContainerAdjustment::new());
        assert_eq!(l.exclusion_counts().snapshot().iter().map(|(_, n)| n).sum::<u64>(), 1);
    }

    #[test]
    fn names_a_tenant_chooses_never_exclude_by_default() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |_| {});
        for name in ["istio-proxy", "xpsmdbx", "apisix-but-not-really"] {
            let adj = l.create_container(&pod(&[]), &ctr(name)).unwrap();
            assert_eq!(adj.linux.resources.unified["io.max"], "7:0 riops=500 wiops=500 rbps=max wbps=max", "{name}");
        }
        assert!(l.exclusion_counts().snapshot().iter().all(|(_, n)| *n == 0));
    }

    /// A key for a container created later is a warning only for the
    /// containers created before it; once created, the pod's containers are
    /// known, and they are forgotten with the pod.
    #[test]
    fn per_container_keys_are_checked_against_the_containers_seen() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| c.strict = true);
        let p = pod(&[("iogate.io/write-iops.db", "100")]);
        let web = ctr("web");
        let siblings = l.seen(&p.id, "web");
        assert!(siblings.is_empty());
        let image = String::new();
        let info = ContainerInfo { siblings: &siblings, ..info_of(&p, &web, &image) };
        let Decision::Enforce(e) = l.policy.decide(&info).unwrap() else { panic!() };
        assert_eq!(e.warnings.len(), 1, "db is not created yet: {:?}", e.warnings);
        assert!(e.warnings[0].contains("not among the pod's containers so far (web)"), "{:?}", e.warnings);
        // Strict mode does not refuse it; db then gets its limit, quietly.
        let adj = l.create_container(&p, &ctr("db")).unwrap();
        assert_eq!(adj.linux.resources.unified["io.max"], "7:0 riops=500 wiops=100 rbps=max wbps=max");
        assert_eq!(l.seen(&p.id, "web"), ["db"]);
        assert_eq!(l.pods_remembered(), 1);
        l.forget_pod(&p.id);
        assert_eq!(l.pods_remembered(), 0);
    }

    #[test]
    fn strict_refusal_is_an_error_with_the_reason() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| c.strict = true);
        let e = l.create_container(&pod(&[("iogate.io/read-iops", "lots")]), &ctr("app")).unwrap_err();
        assert!(
            format!("{e:#}")
                .starts_with("iogate refuses pod shop/web-0 container app: annotation iogate.io/read-iops=\"lots\""),
            "{e:#}"
        );
    }

    #[test]
    fn image_comes_from_the_cri_annotation_for_image_exclusion() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| {
            c.exclusions.images = vec!["registry.local/apisix".parse().unwrap()]
        });
        let mut c = ctr("gateway");
        c.annotations.insert(crate::inventory::CRI_IMAGE_NAME.into(), "registry.local/apisix:3".into());
        assert_eq!(l.create_container(&pod(&[]), &c).unwrap(), api::ContainerAdjustment::new());
        assert_eq!(l.exclusion_counts().get(ExclusionKind::Image), 1);
    }
}
