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

use std::path::PathBuf;

use anyhow::{Context, Result};
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
}

impl Admission {
    pub fn new(policy: Policy, cgroups: CgroupFs) -> Self {
        let hook_path = policy.config.hook_path.clone();
        Admission { policy, cgroups, hook_path, hook_reports: None }
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

    /// The adjustment for a container being created. A refusal (strict mode)
    /// is returned as an error, which containerd turns into a failed
    /// CreateContainer carrying its message.
    pub fn create_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<api::ContainerAdjustment> {
        let image = image_of(ctr);
        let info = info_of(pod, ctr, &image);
        match self.decide(&info)? {
            Some(e) => Ok(self.adjustment(&e, &ctr.id)),
            None => Ok(api::ContainerAdjustment::new()),
        }
    }

    /// Runs the policy and logs its reasoning; `None` means "leave alone".
    fn decide(&self, info: &ContainerInfo<'_>) -> Result<Option<Enforce>, Refusal> {
        let (pod, container) = (format!("{}/{}", info.namespace, info.pod), info.container);
        match self.policy.decide(info) {
            Err(refusal) => {
                warn!(%pod, %container, "refused (strict mode): {refusal}");
                Err(refusal)
            }
            Ok(Decision::Excluded { reason }) => {
                info!(%pod, %container, "no limits: excluded, {reason}");
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
            hook.args = vec!["iogate-oci-hook".into(), "apply".into()];
            for l in &lines {
                hook.args.push("--io-max".into());
                hook.args.push(l.to_string());
            }
            if self.policy.config.strict {
                hook.args.push("--strict".into());
            }
            // A fail-open hook exits 0 whatever happened, and runc discards
            // its output: its report goes where the plugin reads it.
            if let Some(path) = self.hook_reports.as_ref().and_then(|r| r.path_for(id)) {
                hook.args.push("--log".into());
                hook.args.push(path.display().to_string());
            }
            // runc waits for a hook without limit; a stuck one must not hang
            // container creation (the hook itself takes ~2 ms).
            hook.timeout = Some(api::OptionalInt { value: HOOK_TIMEOUT_SECONDS, ..Default::default() }).into();
            let mut hooks = api::Hooks::new();
            hooks.create_runtime.push(hook);
            adj.hooks = Some(hooks).into();
        }
        adj
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
    ContainerInfo {
        namespace: &pod.namespace,
        pod: &pod.name,
        container: &ctr.name,
        image,
        // NRI sends no CreateContainer for sandboxes: they are pods here.
        is_sandbox: false,
        annotations: &pod.annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn excluded_and_exempt_get_no_adjustment() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| c.exempt_namespaces = vec!["shop".into()]);
        let adj = l.create_container(&pod(&[]), &ctr("istio-proxy")).unwrap();
        assert_eq!(adj, api::ContainerAdjustment::new());
        let adj = l.create_container(&pod(&[("iogate.io/exempt", "true")]), &ctr("app")).unwrap();
        assert_eq!(adj, api::ContainerAdjustment::new());
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
    fn image_comes_from_the_cri_annotation_for_keyword_exclusion() {
        let l = admission(CgroupVersion::V2, vec![Device::new(7, 0)], |c| c.exclude_keywords = vec!["apisix".into()]);
        let mut c = ctr("gateway");
        c.annotations.insert(crate::inventory::CRI_IMAGE_NAME.into(), "registry.local/apisix:3".into());
        assert_eq!(l.create_container(&pod(&[]), &c).unwrap(), api::ContainerAdjustment::new());
    }
}
