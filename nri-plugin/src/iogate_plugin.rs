//! iogate as an NRI plugin: it handles CreateContainer (and the Synchronize
//! every plugin gets), each a thin call into [`Admission`], and
//! RemovePodSandbox, to forget the pod's containers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use iogate_core::device::DeviceResolver;
use iogate_core::{CgroupFs, Config, Device, Policy};
use nri::{api, CreateContainer, HandlerResult, Notification, Plugin, StateChange, Subscriptions};
use tracing::{info, warn};

use crate::admission::Admission;

pub struct IogatePlugin {
    /// `Err` until a usable policy exists: a pre-registered plugin may get
    /// its config only in `Configure`, so a start-up config that does not
    /// work yet (say, the default `/data` is missing) is kept as the reason.
    admission: RwLock<Result<Arc<Admission>, String>>,
}

impl IogatePlugin {
    pub fn new(admission: Admission) -> Self {
        IogatePlugin { admission: RwLock::new(Ok(Arc::new(admission))) }
    }

    /// A plugin whose policy must still arrive in `Configure`; `reason` says
    /// why the start-up policy was not usable.
    pub fn awaiting_config(reason: String) -> Self {
        IogatePlugin { admission: RwLock::new(Err(reason)) }
    }

    fn current(&self) -> Result<Arc<Admission>> {
        match &*self.admission.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(a) => Ok(a.clone()),
            Err(reason) => anyhow::bail!("iogate has no usable policy: {reason}"),
        }
    }

    /// A pre-registered plugin gets its config file's text from containerd
    /// (`<plugin_config_path>/NN-iogate.conf`); when present it replaces the
    /// policy loaded at start-up, so one file configures both modes.
    fn reconfigure(&self, req: &api::ConfigureRequest) -> Result<()> {
        info!(runtime = %req.runtime_name, version = %req.runtime_version, "connected to runtime");
        if req.config.trim().is_empty() {
            // Refusing registration is the loud way to say we cannot work.
            return self.current().map(|_| ());
        }
        let origin = PathBuf::from(format!("<config from {} via NRI>", req.runtime_name));
        let config = Config::from_toml(&req.config, Path::new(&origin), |k| std::env::var(k).ok())?;
        let admission = build_admission(config)?;
        *self.admission.write().unwrap_or_else(|p| p.into_inner()) = Ok(Arc::new(admission));
        Ok(())
    }

    fn admit(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<api::ContainerAdjustment> {
        self.current()?.create_container(pod, ctr)
    }
}

/// Everything start-up must check before the plugin registers: a data mount
/// that does not exist, an unknown cgroup layout or a missing hook binary
/// stop the plugin with an error instead of leaving containers unthrottled.
pub fn build_admission(config: Config) -> Result<Admission> {
    let devices = DeviceResolver::default().resolve_all(&config.mounts, &config.devices)?;
    let cgroups = CgroupFs::detect(config.cgroup_mode).context("finding the block-I/O cgroup hierarchy")?;
    log_policy(&config);
    let admission = Admission::new(Policy::new(config, devices.clone()), cgroups);
    admission.check_hook()?;
    let list = devices.iter().map(Device::to_string).collect::<Vec<_>>().join(", ");
    info!(cgroup = %admission.cgroup_version(), devices = %list, "policy ready");
    Ok(admission)
}

/// What an admin must be able to read off the log at start-up: who is left
/// alone, and how far each namespace may lift its limits.
fn log_policy(config: &Config) {
    let x = &config.exclusions;
    let images = x.images.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    info!(
        namespaces = %x.namespaces.join(","),
        containers = %x.containers.join(","),
        images = %images.join(","),
        "exclusions (whole names only)"
    );
    if !x.keywords.is_empty() {
        warn!(
            keywords = %x.keywords.join(","),
            "compatibility switch on ([compat] exclude-keywords): every container whose name, image, pod name or \
             namespace CONTAINS one of these keywords gets no limits; tenants choose those names, so any tenant can \
             escape its limits (unsafe where tenants share a node)"
        );
    }
    for (namespace, ceiling) in config.effective_ceilings() {
        match namespace {
            None => info!(ceiling = %ceiling, "ceiling for every namespace without a table of its own"),
            Some(ns) => info!(namespace = ns, ceiling = %ceiling, "ceiling for namespace {ns}"),
        }
    }
}

