//! A file whose changes are acted upon: the policy file, the pod
//! annotations stand-in.
//!
//! Kubernetes updates a mounted ConfigMap by writing a new timestamped
//! directory and renaming the `..data` symlink onto it: the file's path
//! stays, what it resolves to changes, and an inotify watch on the old
//! target only sees it deleted. So the watch is on the file's directory
//! (whatever happens in it), and every event re-reads the file by its path;
//! the callback runs only when the text differs from the last one seen.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

/// Keeps the watch alive; dropping it ends the watch.
pub struct WatchedFile {
    _watcher: notify::RecommendedWatcher,
}

/// What the file held when it changed.
pub type Read = Result<String, String>;

/// Calls `on_change` with the file's new text (or why it cannot be read)
/// whenever that differs from the last call's; `initial` is what the
/// caller already loaded, so an unchanged file does not call back.
pub fn watch(path: &Path, initial: Option<String>, on_change: impl Fn(Read) + Send + 'static) -> Result<WatchedFile> {
    let path = absolute(path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let last: Mutex<Option<Read>> = Mutex::new(initial.map(Ok));
    let file = path.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Err(e) = event {
            tracing::warn!(path = %file.display(), "watching for changes: {e}");
            return;
        }
        let now: Read = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()));
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() == Some(&now) {
            return;
        }
        *last = Some(now.clone());
        drop(last);
        on_change(now);
    })
    .context("starting a file watch (inotify)")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {} for changes to {}", dir.display(), path.display()))?;
    Ok(WatchedFile { _watcher: watcher })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir().context("finding the current directory")?.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn next(rx: &mpsc::Receiver<Read>) -> Read {
        rx.recv_timeout(Duration::from_secs(10)).expect("expected a change within 10 s")
    }

    /// The ConfigMap's layout: config.toml -> ..data/config.toml, ..data ->
    /// a timestamped directory, swapped by renaming a new symlink over it.
    #[test]
    fn follows_a_configmap_style_symlink_swap() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/config.toml"), "one").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.toml", d.join("config.toml")).unwrap();

        let (tx, rx) = mpsc::channel();
        let _w = watch(&d.join("config.toml"), Some("one".into()), move |r| tx.send(r).unwrap()).unwrap();

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/config.toml"), "two").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..v1")).unwrap();
        assert_eq!(next(&rx), Ok("two".into()));

        // Events that leave the text as it was do not call back: the next
        // call is the next swap's text, not "two" again. (A write inside
        // `..v2` raises no event in the watched directory; Kubernetes never
        // writes there, it swaps.)
        std::fs::write(d.join("unrelated"), "x").unwrap();
        std::fs::create_dir(d.join("..v3")).unwrap();
        std::fs::write(d.join("..v3/config.toml"), "three").unwrap();
        std::os::unix::fs::symlink("..v3", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..v2")).unwrap();
        assert_eq!(next(&rx), Ok("three".into()));
        std::fs::remove_dir_all(d.join("..v3")).unwrap();
        let gone = next(&rx).unwrap_err();
        assert!(gone.contains("cannot read") && gone.contains("config.toml"), "{gone}");
    }
}
