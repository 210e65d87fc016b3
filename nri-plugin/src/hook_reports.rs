//! What the injected hook said. runc discards the output of a hook that
//! succeeds, and a fail-open hook succeeds even when it could not write the
//! limits; so the plugin hands every hook it injects `--log <dir>/<id>.log`
//! and reads that file when the container starts. The hook writes one line
//! per run: `iogate-oci-hook: <summary>`, or `iogate-oci-hook: error: …`
//! (see `oci-hook/src/main.rs`).
//!
//! runc runs the hook on the host, so the directory is a host path that
//! the plugin sees at the same place (the DaemonSet mounts it).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const ERROR_PREFIX: &str = "iogate-oci-hook: error: ";
const PREFIX: &str = "iogate-oci-hook: ";

/// The directory the injected hooks report into.
#[derive(Debug, Clone)]
pub struct HookReports {
    dir: PathBuf,
}

/// One container's hook report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookReport {
    /// The hook's summary (`… set to 7:0 riops=…`).
    Applied(String),
    /// The hook's error line.
    Failed(String),
    /// No report: the hook did not run, or could not write its log.
    Missing { path: PathBuf },
    /// Unreadable, or a line the hook does not write.
    Unreadable { path: PathBuf, reason: String },
}

impl HookReport {
    pub fn is_failure(&self) -> bool {
        !matches!(self, HookReport::Applied(_))
    }
}

impl HookReports {
    /// Creates `dir` if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<HookReports> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the hook report directory {}", dir.display()))?;
        Ok(HookReports { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the hook of container `id` reports; `None` for an id that is
    /// no plain file name (containerd's are 64 hex digits).
    pub fn path_for(&self, id: &str) -> Option<PathBuf> {
        let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        plain.then(|| self.dir.join(format!("{id}.log")))
    }

    /// Reads container `id`'s report and removes the file: each report is
    /// read once, when the container starts.
    pub fn take(&self, id: &str) -> HookReport {
        let Some(path) = self.path_for(id) else {
            return HookReport::Unreadable {
                path: self.dir.clone(),
                reason: format!("container id {id:?} is no file name"),
            };
        };
        let report = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text),
            Err(e) if e.kind() == ErrorKind::NotFound => return HookReport::Missing { path },
            Err(e) => HookReport::Unreadable { path: path.clone(), reason: e.to_string() },
        };
        self.forget(id);
        report
    }

    /// Removes container `id`'s report, if any (the container is gone).
    pub fn forget(&self, id: &str) {
        if let Some(path) = self.path_for(id) {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), "cannot remove a hook report: {e}");
                }
            }
        }
    }
}

/// A failure anywhere wins; otherwise the last line is the summary.
fn parse(path: &Path, text: &str) -> HookReport {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(failed) = lines.iter().rev().find(|l| l.starts_with(ERROR_PREFIX)) {
        return HookReport::Failed(failed[ERROR_PREFIX.len()..].to_string());
    }
    match lines.last() {
        Some(line) if line.starts_with(PREFIX) => HookReport::Applied(line[PREFIX.len()..].to_string()),
        Some(line) => HookReport::Unreadable {
            path: path.to_path_buf(),
            reason: format!("expected a line starting with {PREFIX:?}, found {line:?}"),
        },
        None => HookReport::Unreadable { path: path.to_path_buf(), reason: "the report is empty".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reads_each_report_once() {
        let t = tempfile::tempdir().unwrap();
        let r = HookReports::new(t.path().join("hooks")).unwrap();
        let path = r.path_for(ID).unwrap();
        assert_eq!(r.take(ID), HookReport::Missing { path: path.clone() });
        std::fs::write(&path, "iogate-oci-hook: c1: cgroup v1 /sys/fs/cgroup/blkio/x set to 7:0 riops=5\n").unwrap();
        assert_eq!(r.take(ID), HookReport::Applied("c1: cgroup v1 /sys/fs/cgroup/blkio/x set to 7:0 riops=5".into()));
        assert!(!path.exists(), "a report is removed once read");
        std::fs::write(
            &path,
            "iogate-oci-hook: error: writing limits: No such device (os error 19); the container starts without iogate limits (fail-open)\n",
        )
        .unwrap();
        let failed = r.take(ID);
        assert!(failed.is_failure());
        assert!(
            matches!(&failed, HookReport::Failed(m) if m.starts_with("writing limits: No such device")),
            "{failed:?}"
        );
        std::fs::write(&path, "something else\n").unwrap();
        assert!(matches!(r.take(ID), HookReport::Unreadable { reason, .. } if reason.contains("something else")));
    }

    #[test]
    fn only_plain_ids_name_files() {
        let r = HookReports { dir: PathBuf::from("/run/iogate/hooks") };
        assert_eq!(r.path_for("../etc/passwd"), None);
        assert_eq!(r.path_for(""), None);
        assert_eq!(r.path_for("abc").unwrap(), Path::new("/run/iogate/hooks/abc.log"));
    }
}
