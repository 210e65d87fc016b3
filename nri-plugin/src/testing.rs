//! A stand-in for containerd's side of NRI, built from the same parts as the
//! plugin side, for loopback tests.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api;
use crate::bridge::Bridge;
use crate::mux::{ConnId, Mux};
use crate::server::LocalServer;

/// Generous bound for anything a test waits on.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) fn call_context() -> ttrpc::context::Context {
    ttrpc::context::with_duration(PATIENCE)
}

/// The runtime end of one NRI connection: serves the Runtime service
/// (recording registrations) and calls the plugin's Plugin service.
pub(crate) struct FakeRuntime {
    pub(crate) plugin: api::PluginClient,
    registrations: Receiver<api::RegisterPluginRequest>,
    mux: Mux,
    bridges: Vec<Bridge>,
    release_replies: Option<Sender<()>>,
    _server: LocalServer,
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
            let _ = hold.lock().unwrap().recv_timeout(PATIENCE);
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
        let server = LocalServer::start(api::create_runtime(Arc::new(recording))).unwrap();
        let runtime_bridge = Bridge::spawn(runtime_conn, server.connect().unwrap(), mux.closer()).unwrap();
        let (client_end, bridged_end) = UnixStream::pair().unwrap();
        let plugin_bridge = Bridge::spawn(plugin_conn, bridged_end, mux.closer()).unwrap();
        let plugin = api::PluginClient::new(ttrpc::Client::new(client_end.into_raw_fd()).unwrap());
        FakeRuntime {
            plugin,
            registrations,
            mux,
            bridges: vec![runtime_bridge, plugin_bridge],
            release_replies: None,
            _server: server,
        }
    }

    pub(crate) fn expect_registration(&self) -> api::RegisterPluginRequest {
        self.registrations.recv_timeout(PATIENCE).expect("the plugin registers")
    }

    /// Closes the connection the way a stopping containerd does.
    pub(crate) fn hang_up(self) {
        let FakeRuntime { plugin, mux, bridges, release_replies, _server } = self;
        mux.close();
        drop(plugin);
        for bridge in bridges {
            bridge.join();
        }
        // Held replies go out now, into a closed connection; the server
        // stops once its handlers have returned.
        if let Some(release) = release_replies {
            let _ = release.send(());
        }
        drop(_server);
    }
}
