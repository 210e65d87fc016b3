//! A cgroup v2 + systemd Kubernetes node in a VM, for the checks this
//! cgroup-v1 host cannot make.
//!
//! `scripts/fetch-vm.sh` prepares what does not change between runs under
//! `.cache/vm/`: Debian's kernels (bookworm 6.1, trixie 6.12, sid's newest)
//! with the few modules the guest loads, and a Debian 12 root filesystem
//! with systemd as PID 1, runc, fio and containerd 1.7 and 2.1. Each test run
//! adds a [`Payload`]: this build's binaries. The guest boots under qemu's
//! TCG (nested KVM does not run on these machines) from an initramfs made of
//! those archives, formats a scratch disk for `/var/tmp`, and its agent
//! (`iogate-vm-agent`, a systemd service) runs [`Scenario`]s on request,
//! over the second serial port, with the same testbed code the host tests
//! use.
//!
//! `Drop` powers the guest off, kills qemu by PID if it does not go, and
//! removes the run's files. qemu also dies with the test process (parent
//! death signal), so nothing outlives a crashed test.

mod console;
mod host_view;
pub mod payload;
pub mod protocol;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use host_view::QemuSample;
pub use payload::Payload;

/// The guest's `/var/tmp`: a virtio disk that outlives a boot, so that the
/// next kernel's boot finds the test image built and imported (a minute of
/// emulated hashing and unpacking) where the last one left it. The guest
/// formats it on first use.
pub struct ScratchDisk {
    image: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScratchDisk {
    pub fn new() -> Result<ScratchDisk> {
        let dir = tempfile::Builder::new().prefix("iogate-vm-scratch-").tempdir_in("/var/tmp")?;
        let image = dir.path().join("scratch.img");
        // Sparse: only what the guest writes takes space here.
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(16 << 30))
            .with_context(|| format!("creating {}", image.display()))?;
        Ok(ScratchDisk { image, _dir: dir })
    }
}
use protocol::{FromAgent, Hello, Outcome, ToAgent};

use crate::scenarios::Scenario;

/// Where each boot's whole guest console is copied when the guest powers
/// off, if set (a failure shows only an excerpt).
pub const CONSOLE_DIR_VAR: &str = "IOGATE_VM_CONSOLE_DIR";

/// How often a silent agent's console is read for a hang report.
const HANG_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The guest kernel said it is stuck for good ([`console::hang_reported`]),
/// or it panicked ([`console::crash_reported`]): the emulated node stopped,
/// whatever the check (or the boot) was doing. Its `details` hold the
/// console's excerpt and what the host did meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("the guest kernel stopped: {report}\n{details}")]
pub struct GuestHung {
    pub report: String,
    pub details: String,
}

/// How long a boot may take under TCG before it counts as hung.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// One of the kernels `scripts/fetch-vm.sh` prepared.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The Debian suite it comes from (`bookworm`, `trixie`, `sid`).
    pub suite: String,
    /// Its release (`6.1.0-57-amd64`).
    pub release: String,
    dir: PathBuf,
}

