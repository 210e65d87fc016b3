//! Serving a ttrpc service on a virtual connection of the mux, with the
//! method handlers ttrpc's code generator makes (`create_plugin`,
//! `create_runtime`). See [`crate::framing`] for why this is not a
//! `ttrpc::Server`.
//!
//! Each request runs on its own thread, so a slow callback never holds up
//! the next request (containerd may ask for the next event before the last
//! one's reply has gone). Replies go out through one writer thread, in the
//! order they are ready. Everything ends when the peer closes the
//! connection: the reader sees end-of-file, the writer runs dry.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use protobuf::Message;
use ttrpc::proto::{MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE};
use ttrpc::{Code, MessageHeader, Request, Response, TtrpcContext};

use crate::framing::{write_message, MessageReader};
use crate::mux::MuxConn;

/// The method table ttrpc's generated `create_*` functions build.
pub(crate) type Methods = HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>>;

type Reply = (MessageHeader, Vec<u8>);

/// The threads serving one connection.
pub(crate) struct Serving {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Serving {
    /// Serves `methods` on `conn` until the peer closes it. `connection` is
    /// what handlers see as `ctx.fd`: a number that tells this connection's
    /// requests from another's (it is no descriptor).
    pub(crate) fn start(conn: MuxConn, methods: Arc<Methods>, connection: RawFd) -> io::Result<Serving> {
        let (replies, outbox) = channel::<Reply>();
        let writer = {
            let sink = conn.writer();
            thread::Builder::new().name("nri-ttrpc-reply".into()).spawn(move || send_replies(outbox, sink))?
        };
        let reader = thread::Builder::new()
            .name("nri-ttrpc-serve".into())
            .spawn(move || serve_requests(MessageReader::new(conn), &methods, connection, &replies))?;
        Ok(Serving { reader, writer })
    }

    /// Waits for both threads; the mux must be closed (or closing) first.
    pub(crate) fn join(self) {
        let _ = self.reader.join();
        let _ = self.writer.join();
    }
}

fn send_replies(outbox: Receiver<Reply>, mut sink: crate::mux::MuxWriter) {
    for (header, body) in outbox {
        if write_message(&mut sink, header, &body).is_err() {
            // The mux has failed and recorded why.
            return;
        }
    }
}

fn serve_requests(mut reader: MessageReader, methods: &Arc<Methods>, connection: RawFd, replies: &Sender<Reply>) {
    // Dropped when the connection ends, which tells handlers that listen
    // for it that their caller is gone.
    let (_cancel, cancelled) = crossbeam_channel::unbounded::<()>();
    loop {
        let (header, body) = match reader.read(None) {
            Ok(message) => message,
            Err(err) => {
                if err.kind() != io::ErrorKind::UnexpectedEof || err.to_string().contains("into a message") {
                    tracing::debug!(error = %err, "ttrpc connection ended");
                }
                return;
            }
        };
        if header.type_ != MESSAGE_TYPE_REQUEST {
            continue;
        }
        let request = match Request::parse_from_bytes(&body) {
            Ok(r) => r,
            Err(e) => {
                reply_status(replies, header.stream_id, Code::INVALID_ARGUMENT, format!("malformed request: {e}"));
                continue;
            }
        };
        let path = format!("/{}/{}", request.service, request.method);
        if !methods.contains_key(&path) {
            reply_status(replies, header.stream_id, Code::UNIMPLEMENTED, format!("{path} is not served here"));
            continue;
        }
        let stream = header.stream_id;
        let ctx = TtrpcContext {
            fd: connection,
            cancel_rx: cancelled.clone(),
            mh: header,
            res_tx: replies.clone(),
            metadata: ttrpc::context::from_pb(&request.metadata),
            timeout_nano: request.timeout_nano,
        };
        let (methods, failures) = (Arc::clone(methods), replies.clone());
        let spawned = thread::Builder::new().name("nri-ttrpc-call".into()).spawn(move || {
            // A handler fails only when it cannot decode the request or
            // encode its reply; the caller must still get an answer.
            if let Err(err) = methods[&path].handler(ctx, request) {
                reply_status(&failures, stream, Code::INTERNAL, format!("{path}: {err}"));
            }
        });
        if let Err(err) = spawned {
            reply_status(replies, stream, Code::RESOURCE_EXHAUSTED, format!("no thread for the request: {err}"));
        }
    }
}

fn reply_status(replies: &Sender<Reply>, stream: u32, code: Code, message: String) {
    let response = Response { status: Some(ttrpc::get_status(code, message)).into(), ..Default::default() };
    let Ok(body) = response.write_to_bytes() else { return };
    let header = MessageHeader { length: body.len() as u32, stream_id: stream, type_: MESSAGE_TYPE_RESPONSE, flags: 0 };
    let _ = replies.send((header, body));
}
