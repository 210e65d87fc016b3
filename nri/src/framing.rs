//! ttrpc messages on a virtual connection of the mux: a 10-byte header
//! (length, stream id, type, flags; big endian, as `ttrpc::MessageHeader`
//! encodes it) followed by a protobuf `Request` or `Response`.
//!
//! Why this crate frames ttrpc itself instead of running `ttrpc::Client` and
//! `ttrpc::Server` (0.8 and 0.10 alike) on bridged sockets:
//! * the sync client's receiver thread reads through the raw descriptor
//!   number and lets go of the connection between polling and reading, so a
//!   client dropped in that gap has its number closed and handed to the next
//!   socket the process opens, which the old thread then reads from; a
//!   plugin reconnecting after a runtime restart opens exactly such sockets,
//!   and the unit tests lost replies that way under load;
//! * the sync server's shutdown can wait for ever on a connection handler
//!   that missed its last wake-up (seen as a hung test).
//!
//! The generated message types and method handlers are still ttrpc's; only
//! the connection handling is ours, on the mux connection directly, with no
//! descriptor, listener or copying thread in between.

use std::io::{self, Read, Write};
use std::time::Instant;

use ttrpc::proto::{MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX};
use ttrpc::MessageHeader;

use crate::mux::{MuxConn, MuxWriter};

/// Reads whole ttrpc messages off a mux connection.
pub struct MessageReader {
    conn: MuxConn,
    /// Bytes read but not yet parsed into a whole message; kept across a
    /// timed-out read so that nothing is lost.
    buffered: Vec<u8>,
}

impl MessageReader {
    pub fn new(conn: MuxConn) -> MessageReader {
        MessageReader { conn, buffered: Vec::new() }
    }

    /// The next message. `deadline`: give up with [`io::ErrorKind::TimedOut`]
    /// then; `None` waits for ever. The peer closing the connection between
    /// messages is [`io::ErrorKind::UnexpectedEof`].
    pub fn read(&mut self, deadline: Option<Instant>) -> io::Result<(MessageHeader, Vec<u8>)> {
        loop {
            if let Some(message) = self.take_buffered()? {
                return Ok(message);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
                    }
                    Some(left)
                }
            };
            self.conn.set_read_timeout(timeout);
            let mut chunk = [0u8; 4096];
            match self.conn.read(&mut chunk)? {
                0 if self.buffered.is_empty() => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"))
                }
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the peer closed the connection {} bytes into a message", self.buffered.len()),
                    ))
                }
                n => self.buffered.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn take_buffered(&mut self) -> io::Result<Option<(MessageHeader, Vec<u8>)>> {
        if self.buffered.len() < MESSAGE_HEADER_LENGTH {
            return Ok(None);
        }
        let header = MessageHeader::from(&self.buffered[..MESSAGE_HEADER_LENGTH]);
        let length = header.length as usize;
        if length > MESSAGE_LENGTH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a ttrpc message of at most {MESSAGE_LENGTH_MAX} bytes, found a header for {length}"),
            ));
        }
        let end = MESSAGE_HEADER_LENGTH + length;
        if self.buffered.len() < end {
            return Ok(None);
        }
        let body = self.buffered[MESSAGE_HEADER_LENGTH..end].to_vec();
        self.buffered.drain(..end);
        Ok(Some((header, body)))
    }
}

/// Writes one whole message; the mux keeps concurrent writers' frames apart.
pub fn write_message(writer: &mut MuxWriter, header: MessageHeader, body: &[u8]) -> io::Result<()> {
    let mut message: Vec<u8> = header.into();
    message.extend_from_slice(body);
    writer.write_all(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{ConnId, Mux};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn messages_survive_split_frames_and_timeouts() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_ma, [reader_conn]) = Mux::start(a, [ConnId(1)]).unwrap();
        let (_mb, [writer_conn]) = Mux::start(b, [ConnId(1)]).unwrap();
        let mut writer = writer_conn.writer();
        let mut reader = MessageReader::new(reader_conn);

        let mut raw: Vec<u8> = MessageHeader::new_request(7, 5).into();
        raw.extend_from_slice(b"hello");
        // Half a header, then silence: a timeout keeps what came so far.
        writer.write_all(&raw[..4]).unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(reader.read(Some(soon)).unwrap_err().kind(), io::ErrorKind::TimedOut);
        writer.write_all(&raw[4..]).unwrap();
        let (header, body) = reader.read(None).unwrap();
        assert_eq!((header.stream_id, body.as_slice()), (7, &b"hello"[..]));
    }

    #[test]
    fn an_oversized_header_and_a_cut_message_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_ma, [reader_conn]) = Mux::start(a, [ConnId(1)]).unwrap();
        let (mb, [writer_conn]) = Mux::start(b, [ConnId(1)]).unwrap();
        let mut writer = writer_conn.writer();
        let mut reader = MessageReader::new(reader_conn);
        let mut raw: Vec<u8> = MessageHeader::new_response(1, 10).into();
        raw.extend_from_slice(b"abc");
        writer.write_all(&raw).unwrap();
        drop(writer_conn);
        drop(mb);
        let err = reader.read(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("13 bytes into a message"), "{err}");

        let (a, b) = UnixStream::pair().unwrap();
        let (_ma, [reader_conn]) = Mux::start(a, [ConnId(1)]).unwrap();
        let (_mb, [writer_conn]) = Mux::start(b, [ConnId(1)]).unwrap();
        let raw: Vec<u8> = MessageHeader::new_request(1, (MESSAGE_LENGTH_MAX + 1) as u32).into();
        writer_conn.writer().write_all(&raw).unwrap();
        let err = MessageReader::new(reader_conn).read(None).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
