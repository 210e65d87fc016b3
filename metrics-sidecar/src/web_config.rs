//! `--web.config.file`: TLS and basic auth, in the file format of
//! prometheus/exporter-toolkit, so that an operator configures this
//! sidecar like every other exporter on the node.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/iogate/tls/tls.crt
//!   key_file: /etc/iogate/tls/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: /etc/iogate/tls/ca.crt
//!   min_version: TLS12                              # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # bcrypt hashes
//! ```
//!
//! Fields of that format this sidecar does not implement are refused by
//! name rather than ignored: a config that asks for a cipher list and
//! silently gets another one is a security surprise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: expected an exporter-toolkit web config: {source}", path.display())]
    Parse { path: PathBuf, source: serde_yaml_ng::Error },
    #[error("{}: {field} is not supported by iogate ({why})", path.display())]
    Unsupported { path: PathBuf, field: &'static str, why: &'static str },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

impl WebConfigError {
    fn invalid(path: &Path, what: impl Into<String>) -> WebConfigError {
        WebConfigError::Invalid { path: path.to_path_buf(), what: what.into() }
    }
}

/// How a client must prove itself with a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate asked for.
    None,
    /// A certificate, if sent, must chain to the client CA.
    VerifyIfGiven,
    /// Every request but the probes needs a certificate that chains to the
    /// client CA. The handshake still lets certificate-less clients in, so
    /// that the kubelet's probes reach `/healthz` and `/readyz`; the
    /// requirement is enforced per request (see `auth`).
    RequireAndVerify,
}

/// The loaded web config: what `serve` and `auth` enforce.
#[derive(Clone)]
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub client_auth: ClientAuth,
    /// User name → bcrypt hash; empty means no basic auth.
    pub users: BTreeMap<String, String>,
    /// The files it was read from: the config itself, then the
    /// certificates and key it names (what `web_access` watches).
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .finish()
    }
}

impl WebConfig {
    /// No TLS, no authentication: the sidecar without `--web.config.file`.
    pub fn open() -> WebConfig {
        WebConfig { tls: None, client_auth: ClientAuth::None, users: BTreeMap::new(), files: Vec::new() }
    }

    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| WebConfigError::Read { path: path.into(), source })?;
        let file: File =
            serde_yaml_ng::from_str(&text).map_err(|source| WebConfigError::Parse { path: path.into(), source })?;
        file.into_config(path)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    http_server_config: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Known to the format, refused below.
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    client_ca: Option<serde_yaml_ng::Value>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
}

fn version(path: &Path, field: &str, v: &str) -> Result<&'static rustls::SupportedProtocolVersion, WebConfigError> {
    match v {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(WebConfigError::invalid(
            path,
            format!("{field}: {v} is not offered (TLS 1.0 and 1.1 are broken); expected TLS12 or TLS13"),
        )),
        _ => Err(WebConfigError::invalid(path, format!("{field}: expected TLS12 or TLS13, found {v:?}"))),
    }
}

