//! The plugin-facing surface, modelled on containerd/nri's Go stub: implement
//! [`Plugin`], hand it to a [`Stub`], and run the stub in the mode the plugin
//! was started in.
//!
//! * Pre-registered: containerd found the executable in its `plugin_path` as
//!   `<index>-<name>`, started it with a connected socket and
//!   `NRI_PLUGIN_NAME`/`NRI_PLUGIN_IDX`/`NRI_PLUGIN_SOCKET` in the environment
//!   ([`PreRegistered::from_env`]), and ends the plugin's life with the
//!   connection ([`Stub::run_pre_registered`]).
//! * External: the plugin runs on its own (e.g. under systemd), connects to
//!   the NRI socket and registers, and reconnects whenever containerd
//!   restarts ([`Stub::run_external`]).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::api;
use crate::events::EventMask;
pub use crate::identity::{Identity, IdentityError, PreRegistered};
use crate::mux::MuxCloser;
pub use crate::runtime::{RuntimeError, RuntimeHandle};
use crate::serve::Methods;
use crate::service::PluginService;
use crate::session;

/// Where containerd listens for external plugins unless its `socket_path`
/// says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";

/// First pause between connection attempts in external mode; it doubles
/// after every failed attempt.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts: how long a restarted
/// containerd may have to wait for the plugin at worst.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A plugin's reactions to runtime events, one method per event.
///
/// Only subscribed events are delivered. Callbacks run on ttrpc worker
/// threads and must finish within the runtime's request timeout (2 s by
/// default): containerd drops a plugin that times out and then creates
/// containers without it. An error from a callback reaches the runtime with
/// the error's full text (`{:#}`); for [`create_container`] that fails the
/// container's creation with that text.
///
/// [`create_container`]: Plugin::create_container
pub trait Plugin: Send + Sync + 'static {
    /// Events to subscribe to. Runtimes with NRI before v0.10 (containerd
    /// 1.7 to 2.1) refuse plugins asking for more than
    /// [`EventMask::PORTABLE`]; an empty mask is refused by the stub.
    fn events(&self) -> EventMask {
        EventMask::from(api::Event::CREATE_CONTAINER)
    }

    /// Called once per connection, right after registration. `req.config`
    /// holds the plugin's drop-in configuration (pre-registered plugins
    /// only). An error makes the runtime drop the connection.
    fn configure(&self, _req: &api::ConfigureRequest) -> anyhow::Result<()> {
        Ok(())
    }

    /// The runtime's pods and containers as of connecting (split requests
    /// already merged). The returned updates apply to running containers.
    fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> anyhow::Result<Vec<api::ContainerUpdate>>;

    /// A container is about to be created: adjust it, and optionally update
    /// other containers. An error fails the creation.
    fn create_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> anyhow::Result<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)>;

    /// A container's resources are being updated to `resources`.
    fn update_container(
        &self,
        _pod: &api::PodSandbox,
        _ctr: &api::Container,
        _resources: &api::LinuxResources,
    ) -> anyhow::Result<Vec<api::ContainerUpdate>> {
        Ok(Vec::new())
    }

    /// A container is being stopped; other containers may be updated.
    fn stop_container(
        &self,
        _pod: &api::PodSandbox,
        _ctr: &api::Container,
    ) -> anyhow::Result<Vec<api::ContainerUpdate>> {
        Ok(Vec::new())
    }

    /// Any event that cannot change anything: RunPodSandbox,
    /// StopPodSandbox, RemovePodSandbox, UpdatePodSandbox,
    /// PostUpdatePodSandbox (no container), PostCreateContainer,
    /// StartContainer, PostStartContainer, PostUpdateContainer,
    /// RemoveContainer.
    fn state_change(
        &self,
        _event: api::Event,
        _pod: &api::PodSandbox,
        _ctr: Option<&api::Container>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// NRI v0.10+ validators: an error rejects the combined adjustments of
    /// all plugins, with the error text as reason.
    fn validate_container_adjustment(&self, _req: &api::ValidateContainerAdjustmentRequest) -> anyhow::Result<()> {
        Ok(())
    }

    /// The runtime announced that it is shutting down. containerd's NRI
    /// does not send this today; a lost connection is not reported here.
    fn shutdown(&self) {}
}

