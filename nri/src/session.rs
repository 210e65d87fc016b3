//! One NRI connection from start to end: multiplex the socket, serve the
//! plugin service and open a client of the runtime service on it, register,
//! then serve until the runtime hangs up.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::error::{chain, Error};
use crate::mux::{ConnId, Mux};
use crate::registration::Registration;
use crate::rpc::RpcClient;
use crate::runtime::{describe_rpc_error, RuntimeHandle, RUNTIME_SERVICE};
use crate::serve::{Methods, Serving};
use crate::service::PluginService;
use crate::stop::StopHandle;

/// NRI's default registration timeout. The runtime's configured value only
/// arrives with Configure, after registration.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers the sessions of this process, for the plugin service to tell
/// one connection's requests from the next one's.
static SESSIONS: AtomicI32 = AtomicI32::new(1);

/// What a session borrows from the stub, which outlives it.
pub(crate) struct StubParts<'a> {
    /// The plugin service's method table (`api::create_plugin`).
    pub(crate) methods: &'a Arc<Methods>,
    pub(crate) service: &'a PluginService,
    pub(crate) runtime: &'a RuntimeHandle,
    pub(crate) stop: &'a StopHandle,
}

pub(crate) struct SessionEnd {
    /// Whether the runtime accepted our registration; reconnect backoff
    /// starts over when it did.
    pub(crate) registered: bool,
    /// `Ok` when the runtime closed the connection, or we were stopped.
    pub(crate) outcome: Result<(), Error>,
}

pub(crate) fn run(trunk: UnixStream, registration: &Registration, stub: &StubParts<'_>) -> SessionEnd {
    let (mux, [plugin_conn, runtime_conn]) = match Mux::start(trunk, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE])
    {
        Ok(started) => started,
        Err(err) => return SessionEnd { registered: false, outcome: Err(Error::Multiplex(err)) },
    };
    if !stub.stop.enter_session(mux.closer()) {
        return SessionEnd { registered: false, outcome: Ok(()) };
    }
    stub.service.start_session();

    let session: RawFd = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let serving = match Serving::start(plugin_conn, Arc::clone(stub.methods), session) {
        Ok(serving) => serving,
        Err(err) => {
            stub.stop.leave_session();
            mux.close();
            return SessionEnd { registered: false, outcome: Err(Error::Serve(err)) };
        }
    };
    let runtime = Arc::new(RpcClient::new(RUNTIME_SERVICE, runtime_conn));
    let end = match register(&runtime, registration) {
        Ok(()) => {
            tracing::info!(plugin = %registration, "registered with the runtime");
            stub.runtime.attach(runtime);
            let outcome = mux.wait().map_err(Error::Connection);
            if outcome.is_ok() {
                tracing::info!(plugin = %registration, "the runtime closed the NRI connection");
            }
            SessionEnd { registered: true, outcome }
        }
        // Stopping closes the mux, which may surface as a failed
        // registration; it is not an error.
        Err(_) if stub.stop.is_stopped() => SessionEnd { registered: false, outcome: Ok(()) },
        // The runtime configured us, so it took the registration; its reply
        // was lost because it closed the connection right after (a restart
        // under load does that). That is a session that ended, not one that
        // failed.
        Err(err) if stub.service.configured() => {
            tracing::info!(
                plugin = %registration,
                error = %chain(&err),
                "the runtime closed the NRI connection before its registration reply arrived"
            );
            SessionEnd { registered: true, outcome: Ok(()) }
        }
        Err(err) => SessionEnd { registered: false, outcome: Err(err) },
    };

    stub.stop.leave_session();
    stub.runtime.detach();
    mux.close();
    serving.join();
    end
}

fn register(runtime: &RpcClient, registration: &Registration) -> Result<(), Error> {
    let request = api::RegisterPluginRequest {
        plugin_name: registration.name().to_owned(),
        plugin_idx: registration.index().to_owned(),
        NRI_version: api::NRI_VERSION.to_owned(),
        ..Default::default()
    };
    runtime
        .call::<_, api::Empty>("RegisterPlugin", &request, REGISTRATION_TIMEOUT)
        .map_err(|err| Error::Register { plugin: registration.to_string(), reason: describe_rpc_error(&err) })?;
    Ok(())
}
