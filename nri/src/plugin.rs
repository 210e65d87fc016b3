//! What a plugin implements, modelled on containerd/nri's Go stub, where the
//! subscription follows from the handler interfaces a plugin implements.
//!
//! Rust cannot tell an overridden default method from an inherited one, so
//! here subscribing and handling are one act: in [`Plugin::configure`] the
//! plugin registers a handler for each event it wants in [`Subscriptions`],
//! and the mask sent to the runtime is computed from those registrations. A
//! handler that is not registered is not subscribed, and an event nobody
//! registered is never delivered, so the two cannot drift apart.
//!
//! Handlers run on ttrpc worker threads and must finish within the runtime's
//! request timeout (2 s by default): containerd drops a plugin that times
//! out and then creates containers without it. An error from a handler
//! reaches the runtime with its whole chain of sources (`outer: inner`); for
//! [`CreateContainer`] that fails the container's creation with that text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::api;
use crate::events::{EventMask, Notification};

/// What a handler fails with: any error, whose text and sources the runtime
/// gets to see. `anyhow::Error` converts into it with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type HandlerResult<T> = Result<T, HandlerError>;

/// A plugin: its configuration, which also registers its event handlers,
/// and the calls every plugin receives whatever it subscribes to.
pub trait Plugin: Send + Sync + 'static {
    /// Called once per connection, right after registration. `req.config`
    /// holds the plugin's drop-in configuration (pre-registered plugins
    /// only). Register here a handler for every event the plugin wants:
    /// typically `self` (`Arc<Self>`), which implements the handler traits.
    ///
    /// An error, or registering nothing (on the wire an empty mask means
    /// "every event"), makes the runtime drop the connection. Runtimes with
    /// NRI before v0.10 (containerd 1.7 to 2.1) refuse subscriptions beyond
    /// [`EventMask::PORTABLE`]; the stub says so before they do.
    fn configure(self: Arc<Self>, req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()>;

    /// The runtime's pods and containers as of connecting (split requests
    /// already merged). The returned updates apply to running containers.
    fn synchronize(
        &self,
        _pods: &[api::PodSandbox],
        _containers: &[api::Container],
    ) -> HandlerResult<Vec<api::ContainerUpdate>> {
        Ok(Vec::new())
    }

    /// The runtime announced that it is shutting down. containerd's NRI
    /// does not send this today; a lost connection is not reported here.
    fn shutdown(&self) {}
}

/// Handles CreateContainer: adjust the container about to be created, and
/// optionally update other containers. An error fails the creation.
pub trait CreateContainer: Send + Sync + 'static {
    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)>;
}

/// Handles UpdateContainer: a container's resources are being updated to
/// `resources`; other containers may be updated.
pub trait UpdateContainer: Send + Sync + 'static {
    fn update_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
        resources: &api::LinuxResources,
    ) -> HandlerResult<Vec<api::ContainerUpdate>>;
}

/// Handles StopContainer: a container is being stopped; other containers
/// may be updated.
pub trait StopContainer: Send + Sync + 'static {
    fn stop_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> HandlerResult<Vec<api::ContainerUpdate>>;
}

/// Handles the [`Notification`]s it is registered for. `ctr` is `None` for
/// pod events.
pub trait StateChange: Send + Sync + 'static {
    fn state_change(
        &self,
        event: Notification,
        pod: &api::PodSandbox,
        ctr: Option<&api::Container>,
    ) -> HandlerResult<()>;
}

/// Handles ValidateContainerAdjustment (NRI v0.10+ only): an error rejects
/// the combined adjustments of all plugins, with the error text as reason.
pub trait ValidateContainerAdjustment: Send + Sync + 'static {
    fn validate_container_adjustment(&self, req: &api::ValidateContainerAdjustmentRequest) -> HandlerResult<()>;
}

/// The handlers a plugin registered in [`Plugin::configure`], one per
/// event; registering an event again replaces its handler. The subscription
/// is [`Subscriptions::mask`], computed from them.
#[derive(Default, Clone)]
pub struct Subscriptions {
    create: Option<Arc<dyn CreateContainer>>,
    update: Option<Arc<dyn UpdateContainer>>,
    stop: Option<Arc<dyn StopContainer>>,
    validate: Option<Arc<dyn ValidateContainerAdjustment>>,
    notifications: BTreeMap<u8, (Notification, Arc<dyn StateChange>)>,
}

impl Subscriptions {
    pub fn on_create_container<H: CreateContainer>(&mut self, handler: Arc<H>) -> &mut Self {
        self.create = Some(handler);
        self
    }

    pub fn on_update_container<H: UpdateContainer>(&mut self, handler: Arc<H>) -> &mut Self {
        self.update = Some(handler);
        self
    }

    pub fn on_stop_container<H: StopContainer>(&mut self, handler: Arc<H>) -> &mut Self {
        self.stop = Some(handler);
        self
    }

