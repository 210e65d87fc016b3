//! What a check measured, and where it is while it runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a check's lines and steps go as they are taken.
type Watcher = Box<dyn FnMut(&str) + Send>;

/// What a check measured, line by line ("shop/plain: limit 100 IOPS,
/// measured 99.8"), and where it is: progress steps go to a watcher as they
/// happen (the VM's agent streams them to the host, so a check that hangs
/// shows where), and are not kept.
#[derive(Default, Serialize, Deserialize)]
pub struct Notes {
    pub lines: Vec<String>,
    /// Gets every line and step as it is taken (the host prints them; the
    /// VM agent sends them to the host).
    #[serde(skip)]
    watcher: Option<Watcher>,
}

impl fmt::Debug for Notes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notes").field("lines", &self.lines).finish_non_exhaustive()
    }
}

impl Notes {
    /// Notes printed to stderr as they are taken.
    pub fn printed() -> Notes {
        Notes::watched(|line| eprintln!("{line}"))
    }

    /// Notes whose lines and steps go to `watcher` as they are taken.
    pub fn watched(watcher: impl FnMut(&str) + Send + 'static) -> Notes {
        Notes { lines: Vec::new(), watcher: Some(Box::new(watcher)) }
    }

    /// A figure the check measured: kept, and watched.
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        if let Some(w) = self.watcher.as_mut() {
            w(&line);
        }
        self.lines.push(line);
    }

    /// Where the check is now: watched only.
    pub fn step(&mut self, what: impl AsRef<str>) {
        if let Some(w) = self.watcher.as_mut() {
            w(&format!("· {}", what.as_ref()));
        }
    }
}