impl Plugin for IogatePlugin {
    /// CreateContainer: the limits go into the spec of every container being
    /// created, and running ones are limited once, at Synchronize.
    /// RemovePodSandbox: the pod's remembered container names go with it.
    fn configure(self: Arc<Self>, req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()> {
        self.reconfigure(req)?;
        events.on_create_container(self.clone()).on_state_change(&[Notification::RemovePodSandbox], self);
        Ok(())
    }

    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> HandlerResult<Vec<api::ContainerUpdate>> {
        info!(pods = pods.len(), containers = containers.len(), "synchronizing existing containers");
        self.current()?.synchronize(pods, containers);
        Ok(Vec::new())
    }
}

impl StateChange for IogatePlugin {
    fn state_change(
        &self,
        event: Notification,
        pod: &api::PodSandbox,
        _ctr: Option<&api::Container>,
    ) -> HandlerResult<()> {
        if event == Notification::RemovePodSandbox {
            if let Ok(a) = self.current() {
                a.forget_pod(&pod.id);
            }
        }
        Ok(())
    }
}

impl CreateContainer for IogatePlugin {
    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
        Ok((self.admit(pod, ctr)?, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_usable_policy_registration_is_refused_with_the_reason() {
        let p = IogatePlugin::awaiting_config("data mount /data: expected an existing directory".into());
        let e = p.reconfigure(&api::ConfigureRequest::new()).unwrap_err();
        assert_eq!(format!("{e:#}"), "iogate has no usable policy: data mount /data: expected an existing directory");
        let e = p.admit(&api::PodSandbox::new(), &api::Container::new()).unwrap_err();
        assert!(format!("{e:#}").starts_with("iogate has no usable policy"));
        let mut events = Subscriptions::default();
        let refused = Arc::new(p).configure(&api::ConfigureRequest::new(), &mut events).unwrap_err();
        assert!(refused.to_string().starts_with("iogate has no usable policy"), "{refused}");
        assert!(events.mask().is_empty(), "a refused configuration subscribes to nothing");
    }

    #[test]
    fn policy_from_configure_replaces_the_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = IogatePlugin::awaiting_config("no /data".into());
        let mut req = api::ConfigureRequest::new();
        // Any existing file stands in for the hook binary.
        let hook = std::env::current_exe().unwrap();
        req.config = format!(
            "hook-path = \"{}\"\n[devices]\nmounts = [\"{}\"]\n[defaults]\nread-iops = 77\n",
            hook.display(),
            dir.path().display()
        );
        match p.reconfigure(&req) {
            Ok(()) => {
                let mut pod = api::PodSandbox::new();
                pod.namespace = "shop".into();
                let mut ctr = api::Container::new();
                ctr.name = "app".into();
                let (adj, _) = p.create_container(&pod, &ctr).unwrap();
                assert!(adj.hooks.is_some() || adj.linux.is_some(), "expected limits in {adj:?}");
                let mut events = Subscriptions::default();
                Arc::new(p).configure(&req, &mut events).unwrap();
                assert_eq!(
                    events.mask(),
                    nri::EventMask::of(&[api::Event::CREATE_CONTAINER, api::Event::REMOVE_POD_SANDBOX])
                );
            }
            // A machine whose temp dir is not on a block device (tmpfs)
            // cannot resolve it; the error must say so.
            Err(e) => assert!(format!("{e:#}").contains("not a block device"), "{e:#}"),
        }
    }
}
