//! Calls to a ttrpc service over a virtual connection of the mux (see
//! [`crate::framing`] for why this is not a `ttrpc::Client`).
//!
//! Calls are made one at a time; a reply that arrives after its call timed
//! out is recognised by its stream id and skipped.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message;
use ttrpc::proto::MESSAGE_TYPE_RESPONSE;
use ttrpc::{Code, MessageHeader, Request, Response};

use crate::framing::{write_message, MessageReader};
use crate::mux::{MuxConn, MuxWriter};

/// A ttrpc client of one service on one mux connection.
pub(crate) struct RpcClient {
    service: &'static str,
    conn: Mutex<Conn>,
}

struct Conn {
    reader: MessageReader,
    writer: MuxWriter,
    /// Client streams are odd, as in every ttrpc implementation.
    next_stream: u32,
}

impl RpcClient {
    /// Calls `service` (e.g. `nri.pkg.api.v1alpha1.Runtime`) on `conn`.
    pub(crate) fn new(service: &'static str, conn: MuxConn) -> RpcClient {
        let writer = conn.writer();
        RpcClient { service, conn: Mutex::new(Conn { reader: MessageReader::new(conn), writer, next_stream: 1 }) }
    }

    /// Sends `req` to `method` and waits at most `timeout` for the reply.
    /// Errors are ttrpc's: a status from the server, `Socket` when the
    /// connection ended, `Others` for a timeout or a malformed reply.
    pub(crate) fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> ttrpc::Result<Resp> {
        let deadline = Instant::now() + timeout;
        let mut conn = self.lock();
        let stream = conn.next_stream;
        conn.next_stream = conn.next_stream.wrapping_add(2);

        let encoding = |e: protobuf::Error| others(format!("encoding the {method} request: {e}"));
        let request = Request {
            service: self.service.to_owned(),
            method: method.to_owned(),
            payload: req.write_to_bytes().map_err(encoding)?,
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let body = request.write_to_bytes().map_err(encoding)?;
        let length = u32::try_from(body.len()).map_err(|_| others(format!("the {method} request is too large")))?;
        write_message(&mut conn.writer, MessageHeader::new_request(stream, length), &body).map_err(|e| socket(&e))?;

        loop {
            let (header, body) = conn.reader.read(Some(deadline)).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => others(format!("no reply to {}/{method} within {timeout:?}", self.service)),
                _ => socket(&e),
            })?;
            if header.type_ != MESSAGE_TYPE_RESPONSE || header.stream_id != stream {
                // The late reply to an earlier call that timed out.
                continue;
            }
            let response =
                Response::parse_from_bytes(&body).map_err(|e| others(format!("malformed {method} reply: {e}")))?;
            let status = response.status.get_or_default();
            if status.code() != Code::OK {
                return Err(ttrpc::Error::RpcStatus(status.clone()));
            }
            return Resp::parse_from_bytes(&response.payload)
                .map_err(|e| others(format!("malformed {method} reply payload: {e}")));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn others(message: String) -> ttrpc::Error {
    ttrpc::Error::Others(message)
}

fn socket(err: &io::Error) -> ttrpc::Error {
    ttrpc::Error::Socket(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use crate::mux::{ConnId, Mux};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use ttrpc::proto::MESSAGE_HEADER_LENGTH;

    /// A server end that answers each request with `reply(stream)`.
    fn serve_once(
        mut conn: MuxConn,
        reply: impl FnOnce(u32, Request) -> Vec<u8> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut head = [0u8; MESSAGE_HEADER_LENGTH];
            conn.read_exact(&mut head).unwrap();
            let header = MessageHeader::from(&head[..]);
            let mut body = vec![0u8; header.length as usize];
            conn.read_exact(&mut body).unwrap();
            let request = Request::parse_from_bytes(&body).unwrap();
            let out = reply(header.stream_id, request);
            conn.writer().write_all(&out).unwrap();
        })
    }

    fn response(stream: u32, resp: Response) -> Vec<u8> {
        let body = resp.write_to_bytes().unwrap();
        let mut out: Vec<u8> = MessageHeader::new_response(stream, body.len() as u32).into();
        out.extend_from_slice(&body);
        out
    }

    fn pair() -> (Mux, MuxConn, Mux, MuxConn) {
        let (a, b) = UnixStream::pair().unwrap();
        let (client_mux, [client]) = Mux::start(a, [ConnId::RUNTIME_SERVICE]).unwrap();
        let (server_mux, [server]) = Mux::start(b, [ConnId::RUNTIME_SERVICE]).unwrap();
        (client_mux, client, server_mux, server)
    }

    #[test]
    fn a_call_carries_service_method_and_payload_and_skips_stale_replies() {
        let (_cm, client, _sm, server) = pair();
        let served = serve_once(server, |stream, req| {
            assert_eq!(
                (req.service.as_str(), req.method.as_str()),
                ("nri.pkg.api.v1alpha1.Runtime", "UpdateContainers")
            );
            let asked = api::UpdateContainersRequest::parse_from_bytes(&req.payload).unwrap();
            let failed = api::UpdateContainersResponse { failed: asked.update, ..Default::default() };
            let ok = Response { payload: failed.write_to_bytes().unwrap(), ..Default::default() };
            // A reply to some earlier stream first: it must be skipped.
            let mut out = response(stream + 2, Response::default());
            out.extend(response(stream, ok));
            out
        });
        let rpc = RpcClient::new("nri.pkg.api.v1alpha1.Runtime", client);
        let update = api::ContainerUpdate { container_id: "c1".into(), ..Default::default() };
        let request = api::UpdateContainersRequest { update: vec![update], ..Default::default() };
        let reply: api::UpdateContainersResponse =
            rpc.call("UpdateContainers", &request, Duration::from_secs(10)).unwrap();
        assert_eq!(reply.failed[0].container_id, "c1");
        served.join().unwrap();
    }

    #[test]
    fn a_status_comes_back_as_an_rpc_error() {
        let (_cm, client, _sm, server) = pair();
        let served = serve_once(server, |stream, _| {
            let status = ttrpc::get_status(Code::UNKNOWN, "refused: no devices".to_string());
            response(stream, Response { status: Some(status).into(), ..Default::default() })
        });
        let rpc = RpcClient::new("nri.pkg.api.v1alpha1.Runtime", client);
        match rpc.call::<_, api::Empty>("RegisterPlugin", &api::RegisterPluginRequest::new(), Duration::from_secs(10)) {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!((s.code(), s.message.as_str()), (Code::UNKNOWN, "refused: no devices"))
            }
            other => panic!("expected a status, got {other:?}"),
        }
        served.join().unwrap();
    }

    #[test]
    fn silence_is_a_timeout_and_a_hang_up_a_socket_error() {
        let (_cm, client, server_mux, _server) = pair();
        let rpc = RpcClient::new("nri.pkg.api.v1alpha1.Runtime", client);
        let err =
            rpc.call::<_, api::Empty>("RegisterPlugin", &api::Empty::new(), Duration::from_millis(30)).unwrap_err();
        assert!(err.to_string().contains("no reply to nri.pkg.api.v1alpha1.Runtime/RegisterPlugin"), "{err}");
        drop(server_mux);
        let err = rpc.call::<_, api::Empty>("RegisterPlugin", &api::Empty::new(), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, ttrpc::Error::Socket(_)), "{err:?}");
    }
}
