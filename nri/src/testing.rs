//! A stand-in for containerd's side of NRI, built from the same parts as the
//! plugin side, for loopback tests.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message;

use crate::api;
use crate::mux::{ConnId, Mux};
use crate::rpc::RpcClient;
use crate::serve::Serving;

/// Generous bound for anything a test waits on.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// The plugin's ttrpc service, as NRI's `api.proto` names it.
const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";

/// The runtime end of one NRI connection: serves the Runtime service
/// (recording registrations) and calls the plugin's Plugin service.
pub(crate) struct FakeRuntime {
    pub(crate) plugin: PluginCaller,
    registrations: Receiver<api::RegisterPluginRequest>,
    mux: Mux,
    serving: Serving,
    release_replies: Option<Sender<()>>,
}

/// Calls the plugin's service the way the runtime does.
pub(crate) struct PluginCaller(RpcClient);

impl PluginCaller {
    fn call<Req: Message, Resp: Message>(&self, method: &str, req: &Req) -> ttrpc::Result<Resp> {
        self.0.call(method, req, PATIENCE)
    }

    pub(crate) fn configure(&self, req: &api::ConfigureRequest) -> ttrpc::Result<api::ConfigureResponse> {
        self.call("Configure", req)
    }

    pub(crate) fn synchronize(&self, req: &api::SynchronizeRequest) -> ttrpc::Result<api::SynchronizeResponse> {
        self.call("Synchronize", req)
    }

    pub(crate) fn create_container(
        &self,
        req: &api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.call("CreateContainer", req)
    }

    pub(crate) fn stop_container(&self, req: &api::StopContainerRequest) -> ttrpc::Result<api::StopContainerResponse> {
        self.call("StopContainer", req)
    }

    pub(crate) fn state_change(&self, req: &api::StateChangeEvent) -> ttrpc::Result<api::Empty> {
        self.call("StateChange", req)
    }

    pub(crate) fn shutdown(&self) -> ttrpc::Result<api::Empty> {
        self.call("Shutdown", &api::Empty::new())
    }
}

struct RecordingRuntime {
    registrations: Sender<api::RegisterPluginRequest>,
    /// When set, each reply to RegisterPlugin waits for a message here: a
    /// runtime whose reply is still on its way.
    hold_replies: Option<Mutex<Receiver<()>>>,
}

impl api::Runtime for RecordingRuntime {
    fn register_plugin(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _ = self.registrations.send(req);
        if let Some(hold) = &self.hold_replies {
            let _ = hold.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(PATIENCE);
        }
        Ok(api::Empty::new())
    }
}

impl FakeRuntime {
    /// Takes over the runtime end of an NRI socket. Like containerd, it
    /// opens both connections before reading anything.
    pub(crate) fn attach(trunk: UnixStream) -> FakeRuntime {
        Self::start(trunk, None)
    }

    /// Like [`attach`](Self::attach), but the reply to the registration is
    /// held back until [`hang_up`](Self::hang_up) has closed the connection,
    /// so it never reaches the plugin.
    pub(crate) fn attach_holding_replies(trunk: UnixStream) -> FakeRuntime {
        let (release, hold) = channel();
        let mut runtime = Self::start(trunk, Some(Mutex::new(hold)));
        runtime.release_replies = Some(release);
        runtime
    }

    fn start(trunk: UnixStream, hold_replies: Option<Mutex<Receiver<()>>>) -> FakeRuntime {
        let (mux, [plugin_conn, runtime_conn]) =
            Mux::start(trunk, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE]).unwrap();
        let (sender, registrations) = channel();
        let recording = RecordingRuntime { registrations: sender, hold_replies };
        let methods = Arc::new(api::create_runtime(Arc::new(recording)));
        let serving = Serving::start(runtime_conn, methods, 0).unwrap();
        let plugin = PluginCaller(RpcClient::new(PLUGIN_SERVICE, plugin_conn));
        FakeRuntime { plugin, registrations, mux, serving, release_replies: None }
    }

    pub(crate) fn expect_registration(&self) -> api::RegisterPluginRequest {
        self.registrations.recv_timeout(PATIENCE).expect("the plugin registers")
    }

    /// Closes the connection the way a stopping containerd does.
    pub(crate) fn hang_up(self) {
        let FakeRuntime { plugin, mux, serving, release_replies, .. } = self;
        mux.close();
        drop(plugin);
        // Held replies go out now, into a closed connection.
        if let Some(release) = release_replies {
            let _ = release.send(());
        }
        serving.join();
    }
}
