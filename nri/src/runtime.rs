//! Calls from the plugin to the runtime outside of any request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::api;
use crate::rpc::RpcClient;

/// The runtime's ttrpc service, as NRI's `api.proto` names it.
pub(crate) const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// NRI's default for how long a plugin may take to answer a request; the
/// runtime tells the real value in Configure.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("not connected to the runtime")]
    NotConnected,
    #[error("runtime request failed: {0}")]
    Rpc(String),
}

/// The runtime as seen from outside request handling. Cheap to clone; stays
/// valid across reconnects and simply reports [`RuntimeError::NotConnected`]
/// while there is no registered connection.
#[derive(Clone)]
pub struct RuntimeHandle(Arc<Mutex<Link>>);

struct Link {
    client: Option<Arc<RpcClient>>,
    request_timeout: Duration,
}

impl Default for RuntimeHandle {
    fn default() -> Self {
        RuntimeHandle(Arc::new(Mutex::new(Link { client: None, request_timeout: DEFAULT_REQUEST_TIMEOUT })))
    }
}

impl RuntimeHandle {
    pub fn is_connected(&self) -> bool {
        self.lock().client.is_some()
    }

    /// Asks the runtime to change resources of running containers and
    /// returns the updates it could not apply.
    ///
    /// Never call this from a handler (see [`Plugin`](crate::Plugin)):
    /// containerd serialises NRI work under one lock, so the call would wait
    /// for the callback that waits for it, until the runtime gives up on the
    /// plugin and disconnects it.
    pub fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> Result<Vec<api::ContainerUpdate>, RuntimeError> {
        let (client, timeout) = {
            let link = self.lock();
            (link.client.clone().ok_or(RuntimeError::NotConnected)?, link.request_timeout)
        };
        let request = api::UpdateContainersRequest { update: updates, ..Default::default() };
        let reply: api::UpdateContainersResponse = client
            .call("UpdateContainers", &request, timeout)
            .map_err(|err| RuntimeError::Rpc(describe_rpc_error(&err)))?;
        Ok(reply.failed)
    }

    pub(crate) fn attach(&self, client: Arc<RpcClient>) {
        self.lock().client = Some(client);
    }

    pub(crate) fn detach(&self) {
        self.lock().client = None;
    }

    pub(crate) fn set_request_timeout(&self, timeout: Duration) {
        self.lock().request_timeout = timeout;
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// ttrpc's own Display prints a status as a Debug dump; this keeps error
/// messages readable.
pub(crate) fn describe_rpc_error(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => format!("{:?}: {}", status.code(), status.message),
        other => other.to_string(),
    }
}
