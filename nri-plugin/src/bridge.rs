//! Lets ttrpc use a virtual connection of the [`Mux`](crate::mux::Mux).
//!
//! The ttrpc crate only speaks to file descriptors: `ttrpc::Client::new`
//! takes a connected socket and `ttrpc::Server` accepts from a listening one.
//! So each virtual connection is paired with a local Unix socket, and two
//! threads copy bytes between them. ttrpc never sees the frames; the mux
//! never sees ttrpc messages.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

use crate::mux::{MuxCloser, MuxConn, MAX_WRITE_PAYLOAD};

/// The copying threads of one virtual connection.
pub(crate) struct Bridge {
    local: UnixStream,
    pumps: Vec<JoinHandle<()>>,
}

impl Bridge {
    /// Copies between `conn` and `local` until either side ends.
    ///
    /// A local side that goes away (its ttrpc endpoint died) closes the whole
    /// multiplexer through `closer`: the NRI conversation cannot go on
    /// without it, and closing lets the runtime notice at once.
    pub(crate) fn spawn(conn: MuxConn, local: UnixStream, closer: MuxCloser) -> io::Result<Bridge> {
        let label = conn.id().0;
        let inbound_sink = local.try_clone()?;
        let outbound_source = local.try_clone()?;
        let writer = conn.writer();
        let inbound_closer = closer.clone();

        let inbound = thread::Builder::new()
            .name(format!("nri-mux-in-{label}"))
            .spawn(move || copy_inbound(conn, inbound_sink, &inbound_closer))?;
        let outbound = thread::Builder::new()
            .name(format!("nri-mux-out-{label}"))
            .spawn(move || copy_outbound(outbound_source, writer, &closer))?;
        Ok(Bridge { local, pumps: vec![inbound, outbound] })
    }

    /// Stops both threads; the multiplexer must already be closed so that
    /// the inbound side has run dry.
    pub(crate) fn join(self) {
        let _ = self.local.shutdown(Shutdown::Both);
        for pump in self.pumps {
            let _ = pump.join();
        }
    }
}

/// Peer → ttrpc. End-of-file from the mux becomes end-of-file on the socket,
/// which is how ttrpc learns that the runtime hung up.
fn copy_inbound(mut conn: MuxConn, mut local: UnixStream, closer: &MuxCloser) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = local.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if let Err(err) = local.write_all(&buf[..n]) {
                    tracing::debug!(conn = conn.id().0, error = %err, "local ttrpc side stopped reading");
                    closer.close();
                    return;
                }
            }
            Err(err) => {
                tracing::debug!(conn = conn.id().0, error = %err, "multiplexed connection failed");
                let _ = local.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// ttrpc → peer, one frame per socket read.
fn copy_outbound(mut local: UnixStream, mut writer: impl Write, closer: &MuxCloser) {
    let mut buf = vec![0u8; MAX_WRITE_PAYLOAD];
    loop {
        match local.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).is_err() {
                    // The mux has failed and recorded why; nothing to add.
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::debug!(error = %err, "reading from local ttrpc side failed");
                break;
            }
        }
    }
    closer.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{ConnId, Mux};

    #[test]
    fn bytes_flow_both_ways_and_eof_propagates() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mux, [conn]) = Mux::start(a, [ConnId(1)]).unwrap();
        let (peer_mux, [mut peer]) = Mux::start(b, [ConnId(1)]).unwrap();
        let (mut app, bridged) = UnixStream::pair().unwrap();
        let bridge = Bridge::spawn(conn, bridged, mux.closer()).unwrap();

        app.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        peer.write_all(b"pong").unwrap();
        app.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");

        drop(peer_mux);
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "runtime hang-up reads as EOF locally");
        assert!(mux.wait().is_ok());
        bridge.join();
    }

    #[test]
    fn local_side_going_away_closes_the_mux() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (mux, [conn]) = Mux::start(a, [ConnId(1)]).unwrap();
        let (app, bridged) = UnixStream::pair().unwrap();
        let bridge = Bridge::spawn(conn, bridged, mux.closer()).unwrap();
        drop(app);
        assert!(mux.wait().is_ok());
        bridge.join();
    }
}
