//! One end-to-end test at a time on this machine.
//!
//! They share the two cores (fio rates must not be disturbed), the block
//! cgroup controller (one test moves it from cgroup v1 to v2 for a while),
//! and containerd's fixed shim socket directory. Test binaries run in
//! separate processes, so the lock is a `flock` on a file, not a mutex.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

pub struct HostLock {
    _file: File,
}

impl HostLock {
    pub fn acquire() -> Result<HostLock> {
        let file = File::create("/run/iogate-e2e.lock").context("creating /run/iogate-e2e.lock")?;
        // SAFETY: flock on an fd we own; blocks until the other test is done.
        let rc = unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX) };
        anyhow::ensure!(rc == 0, "flock /run/iogate-e2e.lock: {}", std::io::Error::last_os_error());
        Ok(HostLock { _file: file })
    }
}
