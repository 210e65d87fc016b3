//! Logs what a real runtime sends, to check the protocol layer by hand:
//!
//! ```text
//! # external: connect to containerd's NRI socket as 90-nri-echo
//! cargo run -p nri --example nri_echo -- /var/run/nri/nri.sock
//! # pre-registered: link the built example as <plugin_path>/90-nri-echo
//! ```
//!
//! It subscribes to CreateContainer and adds the annotation
//! `nri-echo.iogate.io/seen=true` to every container, and logs every
//! container start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use nri::{
    api, CreateContainer, HandlerResult, Notification, Plugin, PreRegistered, Registration, StateChange, Stub,
    Subscriptions, DEFAULT_SOCKET_PATH,
};

struct Echo;

impl Plugin for Echo {
    fn configure(self: Arc<Self>, req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()> {
        tracing::info!(runtime = %req.runtime_name, version = %req.runtime_version, config = %req.config, "configure");
        events.on_create_container(self.clone()).on_state_change(&[Notification::StartContainer], self);
        Ok(())
    }

    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> HandlerResult<Vec<api::ContainerUpdate>> {
        tracing::info!(pods = pods.len(), containers = containers.len(), "synchronize");
        Ok(Vec::new())
    }
}

impl CreateContainer for Echo {
    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
        tracing::info!(pod = %pod.name, container = %ctr.name, "create container");
        let adjust = api::ContainerAdjustment {
            annotations: HashMap::from([("nri-echo.iogate.io/seen".to_owned(), "true".to_owned())]),
            ..Default::default()
        };
        Ok((adjust, Vec::new()))
    }
}

impl StateChange for Echo {
    fn state_change(
        &self,
        event: Notification,
        pod: &api::PodSandbox,
        ctr: Option<&api::Container>,
    ) -> HandlerResult<()> {
        tracing::info!(%event, pod = %pod.name, container = ctr.map_or("", |c| c.name.as_str()), "state change");
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let stub = Stub::new(Arc::new(Echo));
    match PreRegistered::from_env()? {
        Some(launched) => stub.run_pre_registered(launched)?,
        None => {
            let socket = std::env::args_os().nth(1).map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from);
            stub.run_external(&socket, &Registration::new("nri-echo", "90")?)?
        }
    }
    Ok(())
}
