//! The web config in force, and its reload when its files change.
//!
//! cert-manager renews certificates and the kubelet swaps a mounted
//! secret's files in place; a sidecar that read them once would serve an
//! expired certificate until someone restarts it. So the files the config
//! was read from (the config, the certificate, the key, the client CA) are
//! watched, and when one changes the whole config is loaded again and
//! applies from the next connection on. A reload that fails (a key written
//! before its certificate, a typo in the YAML) is logged as an error and the
//! config in force stays: a bad edit never opens the sidecar up nor takes it
//! down. A later change is tried again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::auth::Gate;
use crate::token_review::TokenReviewer;
use crate::web_config::WebConfig;

/// What a newly accepted connection is served by.
pub struct Access {
    /// `None`: plain HTTP.
    pub tls: Option<TlsAcceptor>,
    pub gate: Arc<Gate>,
}

impl Access {
    /// Blocks for a bcrypt hash when the config has users (see [`Gate::new`]).
    fn new(config: &WebConfig, tokens: &Option<Arc<TokenReviewer>>) -> Access {
        Access { tls: config.tls.clone().map(TlsAcceptor::from), gate: Arc::new(Gate::new(config, tokens.clone())) }
    }
}

/// The access in force; bearer tokens, where accepted, are reviewed the
/// same way whatever the web config says, across its reloads.
pub struct WebAccess {
    current: ArcSwap<Access>,
}

impl WebAccess {
    /// Serves by `config` for good (no file to watch, as without
    /// `--web.config.file`).
    pub fn fixed(config: &WebConfig, tokens: Option<Arc<TokenReviewer>>) -> Arc<WebAccess> {
        Arc::new(WebAccess { current: ArcSwap::from_pointee(Access::new(config, &tokens)) })
    }

    /// Serves by `config`, loaded from `path`, and looks at its files every
    /// `every` for a change (on a tokio runtime, until the returned value is
    /// dropped).
    pub async fn watch(
        path: PathBuf,
        config: WebConfig,
        every: Duration,
        tokens: Option<Arc<TokenReviewer>>,
    ) -> Arc<WebAccess> {
        let files = config.files.clone();
        let first = tokens.clone();
        let access = tokio::task::spawn_blocking(move || Access::new(&config, &first)).await.expect("building a gate");
        let live = Arc::new(WebAccess { current: ArcSwap::from_pointee(access) });
        tokio::spawn(poll(Arc::downgrade(&live), path, files, every, tokens));
        live
    }

    pub fn current(&self) -> Arc<Access> {
        self.current.load_full()
    }
}

async fn poll(
    live: Weak<WebAccess>,
    path: PathBuf,
    mut files: Vec<PathBuf>,
    every: Duration,
    tokens: Option<Arc<TokenReviewer>>,
) {
    let mut seen = fingerprint(&files);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if live.strong_count() == 0 {
            return;
        }
        let now = fingerprint(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let from = path.clone();
        let tokens = tokens.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            WebConfig::load(&from).map(|config| (config.files.clone(), Access::new(&config, &tokens)))
        })
        .await
        .expect("loading the web config");
        let Some(live) = live.upgrade() else { return };
        match reloaded {
            Ok((new_files, access)) => {
                live.current.store(Arc::new(access));
                tracing::info!(path = %path.display(), "web config reloaded: new connections are served by it");
                if new_files != files {
                    files = new_files;
                    seen = fingerprint(&files);
                }
            }
            Err(e) => tracing::error!(
                "--web.config.file changed but does not load, so the config loaded before stays in force: {e}"
            ),
        }
    }
}

/// What tells a changed file apart: a secret update swaps in a new file
/// (another inode), an edit in place changes the time or the length. A
/// missing file is a state of its own (mid-rotation, say).
#[derive(Debug, PartialEq, Eq)]
struct FileState {
    device: u64,
    inode: u64,
    modified: Option<SystemTime>,
    length: u64,
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<FileState>> {
    files.iter().map(|f| file_state(f)).collect()
}

fn file_state(file: &Path) -> Option<FileState> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    Some(FileState { device: m.dev(), inode: m.ino(), modified: m.modified().ok(), length: m.len() })
}
