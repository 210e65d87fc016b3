//! NRI's connection multiplexer (containerd/nri `pkg/net/multiplex`).
//!
//! containerd and a plugin share one socket (the "trunk") but run two ttrpc
//! conversations over it: the plugin serves the `Plugin` service and calls the
//! runtime's `Runtime` service. The multiplexer carries both as virtual
//! connections.
//!
//! Wire format, both directions: a sequence of frames, each an 8-byte header
//! — connection id (`u32`, big endian), payload length (`u32`, big endian) —
//! followed by the payload. A virtual connection is a byte stream: frame
//! boundaries carry no meaning, one ttrpc message may span frames and one
//! frame may hold parts of two messages. Opening a connection sends nothing;
//! both ends just agree on ids: 0 is reserved, [`ConnId::PLUGIN_SERVICE`] = 1,
//! [`ConnId::RUNTIME_SERVICE`] = 2. Frames for an id nobody opened are dropped,
//! which is why [`Mux::start`] opens connections before it starts reading.
//!
//! Sizes: upstream writers split at 4 MiB + 10 bytes (NRI v0.8+) or refuse
//! writes over 16 MiB (v0.6), so we accept payloads up to 16 MiB. We write at
//! most [`MAX_WRITE_PAYLOAD`] bytes per frame because the Go side hands each
//! frame to a single `Read` whose buffer is Go ttrpc's 4096-byte
//! `bufio.Reader`, and the Go mux fails a `Read` (ENOMEM) when the frame does
//! not fit that buffer.
//!
//! Like upstream, each connection queues at most [`READ_QUEUE_FRAMES`] frames;
//! a reader that falls that far behind fails the whole multiplexer rather than
//! letting memory grow without bound.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Identifies a virtual connection within a [`Mux`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

impl ConnId {
    /// Reserved by upstream for future use.
    pub const RESERVED: ConnId = ConnId(0);
    /// Carries the `Plugin` service: the plugin serves, the runtime calls.
    pub const PLUGIN_SERVICE: ConnId = ConnId(1);
    /// Carries the `Runtime` service: the runtime serves, the plugin calls.
    pub const RUNTIME_SERVICE: ConnId = ConnId(2);
}

