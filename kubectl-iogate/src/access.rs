//! How `--endpoint https://…` reaches a sidecar locked with
//! `--web.config.file` (TLS, client certificates, basic auth; the
//! Prometheus exporter convention) or `--kube-auth` (Kubernetes bearer
//! tokens): whom to trust, which certificate to show, and the password or
//! token to send.
//!
//! The password comes from the environment ([`PASSWORD_ENV`]), never from
//! the command line, where every user of the machine could read it in the
//! process list; and it is sent only over TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

/// Where `--user`'s password is read from.
pub const PASSWORD_ENV: &str = "IOGATE_PASSWORD";

/// The access flags as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessOptions {
    /// CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key, both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The basic-auth user; the password is in [`PASSWORD_ENV`].
    pub user: Option<String>,
    /// A file holding a bearer token (a service account's, or
    /// `kubectl create token`'s), read at start.
    pub token_file: Option<PathBuf>,
}

impl AccessOptions {
    /// Whether anything was asked beyond plain HTTP.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.user.is_some() || self.token_file.is_some()
    }
}

/// What a direct GET needs beyond the endpoint: a TLS connector for
/// `https://` endpoints and the `Authorization` header, if any.
#[derive(Clone)]
pub struct DirectAccess {
    pub(crate) tls: Option<TlsConnector>,
    pub(crate) authorization: Option<http::HeaderValue>,
}

