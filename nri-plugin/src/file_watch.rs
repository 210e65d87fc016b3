//! A file whose changes are acted upon: the policy file, the pod
//! annotations stand-in.
//!
//! Kubernetes updates a mounted ConfigMap by writing a new timestamped
//! directory and renaming the `..data` symlink onto it: the file's path
//! stays, what it resolves to changes, and an inotify watch on the old
//! target only sees it deleted. So the watch is on the file's directory
//! (whatever happens in it), and every event re-reads the file by its path;
//! the callback runs only when the text differs from the last one seen.
//! A re-read every [`BACKSTOP`] catches what no event announced.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

/// How often the file is re-read whatever inotify says. Inotify is what
/// makes a change quick; this is what makes it certain: a change whose
/// events never arrive (a subPath mount, which the kubelet never updates
/// in place; an event the watcher dropped) still arrives, this late.
pub const BACKSTOP: Duration = Duration::from_secs(2);

/// Keeps the watch alive; dropping it ends the watch and its re-reads.
pub struct WatchedFile {
    _watcher: notify::RecommendedWatcher,
    stop: Option<mpsc::Sender<()>>,
    rereads: Option<JoinHandle<()>>,
}

impl Drop for WatchedFile {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(rereads) = self.rereads.take() {
            let _ = rereads.join();
        }
    }
}

/// What the file held when it changed.
pub type Read = Result<String, String>;

/// The last text delivered and whom to deliver to, under one lock: reading
/// and delivering under it keeps the inotify thread and the re-read thread
/// from handing over an older text after a newer one.
struct Delivery<F> {
    file: PathBuf,
    state: Mutex<(Option<Read>, F)>,
}

impl<F: Fn(Read)> Delivery<F> {
    fn look(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now: Read =
            std::fs::read_to_string(&self.file).map_err(|e| format!("cannot read {}: {e}", self.file.display()));
        if state.0.as_ref() == Some(&now) {
            return;
        }
        state.0 = Some(now.clone());
        (state.1)(now);
    }
}

/// Calls `on_change` with the file's new text (or why it cannot be read)
/// whenever that differs from the last call's; `initial` is what the
/// caller already loaded, so an unchanged file does not call back. Calls
/// come one at a time, in the order the texts were read.
pub fn watch(path: &Path, initial: Option<String>, on_change: impl Fn(Read) + Send + 'static) -> Result<WatchedFile> {
    let path = absolute(path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let delivery = Arc::new(Delivery { file: path.clone(), state: Mutex::new((initial.map(Ok), on_change)) });
    let on_event = delivery.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Err(e) = event {
            tracing::warn!(path = %on_event.file.display(), "watching for changes: {e}");
        }
        // Even after an error (an overflowed queue among them): whatever
        // was missed, the file's text now is what counts.
        on_event.look();
    })
    .context("starting a file watch (inotify)")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {} for changes to {}", dir.display(), path.display()))?;
    let (stop, stopped) = mpsc::channel::<()>();
    let rereads = std::thread::Builder::new()
        .name("iogate-file-watch".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(BACKSTOP) {
                delivery.look();
            }
        })
        .context("starting the file watch's re-reads")?;
    Ok(WatchedFile { _watcher: watcher, stop: Some(stop), rereads: Some(rereads) })
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

    fn next(rx: &mpsc::Receiver<Read>) -> Read {
        rx.recv_timeout(Duration::from_secs(10)).expect("expected a change within 10 s")
    }

    /// The ConfigMap's layout in `d`: config.toml -> ..data/config.toml,
    /// ..data -> ..v{version}, holding `text`.
    fn configmap(d: &Path, version: u32, text: &str) {
        std::fs::create_dir(d.join(format!("..v{version}"))).unwrap();
        std::fs::write(d.join(format!("..v{version}/config.toml")), text).unwrap();
        std::os::unix::fs::symlink(format!("..v{version}"), d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.toml", d.join("config.toml")).unwrap();
    }

    /// What the kubelet does on a change: a new directory, a new symlink
    /// renamed over `..data`, the old directory removed.
    fn swap(d: &Path, from: u32, to: u32, text: &str) {
        std::fs::create_dir(d.join(format!("..v{to}"))).unwrap();
        std::fs::write(d.join(format!("..v{to}/config.toml")), text).unwrap();
        std::os::unix::fs::symlink(format!("..v{to}"), d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join(format!("..v{from}"))).unwrap();
    }

    /// The ConfigMap's layout: config.toml -> ..data/config.toml, ..data ->
    /// a timestamped directory, swapped by renaming a new symlink over it.
    #[test]
    fn follows_a_configmap_style_symlink_swap() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        configmap(d, 1, "one");

        let (tx, rx) = mpsc::channel();
        let _w = watch(&d.join("config.toml"), Some("one".into()), move |r| tx.send(r).unwrap()).unwrap();

        swap(d, 1, 2, "two");
        assert_eq!(next(&rx), Ok("two".into()));

        // Events that leave the text as it was do not call back: the next
        // call is the next swap's text, not "two" again. (A write inside
        // `..v2` raises no event in the watched directory; Kubernetes never
        // writes there, it swaps.)
        std::fs::write(d.join("unrelated"), "x").unwrap();
        swap(d, 2, 3, "three");
        assert_eq!(next(&rx), Ok("three".into()));
        std::fs::remove_dir_all(d.join("..v3")).unwrap();
        let gone = next(&rx).unwrap_err();
        assert!(gone.contains("cannot read") && gone.contains("config.toml"), "{gone}");
    }

    /// Kubernetes swaps the `..data` symlink; a file mounted by subPath, or
    /// edited where it lies, raises no event in the watched directory. The
    /// re-reads still bring the change.
    #[test]
    fn a_change_that_raises_no_event_here_still_arrives() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/config.toml"), "one").unwrap();
        std::os::unix::fs::symlink("..v1/config.toml", d.join("config.toml")).unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch(&d.join("config.toml"), Some("one".into()), move |r| tx.send(r).unwrap()).unwrap();

        std::fs::write(d.join("..v1/config.toml"), "edited in place").unwrap();
        assert_eq!(next(&rx), Ok("edited in place".into()));
    }

    /// Swaps faster than anyone reads them: the texts delivered only ever
    /// move forward, and the last one always arrives.
    #[test]
    fn quick_successive_swaps_end_at_the_last_text_never_an_older_one() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        configmap(d, 0, "0");
        let (tx, rx) = mpsc::channel();
        let _w = watch(&d.join("config.toml"), Some("0".into()), move |r| tx.send(r).unwrap()).unwrap();

        let last = 200;
        for n in 1..=last {
            swap(d, n - 1, n, &n.to_string());
        }
        let mut seen = 0;
        while seen != last {
            // A read that resolved `..data` just before a swap can find the
            // old directory gone: a passing "cannot read", which the next
            // event's read corrects.
            let Ok(text) = next(&rx) else { continue };
            let n: u32 = text.parse().unwrap();
            assert!(n > seen, "{n} delivered after {seen}");
            seen = n;
        }
    }
}
