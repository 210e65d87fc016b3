//! The ttrpc `Plugin` service: what the runtime calls, translated into
//! [`Plugin`](crate::stub::Plugin) callbacks.
//!
//! Every RPC of the service is answered, including the ones a plugin never
//! subscribes to: runtimes only call subscribed events, but a generated
//! default would answer NotFound, which newer runtimes do not treat as
//! "unimplemented".

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ttrpc::TtrpcContext;

use crate::api::{self, Event};
use crate::runtime::RuntimeHandle;
use crate::stub::Plugin;

pub(crate) struct PluginService {
    plugin: Arc<dyn Plugin>,
    runtime: RuntimeHandle,
    /// State received so far from runtimes that split Synchronize (NRI v0.8+
    /// sets `more` on all but the last chunk), per ttrpc connection.
    partial_syncs: Mutex<HashMap<RawFd, PartialSync>>,
    /// Whether the runtime of the current connection has sent Configure:
    /// proof that it accepted our registration, even when its reply to
    /// RegisterPlugin is lost because it hung up right after.
    configured: AtomicBool,
}

#[derive(Default)]
struct PartialSync {
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
}

impl PluginService {
    pub(crate) fn new(plugin: Arc<dyn Plugin>, runtime: RuntimeHandle) -> PluginService {
        PluginService { plugin, runtime, partial_syncs: Mutex::new(HashMap::new()), configured: AtomicBool::new(false) }
    }

    /// Forgets what the previous connection left behind: Synchronize chunks
    /// (its descriptor number may be reused by the next one) and whether it
    /// configured us.
    pub(crate) fn start_session(&self) {
        self.partial_syncs().clear();
        self.configured.store(false, Ordering::SeqCst);
    }

    /// Whether the runtime of this connection has configured the plugin.
    pub(crate) fn configured(&self) -> bool {
        self.configured.load(Ordering::SeqCst)
    }

    fn partial_syncs(&self) -> MutexGuard<'_, HashMap<RawFd, PartialSync>> {
        self.partial_syncs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status the runtime sees when a callback fails: code Unknown (what Go
/// plugins send for a plain error) and, as message, exactly the callback's
/// error chain (`{:#}`). containerd fails the container with that text in
/// its error, which is all a user gets to see.
fn refusal(what: &str, err: anyhow::Error) -> ttrpc::Error {
    let message = format!("{err:#}");
    tracing::warn!(request = what, error = %message, "plugin refused NRI request");
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, message))
}

fn container_label(ctr: &api::Container) -> String {
    format!("{} ({})", ctr.name, ctr.id)
}

impl api::Plugin for PluginService {
    fn configure(&self, _ctx: &TtrpcContext, req: api::ConfigureRequest) -> ttrpc::Result<api::ConfigureResponse> {
        let events = self.plugin.events();
        if events.is_empty() {
            // On the wire 0 means "everything".
            return Err(refusal("Configure", anyhow::anyhow!("the plugin subscribes to no events")));
        }
        self.plugin.configure(&req).map_err(|err| refusal("Configure", err))?;
        self.configured.store(true, Ordering::SeqCst);
        if let Ok(ms) = u64::try_from(req.request_timeout) {
            if ms > 0 {
                self.runtime.set_request_timeout(Duration::from_millis(ms));
            }
        }
        tracing::info!(
            runtime = %req.runtime_name,
            runtime_version = %req.runtime_version,
            nri_version = %req.NRI_version,
            request_timeout_ms = req.request_timeout,
            events = %events,
            "configured by the runtime"
        );
        Ok(api::ConfigureResponse { events: events.bits(), ..Default::default() })
    }

    fn synchronize(&self, ctx: &TtrpcContext, req: api::SynchronizeRequest) -> ttrpc::Result<api::SynchronizeResponse> {
        let whole = {
            let mut partial = self.partial_syncs();
            let pending = partial.entry(ctx.fd).or_default();
            pending.pods.extend(req.pods);
            pending.containers.extend(req.containers);
            if req.more {
                // The runtime insists on an echo of `more` and no updates
                // until the last chunk.
                return Ok(api::SynchronizeResponse { more: true, ..Default::default() });
            }
            partial.remove(&ctx.fd).unwrap_or_default()
        };
        tracing::info!(pods = whole.pods.len(), containers = whole.containers.len(), "synchronizing with the runtime");
        let update =
            self.plugin.synchronize(&whole.pods, &whole.containers).map_err(|err| refusal("Synchronize", err))?;
        Ok(api::SynchronizeResponse { update, more: false, ..Default::default() })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::Empty) -> ttrpc::Result<api::Empty> {
        tracing::info!("the runtime is shutting down");
        self.plugin.shutdown();
        Ok(api::Empty::new())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let (pod, ctr) = (req.pod.get_or_default(), req.container.get_or_default());
        tracing::debug!(container = %container_label(ctr), pod = %pod.name, "CreateContainer");
        let (adjust, update) = self.plugin.create_container(pod, ctr).map_err(|err| {
            tracing::warn!(container = %container_label(ctr), pod = %pod.name, "refusing to create container");
            refusal("CreateContainer", err)
        })?;
        Ok(api::CreateContainerResponse { adjust: Some(adjust).into(), update, ..Default::default() })
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        let (pod, ctr) = (req.pod.get_or_default(), req.container.get_or_default());
        let update = self
            .plugin
            .update_container(pod, ctr, req.linux_resources.get_or_default())
            .map_err(|err| refusal("UpdateContainer", err))?;
        Ok(api::UpdateContainerResponse { update, ..Default::default() })
    }

    fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        let (pod, ctr) = (req.pod.get_or_default(), req.container.get_or_default());
        let update = self.plugin.stop_container(pod, ctr).map_err(|err| refusal("StopContainer", err))?;
        Ok(api::StopContainerResponse { update, ..Default::default() })
    }

    /// How NRI before v0.10 delivers every event that cannot change anything.
    fn state_change(&self, _ctx: &TtrpcContext, req: api::StateChangeEvent) -> ttrpc::Result<api::Empty> {
        let event = req.event.enum_value_or_default();
        self.notify(event, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(api::Empty::new())
    }

    fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        req: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        // A rejection is an answer, not a failed call.
        Ok(match self.plugin.validate_container_adjustment(&req) {
            Ok(()) => api::ValidateContainerAdjustmentResponse::default(),
            Err(err) => api::ValidateContainerAdjustmentResponse {
                reject: true,
                reason: format!("{err:#}"),
                ..Default::default()
            },
        })
    }

    // The dedicated notification RPCs of NRI v0.10+ carry the same
    // information as StateChange and go to the same callback.

    fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.notify(Event::RUN_POD_SANDBOX, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        self.notify(Event::UPDATE_POD_SANDBOX, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        self.notify(Event::POST_UPDATE_POD_SANDBOX, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.notify(Event::STOP_POD_SANDBOX, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.notify(Event::REMOVE_POD_SANDBOX, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.notify(Event::POST_CREATE_CONTAINER, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.notify(Event::START_CONTAINER, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.notify(Event::POST_START_CONTAINER, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.notify(Event::POST_UPDATE_CONTAINER, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.notify(Event::REMOVE_CONTAINER, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }
}

impl PluginService {
    fn notify(&self, event: Event, pod: &api::PodSandbox, ctr: Option<&api::Container>) -> ttrpc::Result<()> {
        self.plugin.state_change(event, pod, ctr).map_err(|err| refusal(&format!("{event:?}"), err))
    }
}