/// Why the access could not be set up: each names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("--user {user}: the password is read from {PASSWORD_ENV}, which is not set")]
    NoPassword { user: String },
    #[error("--user {user}: a user name cannot contain ':' (basic auth separates it from the password with one)")]
    ColonInUser { user: String },
    #[error("{flag} {}: {why}", .path.display())]
    File { flag: &'static str, path: PathBuf, why: String },
    #[error("--token-file {}: {why}", .path.display())]
    Token { path: PathBuf, why: String },
    #[error("no system CA certificates found ({why}); --ca-file names the CA that signed the sidecar's certificate")]
    NoSystemRoots { why: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

impl DirectAccess {
    /// Reads the files the options name (and the system's CAs when no
    /// `--ca-file` is given) if `tls` is wanted, and the password if a user
    /// is; `password` is [`PASSWORD_ENV`]'s value.
    pub fn new(options: &AccessOptions, tls: bool, password: Option<String>) -> Result<Self, AccessError> {
        let authorization = match (&options.user, &options.token_file) {
            (Some(_), Some(path)) => {
                let why = "given with --user, and a request carries one of them".into();
                return Err(AccessError::Token { path: path.clone(), why });
            }
            (None, Some(path)) => Some(bearer(path)?),
            (None, None) => None,
            (Some(user), None) if user.contains(':') => return Err(AccessError::ColonInUser { user: user.clone() }),
            (Some(user), None) => {
                let password = password.ok_or_else(|| AccessError::NoPassword { user: user.clone() })?;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                let mut value = http::HeaderValue::from_str(&format!("Basic {token}"))
                    .expect("base64 is always a valid header value");
                value.set_sensitive(true);
                Some(value)
            }
        };
        let tls = if tls { Some(TlsConnector::from(Arc::new(client_config(options)?))) } else { None };
        Ok(DirectAccess { tls, authorization })
    }
}

/// `Bearer <token>` from the token file (surrounding whitespace, such as
/// the newline `kubectl create token > f` leaves, is not the token's).
fn bearer(path: &Path) -> Result<http::HeaderValue, AccessError> {
    let token_error = |why: String| AccessError::Token { path: path.to_path_buf(), why };
    let text = std::fs::read_to_string(path).map_err(|e| token_error(format!("cannot read it: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(token_error("expected a bearer token, found an empty file".into()));
    }
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| token_error("expected a bearer token on one line of visible characters".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn client_config(options: &AccessOptions) -> Result<ClientConfig, AccessError> {
    let roots = match &options.ca_file {
        Some(path) => roots_from(path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(certificates("--cert", cert)?, private_key(key)?)?,
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, AccessError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("--ca-file", path)? {
        roots.add(cert).map_err(|e| AccessError::File {
            flag: "--ca-file",
            path: path.to_path_buf(),
            why: format!("not a CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, AccessError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or("none installed".to_string(), |e| e.to_string());
        return Err(AccessError::NoSystemRoots { why });
    }
    Ok(roots)
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let file_error = |why: String| AccessError::File { flag, path: path.to_path_buf(), why };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("expected PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("expected PEM certificates (BEGIN CERTIFICATE), found none".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, AccessError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| AccessError::File {
        flag: "--key",
        path: path.to_path_buf(),
        why: format!("expected a PEM private key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> AccessOptions {
        AccessOptions { user: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn the_password_comes_from_the_environment_and_is_sent_as_basic_auth() {
        let access = DirectAccess::new(&user("prometheus"), false, Some("s3cret".into())).unwrap();
        let header = access.authorization.unwrap();
        assert!(header.is_sensitive(), "kept out of debug output");
        // base64("prometheus:s3cret")
        assert_eq!(header.to_str().unwrap(), "Basic cHJvbWV0aGV1czpzM2NyZXQ=");
        let e = DirectAccess::new(&user("prometheus"), false, None).err().unwrap();
        assert_eq!(e.to_string(), "--user prometheus: the password is read from IOGATE_PASSWORD, which is not set");
        let e = DirectAccess::new(&user("a:b"), false, Some("x".into())).err().unwrap();
        assert!(e.to_string().starts_with("--user a:b: a user name cannot contain ':'"), "{e}");
    }

    #[test]
    fn the_token_file_is_sent_as_a_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJhbGciOi.abc.def\n").unwrap();
        let options = AccessOptions { token_file: Some(file.clone()), ..Default::default() };
        let header = DirectAccess::new(&options, false, None).unwrap().authorization.unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer eyJhbGciOi.abc.def");
        std::fs::write(&file, "  \n").unwrap();
        let e = DirectAccess::new(&options, false, None).err().unwrap().to_string();
        assert_eq!(e, format!("--token-file {}: expected a bearer token, found an empty file", file.display()));
        let both = AccessOptions { user: Some("a".into()), ..options };
        let e = DirectAccess::new(&both, false, Some("x".into())).err().unwrap().to_string();
        assert!(e.ends_with("given with --user, and a request carries one of them"), "{e}");
    }

    #[test]
    fn unusable_files_are_named_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.crt");
        let options = AccessOptions { ca_file: Some(missing.clone()), ..Default::default() };
        let e = DirectAccess::new(&options, true, None).err().unwrap().to_string();
        assert!(e.starts_with(&format!("--ca-file {}: cannot read it", missing.display())), "{e}");

        let not_pem = dir.path().join("notes.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let options = AccessOptions { ca_file: Some(not_pem.clone()), ..Default::default() };
        let e = DirectAccess::new(&options, true, None).err().unwrap().to_string();
        assert_eq!(
            e,
            format!("--ca-file {}: expected PEM certificates (BEGIN CERTIFICATE), found none", not_pem.display())
        );

        let ca = rcgen::generate_simple_self_signed(vec!["sidecar".into()]).unwrap();
        let ca_file = dir.path().join("good.crt");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let options = AccessOptions {
            ca_file: Some(ca_file.clone()),
            client_cert: Some((ca_file.clone(), not_pem.clone())),
            user: None,
            token_file: None,
        };
        let e = DirectAccess::new(&options, true, None).err().unwrap().to_string();
        assert!(e.starts_with(&format!("--key {}: expected a PEM private key", not_pem.display())), "{e}");

        // Without TLS wanted, no file is opened.
        let options = AccessOptions { ca_file: Some(missing), ..Default::default() };
        assert!(DirectAccess::new(&options, false, None).is_ok());
    }
}
