//! The NRI plugin surface iogate implements: one method per event, each a
//! thin call into [`Limiter`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use iogate_core::device::DeviceResolver;
use iogate_core::{CgroupFs, Config, Device, Policy};
use tracing::info;

use crate::api;
use crate::limiter::Limiter;
use crate::stub::Plugin;
use crate::EventMask;

pub struct IogatePlugin {
    limiter: RwLock<Arc<Limiter>>,
}

impl IogatePlugin {
    pub fn new(limiter: Limiter) -> Self {
        IogatePlugin { limiter: RwLock::new(Arc::new(limiter)) }
    }

    fn current(&self) -> Arc<Limiter> {
        self.limiter.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything start-up must check before the plugin registers: a data mount
/// that does not exist, an unknown cgroup layout or a missing hook binary
/// stop the plugin with an error instead of leaving containers unthrottled.
pub fn build_limiter(config: Config) -> Result<Limiter> {
    let devices = resolve_devices(&config)?;
    let cgroups = CgroupFs::detect(config.cgroup_mode).context("finding the block-I/O cgroup hierarchy")?;
    let limiter = Limiter::new(Policy::new(config, devices.clone()), cgroups);
    limiter.check_hook()?;
    let list = devices.iter().map(Device::to_string).collect::<Vec<_>>().join(", ");
    info!(cgroup = %limiter.cgroup_version(), devices = %list, "policy ready");
    Ok(limiter)
}

pub fn resolve_devices(config: &Config) -> Result<Vec<Device>> {
    let r = DeviceResolver::default();
    let mut out = Vec::new();
    for m in &config.mounts {
        let d = r.resolve_mount(m)?;
        info!(mount = %m.display(), device = %d, "data mount resolved to its whole disk");
        out.push(d);
    }
    for spec in &config.devices {
        out.push(r.resolve_device(spec)?);
    }
    out.sort();
    out.dedup();
    anyhow::ensure!(
        !out.is_empty(),
        "no devices to throttle: set DATA_MOUNT, IOGATE_DEVICES or [devices] in the config"
    );
    Ok(out)
}

impl Plugin for IogatePlugin {
    fn events(&self) -> EventMask {
        EventMask::from(api::Event::CREATE_CONTAINER)
    }

    /// A pre-registered plugin gets its config file's text from containerd
    /// (`<plugin_config_path>/NN-iogate.conf`); when present it replaces the
    /// policy loaded at start-up, so one file configures both modes.
    fn configure(&self, req: &api::ConfigureRequest) -> Result<()> {
        info!(runtime = %req.runtime_name, version = %req.runtime_version, "connected to runtime");
        if req.config.trim().is_empty() {
            return Ok(());
        }
        let origin = PathBuf::from(format!("<config from {} via NRI>", req.runtime_name));
        let config = Config::from_toml(&req.config, Path::new(&origin), |k| std::env::var(k).ok())?;
        let limiter = build_limiter(config)?;
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limiter);
        Ok(())
    }

    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> Result<Vec<api::ContainerUpdate>> {
        info!(pods = pods.len(), containers = containers.len(), "synchronizing existing containers");
        self.current().synchronize(pods, containers);
        Ok(Vec::new())
    }

    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Result<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
        Ok((self.current().create_container(pod, ctr)?, Vec::new()))
    }
}
