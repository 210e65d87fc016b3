//! cgroup v2 for real: the checks of the host's end-to-end tests, run inside
//! a Debian 12 node VM with systemd as PID 1 (pure cgroup v2), on
//! containerd 1.7 and 2.1, with the systemd and the cgroupfs cgroup driver,
//! and the metrics sidecar's eBPF program on each of Debian's kernels
//! (bookworm 6.1, trixie 6.12, sid's newest). See `testbed/src/vm`.
//!
//! Each check is a test of its own, named for where it ran:
//! `vm_v2_<driver>_containerd_<version>_<check>` on the Debian 12 node
//! kernel, `vm_v2_kernel_<version>_<check>` for the per-kernel checks. One
//! VM per kernel serves all of that kernel's tests, one test at a time.

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use iogate_testbed::containerd_daemon::{CgroupDriver, Version};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::scenarios::policy::Scope;
use iogate_testbed::scenarios::{Check, Scenario};
use iogate_testbed::vm::{GuestHung, Kernel, NodeVm, Payload, ScratchDisk};
use libtest_mimic::{Arguments, Failed, Trial};

/// Longest a single check may take under TCG.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

struct Booted {
    vm: Option<NodeVm>,
    /// Why a kernel did not boot: its other tests fail at once with it.
    failed: Vec<(String, String)>,
    /// This build's binaries, packed once for every boot.
    payload: Option<Result<Payload, String>>,
    /// The guest's /var/tmp, kept from one boot to the next.
    scratch: Option<Result<ScratchDisk, String>>,
}

static BOOTED: Mutex<Booted> = Mutex::new(Booted { vm: None, failed: Vec::new(), payload: None, scratch: None });

fn version_name(v: Version) -> &'static str {
    match v {
        Version::V1_7 => "1_7",
        Version::V2_1 => "2_1",
    }
}

/// Runs `scenario` on `kernel`, booting it first if the running VM is
/// another kernel's (or none). A guest whose kernel reports that it hung
/// (see [`GuestHung`]) is powered off, and the check runs once more on a
/// fresh boot, saying so: the emulated node stopped, not the check. A
/// second hang, or any other failure, fails the test.
fn run_in_vm(kernel: &Kernel, scenario: Scenario) -> Result<(), Failed> {
    let mut guard = BOOTED.lock().unwrap_or_else(|p| p.into_inner());
    let booted = &mut *guard;
    match attempt(booted, kernel, scenario) {
        Err(Attempt::Hung(hung)) => {
            println!("  THE GUEST HUNG: {}; rebooting on a fresh scratch disk to run the check once more", hung.report);
            println!("{}", hung.details);
            match attempt(booted, kernel, scenario) {
                Ok(()) => {
                    println!("  the check passed on the fresh boot, after the guest hang above");
                    Ok(())
                }
                Err(Attempt::Hung(again)) => Err(format!(
                    "the guest hung twice: first {}, then {}\n{}",
                    hung.report, again.report, again.details
                )
                .into()),
                Err(Attempt::Failed(f)) => Err(f),
            }
        }
        Err(Attempt::Failed(f)) => Err(f),
        Ok(()) => Ok(()),
    }
}

enum Attempt {
    Hung(GuestHung),
    Failed(Failed),
}

impl<T: Into<Failed>> From<T> for Attempt {
    fn from(f: T) -> Attempt {
        Attempt::Failed(f.into())
    }
}

