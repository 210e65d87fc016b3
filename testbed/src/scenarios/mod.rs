//! The checks that run both on this host (cgroup v1) and inside the node VM
//! (cgroup v2, systemd), written once so that both prove the same thing.
//!
//! A check panics with its message when an assertion fails, like a test;
//! on the host a `#[test]` calls it, in the VM the agent catches the panic
//! and sends the message back. What a check measured goes into [`Notes`],
//! which the host prints either way.

pub mod attribution;
pub mod devices;
pub mod guarantee;
pub mod holding;
pub mod io_pressure;
mod notes;
pub mod policy;
pub mod throttle_wait;
pub mod writeback;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::containerd_daemon::{CgroupDriver, Version};
use crate::host_lock::HostLock;
use crate::stack::{Stack, StackOptions};

pub use notes::Notes;

/// One check of the node VM, on one containerd with one cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// containerd starts and answers CRI, the plugin connects, the first
    /// pod is limited: how long that takes on the booted node.
    ContainerdReady,
    /// The default limits in a fio pod's cgroup from its first I/O
    /// ([`policy::first_io`]).
    FirstIo,
    /// The policy's behaviours that touch cgroups ([`policy::Scope::Cgroups`]),
    /// or all of them ([`policy::Scope::Everything`], the host's suite).
    Policy(policy::Scope),
    /// Buffered writes held to the write limit ([`writeback`]).
    BufferedWrites,
    /// Limits still in force after `systemctl daemon-reload` and a
    /// containerd restart ([`holding`]).
    LimitsHold,
    /// Several data disks: the limits reach every one of them through the
    /// createRuntime hook ([`devices`]).
    SeveralDevices,
    /// The metrics sidecar's eBPF program loads on this kernel and charges
    /// a pod's I/O to the pod ([`attribution`]).
    SidecarAttribution,
    /// A pod held to 100 IOPS at iodepth 32: the sidecar's throttle wait
    /// within 20 % of fio's extra latency ([`throttle_wait`]).
    ThrottleWait,
    /// A pod held to 100 IOPS with one synchronous reader: its PSI stall
    /// time within 20 % of fio's time in reads ([`io_pressure`]).
    IoPressure,
    /// Two disks, the first disappears: the hook's failure is reported,
    /// counted and repaired at start ([`guarantee::hook_failure_repaired`]).
    /// Takes the disk away: the stack is discarded after it.
    HookFailureRepaired,
    /// The same in strict mode: the container is refused
    /// ([`guarantee::hook_failure_refused_in_strict_mode`]).
    HookFailureRefused,
    /// Plugin killed, a pod created, plugin restarted: its limits within an
    /// interval ([`guarantee::outage_repaired_after_restart`]).
    OutageRepaired,
    /// A limit overwritten by hand is restored within an interval, and how
    /// ([`guarantee::overwritten_limit_restored`]).
    DriftRepaired,
    /// Whether NRI UpdateContainers with unified io.max lands on this
    /// containerd ([`guarantee::update_containers_measured`]).
    UpdateContainersLands,
    /// Annotations and the policy file changed on a running pod
    /// ([`guarantee::live_policy`]).
    LivePolicy,
}

impl Check {
    /// The part of a test name that says what the check proves.
    pub fn test_name(self) -> &'static str {
        match self {
            Check::ContainerdReady => "boots_to_a_ready_containerd",
            Check::FirstIo => "limits_from_the_first_io",
            Check::Policy(policy::Scope::Everything) => "whole_policy_suite",
            Check::Policy(policy::Scope::Cgroups) => {
                "limits_from_the_first_io_annotations_ceilings_restart_synchronize"
            }
            Check::BufferedWrites => "buffered_writes_held_to_the_write_limit",
            Check::LimitsHold => "limits_survive_daemon_reload_and_containerd_restart",
            Check::SeveralDevices => "several_devices_limited_through_the_hook",
            Check::SidecarAttribution => "sidecar_attributes_a_pod_within_5_percent",
            Check::ThrottleWait => "throttle_wait_within_20_percent_of_fio",
            Check::IoPressure => "io_pressure_within_20_percent_of_fios_time_in_reads",
            Check::HookFailureRepaired => "failed_hook_reported_counted_and_repaired",
            Check::HookFailureRefused => "failed_hook_refuses_the_container_in_strict_mode",
            Check::OutageRepaired => "pod_created_during_an_outage_limited_after_restart",
            Check::DriftRepaired => "overwritten_limit_restored_within_an_interval",
            Check::UpdateContainersLands => "nri_update_containers_with_unified_io_max",
            Check::LivePolicy => "annotation_and_config_changes_reach_running_pods",
        }
    }

    fn disks(self) -> usize {
        match self {
            Check::SeveralDevices | Check::HookFailureRepaired | Check::HookFailureRefused => 2,
            _ => 1,
        }
    }

    /// The stack's plugin runs in strict mode.
    fn strict(self) -> bool {
        self == Check::HookFailureRefused
    }

    /// The check takes a data disk away: no later check can use its stack.
    fn consumes_stack(self) -> bool {
        matches!(self, Check::HookFailureRepaired | Check::HookFailureRefused)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub check: Check,
    pub containerd: Version,
    pub driver: CgroupDriver,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {} with the {}", self.check, self.containerd, self.driver)
    }
}

