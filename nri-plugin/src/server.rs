//! A ttrpc server reachable only from inside this process.
//!
//! Why a listening socket at all: `ttrpc::Server` (sync and async alike, in
//! 0.8 and 0.10) can only `accept()` connections from a listener; it cannot
//! serve a socket that is already connected, let alone a mux connection. So
//! the server listens on a socket in a fresh 0700 directory, and each NRI
//! session connects to it and bridges that connection to its mux connection
//! (see [`crate::bridge`]).
//!
//! Why one server for the plugin's lifetime rather than one per NRI session:
//! every sync `ttrpc::Server` leaks one pipe descriptor (its accept-loop
//! wake-up pipe is never fully closed), so a reconnect loop against a runtime
//! that keeps rejecting us would eventually run out of descriptors.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use tempfile::TempDir;

/// The method table ttrpc serves, as generated `create_*` functions build it.
pub(crate) type Methods = HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error("creating a private directory for the ttrpc socket")]
    Dir(#[source] std::io::Error),
    #[error("listening on {path}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("starting the ttrpc server")]
    Start(#[source] ttrpc::Error),
}

pub(crate) struct LocalServer {
    // Field order is drop order: stop serving before closing the listener,
    // and close it before removing its directory.
    server: Option<ttrpc::Server>,
    _listener: UnixListener,
    path: PathBuf,
    _dir: TempDir,
}

impl LocalServer {
    pub(crate) fn start(methods: Methods) -> Result<LocalServer, ServerError> {
        // tempfile creates directories with mode 0700: only our user (root)
        // can connect, so nobody else can talk to the plugin behind
        // containerd's back.
        let dir = tempfile::Builder::new().prefix("iogate-nri-").tempdir().map_err(ServerError::Dir)?;
        let path = dir.path().join("ttrpc.sock");
        let listener =
            UnixListener::bind(&path).map_err(|source| ServerError::Listen { path: path.clone(), source })?;
        // ttrpc borrows the descriptor; `_listener` keeps it open and closes
        // it after the server has stopped.
        let mut server = ttrpc::Server::new()
            .add_listener(listener.as_raw_fd())
            .map_err(ServerError::Start)?
            .register_service(methods);
        server.start().map_err(ServerError::Start)?;
        Ok(LocalServer { server: Some(server), _listener: listener, path, _dir: dir })
    }

    /// A new connection to the server, to be bridged to a mux connection.
    pub(crate) fn connect(&self) -> std::io::Result<UnixStream> {
        UnixStream::connect(&self.path)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}