/// Runs a [`Plugin`] against the runtime.
pub struct Stub {
    plugin: Arc<dyn Plugin>,
    service: Arc<PluginService>,
    runtime: RuntimeHandle,
    stop: StopHandle,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    /// The plugin service's method table, served on every connection.
    methods: Arc<Methods>,
}

impl Stub {
    pub fn new(plugin: Arc<dyn Plugin>) -> Stub {
        let runtime = RuntimeHandle::default();
        let service = Arc::new(PluginService::new(Arc::clone(&plugin), runtime.clone()));
        let served: Arc<dyn api::Plugin + Send + Sync> = service.clone();
        let methods = Arc::new(api::create_plugin(served));
        Stub {
            plugin,
            service,
            runtime,
            stop: StopHandle::default(),
            reconnect_initial: DEFAULT_RECONNECT_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            methods,
        }
    }

    /// Pauses between connection attempts in external mode: `initial`,
    /// doubling up to `max`, back to `initial` after each registration.
    pub fn with_reconnect_backoff(mut self, initial: Duration, max: Duration) -> Stub {
        self.reconnect_initial = initial;
        self.reconnect_max = max.max(initial);
        self
    }

    pub fn plugin(&self) -> &Arc<dyn Plugin> {
        &self.plugin
    }

    /// For unsolicited container updates.
    pub fn runtime(&self) -> RuntimeHandle {
        self.runtime.clone()
    }

    /// Ends `run_*` from another thread (e.g. a signal handler thread).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves the connection containerd launched us with, until containerd
    /// closes it (`Ok`) or it fails.
    pub fn run_pre_registered(&self, launched: PreRegistered) -> anyhow::Result<()> {
        tracing::info!(plugin = %launched.identity, "started by the runtime");
        self.serve_connection(launched.socket, &launched.identity)
    }

    /// Registers on an already connected NRI socket and serves it until the
    /// runtime closes it (`Ok`), it fails, or the stub is stopped (`Ok`).
    pub fn serve_connection(&self, conn: UnixStream, identity: &Identity) -> anyhow::Result<()> {
        session::run(conn, identity, &self.session_shared()).outcome
    }

    /// Connects to the NRI socket at `socket_path`, registers as `identity`,
    /// serves, and does it again whenever the connection is lost or cannot
    /// be made, until stopped. Every attempt is logged.
    pub fn run_external(&self, socket_path: &Path, identity: &Identity) -> anyhow::Result<()> {
        let shared = self.session_shared();
        let mut delay = self.reconnect_initial;
        let mut attempt: u64 = 0;
        while !self.stop.is_stopped() {
            attempt += 1;
            tracing::info!(socket = %socket_path.display(), attempt, plugin = %identity, "connecting to NRI");
            let registered = match UnixStream::connect(socket_path) {
                Ok(conn) => {
                    let end = session::run(conn, identity, &shared);
                    if let Err(err) = &end.outcome {
                        tracing::warn!(error = format!("{err:#}"), "NRI connection ended with an error");
                    }
                    end.registered
                }
                Err(err) => {
                    tracing::warn!(socket = %socket_path.display(), error = %err, "cannot connect to NRI");
                    false
                }
            };
            if registered {
                delay = self.reconnect_initial;
                attempt = 0;
            }
            if self.stop.is_stopped() {
                break;
            }
            tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting to NRI after a pause");
            if self.stop.sleep(delay) {
                break;
            }
            if !registered {
                delay = (delay * 2).min(self.reconnect_max);
            }
        }
        tracing::info!(plugin = %identity, "NRI plugin stopped");
        Ok(())
    }

    fn session_shared(&self) -> session::Shared<'_> {
        session::Shared { methods: &self.methods, service: &self.service, runtime: &self.runtime, stop: &self.stop }
    }
}

