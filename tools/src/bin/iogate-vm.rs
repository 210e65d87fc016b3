//! `iogate-vm [--kernel SUITE] [COMMAND]...`: boots the node VM the VM
//! tests use (`testbed/src/vm`; `scripts/fetch-vm.sh` prepares it), runs
//! each COMMAND in the guest with `sh -c`, prints what it printed, and
//! powers the guest off. For looking around the node when a VM test fails:
//!
//! ```text
//! cargo build --workspace --bins
//! cargo run -p iogate-tools --bin iogate-vm -- --kernel trixie 'systemd-analyze blame | head' 'dmesg | tail'
//! ```

use std::time::Duration;

use anyhow::{bail, Context, Result};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::vm::{Kernel, NodeVm, Payload, ScratchDisk};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let mut suite = Kernel::SUITES[0].to_string();
    if args.peek().map(String::as_str) == Some("--kernel") {
        args.next();
        suite = args.next().context("--kernel expects a suite (bookworm, trixie or sid)")?;
    }
    let commands: Vec<String> = args.collect();
    let kernels = Kernel::all()?;
    let Some(kernel) = kernels.iter().find(|k| k.suite == suite) else {
        bail!("expected a kernel suite of {:?}, found {suite:?}", Kernel::SUITES);
    };
    // The VM takes both cores: end-to-end tests must not measure meanwhile.
    let _lock = HostLock::acquire()?;
    let payload = Payload::build()?;
    let scratch = ScratchDisk::new()?;
    let mut vm = NodeVm::boot(kernel, &payload, &scratch)?;
    println!(
        "booted {} in {:.1} s (guest uptime {:.1} s at the agent's hello)",
        kernel.release,
        vm.boot_time.as_secs_f64(),
        vm.hello.uptime_seconds
    );
    for command in commands {
        let (status, output) = vm.exec(&command, Duration::from_secs(600))?;
        println!("$ {command}\n{output}(exit status {status})");
    }
    Ok(())
}
