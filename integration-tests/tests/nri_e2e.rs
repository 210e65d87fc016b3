//! The NRI plugin against real containerd 1.7 and 2.1, real runc, a loop
//! device and fio, on this host's cgroup v1: every container gets its limits
//! before its first I/O. The same checks run on cgroup v2 with both cgroup
//! drivers in the node VM (`vm_v2.rs`).

use iogate_core::CgroupVersion;
use iogate_testbed::containerd_daemon::{CgroupDriver, Version};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::require_root;
use iogate_testbed::scenarios::policy::{full_suite, limits, limits_of_new, POLICY};
use iogate_testbed::scenarios::writeback::buffered_writes_escape_on_v1;
use iogate_testbed::scenarios::Notes;
use iogate_testbed::stack::{PluginMode, Stack, StackOptions};

fn host_v1(lock: &HostLock) -> &HostLock {
    let stack_version = iogate_core::CgroupFs::detect(iogate_core::cgroup::CgroupMode::Auto).unwrap().version;
    assert_eq!(stack_version, CgroupVersion::V1, "these tests are the cgroup v1 half; v2 runs in the node VM");
    lock
}

#[test]
fn cgroup_v1_containerd_1_7() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    full_suite(host_v1(&lock), Version::V1_7, CgroupDriver::Cgroupfs, &mut Notes::printed());
}

#[test]
fn cgroup_v1_containerd_2_1() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    full_suite(host_v1(&lock), Version::V2_1, CgroupDriver::Cgroupfs, &mut Notes::printed());
}

/// The measured fact that cgroup v1 cannot hold buffered writes: the
/// kernel's flusher threads write the pages back, and v1 charges that to
/// the root cgroup. The sidecar shows where it went.
#[test]
fn cgroup_v1_buffered_writes_escape_the_limit_and_are_charged_outside_the_pod() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    let mut stack = Stack::start(host_v1(&lock), StackOptions::external(Version::V2_1, POLICY)).unwrap();
    buffered_writes_escape_on_v1(&mut stack, &mut Notes::printed());
}

/// Started by containerd from its plugin directory, configured by the file
/// containerd hands it over NRI.
#[test]
fn pre_registered_plugin() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    for version in Version::ALL {
        let opts = StackOptions { plugin: PluginMode::PreRegistered, ..StackOptions::external(version, POLICY) };
        let mut stack = Stack::start(&lock, opts).unwrap();
        let got = limits_of_new(&mut stack, "shop", "pre", "app", &[("iogate.io/write-iops", "150")]);
        assert_eq!(got, limits(100, 150), "{version}: pre-registered plugin");
        // The defaults came from the config containerd passed over NRI: the
        // plugin's own start-up default (/data) does not exist here.
        let log = stack.plugin_log();
        assert!(log.contains("start-up policy not usable, expecting one from containerd"), "{log}");
        assert!(log.contains("read-iops=100 (default)"), "{log}");
    }
}

/// containerd without NRI (the setup of clusters not yet on 1.7): the OCI
/// hook comes from a CRI base runtime spec made by the shipped recipe, and
/// decides from the pod annotations containerd copies into the spec.
#[test]
fn base_runtime_spec_hook_without_nri() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    let opts =
        StackOptions { plugin: PluginMode::BaseRuntimeSpecHook, ..StackOptions::external(Version::V1_7, POLICY) };
    let mut stack = Stack::start(&lock, opts).unwrap();
    let got = limits_of_new(&mut stack, "shop", "legacy", "app", &[("iogate.io/write-iops", "90")]);
    assert_eq!(got, limits(100, 90), "base runtime spec hook");
    let log = stack.plugin_log();
    assert!(log.contains("pod shop/legacy container app: cgroup v1"), "{log}");
}
