//! Limits that hold, on real containerd 1.7 and 2.1 on this host's cgroup
//! v1: the reconciler's promises (`testbed/src/scenarios/guarantee.rs`).
//! The node VM's agent can run the same checks on cgroup v2 (the `Check`
//! variants of the same names), where NRI UpdateContainers may carry the
//! limits; `vm_v2.rs` does not schedule them yet.
//!
//! Every stack's teardown also asserts that no container ended in state
//! `unlimited_unexpectedly` (`Stack::finish`).

use iogate_core::CgroupVersion;
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::require_root;
use iogate_testbed::scenarios::guarantee;
use iogate_testbed::scenarios::policy::POLICY;
use iogate_testbed::scenarios::Notes;
use iogate_testbed::stack::{Stack, StackOptions};

fn host_v1() {
    let version = iogate_core::CgroupFs::detect(iogate_core::cgroup::CgroupMode::Auto).unwrap().version;
    assert_eq!(version, CgroupVersion::V1, "these tests are the cgroup v1 half; v2 runs in the node VM");
}

/// Outage, drift, live annotations and policy, and what containerd does
/// with NRI UpdateContainers on cgroup v1, on one stack.
fn one_disk(version: Version) {
    require_root();
    host_v1();
    let lock = HostLock::acquire().unwrap();
    let mut notes = Notes::printed();
    let mut stack = Stack::start(&lock, StackOptions::external(version, POLICY)).unwrap();
    guarantee::outage_repaired_after_restart(&mut stack, &mut notes);
    guarantee::overwritten_limit_restored(&mut stack, &mut notes);
    guarantee::live_policy(&mut stack, &mut notes);
    let landed = guarantee::update_containers_measured(&mut stack, &mut notes);
    assert!(!landed, "{version}: runc refuses unified resources on cgroup v1, yet UpdateContainers landed");
    stack.finish().unwrap();
}

fn failing_hook(version: Version, strict: bool) {
    require_root();
    host_v1();
    let lock = HostLock::acquire().unwrap();
    let mut notes = Notes::printed();
    let mut opts = StackOptions::external(version, POLICY).with_disks(2);
    if strict {
        opts.plugin_env.push(("IOGATE_STRICT".into(), "true".into()));
    }
    let mut stack = Stack::start(&lock, opts).unwrap();
    if strict {
        guarantee::hook_failure_refused_in_strict_mode(&mut stack, &mut notes);
    } else {
        guarantee::hook_failure_repaired(&mut stack, &mut notes);
    }
    stack.finish().unwrap();
}

#[test]
fn containerd_1_7_outage_drift_live_policy() {
    one_disk(Version::V1_7);
}

#[test]
fn containerd_2_1_outage_drift_live_policy() {
    one_disk(Version::V2_1);
}

#[test]
fn containerd_1_7_failed_hook_repaired() {
    failing_hook(Version::V1_7, false);
}

#[test]
fn containerd_2_1_failed_hook_repaired() {
    failing_hook(Version::V2_1, false);
}

#[test]
fn containerd_1_7_failed_hook_refused_in_strict_mode() {
    failing_hook(Version::V1_7, true);
}

#[test]
fn containerd_2_1_failed_hook_refused_in_strict_mode() {
    failing_hook(Version::V2_1, true);
}