impl File {
    fn into_config(self, path: &Path) -> Result<WebConfig, WebConfigError> {
        let unsupported = |field, why| WebConfigError::Unsupported { path: path.into(), field, why };
        if self.http_server_config.is_some() {
            return Err(unsupported("http_server_config", "the sidecar serves HTTP/1.1 and sets no extra headers"));
        }
        for (user, hash) in &self.basic_auth_users {
            // A hash that does not parse would lock everyone out at the
            // first scrape; say so at start instead.
            if bcrypt::verify("", hash).is_err() {
                return Err(WebConfigError::invalid(
                    path,
                    format!(
                        "basic_auth_users.{user}: expected a bcrypt hash ($2a$, $2b$ or $2y$), found {:?}",
                        abbreviate(hash)
                    ),
                ));
            }
        }
        let Some(tls) = self.tls_server_config else {
            return Ok(WebConfig {
                tls: None,
                client_auth: ClientAuth::None,
                users: self.basic_auth_users,
                files: vec![path.to_path_buf()],
            });
        };
        let inline = "give the PEM in a file: cert_file, key_file, client_ca_file";
        if tls.cert.is_some() {
            return Err(unsupported("tls_server_config.cert", inline));
        }
        if tls.key.is_some() {
            return Err(unsupported("tls_server_config.key", inline));
        }
        if tls.client_ca.is_some() {
            return Err(unsupported("tls_server_config.client_ca", inline));
        }
        let rustls_picks = "rustls offers only its own safe cipher suites and groups";
        if tls.cipher_suites.is_some() {
            return Err(unsupported("tls_server_config.cipher_suites", rustls_picks));
        }
        if tls.curve_preferences.is_some() {
            return Err(unsupported("tls_server_config.curve_preferences", rustls_picks));
        }
        if tls.prefer_server_cipher_suites.is_some() {
            return Err(unsupported("tls_server_config.prefer_server_cipher_suites", rustls_picks));
        }
        if tls.client_allowed_sans.is_some() {
            return Err(unsupported(
                "tls_server_config.client_allowed_sans",
                "any certificate from the client CA is admitted",
            ));
        }
        let client_auth = match tls.client_auth_type.as_deref() {
            None | Some("NoClientCert") => ClientAuth::None,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
            Some(t @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                return Err(WebConfigError::invalid(
                    path,
                    format!("client_auth_type {t} accepts certificates nobody verified; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
                ))
            }
            Some(t) => {
                return Err(WebConfigError::invalid(
                    path,
                    format!("client_auth_type: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert, found {t:?}"),
                ))
            }
        };
        let min = tls.min_version.as_deref().map(|v| version(path, "min_version", v)).transpose()?;
        let max = tls.max_version.as_deref().map(|v| version(path, "max_version", v)).transpose()?;
        let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                min.is_none_or(|m| u16::from(v.version) >= u16::from(m.version))
                    && max.is_none_or(|m| u16::from(v.version) <= u16::from(m.version))
            })
            .collect();
        if versions.is_empty() {
            return Err(WebConfigError::invalid(path, "min_version is above max_version: no TLS version is left"));
        }
        let cert_file =
            tls.cert_file.ok_or_else(|| WebConfigError::invalid(path, "tls_server_config needs cert_file"))?;
        let key_file = tls.key_file.ok_or_else(|| WebConfigError::invalid(path, "tls_server_config needs key_file"))?;
        let mut files = vec![path.to_path_buf(), cert_path(path, &cert_file), cert_path(path, &key_file)];
        let chain = certificates(path, &cert_file)?;
        let key = PrivateKeyDer::from_pem_file(cert_path(path, &key_file)).map_err(|e| {
            WebConfigError::invalid(path, format!("key_file {}: expected a PEM private key: {e}", key_file.display()))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| WebConfigError::invalid(path, format!("TLS versions: {e}")))?;
        let builder = match (client_auth, tls.client_ca_file) {
            (ClientAuth::None, None) => builder.with_no_client_auth(),
            (ClientAuth::None, Some(_)) => {
                return Err(WebConfigError::invalid(
                    path,
                    "client_ca_file is set but client_auth_type is NoClientCert: no certificate would be checked",
                ))
            }
            (_, None) => {
                return Err(WebConfigError::invalid(
                    path,
                    "client_auth_type verifies certificates: client_ca_file is needed",
                ))
            }
            (_, Some(ca_file)) => {
                files.push(cert_path(path, &ca_file));
                let mut roots = RootCertStore::empty();
                for ca in certificates(path, &ca_file)? {
                    roots.add(ca).map_err(|e| {
                        WebConfigError::invalid(path, format!("client_ca_file {}: {e}", ca_file.display()))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| WebConfigError::invalid(path, format!("client_ca_file {}: {e}", ca_file.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_single_cert(chain, key).map_err(|e| {
            WebConfigError::invalid(path, format!("cert_file and key_file do not make a usable pair: {e}"))
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(WebConfig { tls: Some(Arc::new(server)), client_auth, users: self.basic_auth_users, files })
    }
}

/// Paths in the file are relative to the file, as in exporter-toolkit.
fn cert_path(config: &Path, file: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

fn certificates(config: &Path, file: &Path) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let full = cert_path(config, file);
    let bad = |what: String| WebConfigError::invalid(config, format!("{}: {what}", file.display()));
    let certs = CertificateDer::pem_file_iter(&full)
        .map_err(|e| bad(format!("expected PEM certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("expected PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("expected PEM certificates, found none".into()));
    }
    Ok(certs)
}

fn abbreviate(s: &str) -> String {
    if s.chars().count() > 12 {
        format!("{}…", s.chars().take(12).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA (`ca.crt`) and a server certificate for 127.0.0.1 and
    /// localhost (`server.crt`, `server.key`) in `dir`; `issue` makes more.
    pub(crate) struct Pki {
        pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        pub(crate) fn new(dir: &Path) -> Pki {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "iogate test CA");
            let ca_cert = params.self_signed(&key).unwrap();
            std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
            let ca = rcgen::Issuer::new(params, key);
            let pki = Pki { ca };
            pki.issue(dir, "server", &["127.0.0.1", "localhost"]);
            pki
        }

        /// `NAME.crt` and `NAME.key` in `dir`, signed by the CA.
        pub(crate) fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn load(dir: &Path, yaml: &str) -> Result<WebConfig, WebConfigError> {
        let path = dir.join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        WebConfig::load(&path)
    }

    fn error(dir: &Path, yaml: &str) -> String {
        load(dir, yaml).map(|c| format!("{c:?}")).expect_err("the config loaded").to_string()
    }

    #[test]
    fn a_full_config_loads_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Pki::new(dir.path());
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = load(
            dir.path(),
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\nbasic_auth_users:\n  prometheus: {hash}\n"
            ),
        )
        .unwrap();
        assert!(c.tls.is_some());
        assert_eq!(c.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(c.users.keys().collect::<Vec<_>>(), ["prometheus"]);
        let d = dir.path();
        assert_eq!(c.files, [d.join("web.yml"), d.join("server.crt"), d.join("server.key"), d.join("ca.crt")]);
    }

    #[test]
    fn basic_auth_alone_needs_no_tls() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = load(dir.path(), &format!("basic_auth_users:\n  a: {hash}\n")).unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.users.len(), 1);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        Pki::new(dir.path());
        let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        for (extra, expected) in [
            ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites is not supported"),
            ("  client_auth_type: RequireAnyClientCert\n", "accepts certificates nobody verified"),
            (
                "  client_auth_type: Sometimes\n",
                "expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert, found \"Sometimes\"",
            ),
            ("  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file is needed"),
            ("  client_ca_file: ca.crt\n", "client_auth_type is NoClientCert"),
            ("  min_version: TLS11\n", "TLS 1.0 and 1.1 are broken"),
            ("  min_version: TLS13\n  max_version: TLS12\n", "no TLS version is left"),
            ("  cert_fiel: x\n", "unknown field `cert_fiel`"),
        ] {
            let e = error(dir.path(), &format!("{tls}{extra}"));
            assert!(e.contains(expected), "{extra:?}: {e}");
        }
        assert!(
            error(dir.path(), "http_server_config:\n  http2: false\n").contains("http_server_config is not supported")
        );
        assert!(error(dir.path(), "basic_auth_users:\n  a: plaintext\n").contains("expected a bcrypt hash"));
        assert!(error(dir.path(), "tls_server_config:\n  cert_file: server.crt\n").contains("needs key_file"));
        assert!(error(dir.path(), "tls_server_config:\n  cert_file: ca.crt\n  key_file: server.key\n")
            .contains("do not make a usable pair"));
        assert!(error(dir.path(), "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n")
            .contains("nope.crt"));
    }
}
