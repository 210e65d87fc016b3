//! The ttrpc `Plugin` service: what the runtime calls, translated into calls
//! of the [`Plugin`] and of the handlers it registered in
//! [`Subscriptions`].
//!
//! Every RPC of the service is answered, including events nobody
//! registered: runtimes only send subscribed events, but a generated default
//! would answer NotFound, which newer runtimes do not treat as
//! "unimplemented". An unregistered event gets an empty answer and reaches no
//! handler.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ttrpc::TtrpcContext;

use crate::api::{self, Event};
use crate::error::chain;
use crate::events::{EventMask, Notification};
use crate::plugin::{HandlerError, Plugin, Subscriptions};
use crate::runtime::RuntimeHandle;

/// The first NRI release whose runtimes accept events beyond
/// [`EventMask::PORTABLE`].
const NRI_WITH_ALL_EVENTS: (u32, u32) = (0, 10);

pub(crate) struct PluginService {
    plugin: Arc<dyn Plugin>,
    runtime: RuntimeHandle,
    /// The handlers the plugin registered when the current connection's
    /// runtime configured it; empty before that.
    subscriptions: RwLock<Arc<Subscriptions>>,
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
        PluginService {
            plugin,
            runtime,
            subscriptions: RwLock::default(),
            partial_syncs: Mutex::new(HashMap::new()),
            configured: AtomicBool::new(false),
        }
    }

    /// Forgets what the previous connection left behind: Synchronize chunks
    /// (its descriptor number may be reused by the next one), whether it
    /// configured us, and the handlers registered then.
    pub(crate) fn start_session(&self) {
        self.partial_syncs().clear();
        self.configured.store(false, Ordering::SeqCst);
        *self.subscriptions.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::default();
    }

    fn subscriptions(&self) -> Arc<Subscriptions> {
        Arc::clone(&self.subscriptions.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Whether the runtime of this connection has configured the plugin.
    pub(crate) fn configured(&self) -> bool {
        self.configured.load(Ordering::SeqCst)
    }

    fn partial_syncs(&self) -> MutexGuard<'_, HashMap<RawFd, PartialSync>> {
        self.partial_syncs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status the runtime sees when a handler fails: code Unknown (what Go
/// plugins send for a plain error) and, as message, exactly the handler's
/// error with its sources. containerd fails the container with that text in
/// its error, which is all a user gets to see.
fn refusal(what: &str, err: HandlerError) -> ttrpc::Error {
    let message = chain(err.as_ref());
    tracing::warn!(request = what, error = %message, "plugin refused NRI request");
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, message))
}

fn container_label(ctr: &api::Container) -> String {
    format!("{} ({})", ctr.name, ctr.id)
}

impl api::Plugin for PluginService {
    fn configure(&self, _ctx: &TtrpcContext, req: api::ConfigureRequest) -> ttrpc::Result<api::ConfigureResponse> {
        // Before the plugin answers: a runtime that configures us took the
        // registration, whether or not the plugin then refuses.
        self.configured.store(true, Ordering::SeqCst);
        let mut subscriptions = Subscriptions::default();
        Arc::clone(&self.plugin).configure(&req, &mut subscriptions).map_err(|err| refusal("Configure", err))?;
        let events = subscriptions.mask();
        if events.is_empty() {
            // On the wire 0 means "everything".
            return Err(refusal("Configure", "the plugin registered no event handlers".into()));
        }
        if let Some(refused) = beyond_runtime(events, &req.NRI_version) {
            return Err(refusal("Configure", refused.into()));
        }
        *self.subscriptions.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(subscriptions);
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
        let subscriptions = self.subscriptions();
        let Some(handler) = subscriptions.create_container() else {
            return Ok(unsubscribed(Event::CREATE_CONTAINER));
        };
        let (adjust, update) = handler.create_container(pod, ctr).map_err(|err| {
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
        let subscriptions = self.subscriptions();
        let Some(handler) = subscriptions.update_container() else {
            return Ok(unsubscribed(Event::UPDATE_CONTAINER));
        };
        let update = handler
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
        let subscriptions = self.subscriptions();
        let Some(handler) = subscriptions.stop_container() else {
            return Ok(unsubscribed(Event::STOP_CONTAINER));
        };
        let update = handler.stop_container(pod, ctr).map_err(|err| refusal("StopContainer", err))?;
        Ok(api::StopContainerResponse { update, ..Default::default() })
    }

    /// How NRI before v0.10 delivers every event that cannot change anything.
    fn state_change(&self, _ctx: &TtrpcContext, req: api::StateChangeEvent) -> ttrpc::Result<api::Empty> {
        let event = req.event.enum_value_or_default();
        match Notification::of(event) {
            Some(notification) => self.notify(notification, req.pod.get_or_default(), req.container.as_ref())?,
            None => tracing::warn!(event = ?event, "StateChange for an event that is no notification; ignored"),
        }
        Ok(api::Empty::new())
    }

    fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        req: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        let subscriptions = self.subscriptions();
        let Some(handler) = subscriptions.validate_container_adjustment() else {
            return Ok(unsubscribed(Event::VALIDATE_CONTAINER_ADJUSTMENT));
        };
        // A rejection is an answer, not a failed call.
        Ok(match handler.validate_container_adjustment(&req) {
            Ok(()) => api::ValidateContainerAdjustmentResponse::default(),
            Err(err) => api::ValidateContainerAdjustmentResponse {
                reject: true,
                reason: chain(err.as_ref()),
                ..Default::default()
            },
        })
    }

    // The dedicated notification RPCs of NRI v0.10+ carry the same
    // information as StateChange and go to the same handlers.

    fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.notify(Notification::RunPodSandbox, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        self.notify(Notification::UpdatePodSandbox, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        self.notify(Notification::PostUpdatePodSandbox, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.notify(Notification::StopPodSandbox, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.notify(Notification::RemovePodSandbox, req.pod.get_or_default(), None)?;
        Ok(Default::default())
    }

    fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.notify(Notification::PostCreateContainer, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.notify(Notification::StartContainer, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.notify(Notification::PostStartContainer, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.notify(Notification::PostUpdateContainer, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.notify(Notification::RemoveContainer, req.pod.get_or_default(), req.container.as_ref())?;
        Ok(Default::default())
    }
}

impl PluginService {
    fn notify(&self, event: Notification, pod: &api::PodSandbox, ctr: Option<&api::Container>) -> ttrpc::Result<()> {
        let subscriptions = self.subscriptions();
        match subscriptions.state_change(event) {
            Some(handler) => handler.state_change(event, pod, ctr).map_err(|err| refusal(&event.to_string(), err)),
            None => {
                unsubscribed::<()>(event.event());
                Ok(())
            }
        }
    }
}

/// The answer to an event the plugin registered no handler for: empty, as
/// if the plugin had nothing to change. Runtimes send only subscribed
/// events, so this is a runtime out of step with our subscription.
fn unsubscribed<T: Default>(event: Event) -> T {
    tracing::debug!(event = crate::events::event_name(event), "event without a registered handler; not delivered");
    T::default()
}

/// Why a runtime would refuse `events`, if it would: runtimes before NRI
/// v0.10 reject any event beyond [`EventMask::PORTABLE`] with a bare
/// "invalid plugin events", and only v0.9+ tell their version (an empty one
/// is older). A version that does not parse is left to the runtime.
fn beyond_runtime(events: EventMask, nri_version: &str) -> Option<String> {
    let extra = EventMask::from_bits(events.bits() & !EventMask::PORTABLE.bits());
    if extra.is_empty() {
        return None;
    }
    let runtime = if nri_version.is_empty() {
        "NRI before v0.9".to_string()
    } else {
        let (major, minor) = parse_minor_version(nri_version)?;
        if (major, minor) >= NRI_WITH_ALL_EVENTS {
            return None;
        }
        format!("NRI {nri_version}")
    };
    Some(format!(
        "the plugin registered handlers for {extra}, which runtimes before NRI v0.10 refuse; expected a runtime with \
         NRI v0.10 or later, found one with {runtime}"
    ))
}

/// `v0.10.0` → `(0, 10)`.
fn parse_minor_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.strip_prefix('v').unwrap_or(version).split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_beyond_the_portable_ones_need_nri_v0_10() {
        let portable = EventMask::of(&[Event::CREATE_CONTAINER, Event::REMOVE_CONTAINER]);
        assert_eq!(beyond_runtime(portable, ""), None);
        let validating = portable.with(Event::VALIDATE_CONTAINER_ADJUSTMENT);
        for newer in ["v0.10.0", "v0.12.2", "v1.0.0", "0.10"] {
            assert_eq!(beyond_runtime(validating, newer), None, "{newer}");
        }
        assert_eq!(
            beyond_runtime(validating, "v0.9.1").unwrap(),
            "the plugin registered handlers for ValidateContainerAdjustment, which runtimes before NRI v0.10 \
             refuse; expected a runtime with NRI v0.10 or later, found one with NRI v0.9.1"
        );
        assert!(beyond_runtime(validating, "").unwrap().ends_with("found one with NRI before v0.9"));
        assert_eq!(beyond_runtime(validating, "unreleased"), None, "left to the runtime");
    }
}