impl Kernel {
    /// The suites in the order their kernels are tested: the Debian 12
    /// node's first.
    pub const SUITES: [&'static str; 3] = ["bookworm", "trixie", "sid"];

    fn cache() -> PathBuf {
        crate::repo_root().join(".cache/vm")
    }

    /// Every prepared kernel, in [`Kernel::SUITES`] order; an error names
    /// what is missing and how to make it.
    pub fn all() -> Result<Vec<Kernel>> {
        let mut out = Vec::new();
        for suite in Self::SUITES {
            let dir = Self::cache().join(format!("kernel-{suite}"));
            let release = std::fs::read_to_string(dir.join("release")).with_context(|| {
                format!("expected the {suite} kernel under {} (run scripts/fetch-vm.sh)", dir.display())
            })?;
            for f in ["vmlinuz", "modules.cpio"] {
                anyhow::ensure!(dir.join(f).is_file(), "expected {} (run scripts/fetch-vm.sh)", dir.join(f).display());
            }
            out.push(Kernel { suite: suite.into(), release: release.trim().into(), dir });
        }
        Ok(out)
    }

    /// `6_1`, `6_12`, `7_2`: the version as test names carry it.
    pub fn short_name(&self) -> String {
        self.release.split(['.', '-', '+']).take(2).collect::<Vec<_>>().join("_")
    }

    /// The root filesystem all kernels boot.
    pub fn rootfs() -> Result<PathBuf> {
        let p = Self::cache().join("rootfs.cpio");
        anyhow::ensure!(
            p.is_file(),
            "expected the node VM's root filesystem at {} (run scripts/fetch-vm.sh)",
            p.display()
        );
        Ok(p)
    }
}

/// A booted node with its agent answering.
pub struct NodeVm {
    pub kernel: Kernel,
    pub hello: Hello,
    /// From starting qemu to the agent's hello.
    pub boot_time: Duration,
    qemu: Option<Child>,
    to_agent: UnixStream,
    from_agent: mpsc::Receiver<Result<FromAgent, String>>,
    next_id: u64,
    dir: tempfile::TempDir,
}

impl NodeVm {
    /// Boots `kernel` with the prepared root filesystem, `payload` and
    /// `scratch`, and waits for the agent.
    pub fn boot(kernel: &Kernel, payload: &Payload, scratch: &ScratchDisk) -> Result<NodeVm> {
        let qemu_bin = which("qemu-system-x86_64").context("expected qemu-system-x86_64 (run scripts/fetch-vm.sh)")?;
        let dir =
            tempfile::Builder::new().prefix("iogate-vm-").tempdir_in("/var/tmp").context("creating the VM's dir")?;
        let initrd = dir.path().join("initrd.cpio");
        concatenate(&[&Kernel::rootfs()?, &kernel.dir.join("modules.cpio"), payload.cpio()], &initrd)?;
        let agent_socket = dir.path().join("agent.sock");
        let console = dir.path().join("console.log");
        let mut cmd = Command::new(qemu_bin);
        // `max`: every instruction TCG can emulate, so hashing and copying
        // in the guest run the host-like fast paths (SHA, AVX) instead of
        // the generic x86-64 code, which is far slower to emulate.
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "4096"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            // For a hang's report to say where the guest was stuck:
            // loglevel=5, as its stack traces are printed at the default
            // level (4), which loglevel=4 keeps off the console; every CPU's
            // backtrace with the first soft lockup; and the CPUs an
            // inter-processor call waits on for more than 5 s named.
            // psi=1: Debian builds its kernels with PSI off unless asked
            // (CONFIG_PSI_DEFAULT_DISABLED), as nodes that use it boot.
            .arg("-append")
            .arg(
                "console=ttyS0 rdinit=/iogate-init panic=-1 quiet loglevel=5 systemd.show_status=0 \
                 softlockup_all_cpu_backtrace=1 csdlock_debug=1 psi=1",
            )
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,cache=unsafe", scratch.image.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            // qemu waits for us to connect before it starts the guest, so
            // nothing the agent says is lost.
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={},server=on,wait=on", agent_socket.display()))
            .args(["-serial", "chardev:agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.log"))?);
        // SAFETY: prctl in the child before exec; no allocation, no locks.
        unsafe {
            cmd.pre_exec(|| {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let qemu = cmd.spawn().context("starting qemu")?;
        let mut vm = NodeVm {
            kernel: kernel.clone(),
            hello: Hello {
                kernel: String::new(),
                uptime_seconds: 0.0,
                controllers: String::new(),
                systemd: String::new(),
            },
            boot_time: Duration::ZERO,
            qemu: Some(qemu),
            to_agent: connect_when_listening(&agent_socket, Duration::from_secs(30))?,
            from_agent: mpsc::channel().1,
            next_id: 1,
            dir,
        };
        vm.from_agent = spawn_reader(vm.to_agent.try_clone()?);
        match vm.receive(BOOT_TIMEOUT, 0)? {
            FromAgent::Hello(hello) => vm.hello = hello,
            FromAgent::Fatal { message } => bail!("the node could not be prepared: {message}\n{}", vm.console_tail()),
            other => bail!("expected the agent's hello, found {other:?}"),
        }
        vm.boot_time = started.elapsed();
        Ok(vm)
    }

    /// Runs one check in the guest, handing its progress lines to
    /// `progress` as they come, and waits at most `timeout` for it.
    pub fn run(&mut self, scenario: Scenario, timeout: Duration, mut progress: impl FnMut(&str)) -> Result<Outcome> {
        let id = self.next_id;
        self.next_id += 1;
        let console_from = self.console_len();
        self.send(&ToAgent::Run { id, scenario })?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left, console_from)? {
                FromAgent::Progress { id: got, line } if got == id => progress(&line),
                FromAgent::Done { id: got, outcome } if got == id => return Ok(outcome),
                other => bail!("expected the outcome of request {id}, found {other:?}"),
            }
        }
    }

    /// Runs `command` with `sh -c` in the guest: (exit status, stdout and
    /// stderr).
    pub fn exec(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        let id = self.next_id;
        self.next_id += 1;
        let console_from = self.console_len();
        self.send(&ToAgent::Exec { id, command: command.into() })?;
        match self.receive(timeout, console_from)? {
            FromAgent::Output { id: got, status, output } if got == id => Ok((status, output)),
            other => bail!("expected the output of request {id}, found {other:?}"),
        }
    }

