//! Running a [`Plugin`] against the runtime, modelled on containerd/nri's Go
//! stub: hand the plugin to a [`Stub`], and run the stub in the mode the
//! plugin was started in.
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
use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::error::{chain, Error};
use crate::plugin::Plugin;
use crate::registration::{PreRegistered, Registration};
use crate::runtime::RuntimeHandle;
use crate::serve::Methods;
use crate::service::PluginService;
use crate::session;
use crate::stop::StopHandle;

/// Where containerd listens for external plugins unless its `socket_path`
/// says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";

/// First pause between connection attempts in external mode; it doubles
/// after every failed attempt.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts: how long a restarted
/// containerd may have to wait for the plugin at worst.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(5);

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
    pub fn run_pre_registered(&self, launched: PreRegistered) -> Result<(), Error> {
        tracing::info!(plugin = %launched.registration, "started by the runtime");
        self.serve_connection(launched.socket, &launched.registration)
    }

    /// Registers on an already connected NRI socket and serves it until the
    /// runtime closes it (`Ok`), it fails, or the stub is stopped (`Ok`).
    pub fn serve_connection(&self, conn: UnixStream, registration: &Registration) -> Result<(), Error> {
        session::run(conn, registration, &self.parts()).outcome
    }

    /// Connects to the NRI socket at `socket_path`, registers as
    /// `registration`, serves, and does it again whenever the connection is
    /// lost or cannot be made, until stopped. Every attempt is logged; the
    /// errors of single attempts are not returned, since the next attempt
    /// may succeed.
    pub fn run_external(&self, socket_path: &Path, registration: &Registration) -> Result<(), Error> {
        let parts = self.parts();
        let mut delay = self.reconnect_initial;
        let mut attempt: u64 = 0;
        while !self.stop.is_stopped() {
            attempt += 1;
            tracing::info!(socket = %socket_path.display(), attempt, plugin = %registration, "connecting to NRI");
            let registered = match UnixStream::connect(socket_path) {
                Ok(conn) => {
                    let end = session::run(conn, registration, &parts);
                    if let Err(err) = &end.outcome {
                        tracing::warn!(error = %chain(err), "NRI connection ended with an error");
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
        tracing::info!(plugin = %registration, "NRI plugin stopped");
        Ok(())
    }

    fn parts(&self) -> session::StubParts<'_> {
        session::StubParts { methods: &self.methods, service: &self.service, runtime: &self.runtime, stop: &self.stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventMask, Notification};
    use crate::plugin::{CreateContainer, HandlerResult, StateChange, StopContainer, Subscriptions};
    use crate::testing::{FakeRuntime, PATIENCE};
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::thread;

    const IO_MAX: &str = "8:16 rbps=1048576 wiops=100";
    const HOOK: &str = "/usr/local/bin/iogate-oci-hook";

    /// Limits every container except one named "refused".
    #[derive(Default)]
    struct IoMaxPlugin {
        synced: Mutex<Vec<(usize, usize)>>,
        shutdowns: AtomicUsize,
    }

    impl Plugin for IoMaxPlugin {
        fn configure(self: Arc<Self>, _req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()> {
            events.on_create_container(self.clone()).on_stop_container(self);
            Ok(())
        }

        fn synchronize(
            &self,
            pods: &[api::PodSandbox],
            containers: &[api::Container],
        ) -> HandlerResult<Vec<api::ContainerUpdate>> {
            self.synced.lock().unwrap().push((pods.len(), containers.len()));
            Ok(containers.iter().map(|ctr| unified_update(&ctr.id)).collect())
        }

        fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CreateContainer for IoMaxPlugin {
        fn create_container(
            &self,
            _pod: &api::PodSandbox,
            ctr: &api::Container,
        ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
            if ctr.name == "refused" {
                let err =
                    anyhow::anyhow!("no block device backs /data").context("iogate: cannot enforce annotation io.max");
                return Err(err.into());
            }
            Ok((limits_adjustment(), Vec::new()))
        }
    }

    impl StopContainer for IoMaxPlugin {
        fn stop_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
        ) -> HandlerResult<Vec<api::ContainerUpdate>> {
            Ok(Vec::new())
        }
    }

    /// Can handle three events and registers only the first: the others
    /// are never its business.
    #[derive(Default)]
    struct CreateOnly {
        calls: Mutex<Vec<&'static str>>,
    }

    impl Plugin for CreateOnly {
        fn configure(self: Arc<Self>, _req: &api::ConfigureRequest, events: &mut Subscriptions) -> HandlerResult<()> {
            events.on_create_container(self);
            Ok(())
        }
    }

    impl CreateContainer for CreateOnly {
        fn create_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
        ) -> HandlerResult<(api::ContainerAdjustment, Vec<api::ContainerUpdate>)> {
            self.calls.lock().unwrap().push("create");
            Ok((limits_adjustment(), Vec::new()))
        }
    }

    impl StopContainer for CreateOnly {
        fn stop_container(
            &self,
            _pod: &api::PodSandbox,
            _ctr: &api::Container,
        ) -> HandlerResult<Vec<api::ContainerUpdate>> {
            self.calls.lock().unwrap().push("stop");
            Ok(vec![unified_update("other")])
        }
    }

    impl StateChange for CreateOnly {
        fn state_change(
            &self,
            _event: Notification,
            _pod: &api::PodSandbox,
            _ctr: Option<&api::Container>,
        ) -> HandlerResult<()> {
            self.calls.lock().unwrap().push("state change");
            Ok(())
        }
    }

    /// Registers nothing at all.
    struct Deaf;

    impl Plugin for Deaf {
        fn configure(self: Arc<Self>, _req: &api::ConfigureRequest, _events: &mut Subscriptions) -> HandlerResult<()> {
            Ok(())
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
        let plugin = Arc::new(IoMaxPlugin::default());
        let stub = Arc::new(Stub::new(plugin.clone()));
        let (runtime, serving) = serve(&stub, FakeRuntime::attach);

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
        assert_eq!(*plugin.synced.lock().unwrap(), [(1, 2)]);

        let created = create(&runtime, "db").unwrap();
        let adjust = created.adjust.get_or_default();
        assert_eq!(adjust.linux.resources.unified.get("io.max").map(String::as_str), Some(IO_MAX));
        let hooks = &adjust.hooks.create_runtime;
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].path, HOOK);
        assert_eq!(hooks[0].timeout.value, 5);
        assert!(created.update.is_empty());

        runtime.plugin.shutdown().unwrap();
        assert_eq!(plugin.shutdowns.load(Ordering::SeqCst), 1);

        runtime.hang_up();
        serving.join().unwrap().expect("a runtime hang-up ends the session cleanly");
    }

    /// containerd configures a plugin as soon as it has taken the
    /// registration, so its reply may still be on its way when a runtime
    /// that is restarting hangs up; the session still ended, not failed.
    #[test]
    fn a_hang_up_before_the_registration_reply_ends_the_session_cleanly() {
        let stub = Arc::new(Stub::new(Arc::new(IoMaxPlugin::default())));
        let (runtime, serving) = serve(&stub, FakeRuntime::attach_holding_replies);
        runtime.expect_registration();
        runtime.plugin.configure(&api::ConfigureRequest::default()).unwrap();
        runtime.hang_up();
        serving.join().unwrap().expect("a runtime that configured us and hung up ends the session cleanly");
    }

    /// Without Configure nothing shows that the runtime took the
    /// registration: a lost reply is a failed registration.
    #[test]
    fn a_hang_up_before_configure_is_a_failed_registration() {
        let stub = Arc::new(Stub::new(Arc::new(IoMaxPlugin::default())));
        let (runtime, serving) = serve(&stub, FakeRuntime::attach_holding_replies);
        runtime.expect_registration();
        runtime.hang_up();
        let err = serving.join().unwrap().expect_err("no reply and no Configure: registration failed");
        assert!(format!("{err:#}").starts_with("registering plugin 10-iogate with the runtime"), "{err:#}");
    }

    #[test]
    fn plugin_errors_reach_the_runtime_verbatim() {
        let stub = Arc::new(Stub::new(Arc::new(IoMaxPlugin::default())));
        let (runtime, serving) = serve(&stub, FakeRuntime::attach);
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

    /// Serves one end of a socket pair; `attach` makes the fake runtime on
    /// the other end.
    fn serve(
        stub: &Arc<Stub>,
        attach: fn(UnixStream) -> FakeRuntime,
    ) -> (FakeRuntime, thread::JoinHandle<Result<(), Error>>) {
        let (plugin_end, runtime_end) = UnixStream::pair().unwrap();
        let runtime = attach(runtime_end);
        let stub = Arc::clone(stub);
        let serving =
            thread::spawn(move || stub.serve_connection(plugin_end, &Registration::new("iogate", "10").unwrap()));
        (runtime, serving)
    }

    /// Serves `plugin`; the fake runtime has seen the registration.
    fn connected(plugin: Arc<dyn Plugin>) -> (FakeRuntime, thread::JoinHandle<Result<(), Error>>) {
        let (runtime, serving) = serve(&Arc::new(Stub::new(plugin)), FakeRuntime::attach);
        runtime.expect_registration();
        (runtime, serving)
    }

    #[test]
    fn events_without_a_registered_handler_are_never_delivered() {
        let plugin = Arc::new(CreateOnly::default());
        let (runtime, serving) = connected(plugin.clone());
        let configured = runtime.plugin.configure(&api::ConfigureRequest::default()).unwrap();
        assert_eq!(EventMask::from_bits(configured.events), EventMask::from(api::Event::CREATE_CONTAINER));

        // A runtime out of step with the subscription: answered, not delivered.
        let stop = api::StopContainerRequest {
            pod: Some(pod("p1")).into(),
            container: Some(container("c1", "db")).into(),
            ..Default::default()
        };
        assert!(runtime.plugin.stop_container(&stop).unwrap().update.is_empty());
        let started = api::StateChangeEvent {
            event: api::Event::START_CONTAINER.into(),
            pod: Some(pod("p1")).into(),
            ..Default::default()
        };
        runtime.plugin.state_change(&started).unwrap();
        assert!(plugin.calls.lock().unwrap().is_empty());

        let created = create(&runtime, "db").unwrap();
        assert!(created.adjust.is_some());
        assert_eq!(*plugin.calls.lock().unwrap(), ["create"]);

        runtime.hang_up();
        serving.join().unwrap().unwrap();
    }

    #[test]
    fn a_plugin_that_registers_nothing_is_refused() {
        let (runtime, serving) = connected(Arc::new(Deaf));
        match runtime.plugin.configure(&api::ConfigureRequest::default()) {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.message, "the plugin registered no event handlers")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        runtime.hang_up();
        serving.join().unwrap().unwrap();
    }

    #[test]
    fn external_mode_reconnects_after_the_runtime_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nri.sock");
        let stub = Arc::new(
            Stub::new(Arc::new(IoMaxPlugin::default()))
                .with_reconnect_backoff(Duration::from_millis(5), Duration::from_millis(40)),
        );
        let stop = stub.stop_handle();
        let running = {
            let (stub, socket) = (Arc::clone(&stub), socket.clone());
            thread::spawn(move || stub.run_external(&socket, &Registration::new("iogate", "10").unwrap()))
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
        let stub = Arc::new(Stub::new(Arc::new(IoMaxPlugin::default())));
        let stop = stub.stop_handle();
        let (runtime, serving) = serve(&stub, FakeRuntime::attach);
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
