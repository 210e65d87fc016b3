//! `iogate-vm-agent PORT`: the node VM's side of the VM tests.
//!
//! A systemd service in the guest (see `scripts/fetch-vm.sh`). It prepares
//! the node (loads the modules, formats the scratch disk as `/var/tmp`),
//! says hello on `PORT` (the second serial port), then runs each check the
//! host asks for with the testbed's own code and answers with its outcome,
//! until the host asks it to power the node off.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::scenarios::{Notes, Stacks};
use iogate_testbed::vm::protocol::{FromAgent, Hello, Outcome, ToAgent};

/// The guest's modules (as `scripts/fetch-vm.sh` packs them); built-in ones
/// are fine too (modprobe knows), and `crc32c` is an alias: ext4 needs the
/// algorithm, which kernels put in differently named modules.
const MODULES: [&str; 6] = ["virtio_pci", "virtio_blk", "crc32c", "ext4", "loop", "overlay"];
const SCRATCH: &str = "/dev/vda";
/// A cgroup that holds the cpuset controller for the whole boot
/// ([`hold_cpuset_keys`]).
const CPUSET_HOLD: &str = "/sys/fs/cgroup/iogate-cpuset-hold";

/// The last panic's message and place, for the outcome.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn main() -> ExitCode {
    let Some(port) = std::env::args().nth(1) else {
        eprintln!("usage: iogate-vm-agent PORT (the serial port the host test listens on)");
        return ExitCode::from(2);
    };
    match serve(Path::new(&port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iogate-vm-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(port: &Path) -> Result<()> {
    let file =
        OpenOptions::new().read(true).write(true).open(port).with_context(|| format!("opening {}", port.display()))?;
    raw_mode(&file).with_context(|| format!("setting {} to raw mode", port.display()))?;
    let out = Arc::new(Mutex::new(file.try_clone()?));
    let input = BufReader::new(file);

    if let Err(e) = prepare_node() {
        send(&out, &FromAgent::Fatal { message: format!("{e:#}") })?;
        return Err(e);
    }
    let lock = HostLock::acquire()?;
    send(&out, &FromAgent::Hello(hello()?))?;

    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        eprintln!("{text}");
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }));
    let mut stacks = Stacks::default();
    for line in input.lines() {
        let line = line.context("reading from the host")?;
        if line.trim().is_empty() {
            continue;
        }
        let msg: ToAgent =
            serde_json::from_str(&line).with_context(|| format!("expected a request from the host, found {line:?}"))?;
        match msg {
            ToAgent::Run { id, scenario } => {
                eprintln!("iogate-vm-agent: running {scenario}");
                let started = Instant::now();
                let progress = Arc::clone(&out);
                let mut notes = Notes::watched(move |line| {
                    eprintln!("iogate-vm-agent: {line}");
                    let _ = send(&progress, &FromAgent::Progress { id, line: line.to_string() });
                });
                let result =
                    std::panic::catch_unwind(AssertUnwindSafe(|| scenario.run(&lock, &mut stacks, &mut notes)));
                if result.is_err() {
                    // Half a check's pods, plugin or containerd may be left.
                    stacks.discard();
                }
                let failure = result.err().map(|payload| {
                    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| {
                        payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "the check panicked".into())
                    })
                });
                // The lines went to the host as they came.
                drop(notes);
                let outcome = Outcome { failure, seconds: started.elapsed().as_secs_f64() };
                send(&out, &FromAgent::Done { id, outcome })?;
            }
            ToAgent::Exec { id, command } => {
                let (status, output) = match Command::new("sh").arg("-c").arg(&command).output() {
                    Ok(o) => (
                        o.status.code().unwrap_or(-1),
                        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
                    ),
                    Err(e) => (-1, format!("running sh -c {command:?}: {e}")),
                };
                send(&out, &FromAgent::Output { id, status, output })?;
            }
            ToAgent::PowerOff => break,
        }
    }
    stacks.discard();
    drop(lock);
    let _ = Command::new("sync").status();
    let _ = Command::new("systemctl").args(["poweroff", "--no-block"]).status();
    Ok(())
}