/// The running VM, if it is `kernel`'s; otherwise `kernel` booted.
fn booted_vm<'a>(booted: &'a mut Booted, kernel: &Kernel) -> Result<&'a mut NodeVm, Failed> {
    if let Some((_, why)) = booted.failed.iter().find(|(suite, _)| *suite == kernel.suite) {
        return Err(format!("kernel {} did not boot: {why}", kernel.release).into());
    }
    let payload = match booted.payload.get_or_insert_with(|| Payload::build().map_err(|e| format!("{e:#}"))) {
        Ok(p) => p,
        Err(e) => return Err(format!("packing this build for the VM: {e}").into()),
    };
    let scratch = match booted.scratch.get_or_insert_with(|| ScratchDisk::new().map_err(|e| format!("{e:#}"))) {
        Ok(s) => s,
        Err(e) => return Err(format!("creating the VM's scratch disk: {e}").into()),
    };
    if booted.vm.as_ref().is_none_or(|vm| vm.kernel.suite != kernel.suite) {
        booted.vm = None;
        // A guest kernel that hangs or panics while booting is the emulated
        // node stopping, as in a check (see `run_in_vm`): once more, said so.
        let boot = match NodeVm::boot(kernel, payload, scratch) {
            Err(e) if e.is::<GuestHung>() => {
                let hung = e.downcast::<GuestHung>().expect("checked above");
                println!("  THE GUEST STOPPED WHILE BOOTING: {}; booting once more", hung.report);
                println!("{}", hung.details);
                NodeVm::boot(kernel, payload, scratch)
            }
            other => other,
        };
        match boot {
            Ok(vm) => {
                println!(
                    "  booted {} ({}) in {:.1} s (guest uptime {:.1} s at the agent's hello); cgroup2 controllers: {}; {}",
                    kernel.release,
                    kernel.suite,
                    vm.boot_time.as_secs_f64(),
                    vm.hello.uptime_seconds,
                    vm.hello.controllers,
                    vm.hello.systemd
                );
                booted.vm = Some(vm);
            }
            Err(e) => {
                let why = format!("{e:#}");
                booted.failed.push((kernel.suite.clone(), why.clone()));
                return Err(format!("booting {}: {why}", kernel.release).into());
            }
        }
    }
    Ok(booted.vm.as_mut().expect("booted above"))
}

fn attempt(booted: &mut Booted, kernel: &Kernel, scenario: Scenario) -> Result<(), Attempt> {
    let vm = booted_vm(booted, kernel)?;
    match vm.run(scenario, CHECK_TIMEOUT, |line| println!("  {line}")) {
        Ok(outcome) => {
            println!("  ({scenario} took {:.1} s in the VM)", outcome.seconds);
            match outcome.failure {
                None => Ok(()),
                Some(failure) => Err(format!("{failure}\n{}", vm.console_tail()).into()),
            }
        }
        Err(e) => {
            // The agent is gone or stuck: the next test boots afresh, on a
            // fresh scratch disk (containerd's roots on this one may hold
            // what a guest killed half-way through a pod left behind).
            booted.vm = None;
            booted.scratch = None;
            match e.downcast::<GuestHung>() {
                Ok(hung) => Err(Attempt::Hung(hung)),
                Err(e) => Err(format!("{e:#}").into()),
            }
        }
    }
}

/// A hang the guest kernel reports ends the wait for the agent within
/// seconds, as [`GuestHung`] with the report, instead of after the check's
/// whole timeout. The report is written to the kernel log from user space,
/// as the soft-lockup watchdog words it; the VM is powered off after.
fn a_reported_hang_ends_the_wait(kernel: &Kernel) -> Result<(), Failed> {
    let mut guard = BOOTED.lock().unwrap_or_else(|p| p.into_inner());
    let booted = &mut *guard;
    let vm = booted_vm(booted, kernel)?;
    let report = "watchdog: BUG: soft lockup - CPU#1 stuck for 99s! [iogate-hang-test:1]";
    let started = std::time::Instant::now();
    let answer = vm.exec(&format!("echo '<0>{report}' > /dev/kmsg && sleep 120"), Duration::from_secs(100));
    let waited = started.elapsed();
    booted.vm = None;
    match answer {
        Err(e) => match e.downcast::<GuestHung>() {
            Ok(hung) if hung.report.ends_with(report) && waited < Duration::from_secs(30) => {
                println!("  the reported hang ended the wait after {:.1} s: {}", waited.as_secs_f64(), hung.report);
                Ok(())
            }
            Ok(hung) => Err(format!(
                "expected the report {report:?} to end the wait within 30 s; it took {:.1} s and said {:?}",
                waited.as_secs_f64(),
                hung.report
            )
            .into()),
            Err(e) => Err(format!("expected the guest hang {report:?}, found another error: {e:#}").into()),
        },
        Ok((status, output)) => {
            Err(format!("expected the guest hang {report:?}, found the command's end ({status}): {output}").into())
        }
    }
}

fn trial(name: String, kernel: &Kernel, scenario: Scenario) -> Trial {
    let kernel = kernel.clone();
    Trial::test(name, move || run_in_vm(&kernel, scenario))
}