/// Length of a frame header: connection id and payload length.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload we put in one frame (see the module docs for why 4096).
pub const MAX_WRITE_PAYLOAD: usize = 4096;
/// Largest payload we accept in one frame.
pub const MAX_READ_PAYLOAD: usize = 16 << 20;
/// Frames a connection may have queued before the multiplexer fails.
pub const READ_QUEUE_FRAMES: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MuxError {
    #[error("connection id 0 is reserved")]
    ReservedConnId,
    #[error("connection {0} is already open")]
    AlreadyOpen(u32),
    #[error("the multiplexer is closed")]
    Closed,
    #[error("frame of {size} bytes for connection {conn} exceeds the limit of {MAX_READ_PAYLOAD} bytes")]
    FrameTooLarge { conn: u32, size: usize },
    #[error("the trunk connection ended in the middle of a frame")]
    Truncated,
    #[error("read queue of connection {0} overflowed: its reader stopped consuming")]
    QueueOverflow(u32),
    #[error("trunk connection I/O failed")]
    Io(#[source] Arc<io::Error>),
}

impl MuxError {
    fn io(err: io::Error) -> MuxError {
        MuxError::Io(Arc::new(err))
    }

    /// The error as `std::io` callers (and ttrpc bridges) expect it.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            MuxError::Io(err) => err.kind(),
            MuxError::Closed => io::ErrorKind::BrokenPipe,
            MuxError::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// One trunk connection carrying several virtual connections.
///
/// Dropping the `Mux` closes the trunk and every connection on it.
pub struct Mux {
    trunk: Arc<Trunk>,
    reader: Option<JoinHandle<()>>,
}

impl Mux {
    /// Opens the connections `ids` on `trunk`, then starts demultiplexing.
    ///
    /// Opening first guarantees that nothing the peer sends on these
    /// connections is dropped, however early it arrives.
    pub fn start<const N: usize>(trunk: UnixStream, ids: [ConnId; N]) -> Result<(Mux, [MuxConn; N]), MuxError> {
        let reader_end = trunk.try_clone().map_err(MuxError::io)?;
        let writer_end = trunk.try_clone().map_err(MuxError::io)?;
        let trunk = Arc::new(Trunk {
            socket: trunk,
            writer: Mutex::new(writer_end),
            state: Mutex::new(State { conns: HashMap::new(), next_generation: 0, end: None }),
            ended: Condvar::new(),
        });

        let mut conns = Vec::with_capacity(N);
        for id in ids {
            conns.push(trunk.open(id)?);
        }
        let conns: [MuxConn; N] = match conns.try_into() {
            Ok(conns) => conns,
            Err(_) => unreachable!("one connection was opened per id"),
        };

        let reader_trunk = Arc::clone(&trunk);
        let reader = thread::Builder::new()
            .name("nri-mux-reader".into())
            .spawn(move || demultiplex(&reader_trunk, reader_end))
            .map_err(MuxError::io)?;
        Ok((Mux { trunk, reader: Some(reader) }, conns))
    }

    /// Opens another connection. Frames that arrived for it before this call
    /// were dropped.
    pub fn open(&self, id: ConnId) -> Result<MuxConn, MuxError> {
        self.trunk.open(id)
    }

    /// A handle that can close this multiplexer from elsewhere.
    pub fn closer(&self) -> MuxCloser {
        MuxCloser(Arc::clone(&self.trunk))
    }

    /// Closes the trunk. Data already queued stays readable; after it,
    /// connections read end-of-file and writes fail.
    pub fn close(&self) {
        self.trunk.end(Ok(()));
    }

    /// Blocks until the multiplexer has closed: `Ok` when the peer closed the
    /// trunk (or we did), the failure otherwise.
    pub fn wait(&self) -> Result<(), MuxError> {
        let mut state = self.trunk.lock_state();
        loop {
            if let Some(end) = &state.end {
                return end.clone();
            }
            state = self.trunk.ended.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub fn is_closed(&self) -> bool {
        self.trunk.lock_state().end.is_some()
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.close();
        if let Some(reader) = self.reader.take() {
            // The reader ends promptly: closing shut the trunk down.
            let _ = reader.join();
        }
    }
}

/// Closes a [`Mux`] from wherever the owner is not.
#[derive(Clone)]
pub struct MuxCloser(Arc<Trunk>);

impl MuxCloser {
    pub fn close(&self) {
        self.0.end(Ok(()));
    }
}

/// A virtual connection: reads what the peer wrote to the same id, writes
/// frames for it.
pub struct MuxConn {
    id: u32,
    generation: u64,
    trunk: Arc<Trunk>,
    queue: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    offset: usize,
    read_timeout: Option<Duration>,
}

impl MuxConn {
    /// Makes reads that wait longer than `timeout` fail with
    /// [`io::ErrorKind::TimedOut`] (`None`, the default: wait for ever).
    /// Nothing is lost by a timed-out read: the next one picks up where the
    /// data stream stands.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    pub fn id(&self) -> ConnId {
        ConnId(self.id)
    }

    /// A write half that can live on another thread than the reader.
    pub fn writer(&self) -> MuxWriter {
        MuxWriter { id: self.id, trunk: Arc::clone(&self.trunk) }
    }
}

impl Read for MuxConn {
    /// Returns end-of-file once the multiplexer closed cleanly and every
    /// frame that arrived before has been read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.offset == self.pending.len() {
            let next = match self.read_timeout {
                None => self.queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(timeout) => self.queue.recv_timeout(timeout),
            };
            match next {
                Ok(frame) => {
                    self.pending = frame;
                    self.offset = 0;
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no data within the read timeout"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return match self.trunk.lock_state().end.clone() {
                        Some(Err(err)) => Err(err.into_io()),
                        _ => Ok(0),
                    }
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Write for MuxConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.trunk.write_frames(self.id, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for MuxConn {
    fn drop(&mut self) {
        let mut state = self.trunk.lock_state();
        if state.conns.get(&self.id).is_some_and(|slot| slot.generation == self.generation) {
            state.conns.remove(&self.id);
        }
    }
}

/// The write half of a [`MuxConn`].
#[derive(Clone)]
pub struct MuxWriter {
    id: u32,
    trunk: Arc<Trunk>,
}

impl Write for MuxWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.trunk.write_frames(self.id, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The trunk socket and the virtual connections on it, shared by the
/// [`Mux`], its connections and writers, and the reader thread.
struct Trunk {
    /// Kept to shut the socket down, which wakes the reader thread.
    socket: UnixStream,
    /// Held for a whole write so that frames of different connections never
    /// interleave mid-frame.
    writer: Mutex<UnixStream>,
    state: Mutex<State>,
    ended: Condvar,
}

struct State {
    conns: HashMap<u32, Slot>,
    /// Tells a reopened id's connection from a dropped earlier one.
    next_generation: u64,
    end: Option<Result<(), MuxError>>,
}

struct Slot {
    generation: u64,
    queue: SyncSender<Vec<u8>>,
}

impl Trunk {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(self: &Arc<Self>, id: ConnId) -> Result<MuxConn, MuxError> {
        if id == ConnId::RESERVED {
            return Err(MuxError::ReservedConnId);
        }
        let mut state = self.lock_state();
        if state.end.is_some() {
            return Err(MuxError::Closed);
        }
        if state.conns.contains_key(&id.0) {
            return Err(MuxError::AlreadyOpen(id.0));
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        let (queue_tx, queue_rx) = sync_channel(READ_QUEUE_FRAMES);
        state.conns.insert(id.0, Slot { generation, queue: queue_tx });
        Ok(MuxConn {
            id: id.0,
            generation,
            trunk: Arc::clone(self),
            queue: queue_rx,
            pending: Vec::new(),
            offset: 0,
            read_timeout: None,
        })
    }

    /// Records how the multiplexer ended (first call wins) and tears it down.
    fn end(&self, outcome: Result<(), MuxError>) {
        let mut state = self.lock_state();
        if state.end.is_some() {
            return;
        }
        if let Err(err) = &outcome {
            tracing::debug!(error = %err, "NRI multiplexer failed");
        }
        state.end = Some(outcome);
        // Dropping the senders lets readers drain what is queued, then see EOF.
        state.conns.clear();
        drop(state);
        let _ = self.socket.shutdown(Shutdown::Both);
        self.ended.notify_all();
    }

    fn write_frames(&self, id: u32, data: &[u8]) -> io::Result<()> {
        if let Some(end) = &self.lock_state().end {
            return Err(end.clone().err().unwrap_or(MuxError::Closed).into_io());
        }
        let mut writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + data.len().min(MAX_WRITE_PAYLOAD));
        for chunk in data.chunks(MAX_WRITE_PAYLOAD) {
            frame.clear();
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            frame.extend_from_slice(chunk);
            if let Err(err) = writer.write_all(&frame) {
                drop(writer);
                let err = MuxError::io(err);
                // A partly written frame desynchronises the peer: give up.
                self.end(Err(err.clone()));
                return Err(err.into_io());
            }
        }
        Ok(())
    }
}

/// The reader thread: splits the trunk into frames and queues each payload
/// on its connection, until the trunk ends or fails.
fn demultiplex(trunk: &Trunk, mut socket: UnixStream) {
    let outcome = loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match read_header(&mut socket, &mut header) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(err) => break Err(err),
        }
        let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if size > MAX_READ_PAYLOAD {
            break Err(MuxError::FrameTooLarge { conn, size });
        }
        let mut payload = vec![0u8; size];
        if let Err(err) = socket.read_exact(&mut payload) {
            break Err(match err.kind() {
                io::ErrorKind::UnexpectedEof => MuxError::Truncated,
                _ => MuxError::io(err),
            });
        }
        if payload.is_empty() {
            // Upstream emits these for empty writes; they carry nothing.
            continue;
        }
        let mut state = trunk.lock_state();
        if state.end.is_some() {
            break Ok(());
        }
        let Some(slot) = state.conns.get(&conn) else {
            continue;
        };
        match slot.queue.try_send(payload) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => break Err(MuxError::QueueOverflow(conn)),
            Err(TrySendError::Disconnected(_)) => {
                state.conns.remove(&conn);
            }
        }
    };
    trunk.end(outcome);
}

/// Reads one frame header; `Ok(false)` is a clean end of the trunk between
/// frames.
fn read_header(trunk: &mut UnixStream, header: &mut [u8; FRAME_HEADER_LEN]) -> Result<bool, MuxError> {
    let mut filled = 0;
    while filled < header.len() {
        match trunk.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(MuxError::Truncated),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(MuxError::io(err)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A raw frame as upstream puts it on the wire.
    fn frame(conn: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = conn.to_be_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Reads raw frames off a socket until `total` payload bytes arrived.
    fn read_frames(peer: &mut UnixStream, total: usize) -> Vec<(u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut got = 0;
        while got < total {
            let mut header = [0u8; FRAME_HEADER_LEN];
            peer.read_exact(&mut header).unwrap();
            let conn = u32::from_be_bytes(header[..4].try_into().unwrap());
            let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
            let mut payload = vec![0; len];
            peer.read_exact(&mut payload).unwrap();
            got += len;
            frames.push((conn, payload));
        }
        frames
    }

    fn read_n(conn: &mut MuxConn, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        conn.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_between_two_muxes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_mux_a, [mut a1, mut a2]) = Mux::start(a, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE]).unwrap();
        let (_mux_b, [mut b1, mut b2]) = Mux::start(b, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE]).unwrap();

        a1.write_all(b"to plugin service").unwrap();
        b2.write_all(b"to runtime service").unwrap();
        assert_eq!(read_n(&mut b1, 17), b"to plugin service");
        assert_eq!(read_n(&mut a2, 18), b"to runtime service");
    }

    #[test]
    fn header_is_big_endian_id_then_length() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [mut conn]) = Mux::start(trunk, [ConnId::RUNTIME_SERVICE]).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut raw = [0u8; FRAME_HEADER_LEN + 5];
        peer.read_exact(&mut raw).unwrap();
        assert_eq!(raw, *b"\0\0\0\x02\0\0\0\x05hello");
    }

    #[test]
    fn large_writes_are_split_into_frames_go_can_read() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [conn]) = Mux::start(trunk, [ConnId::PLUGIN_SERVICE]).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut writer = conn.writer();
        let expected = data.clone();
        let sender = thread::spawn(move || writer.write_all(&data).unwrap());

        let frames = read_frames(&mut peer, expected.len());
        sender.join().unwrap();
        let sizes: Vec<usize> = frames.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(sizes, [4096, 4096, 1808]);
        assert!(frames.iter().all(|(id, _)| *id == 1));
        assert_eq!(frames.into_iter().flat_map(|(_, p)| p).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn interleaved_frames_reach_their_own_connections() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [mut one, mut two]) = Mux::start(trunk, [ConnId(1), ConnId(2)]).unwrap();
        let mut wire = Vec::new();
        for i in 0..50u8 {
            wire.extend(frame(1, &[i; 3]));
            wire.extend(frame(2, &[100 + i; 2]));
        }
        peer.write_all(&wire).unwrap();

        let expect_one: Vec<u8> = (0..50u8).flat_map(|i| [i; 3]).collect();
        let expect_two: Vec<u8> = (0..50u8).flat_map(|i| [100 + i; 2]).collect();
        assert_eq!(read_n(&mut two, expect_two.len()), expect_two);
        assert_eq!(read_n(&mut one, expect_one.len()), expect_one);
    }

    #[test]
    fn concurrent_writers_never_interleave_within_a_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_mux_a, [a1, a2]) = Mux::start(a, [ConnId(1), ConnId(2)]).unwrap();
        let (_mux_b, [mut b1, mut b2]) = Mux::start(b, [ConnId(1), ConnId(2)]).unwrap();
        let payload1 = vec![1u8; 100_000];
        let payload2 = vec![2u8; 100_000];
        let (mut w1, mut w2) = (a1.writer(), a2.writer());
        let (p1, p2) = (payload1.clone(), payload2.clone());
        let t1 = thread::spawn(move || w1.write_all(&p1).unwrap());
        let t2 = thread::spawn(move || w2.write_all(&p2).unwrap());
        let r1 = thread::spawn(move || read_n(&mut b1, 100_000));
        assert_eq!(read_n(&mut b2, 100_000), payload2);
        assert_eq!(r1.join().unwrap(), payload1);
        t1.join().unwrap();
        t2.join().unwrap();
    }

    #[test]
    fn partial_trunk_reads_and_small_conn_reads_reassemble() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let mut wire = frame(1, b"abcdefgh");
        wire.extend(frame(1, b"ijkl"));
        let feeder = thread::spawn(move || {
            // One byte at a time: headers and payloads arrive in pieces.
            for byte in wire {
                peer.write_all(&[byte]).unwrap();
                thread::sleep(Duration::from_micros(200));
            }
            peer
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        while got.len() < 12 {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0 && n <= 3);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abcdefghijkl");
        drop(feeder.join().unwrap());
    }

    #[test]
    fn empty_frames_and_unknown_connections_are_skipped() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let mut wire = frame(1, b"");
        wire.extend(frame(7, b"nobody listens"));
        wire.extend(frame(1, b"data"));
        peer.write_all(&wire).unwrap();
        assert_eq!(read_n(&mut conn, 4), b"data");
    }

    #[test]
    fn peer_close_delivers_queued_data_then_eof() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        peer.write_all(&frame(1, b"last words")).unwrap();
        drop(peer);

        assert!(mux.wait().is_ok(), "a clean close is not an error");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        let err = conn.write(b"too late").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(matches!(mux.open(ConnId(2)), Err(MuxError::Closed)));
    }

    #[test]
    fn peer_close_mid_frame_is_an_error() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let wire = frame(1, b"cut short");
        peer.write_all(&wire[..wire.len() - 3]).unwrap();
        drop(peer);

        assert!(matches!(mux.wait(), Err(MuxError::Truncated)));
        assert_eq!(conn.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_frame_fails_the_mux() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (mux, [_conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let mut header = 1u32.to_be_bytes().to_vec();
        header.extend_from_slice(&((MAX_READ_PAYLOAD + 1) as u32).to_be_bytes());
        peer.write_all(&header).unwrap();
        assert!(matches!(mux.wait(), Err(MuxError::FrameTooLarge { conn: 1, .. })));
    }

    #[test]
    fn a_stalled_reader_overflows_its_queue() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (mux, [_stalled]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let writer = thread::spawn(move || {
            for _ in 0..=READ_QUEUE_FRAMES {
                if peer.write_all(&frame(1, b"x")).is_err() {
                    break;
                }
            }
            peer
        });
        assert!(matches!(mux.wait(), Err(MuxError::QueueOverflow(1))));
        drop(writer.join().unwrap());
    }

    #[test]
    fn local_close_wakes_readers_and_the_reader_thread() {
        let (trunk, _peer) = UnixStream::pair().unwrap();
        let (mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        let closer = mux.closer();
        let reader = thread::spawn(move || conn.read(&mut [0u8; 8]).unwrap());
        thread::sleep(Duration::from_millis(20));
        closer.close();
        assert_eq!(reader.join().unwrap(), 0);
        assert!(mux.wait().is_ok());
        drop(mux); // joins the reader thread; would hang if it were still blocked
    }

    #[test]
    fn a_timed_out_read_loses_nothing() {
        let (trunk, mut peer) = UnixStream::pair().unwrap();
        let (_mux, [mut conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(20)));
        assert_eq!(conn.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::TimedOut);
        peer.write_all(&frame(1, b"late")).unwrap();
        assert_eq!(read_n(&mut conn, 4), b"late");
    }

    #[test]
    fn opening_rules() {
        let (trunk, _peer) = UnixStream::pair().unwrap();
        let (mux, [conn]) = Mux::start(trunk, [ConnId(1)]).unwrap();
        assert!(matches!(mux.open(ConnId::RESERVED), Err(MuxError::ReservedConnId)));
        assert!(matches!(mux.open(ConnId(1)), Err(MuxError::AlreadyOpen(1))));
        drop(conn);
        assert!(mux.open(ConnId(1)).is_ok(), "an id is free again once its connection is dropped");
    }
}