/// Modules, and the scratch disk as `/var/tmp` (containerd's root and the
/// tests' loop disks want a real block device under them, not the
/// initramfs's tmpfs).
fn prepare_node() -> Result<()> {
    hold_cpuset_keys()?;
    for m in MODULES {
        run(Command::new("modprobe").arg(m))?;
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !Path::new(SCRATCH).exists() {
        if Instant::now() > deadline {
            bail!("expected the scratch disk at {SCRATCH} after loading virtio_blk, found none");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::create_dir_all("/var/tmp")?;
    // The disk outlives the boot: formatted by the first one only.
    if run(Command::new("mount").args([SCRATCH, "/var/tmp"])).is_err() {
        // Fully initialised now rather than by a kernel thread later, whose
        // writes would compete with what the checks measure; one inode per
        // MiB keeps that quick on a 16 GiB disk under emulation.
        run(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            "-i",
            "1048576",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            SCRATCH,
        ]))?;
        run(Command::new("mount").args([SCRATCH, "/var/tmp"]))?;
    }
    Ok(())
}

/// Keeps the kernel's cpuset static keys on from boot to power-off. They
/// flip whenever the first cpuset cgroup below the root comes or the last
/// one goes, as pods' slices do, and each flip rewrites kernel code on the
/// fly; multi-threaded TCG has been seen to run the rewritten code's stale
/// translation for good, a guest hang (docs/testing.md, "A guest that
/// hangs"). A cgroup with cpuset on in its own subtree below the root pins
/// the count above zero, and forbids the root to turn cpuset off.
fn hold_cpuset_keys() -> Result<()> {
    let enable = |dir: &str| {
        let control = format!("{dir}/cgroup.subtree_control");
        std::fs::write(&control, "+cpuset").with_context(|| format!("enabling cpuset in {control}"))
    };
    enable("/sys/fs/cgroup")?;
    std::fs::create_dir_all(CPUSET_HOLD).with_context(|| format!("creating {CPUSET_HOLD}"))?;
    enable(CPUSET_HOLD)?;
    let pin = format!("{CPUSET_HOLD}/pin");
    std::fs::create_dir_all(&pin).with_context(|| format!("creating {pin}"))?;
    let held = Path::new(&pin).join("cpuset.cpus.effective");
    if !held.exists() {
        bail!("expected {} once cpuset was enabled above it, found none", held.display());
    }
    Ok(())
}

fn hello() -> Result<Hello> {
    let read =
        |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).with_context(|| format!("reading {p}"));
    let uptime: f64 = read("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("expected seconds in /proc/uptime")?;
    let systemd = Command::new("systemctl").arg("--version").output().context("running systemctl --version")?;
    Ok(Hello {
        kernel: read("/proc/sys/kernel/osrelease")?,
        uptime_seconds: uptime,
        controllers: read("/sys/fs/cgroup/cgroup.controllers")?,
        systemd: String::from_utf8_lossy(&systemd.stdout).lines().next().unwrap_or_default().to_string(),
    })
}

/// One message, one line; the lock keeps a progress line from the middle
/// of another message.
fn send(out: &Mutex<std::fs::File>, msg: &FromAgent) -> Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    let mut port = out.lock().unwrap_or_else(|p| p.into_inner());
    port.write_all(&line).context("writing to the host")?;
    port.flush()?;
    Ok(())
}

/// No echo, no line editing, no flow control, no CR/LF translation: the
/// port carries JSON lines both ways, byte for byte.
fn raw_mode(file: &std::fs::File) -> Result<()> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let mut t = tcgetattr(file.as_fd())?;
    cfmakeraw(&mut t);
    tcsetattr(file.as_fd(), SetArg::TCSANOW, &t)?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