    pub fn on_validate_container_adjustment<H: ValidateContainerAdjustment>(&mut self, handler: Arc<H>) -> &mut Self {
        self.validate = Some(handler);
        self
    }

    /// One handler for each of `events`.
    pub fn on_state_change<H: StateChange>(&mut self, events: &[Notification], handler: Arc<H>) -> &mut Self {
        let handler: Arc<dyn StateChange> = handler;
        for &event in events {
            self.notifications.insert(event.event() as u8, (event, Arc::clone(&handler)));
        }
        self
    }

    /// The events that have a handler: what the plugin subscribes to.
    pub fn mask(&self) -> EventMask {
        let mut mask = EventMask::EMPTY;
        let requests = [
            (self.create.is_some(), api::Event::CREATE_CONTAINER),
            (self.update.is_some(), api::Event::UPDATE_CONTAINER),
            (self.stop.is_some(), api::Event::STOP_CONTAINER),
            (self.validate.is_some(), api::Event::VALIDATE_CONTAINER_ADJUSTMENT),
        ];
        for (registered, event) in requests {
            if registered {
                mask = mask.with(event);
            }
        }
        for (notification, _) in self.notifications.values() {
            mask = mask.with(notification.event());
        }
        mask
    }

    pub(crate) fn create_container(&self) -> Option<&dyn CreateContainer> {
        self.create.as_deref()
    }

    pub(crate) fn update_container(&self) -> Option<&dyn UpdateContainer> {
        self.update.as_deref()
    }

    pub(crate) fn stop_container(&self) -> Option<&dyn StopContainer> {
        self.stop.as_deref()
    }

    pub(crate) fn validate_container_adjustment(&self) -> Option<&dyn ValidateContainerAdjustment> {
        self.validate.as_deref()
    }

    pub(crate) fn state_change(&self, event: Notification) -> Option<&dyn StateChange> {
        self.notifications.get(&(event.event() as u8)).map(|(_, handler)| handler.as_ref())
    }
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Subscriptions").field(&self.mask().to_string()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Event;

    struct Everything;

    impl CreateContainer for Everything {
        fn create_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
        ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
            Ok(Default::default())
        }
    }

    impl UpdateContainer for Everything {
        fn update_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
            _resources: &api::LinuxResources,
        ) -> HandlerResult<Vec<api::ContainerUpdate>> {
            Ok(Vec::new())
        }
    }

    impl StopContainer for Everything {
        fn stop_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
        ) -> HandlerResult<Vec<api::ContainerUpdate>> {
            Ok(Vec::new())
        }
    }

    impl StateChange for Everything {
        fn state_change(
            &self,
            _event: Notification,
            _pod: &api::PodSandbox,
            _ctr: Option<&api::Container>,
        ) -> HandlerResult<()> {
            Ok(())
        }
    }

    impl ValidateContainerAdjustment for Everything {
        fn validate_container_adjustment(&self, _req: &api::ValidateContainerAdjustmentRequest) -> HandlerResult<()> {
            Ok(())
        }
    }

    #[test]
    fn the_mask_is_exactly_the_registered_handlers() {
        let handler = Arc::new(Everything);
        let mut events = Subscriptions::default();
        assert!(events.mask().is_empty());

        events.on_create_container(handler.clone());
        assert_eq!(events.mask(), EventMask::from(Event::CREATE_CONTAINER));
        events.on_stop_container(handler.clone()).on_update_container(handler.clone());
        assert_eq!(
            events.mask(),
            EventMask::of(&[Event::CREATE_CONTAINER, Event::UPDATE_CONTAINER, Event::STOP_CONTAINER])
        );
        events.on_state_change(&[Notification::StartContainer, Notification::RemovePodSandbox], handler.clone());
        assert_eq!(
            events.mask().to_string(),
            "RemovePodSandbox,CreateContainer,StartContainer,UpdateContainer,StopContainer"
        );
        assert!(events.state_change(Notification::StartContainer).is_some());
        assert!(events.state_change(Notification::StopPodSandbox).is_none());

        // Registering an event again keeps one subscription for it.
        events.on_create_container(handler.clone());
        assert_eq!(events.mask().bits().count_ones(), 5);
        assert_eq!(events.mask().bits() & !EventMask::PORTABLE.bits(), 0);

        events.on_validate_container_adjustment(handler.clone());
        assert!(events.mask().contains(Event::VALIDATE_CONTAINER_ADJUSTMENT));
        assert_ne!(events.mask().bits() & !EventMask::PORTABLE.bits(), 0, "validation is beyond the portable events");

        let mut all = Subscriptions::default();
        all.on_create_container(handler.clone())
            .on_update_container(handler.clone())
            .on_stop_container(handler.clone())
            .on_validate_container_adjustment(handler.clone())
            .on_state_change(&Notification::ALL, handler);
        let every_event = (1 << (Event::VALIDATE_CONTAINER_ADJUSTMENT as i32)) - 1;
        assert_eq!(all.mask().bits(), every_event);
    }
}
