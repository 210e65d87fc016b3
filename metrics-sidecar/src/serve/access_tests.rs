//! A rustls client against `serve` with a web config from files: what a
//! scraper with and without a client certificate and a password gets, and
//! what a rotated certificate or a broken edit of the config does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::{serve, Bounds};
use crate::web_access::WebAccess;
use crate::web_config::tests::Pki;
use crate::web_config::WebConfig;

const POLL: Duration = Duration::from_millis(50);

struct Server {
    addr: std::net::SocketAddr,
    dir: PathBuf,
    _access: Arc<WebAccess>,
}

fn write_config(dir: &Path, password: &str) -> PathBuf {
    let hash = bcrypt::hash(password, 4).unwrap();
    let path = dir.join("web.yml");
    std::fs::write(
        &path,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .unwrap();
    path
}

async fn start(dir: &Path) -> Server {
    let path = write_config(dir, "right");
    let config = WebConfig::load(&path).unwrap();
    let access = WebAccess::watch(path, config, POLL, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/metrics", get(|| async { "data" })).route("/healthz", get(|| async { "ok" }));
    tokio::spawn(serve(listener, router, Bounds::default(), access.clone(), std::future::pending()));
    Server { addr, dir: dir.to_path_buf(), _access: access }
}

/// What a client sees: the response's status (`None`: no HTTP answer, the
/// handshake or the connection failed) and the server's certificate.
#[derive(Debug)]
struct Seen {
    status: Option<u16>,
    server_certificate: Option<CertificateDer<'static>>,
    response: String,
}

struct Client<'a> {
    server: &'a Server,
    certificate: Option<&'a str>,
    password: Option<&'a str>,
}

impl Client<'_> {
    async fn get(&self, path: &str) -> Seen {
        let dir = &self.server.dir;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match self.certificate {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(dir.join(format!("{name}.crt")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut seen = Seen { status: None, server_certificate: None, response: String::new() };
        let Ok(mut tls) = TlsConnector::from(Arc::new(config)).connect(name, tcp).await else { return seen };
        seen.server_certificate =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some(p) = self.password {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{p}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        head.push_str("\r\n");
        if tls.write_all(head.as_bytes()).await.is_err() {
            return seen;
        }
        let mut bytes = Vec::new();
        // A certificate the server refuses shows here, under TLS 1.3: the
        // client's handshake finished before the server judged it.
        let _ = tls.read_to_end(&mut bytes).await;
        seen.response = String::from_utf8_lossy(&bytes).into_owned();
        seen.status = seen.response.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
        seen
    }
}

fn pem_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test]
async fn a_scraper_needs_its_certificate_and_its_password_and_the_probes_need_neither() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.issue(dir.path(), "scraper", &["prometheus"]);
    let server = start(dir.path()).await;
    let scraper = Client { server: &server, certificate: Some("scraper"), password: Some("right") };

    let seen = scraper.get("/metrics").await;
    assert_eq!(seen.status, Some(200), "{seen:?}");
    assert!(seen.response.ends_with("data"), "{seen:?}");
    assert_eq!(seen.server_certificate, Some(pem_der(&dir.path().join("server.crt"))));

    let no_password = Client { password: None, ..scraper }.get("/metrics").await;
    assert_eq!(no_password.status, Some(401), "{no_password:?}");
    assert!(
        no_password.response.contains("WWW-Authenticate: Basic realm=\"iogate\"")
            || no_password.response.contains("www-authenticate: Basic realm=\"iogate\"")
    );
    let wrong_password = Client { password: Some("wrong"), ..scraper }.get("/metrics").await;
    assert_eq!(wrong_password.status, Some(401), "{wrong_password:?}");
    let no_certificate = Client { certificate: None, ..scraper }.get("/metrics").await;
    assert_eq!(no_certificate.status, Some(401), "{no_certificate:?}");

    let kubelet = Client { server: &server, certificate: None, password: None };
    assert_eq!(kubelet.get("/healthz").await.status, Some(200));

    // A certificate from another CA gets no HTTP answer at all.
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::new(other.path());
    stranger.issue(dir.path(), "stranger", &["prometheus"]);
    let seen = Client { certificate: Some("stranger"), ..scraper }.get("/metrics").await;
    assert_eq!(seen.status, None, "{seen:?}");

    // Plain HTTP on the TLS port is not served either.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("data"), "plain HTTP was answered");
}

/// Polls `client` until `done` holds of what it sees (10 s at most).
async fn eventually(client: &Client<'_>, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = client.get("/metrics").await;
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: still {seen:?} after 10 s");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_rotated_certificate_and_a_changed_password_apply_without_a_restart_and_a_broken_edit_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.issue(dir.path(), "scraper", &["prometheus"]);
    let server = start(dir.path()).await;
    let scraper = Client { server: &server, certificate: Some("scraper"), password: Some("right") };
    let before = scraper.get("/metrics").await.server_certificate.expect("a TLS handshake");

    // As cert-manager does: a new certificate and key under the same names.
    let (renewed, _) = pki.issue(dir.path(), "server", &["127.0.0.1", "localhost"]);
    let renewed = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
    assert_ne!(renewed, before);
    let seen =
        eventually(&scraper, "the renewed certificate", |s| s.server_certificate.as_ref() == Some(&renewed)).await;
    assert_eq!(seen.status, Some(200), "{seen:?}");

    // A broken edit: the config in force stays (no open door, no outage).
    std::fs::write(dir.path().join("web.yml"), "tls_server_config: [\n").unwrap();
    tokio::time::sleep(POLL * 10).await;
    let seen = scraper.get("/metrics").await;
    assert_eq!(seen.status, Some(200), "after a broken edit: {seen:?}");
    let seen = Client { password: None, ..scraper }.get("/metrics").await;
    assert_eq!(seen.status, Some(401), "after a broken edit, without a password: {seen:?}");

    // Fixed with a new password: the old one stops working.
    write_config(dir.path(), "new");
    eventually(&scraper, "the old password refused", |s| s.status == Some(401)).await;
    let seen = Client { password: Some("new"), ..scraper }.get("/metrics").await;
    assert_eq!(seen.status, Some(200), "{seen:?}");
}
