//! Serving the HTTP surface with the bounds an agent on every node needs,
//! so that no client can hold it up:
//!
//! * a connection must send a whole request head within
//!   [`Bounds::header_timeout`], which also closes a keep-alive connection
//!   left idle that long (hyper's header-read timer runs whenever it waits
//!   for a head);
//! * a request is answered within [`Bounds::request_timeout`] (a
//!   `tower-http` layer; `503` past it);
//! * at most [`Bounds::max_connections`] are open at once, below the
//!   process's file-descriptor limit, so a flood of connections cannot take
//!   the descriptors the sampler needs. Past the cap, new connections wait
//!   in the kernel's accept queue.
//!
//! Every request passes [`auth::check`] first, by the web config in force
//! when its connection was accepted ([`WebAccess`]); with TLS configured,
//! the handshake is bounded by the header timeout too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::add_extension::AddExtension;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{self, ConnectionAuth};
use crate::web_access::WebAccess;

/// Descriptors kept for everything but connections: cgroup files, BPF
/// maps, the Kubernetes client, the log.
const FDS_KEPT: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

impl Bounds {
    /// `max_connections` lowered, if need be, to leave [`FDS_KEPT`] of the
    /// descriptor limit `fd_limit` for the rest of the process (never below
    /// one connection).
    pub fn within_fd_limit(self, fd_limit: u64) -> Bounds {
        let room = fd_limit.saturating_sub(FDS_KEPT).max(1);
        Bounds { max_connections: self.max_connections.min(usize::try_from(room).unwrap_or(usize::MAX)), ..self }
    }
}

/// Raises the soft descriptor limit to the hard one (as Go programs do at
/// start): the soft default of 1,024 is a relic of `select(2)`, and the
/// connection cap is set below whatever this returns.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if limit.rlim_cur < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            limit = wanted;
        }
    }
    limit.rlim_cur
}

/// Serves `router` on `listener` within `bounds`, as `access` says, until
/// `shutdown` completes, then lets the connections in progress finish (for
/// at most the request timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    access: Arc<WebAccess>,
    shutdown: impl Future<Output = ()>,
) {
    let app = router
        .layer(axum::middleware::from_fn(auth::check))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, bounds.request_timeout));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    let builder = Arc::new(builder.http1_only());
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let graceful = Arc::new(GracefulShutdown::new());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like pass: back off rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (app, builder, graceful, access) = (app.clone(), builder.clone(), graceful.clone(), access.current());
        tokio::spawn(async move {
            let gate = access.gate.clone();
            match &access.tls {
                None => {
                    let auth = ConnectionAuth { gate, peer_certificate: false };
                    one_connection(stream, auth, app, &builder, &graceful).await;
                }
                Some(acceptor) => match tokio::time::timeout(bounds.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let peer_certificate = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        one_connection(tls, ConnectionAuth { gate, peer_certificate }, app, &builder, &graceful).await;
                    }
                    // A failed or slow handshake is the client's problem,
                    // but worth a line: it is how a wrong CA shows.
                    Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                    Err(_) => tracing::debug!("TLS handshake: not done within {:?}", bounds.header_timeout),
                },
            }
            drop(permit);
        });
    }
    drop(listener);
    let graceful = Arc::into_inner(graceful);
    if let Some(graceful) = graceful {
        if tokio::time::timeout(bounds.request_timeout, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after the request timeout at shutdown; leaving them");
        }
    }
}

async fn one_connection<I>(
    io: I,
    auth: ConnectionAuth,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(AddExtension::new(app, auth));
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service).into_owned());
    // Errors here are the client's (a reset, a timed-out head).
    let _ = connection.await;
}

/// TLS, client certificates, basic auth and reloads over a real socket.
#[cfg(test)]
mod access_tests;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::web_config::WebConfig;

    async fn start(bounds: Bounds) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        tokio::spawn(serve(
            listener,
            router,
            bounds,
            WebAccess::fixed(&WebConfig::open(), None),
            std::future::pending(),
        ));
        addr
    }

    async fn get_once(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until the server closes the connection; how long it took
    /// (`Duration::MAX`: still open after 10 s).
    async fn until_closed(mut s: TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let closed = async { while s.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
        match tokio::time::timeout(Duration::from_secs(10), closed).await {
            Ok(()) => started.elapsed(),
            Err(_) => Duration::MAX,
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_head_is_closed_and_others_are_served_meanwhile() {
        let bounds = Bounds { header_timeout: Duration::from_millis(300), ..Bounds::default() };
        let addr = start(bounds).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(get_once(addr, "/healthz").await.ends_with("ok"));
        let (silent, partial) = tokio::join!(until_closed(silent), until_closed(partial));
        for (what, took) in [("silent", silent), ("half a head", partial)] {
            assert!(took < Duration::from_secs(5), "the {what} connection stayed open {took:?}");
        }
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let bounds = Bounds { header_timeout: Duration::from_millis(300), ..Bounds::default() };
        let addr = start(bounds).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));
        let took = until_closed(s).await;
        assert!(took < Duration::from_secs(5), "the idle connection stayed open {took:?}");
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_is_answered_503() {
        let bounds = Bounds { request_timeout: Duration::from_millis(200), ..Bounds::default() };
        let addr = start(bounds).await;
        let answer = get_once(addr, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_waits_until_one_closes() {
        let bounds = Bounds { max_connections: 1, ..Bounds::default() };
        let addr = start(bounds).await;
        let holder = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(get_once(addr, "/healthz"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a second connection was served while the cap was taken");
        drop(holder);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        let b = Bounds::default();
        assert_eq!(b.within_fd_limit(1_048_576).max_connections, 4096);
        assert_eq!(b.within_fd_limit(1024).max_connections, 768);
        assert_eq!(b.within_fd_limit(100).max_connections, 1);
    }
}
