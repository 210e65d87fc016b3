//! A background process the test started (an external NRI plugin), with its
//! output in a file the test can search, ended by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Background {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Background> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Background { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output holds `needle` at least `count` times.
    pub fn wait_for(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().matches(needle).count() >= count {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{} exited ({status}) before printing {needle:?}; output:\n{}", self.name, self.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {needle:?} {count} time(s) within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id while it runs (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(1));
    }

    /// Sends `signal`, waits up to `grace` for the process to exit, then
    /// kills it. True when it exited by itself within `grace`.
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(c.id() as i32), signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}
