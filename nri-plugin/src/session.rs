//! One NRI connection from start to end: multiplex the socket, wire both
//! services to ttrpc, register, then serve until the runtime hangs up.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::Context as _;

use crate::api;
use crate::bridge::Bridge;
use crate::identity::Identity;
use crate::mux::{ConnId, Mux};
use crate::runtime::{describe_rpc_error, RuntimeHandle};
use crate::server::LocalServer;
use crate::service::PluginService;
use crate::stub::StopHandle;

/// NRI's default registration timeout. The runtime's configured value only
/// arrives with Configure, after registration.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session needs from the stub that outlives it.
pub(crate) struct Shared<'a> {
    pub(crate) server: &'a LocalServer,
    pub(crate) service: &'a PluginService,
    pub(crate) runtime: &'a RuntimeHandle,
    pub(crate) stop: &'a StopHandle,
}

pub(crate) struct SessionEnd {
    /// Whether the runtime accepted our registration; reconnect backoff
    /// starts over when it did.
    pub(crate) registered: bool,
    /// `Ok` when the runtime closed the connection, or we were stopped.
    pub(crate) outcome: anyhow::Result<()>,
}

pub(crate) fn run(trunk: UnixStream, identity: &Identity, shared: &Shared<'_>) -> SessionEnd {
    let (mux, [plugin_conn, runtime_conn]) = match Mux::start(trunk, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE])
    {
        Ok(started) => started,
        Err(err) => {
            return SessionEnd { registered: false, outcome: Err(err).context("multiplexing the NRI connection") }
        }
    };
    if !shared.stop.enter_session(mux.closer()) {
        return SessionEnd { registered: false, outcome: Ok(()) };
    }
    shared.service.start_session();

    let mut bridges = Vec::with_capacity(2);
    let end = match connect(&mux, plugin_conn, runtime_conn, shared.server, &mut bridges)
        .and_then(|runtime| register(&runtime, identity).map(|()| runtime))
    {
        Ok(runtime) => {
            tracing::info!(plugin = %identity, "registered with the runtime");
            shared.runtime.attach(runtime);
            let outcome = mux.wait().context("NRI connection failed");
            if outcome.is_ok() {
                tracing::info!(plugin = %identity, "the runtime closed the NRI connection");
            }
            SessionEnd { registered: true, outcome }
        }
        // Stopping closes the mux, which may surface as a failed
        // registration; it is not an error.
        Err(_) if shared.stop.is_stopped() => SessionEnd { registered: false, outcome: Ok(()) },
        // The runtime configured us, so it took the registration; its reply
        // was lost because it closed the connection right after (a restart
        // under load does that). That is a session that ended, not one that
        // failed.
        Err(err) if shared.service.configured() => {
            tracing::info!(
                plugin = %identity,
                error = format!("{err:#}"),
                "the runtime closed the NRI connection before its registration reply arrived"
            );
            SessionEnd { registered: true, outcome: Ok(()) }
        }
        Err(err) => SessionEnd { registered: false, outcome: Err(err) },
    };

    shared.stop.leave_session();
    // Dropping the runtime client closes its end of the bridged socket.
    shared.runtime.detach();
    mux.close();
    for bridge in bridges {
        bridge.join();
    }
    end
}

/// Connects the plugin service to our ttrpc server and a ttrpc client to the
/// runtime service.
fn connect(
    mux: &Mux,
    plugin_conn: crate::mux::MuxConn,
    runtime_conn: crate::mux::MuxConn,
    server: &LocalServer,
    bridges: &mut Vec<Bridge>,
) -> anyhow::Result<api::RuntimeClient> {
    let to_server = server.connect().context("connecting to the plugin's ttrpc server")?;
    bridges.push(Bridge::spawn(plugin_conn, to_server, mux.closer()).context("bridging the plugin service")?);

    let (client_end, bridged_end) = UnixStream::pair().context("creating the runtime client socket")?;
    bridges.push(Bridge::spawn(runtime_conn, bridged_end, mux.closer()).context("bridging the runtime service")?);
    // The ttrpc client takes ownership of the descriptor and closes it on drop.
    let client = ttrpc::Client::new(client_end.into_raw_fd())
        .map_err(|err| anyhow::anyhow!(describe_rpc_error(&err)))
        .context("creating the runtime ttrpc client")?;
    Ok(api::RuntimeClient::new(client))
}

fn register(runtime: &api::RuntimeClient, identity: &Identity) -> anyhow::Result<()> {
    let request = api::RegisterPluginRequest {
        plugin_name: identity.name().to_owned(),
        plugin_idx: identity.index().to_owned(),
        NRI_version: api::NRI_VERSION.to_owned(),
        ..Default::default()
    };
    runtime
        .register_plugin(ttrpc::context::with_duration(REGISTRATION_TIMEOUT), &request)
        .map_err(|err| anyhow::anyhow!(describe_rpc_error(&err)))
        .with_context(|| format!("registering plugin {identity} with the runtime"))?;
    Ok(())
}
