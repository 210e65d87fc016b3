//! One end-to-end test at a time on this machine.
//!
//! They share the two cores (fio rates must not be disturbed), the block
//! cgroup controller (one test moves it from cgroup v1 to v2 for a while),
//! and containerd's fixed shim socket directory. Within a test process a
//! mutex serialises tests; across processes (cargo runs each test file as
//! its own binary) a `flock`, held until the process exits.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock};

use anyhow::{Context, Result};

static IN_PROCESS: Mutex<()> = Mutex::new(());
static ACROSS_PROCESSES: OnceLock<File> = OnceLock::new();

pub struct HostLock {
    _guard: MutexGuard<'static, ()>,
}

impl HostLock {
    pub fn acquire() -> Result<HostLock> {
        // A test that panicked while holding it leaves nothing to protect.
        let guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
        if ACROSS_PROCESSES.get().is_none() {
            let file = File::create("/run/iogate-e2e.lock").context("creating /run/iogate-e2e.lock")?;
            // SAFETY: flock on an fd we own; blocks until the other process is done.
            let rc = unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX) };
            anyhow::ensure!(rc == 0, "flock /run/iogate-e2e.lock: {}", std::io::Error::last_os_error());
            let _ = ACROSS_PROCESSES.set(file);
        }
        Ok(HostLock { _guard: guard })
    }
}