/// Stops a running [`Stub`]: interrupts the reconnect pause and closes the
/// current connection.
#[derive(Clone, Default)]
pub struct StopHandle(Arc<StopState>);

#[derive(Default)]
struct StopState {
    inner: Mutex<StopInner>,
    wake: Condvar,
}

#[derive(Default)]
struct StopInner {
    stopped: bool,
    session: Option<MuxCloser>,
}

impl StopHandle {
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        if let Some(session) = inner.session.take() {
            session.close();
        }
        self.0.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Records the live connection so `stop` can close it; `false` (and the
    /// connection closed) when already stopped.
    pub(crate) fn enter_session(&self, closer: MuxCloser) -> bool {
        let mut inner = self.lock();
        if inner.stopped {
            closer.close();
            return false;
        }
        inner.session = Some(closer);
        true
    }

    pub(crate) fn leave_session(&self) {
        self.lock().session = None;
    }

    /// Waits `pause` unless stopped first; returns whether stopped.
    fn sleep(&self, pause: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .0
            .wake
            .wait_timeout_while(inner, pause, |inner| !inner.stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.stopped
    }

    fn lock(&self) -> MutexGuard<'_, StopInner> {
        self.0.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeRuntime, PATIENCE};
    use anyhow::Context as _;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    const IO_MAX: &str = "8:16 rbps=1048576 wiops=100";
    const HOOK: &str = "/usr/local/bin/iogate-oci-hook";

    /// Limits every container except one named "refused".
    #[derive(Default)]
    struct Limiter {
        synced: Mutex<Vec<(usize, usize)>>,
        shutdowns: AtomicUsize,
    }

    impl Plugin for Limiter {
        fn events(&self) -> EventMask {
            EventMask::of(&[api::Event::CREATE_CONTAINER, api::Event::STOP_CONTAINER])
        }

        fn synchronize(
            &self,
            pods: &[api::PodSandbox],
            containers: &[api::Container],
        ) -> anyhow::Result<Vec<api::ContainerUpdate>> {
            self.synced.lock().unwrap().push((pods.len(), containers.len()));
            Ok(containers.iter().map(|ctr| unified_update(&ctr.id)).collect())
        }

        fn create_container(
            &self,
            _pod: &api::PodSandbox,
            ctr: &api::Container,
        ) -> anyhow::Result<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
            if ctr.name == "refused" {
                return Err(anyhow::anyhow!("no block device backs /data"))
                    .context("iogate: cannot enforce annotation io.max");
            }
            Ok((limits_adjustment(), Vec::new()))
        }

        fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The adjustment iogate makes: a cgroup v2 `io.max` entry and a
    /// createRuntime hook.
    fn limits_adjustment() -> api::ContainerAdjustment {
        let resources =
            api::LinuxResources { unified: HashMap::from([("io.max".into(), IO_MAX.into())]), ..Default::default() };
        let hook = api::Hook {
            path: HOOK.into(),
            args: vec!["iogate-oci-hook".into(), "apply".into()],
            timeout: Some(api::OptionalInt { value: 5, ..Default::default() }).into(),
            ..Default::default()
        };
        api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment { resources: Some(resources).into(), ..Default::default() })
                .into(),
            hooks: Some(api::Hooks { create_runtime: vec![hook], ..Default::default() }).into(),
            ..Default::default()
        }
    }

    fn unified_update(id: &str) -> api::ContainerUpdate {
        let resources =
            api::LinuxResources { unified: HashMap::from([("io.max".into(), IO_MAX.into())]), ..Default::default() };
        api::ContainerUpdate {
            container_id: id.into(),
            linux: Some(api::LinuxContainerUpdate { resources: Some(resources).into(), ..Default::default() }).into(),
            ..Default::default()
        }
    }

    fn pod(id: &str) -> api::PodSandbox {
        api::PodSandbox { id: id.into(), name: format!("pod-{id}"), namespace: "default".into(), ..Default::default() }
    }

    fn container(id: &str, name: &str) -> api::Container {
        api::Container {
            id: id.into(),
            pod_sandbox_id: "p1".into(),
            name: name.into(),
            linux: Some(api::LinuxContainer {
                cgroups_path: format!("kubepods.slice:cri-containerd:{id}"),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    fn create(runtime: &FakeRuntime, name: &str) -> ttrpc::Result<api::CreateContainerResponse> {
        let request = api::CreateContainerRequest {
            pod: Some(pod("p1")).into(),
            container: Some(container(&format!("id-{name}"), name)).into(),
            ..Default::default()
        };
        runtime.plugin.create_container(&request)
    }

    #[test]
    fn loopback_register_configure_synchronize_create() {
        let limiter = Arc::new(Limiter::default());
        let stub = Arc::new(Stub::new(limiter.clone()));
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = FakeRuntime::attach(runtime_end);
        let serving = {
            let stub = Arc::clone(&stub);
            thread::spawn(move || stub.serve_connection(plugin_end, &Identity::new("iogate", "10").unwrap()))
        };

        let registration = runtime.expect_registration();
        assert_eq!((registration.plugin_name.as_str(), registration.plugin_idx.as_str()), ("iogate", "10"));
        assert_eq!(registration.NRI_version, api::NRI_VERSION);

        let configure = api::ConfigureRequest {
            runtime_name: "fake".into(),
            runtime_version: "2.1.0".into(),
            registration_timeout: 5000,
            request_timeout: 2000,
            ..Default::default()
        };
        let configured = runtime.plugin.configure(&configure).unwrap();
        // CreateContainer (4) is bit 3, StopContainer (10) bit 9.
        assert_eq!(configured.events, 0x8 | 0x200);

        // Split synchronization: nothing is decided before the last chunk.
        let first = api::SynchronizeRequest {
            pods: vec![pod("p1")],
            containers: vec![container("c1", "db")],
            more: true,
            ..Default::default()
        };
        let reply = runtime.plugin.synchronize(&first).unwrap();
        assert!(reply.more && reply.update.is_empty());
        let last = api::SynchronizeRequest { containers: vec![container("c2", "web")], ..Default::default() };
        let reply = runtime.plugin.synchronize(&last).unwrap();
        assert!(!reply.more);
        let updated: Vec<&str> = reply.update.iter().map(|u| u.container_id.as_str()).collect();
        assert_eq!(updated, ["c1", "c2"]);
        assert_eq!(*limiter.synced.lock().unwrap(), [(1, 2)]);

        let created = create(&runtime, "db").unwrap();
        let adjust = created.adjust.get_or_default();
        assert_eq!(adjust.linux.resources.unified.get("io.max").map(String::as_str), Some(IO_MAX));
        let hooks = &adjust.hooks.create_runtime;
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].path, HOOK);
        assert_eq!(hooks[0].timeout.value, 5);
        assert!(created.update.is_empty());

        runtime.plugin.shutdown().unwrap();
        assert_eq!(limiter.shutdowns.load(Ordering::SeqCst), 1);

        runtime.hang_up();
        serving.join().unwrap().expect("a runtime hang-up ends the session cleanly");
    }

    /// containerd configures a plugin as soon as it has taken the
    /// registration, so its reply may still be on its way when a runtime
    /// that is restarting hangs up; the session still ended, not failed.
    #[test]
    fn a_hang_up_before_the_registration_reply_ends_the_session_cleanly() {
        let stub = Arc::new(Stub::new(Arc::new(Limiter::default())));
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = FakeRuntime::attach_holding_replies(runtime_end);
        let serving = {
            let stub = Arc::clone(&stub);
            thread::spawn(move || stub.serve_connection(plugin_end, &Identity::new("iogate", "10").unwrap()))
        };
        runtime.expect_registration();
        runtime.plugin.configure(&api::ConfigureRequest::default()).unwrap();
        runtime.hang_up();
        serving.join().unwrap().expect("a runtime that configured us and hung up ends the session cleanly");
    }

    /// Without Configure nothing shows that the runtime took the
    /// registration: a lost reply is a failed registration.
    #[test]
    fn a_hang_up_before_configure_is_a_failed_registration() {
        let stub = Arc::new(Stub::new(Arc::new(Limiter::default())));
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = FakeRuntime::attach_holding_replies(runtime_end);
        let serving = {
            let stub = Arc::clone(&stub);
            thread::spawn(move || stub.serve_connection(plugin_end, &Identity::new("iogate", "10").unwrap()))
        };
        runtime.expect_registration();
        runtime.hang_up();
        let err = serving.join().unwrap().expect_err("no reply and no Configure: registration failed");
        assert!(format!("{err:#}").starts_with("registering plugin 10-iogate with the runtime"), "{err:#}");
    }

    #[test]
    fn plugin_errors_reach_the_runtime_verbatim() {
        let stub = Arc::new(Stub::new(Arc::new(Limiter::default())));
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = FakeRuntime::attach(runtime_end);
        let serving = {
            let stub = Arc::clone(&stub);
            thread::spawn(move || stub.serve_connection(plugin_end, &Identity::new("iogate", "10").unwrap()))
        };
        runtime.expect_registration();
        // containerd configures a plugin before it sends any event.
        runtime.plugin.configure(&api::ConfigureRequest::default()).unwrap();

        match create(&runtime, "refused") {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code(), ttrpc::Code::UNKNOWN);
                assert_eq!(status.message, "iogate: cannot enforce annotation io.max: no block device backs /data");
            }
            other => panic!("expected an error status, got {other:?}"),
        }
        // One refusal does not break the connection.
        assert!(create(&runtime, "db").is_ok());

        runtime.hang_up();
        serving.join().unwrap().unwrap();
    }

    #[test]
    fn external_mode_reconnects_after_the_runtime_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nri.sock");
        let stub = Arc::new(
            Stub::new(Arc::new(Limiter::default()))
                .with_reconnect_backoff(Duration::from_millis(5), Duration::from_millis(40)),
        );
        let stop = stub.stop_handle();
        let running = {
            let (stub, socket) = (Arc::clone(&stub), socket.clone());
            thread::spawn(move || stub.run_external(&socket, &Identity::new("iogate", "10").unwrap()))
        };

        // The runtime is not up yet: the stub keeps trying.
        thread::sleep(Duration::from_millis(50));
        let listener = UnixListener::bind(&socket).unwrap();

        let mut registrations = Vec::new();
        for _ in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            let runtime = FakeRuntime::attach(conn);
            registrations.push(runtime.expect_registration());
            // containerd restarting.
            runtime.hang_up();
        }
        assert_eq!(registrations.len(), 2);
        assert!(registrations.iter().all(|r| r.plugin_name == "iogate" && r.plugin_idx == "10"));

        stop.stop();
        let started = std::time::Instant::now();
        running.join().unwrap().unwrap();
        assert!(started.elapsed() < PATIENCE);
    }

    #[test]
    fn stop_closes_a_live_connection() {
        let stub = Arc::new(Stub::new(Arc::new(Limiter::default())));
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = FakeRuntime::attach(runtime_end);
        let stop = stub.stop_handle();
        let serving = {
            let stub = Arc::clone(&stub);
            thread::spawn(move || stub.serve_connection(plugin_end, &Identity::new("iogate", "10").unwrap()))
        };
        runtime.expect_registration();
        // The runtime saw the request; the stub attaches once the reply is in.
        let deadline = std::time::Instant::now() + PATIENCE;
        while !stub.runtime().is_connected() {
            assert!(std::time::Instant::now() < deadline, "the stub never attached to the runtime");
            thread::sleep(Duration::from_millis(1));
        }
        stop.stop();
        serving.join().unwrap().unwrap();
        assert!(!stub.runtime().is_connected());
        runtime.hang_up();
    }
}
