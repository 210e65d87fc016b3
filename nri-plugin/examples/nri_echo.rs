//! Logs what a real runtime sends, to check the protocol layer by hand:
//!
//! ```text
//! # external: connect to containerd's NRI socket as 90-nri-echo
//! cargo run -p iogate-nri-plugin --example nri_echo -- /var/run/nri/nri.sock
//! # pre-registered: link the built example as <plugin_path>/90-nri-echo
//! ```
//!
//! It subscribes to CreateContainer and adds the annotation
//! `nri-echo.iogate.io/seen=true` to every container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use iogate_nri_plugin::stub::DEFAULT_SOCKET_PATH;
use iogate_nri_plugin::{api, Identity, Plugin, PreRegistered, Stub};

struct Echo;

impl Plugin for Echo {
    fn configure(&self, req: &api::ConfigureRequest) -> anyhow::Result<()> {
        tracing::info!(runtime = %req.runtime_name, version = %req.runtime_version, config = %req.config, "configure");
        Ok(())
    }

    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> anyhow::Result<Vec<api::ContainerUpdate>> {
        tracing::info!(pods = pods.len(), containers = containers.len(), "synchronize");
        Ok(Vec::new())
    }

    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> anyhow::Result<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
        tracing::info!(pod = %pod.name, container = %ctr.name, "create container");
        let adjust = api::ContainerAdjustment {
            annotations: HashMap::from([("nri-echo.iogate.io/seen".to_owned(), "true".to_owned())]),
            ..Default::default()
        };
        Ok((adjust, Vec::new()))
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let stub = Stub::new(Arc::new(Echo));
    match PreRegistered::from_env()? {
        Some(launched) => stub.run_pre_registered(launched),
        None => {
            let socket = std::env::args_os().nth(1).map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from);
            stub.run_external(&socket, &Identity::new("nri-echo", "90")?)
        }
    }
}