    /// The last lines of the guest's console: the kernel's and the agent's
    /// own output.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        console::excerpt(&text)
    }

    /// Copies the whole console to `$IOGATE_VM_CONSOLE_DIR`, when set, for
    /// reading a hang in full after the run's files are gone.
    fn keep_console(&self) {
        let Some(dir) = std::env::var_os(CONSOLE_DIR_VAR) else { return };
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let dest = Path::new(&dir).join(format!("{}-{}.console.log", self.kernel.release, since_epoch.as_secs()));
        let copied =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(self.dir.path().join("console.log"), &dest));
        match copied {
            Ok(_) => eprintln!("  the guest console is kept at {}", dest.display()),
            Err(e) => eprintln!("  keeping the guest console at {}: {e}", dest.display()),
        }
    }

    fn send(&mut self, msg: &ToAgent) -> Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        self.to_agent.write_all(&line).context("writing to the agent")
    }

    fn console_text(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("console.log")).unwrap_or_default()
    }

    fn console_len(&self) -> usize {
        std::fs::metadata(self.dir.path().join("console.log")).map_or(0, |m| m.len() as usize)
    }

    /// The agent's next message, waiting at most `timeout`; meanwhile the
    /// console written since `console_from` is watched, and a hang the guest
    /// kernel reports there ends the wait at once as [`GuestHung`].
    fn receive(&mut self, timeout: Duration, console_from: usize) -> Result<FromAgent> {
        let qemu_pid = self.qemu.as_ref().map(Child::id);
        let before = qemu_pid.and_then(QemuSample::take);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_agent.recv_timeout(left.min(HANG_WATCH_INTERVAL)) {
                Ok(Ok(msg)) => return Ok(msg),
                Ok(Err(e)) => bail!("{e}\n{}", self.console_tail()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let host = || qemu_pid.map(|pid| host_view::describe(pid, before)).unwrap_or_default();
                    let console = self.console_text();
                    let since = String::from_utf8_lossy(console.get(console_from..).unwrap_or_default());
                    if let Some(report) = console::hang_reported(&since) {
                        return Err(GuestHung {
                            report: report.trim().to_string(),
                            details: format!("{}\n{}", self.console_tail(), host()),
                        }
                        .into());
                    }
                    if left.is_zero() {
                        bail!("the agent said nothing for {timeout:?}\n{}\n{}", self.console_tail(), host())
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let console = self.console_text();
                    let since = String::from_utf8_lossy(console.get(console_from..).unwrap_or_default());
                    if let Some(panic) = console::crash_reported(&since) {
                        return Err(GuestHung { report: panic.trim().to_string(), details: self.console_tail() }.into());
                    }
                    bail!("the agent's connection ended (the guest powered off?)\n{}", self.console_tail())
                }
            }
        }
    }
}

impl Drop for NodeVm {
    fn drop(&mut self) {
        let _ = self.send(&ToAgent::PowerOff);
        self.keep_console();
        if let Some(mut qemu) = self.qemu.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = qemu.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = kill(Pid::from_raw(qemu.id() as i32), Signal::SIGKILL);
            let _ = qemu.wait();
        }
    }
}

/// Lines from the agent, parsed, on a channel (so reads can time out).
fn spawn_reader(stream: UnixStream) -> mpsc::Receiver<Result<FromAgent, String>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let msg = match line {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => serde_json::from_str::<FromAgent>(&l)
                    .map_err(|e| format!("expected a message from the agent, found {l:?}: {e}")),
                Err(e) => Err(format!("reading from the agent: {e}")),
            };
            let end = msg.is_err();
            if tx.send(msg).is_err() || end {
                return;
            }
        }
    });
    rx
}

fn connect_when_listening(socket: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("qemu never listened on {}", socket.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Concatenated cpio archives: the kernel unpacks each on top of the last.
fn concatenate(parts: &[&Path], out: &Path) -> Result<()> {
    let mut dest = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for part in parts {
        let mut src = std::fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut src, &mut dest).with_context(|| format!("copying {}", part.display()))?;
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_short_names() {
        let k = |r: &str| Kernel { suite: "x".into(), release: r.into(), dir: PathBuf::new() }.short_name();
        assert_eq!(k("6.1.0-57-amd64"), "6_1");
        assert_eq!(k("6.12.118+deb13-amd64"), "6_12");
        assert_eq!(k("7.2.13+deb14-amd64"), "7_2");
    }
}
