//! iogate as an NRI plugin: the handlers it registers, each a thin call
//! into [`Admission`] (limits into the spec of every container being
//! created; the pod's container names, remembered until RemovePodSandbox)
//! or the [`Reconciler`] (limits read back when a container starts, running
//! containers at Synchronize, forgetting containers that stop).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use iogate_core::device::DeviceResolver;
use iogate_core::{CgroupFs, Config, Device, Policy};
use nri::{api, CreateContainer, HandlerResult, Notification, Plugin, StateChange, StopContainer, Subscriptions};
use tracing::{info, warn};

use crate::admission::Admission;
use crate::current_policy::CurrentPolicy;
use crate::reconciler::Reconciler;

pub struct IogatePlugin {
    policy: Arc<CurrentPolicy>,
    reconciler: Arc<Reconciler>,
}

/// The events iogate handles besides CreateContainer and StopContainer.
pub const NOTIFICATIONS: [Notification; 3] =
    [Notification::RemovePodSandbox, Notification::StartContainer, Notification::RemoveContainer];

impl IogatePlugin {
    pub fn new(policy: Arc<CurrentPolicy>, reconciler: Arc<Reconciler>) -> Self {
        IogatePlugin { policy, reconciler }
    }

    /// A pre-registered plugin gets its config file's text from containerd
    /// (`<plugin_config_path>/NN-iogate.conf`); when present it replaces the
    /// policy loaded at start-up, so one file configures both modes.
    fn reconfigure(&self, req: &api::ConfigureRequest) -> Result<()> {
        info!(runtime = %req.runtime_name, version = %req.runtime_version, "connected to runtime");
        self.reconciler.connected(&req.runtime_name, &req.runtime_version);
        if req.config.trim().is_empty() {
            // Refusing registration is the loud way to say we cannot work.
            return self.policy.get().map(|_| ());
        }
        let origin = PathBuf::from(format!("<config from {} via NRI>", req.runtime_name));
        let config = Config::from_toml(&req.config, Path::new(&origin), |k| std::env::var(k).ok())?;
        let admission = build_admission(config)?.with_hook_reports(self.reconciler.hooks().cloned());
        self.policy.set(admission);
        Ok(())
    }

    fn admit(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<api::ContainerAdjustment> {
        let adjustment = self.policy.get()?.create_container(pod, ctr)?;
        self.reconciler.created(pod, ctr, Admission::injects_hook(&adjustment));
        Ok(adjustment)
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
    /// CreateContainer puts the limits into each new container's spec;
    /// StartContainer reads them back; StopContainer and RemoveContainer
    /// end a container's checks; RemovePodSandbox forgets the pod's
    /// container names. Running containers arrive at Synchronize.
    fn configure(self: Arc<Self>, req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()> {
        self.reconfigure(req)?;
        events.on_create_container(self.clone()).on_stop_container(self.clone()).on_state_change(&NOTIFICATIONS, self);
        Ok(())
    }

    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> HandlerResult<Vec<api::ContainerUpdate>> {
        info!(pods = pods.len(), containers = containers.len(), "synchronizing existing containers");
        self.policy.get()?.remember_running(containers);
        self.reconciler.synchronize(pods, containers);
        Ok(Vec::new())
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

impl StopContainer for IogatePlugin {
    fn stop_container(&self, _pod: &api::PodSandbox, ctr: &api::Container) -> HandlerResult<Vec<api::ContainerUpdate>> {
        self.reconciler.gone(&ctr.id);
        Ok(Vec::new())
    }
}

impl StateChange for IogatePlugin {
    fn state_change(
        &self,
        event: Notification,
        pod: &api::PodSandbox,
        ctr: Option<&api::Container>,
    ) -> HandlerResult<()> {
        if event == Notification::RemovePodSandbox {
            if let Ok(a) = self.policy.get() {
                a.forget_pod(&pod.id);
            }
            return Ok(());
        }
        let Some(ctr) = ctr else { return Ok(()) };
        match event {
            Notification::StartContainer => self.reconciler.start_container(pod, ctr)?,
            Notification::RemoveContainer => self.reconciler.gone(&ctr.id),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::Settings;
    use crate::telemetry::Telemetry;

    fn plugin(policy: CurrentPolicy) -> IogatePlugin {
        let policy = Arc::new(policy);
        let reconciler = Reconciler::new(policy.clone(), Arc::new(Telemetry::new()), None, Settings::default());
        IogatePlugin::new(policy, Arc::new(reconciler))
    }

    #[test]
    fn without_a_usable_policy_registration_is_refused_with_the_reason() {
        let p = plugin(CurrentPolicy::awaiting("data mount /data: expected an existing directory".into()));
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
        let p = plugin(CurrentPolicy::awaiting("no /data".into()));
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
                    nri::EventMask::of(&[
                        api::Event::CREATE_CONTAINER,
                        api::Event::REMOVE_POD_SANDBOX,
                        api::Event::START_CONTAINER,
                        api::Event::STOP_CONTAINER,
                        api::Event::REMOVE_CONTAINER
                    ])
                );
                assert_eq!(
                    events.mask().bits() & !nri::EventMask::PORTABLE.bits(),
                    0,
                    "containerd 1.7 to 2.1 accept it"
                );
            }
            // A machine whose temp dir is not on a block device (tmpfs)
            // cannot resolve it; the error must say so.
            Err(e) => assert!(format!("{e:#}").contains("not a block device"), "{e:#}"),
        }
    }
}