/// The checks, kernel by kernel, in the order they run: checks on the same
/// containerd and driver follow each other, so they share one stack in the
/// guest.
fn trials() -> Result<Vec<Trial>, String> {
    let kernels = Kernel::all().map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    let on = |check, containerd, driver| Scenario { check, containerd, driver };
    for (i, kernel) in kernels.iter().enumerate() {
        let k = kernel.short_name();
        let per_kernel = |check: Check| {
            let name = format!("vm_v2_kernel_{k}_{}", check.test_name());
            trial(name, kernel, on(check, Version::V2_1, CgroupDriver::Systemd))
        };
        if i > 0 {
            // Other kernels: the eBPF program's loading and attribution (its
            // stack's start-up and the pod's limits come with it).
            out.push(per_kernel(Check::SidecarAttribution));
            out.push(per_kernel(Check::ThrottleWait));
            out.push(per_kernel(Check::IoPressure));
            continue;
        }
        // The Debian 12 node's own kernel carries the whole matrix: each
        // containerd with each driver. Two of the four carry everything
        // else that touches a cgroup (several disks, buffered writes, the
        // reconciler); the other two check the limits from the first I/O.
        // The whole policy suite runs once: its decisions do not depend on
        // the driver, and the cgroupfs paths it would write at Synchronize
        // are the reconciler's, which the drift check writes (154 s of
        // emulation less).
        out.push(per_kernel(Check::ContainerdReady));
        out.push(per_kernel(Check::SidecarAttribution));
        out.push(per_kernel(Check::ThrottleWait));
        out.push(per_kernel(Check::IoPressure));
        for (driver, version, everything) in [
            (CgroupDriver::Systemd, Version::V2_1, true),
            (CgroupDriver::Systemd, Version::V1_7, false),
            (CgroupDriver::Cgroupfs, Version::V2_1, false),
            (CgroupDriver::Cgroupfs, Version::V1_7, true),
        ] {
            let whole_policy = driver == CgroupDriver::Systemd && version == Version::V2_1;
            let first = if whole_policy { Check::Policy(Scope::Everything) } else { Check::FirstIo };
            let mut checks = vec![first, Check::LimitsHold];
            if everything {
                // Buffered writes on both drivers and both containerds (the
                // two combinations that carry everything): writeback is
                // charged by the kernel, the same under each; one run is
                // 45 s of emulation.
                checks.push(Check::BufferedWrites);
                // Limits that hold: drift and what NRI UpdateContainers does
                // with unified io.max, under each driver and containerd;
                // the outage and live changes once (the same reconciler
                // code on the same paths). The failed-hook checks are
                // cgroup v1's: on v2 one disk's limits ride in the NRI
                // adjustment, and no hook is injected.
                checks.extend([Check::DriftRepaired, Check::UpdateContainersLands]);
                if version == Version::V2_1 {
                    checks.extend([Check::OutageRepaired, Check::LivePolicy]);
                }
                // Two disks: a stack of its own, so last.
                checks.push(Check::SeveralDevices);
            }
            for check in checks {
                let name =
                    format!("vm_v2_{}_containerd_{}_{}", driver.name(), version_name(version), check.test_name());
                out.push(trial(name, kernel, on(check, version, driver)));
            }
        }
        // Last on this kernel: it powers the VM off.
        let hang_kernel = kernel.clone();
        out.push(Trial::test(format!("vm_v2_kernel_{k}_a_hang_the_guest_reports_ends_the_wait"), move || {
            a_reported_hang_ends_the_wait(&hang_kernel)
        }));
    }
    Ok(out)
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One VM at a time, on the main thread (qemu dies with the thread that
    // started it, by its parent-death signal).
    args.test_threads = Some(1);
    let trials = trials()
        .unwrap_or_else(|why| vec![Trial::test("vm_v2_node_vm_is_prepared", move || Err(Failed::from(why.clone())))]);
    // The VM takes both cores: no other end-to-end test may measure
    // anything meanwhile.
    let _lock = match HostLock::acquire() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("vm_v2: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let conclusion = libtest_mimic::run(&args, trials);
    // Statics are never dropped: power off and remove by hand.
    let mut booted = BOOTED.lock().unwrap_or_else(|p| p.into_inner());
    booted.vm = None;
    booted.payload = None;
    booted.scratch = None;
    conclusion.exit_code()
}