/// The stack the last checks ran on, kept for the next check that wants the
/// same containerd, driver and disks: starting one is most of a minute
/// under emulation. Checks leave it as they found it (their pods removed,
/// the plugin as started).
#[derive(Default)]
pub struct Stacks {
    current: Option<((Version, CgroupDriver, usize, bool), Stack)>,
}

impl Stacks {
    fn get(&mut self, lock: &HostLock, scenario: &Scenario, notes: &mut Notes) -> &mut Stack {
        let key = (scenario.containerd, scenario.driver, scenario.check.disks(), scenario.check.strict());
        if self.current.as_ref().is_none_or(|(k, _)| *k != key) {
            // Each check asserted the guarantee at its end (`run`).
            self.discard();
            let mut opts = StackOptions::external(key.0, policy::POLICY).with_driver(key.1).with_disks(key.2);
            if key.3 {
                opts.plugin_env.push(("IOGATE_STRICT".into(), "true".into()));
            }
            let stack = Stack::start(lock, opts).unwrap();
            notes.note(format!(
                "{} with the {}, {} disk(s): stack ready in {:.1} s ({})",
                key.0,
                key.1,
                key.2,
                stack.startup.total().as_secs_f64(),
                stack.startup
            ));
            self.current = Some((key, stack));
        }
        &mut self.current.as_mut().expect("started above").1
    }

    /// Forgets the stack (a check failed half-way: it may not be clean),
    /// without the teardown's guarantee check: the failure is reported.
    pub fn discard(&mut self) {
        if let Some((_, stack)) = self.current.take() {
            stack.discard();
        }
    }
}

impl Scenario {
    /// Runs the check on the kept stack (or a new one); panics (like a
    /// test) when it fails. The caller discards `stacks` after a panic.
    pub fn run(&self, lock: &HostLock, stacks: &mut Stacks, notes: &mut Notes) {
        let stack = stacks.get(lock, self, notes);
        match self.check {
            Check::ContainerdReady => policy::first_pod_limited(stack, notes),
            Check::FirstIo => policy::first_io(stack, notes),
            Check::Policy(scope) => policy::suite_on(stack, scope, notes),
            Check::BufferedWrites => writeback::buffered_writes_held(stack, notes),
            Check::LimitsHold => holding::limits_survive_reload_and_restart(stack, notes),
            Check::SeveralDevices => devices::several_devices(stack, notes),
            Check::SidecarAttribution => attribution::pod_attributed(stack, notes),
            Check::ThrottleWait => throttle_wait::wait_within_20_percent_of_fio(stack, notes),
            Check::IoPressure => io_pressure::stall_of_a_throttled_reader(stack, notes),
            Check::HookFailureRepaired => guarantee::hook_failure_repaired(stack, notes),
            Check::HookFailureRefused => guarantee::hook_failure_refused_in_strict_mode(stack, notes),
            Check::OutageRepaired => guarantee::outage_repaired_after_restart(stack, notes),
            Check::DriftRepaired => guarantee::overwritten_limit_restored(stack, notes),
            Check::UpdateContainersLands => {
                guarantee::update_containers_measured(stack, notes);
            }
            Check::LivePolicy => guarantee::live_policy(stack, notes),
        }
        // What every test ends with (the stack's teardown asserts it on
        // the host; a kept stack is torn down only later).
        stack.assert_no_unlimited_unexpectedly().unwrap();
        stack.cri().remove_all_pods().unwrap();
        if self.check.consumes_stack() {
            stacks.discard();
        }
    }
}
