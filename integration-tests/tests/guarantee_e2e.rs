//! Limits that hold, on real containerd 1.7 and 2.1 on this host's cgroup
//! v1: the reconciler's promises (`testbed/src/scenarios/guarantee.rs`).
//! The node VM runs the same checks on cgroup v2 (`vm_v2.rs`, the `Check`
//! variants of the same names), where NRI UpdateContainers may carry the
//! limits. Here also: a container the plugin cannot limit is marked in
//! `kubectl iogate top`, through the sidecar.
//!
//! Every stack's teardown also asserts that no container ended in state
//! `unlimited_unexpectedly` (`Stack::finish`).

use std::process::Command;
use std::time::{Duration, Instant};

use iogate_core::CgroupVersion;
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::fio::{Job, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::scenarios::guarantee;
use iogate_testbed::scenarios::policy::POLICY;
use iogate_testbed::scenarios::Notes;
use iogate_testbed::sidecar::Sidecar;
use iogate_testbed::stack::DATA_IN_CONTAINER;
use iogate_testbed::stack::{Stack, StackOptions, RECONCILE_INTERVAL};
use iogate_testbed::{require_root, workspace_binary};

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

/// Covers a file the kernel reads from, for as long as it lives: unmounted
/// on drop, whatever the test did.
struct Covered(std::path::PathBuf);

impl Covered {
    fn with_dev_null(file: std::path::PathBuf) -> Covered {
        let status = Command::new("mount").arg("--bind").arg("/dev/null").arg(&file).status().unwrap();
        assert!(status.success(), "mount --bind /dev/null {}", file.display());
        Covered(file)
    }
}

impl Drop for Covered {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A running container's limit file covered (a bind mount of /dev/null),
/// so that the reconciler reads no limit back and no repair can be
/// verified: the plugin says `unlimited_unexpectedly`, the sidecar passes
/// it on, and `kubectl iogate top` marks the container and says what the
/// mark means.
#[test]
fn containerd_2_1_a_container_left_unlimited_is_marked_in_kubectl_iogate_top() {
    require_root();
    host_v1();
    let lock = HostLock::acquire().unwrap();
    let policy = "[defaults]\nread-iops = 200\nwrite-iops = 200\n";
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, policy)).unwrap();
    let plugin = stack.plugin_addr.to_string();
    let sidecar = Sidecar::start(Duration::from_secs(1), &["--source", "ebpf", "--plugin", &plugin]).unwrap();
    let spec = stack.pod_spec("shop", "unverifiable", &[]);
    let data = stack.data_dir("unverifiable").unwrap();
    let job = Job::new("fio", Rw::RandRead, 40);
    job.prepare(&data).unwrap();
    let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data).unwrap();
    let guarantee_of = |sidecar: &Sidecar| {
        let (_, v) = sidecar.json(&format!("/api/v1/metrics/pod/{}", spec.uid)).unwrap();
        v["pod_metrics"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["container_id"] == run.container_id.as_str()).cloned())
            .map(|c| c["guarantee"].clone())
    };
    let wait_for = |want: &str, within: Duration| {
        let deadline = Instant::now() + within;
        while guarantee_of(&sidecar).is_none_or(|g| g != want) {
            assert!(
                Instant::now() < deadline,
                "the sidecar did not say {want} within {within:?} (it says {:?})\nplugin:\n{}\nsidecar:\n{}",
                guarantee_of(&sidecar),
                stack.plugin_log(),
                sidecar.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("limited", Duration::from_secs(15));

    let cgroup = stack.cgroup_of(run.pid).unwrap();
    let covered = Covered::with_dev_null(cgroup.as_path().join("blkio.throttle.read_iops_device"));
    wait_for("unlimited_unexpectedly", RECONCILE_INTERVAL + Duration::from_secs(5));
    let log = stack.plugin_log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("shop/unverifiable")),
        "a WARN naming the pod:\n{log}"
    );

    let endpoint = format!("http://{}", sidecar.addr());
    let out = Command::new(workspace_binary("kubectl-iogate").unwrap())
        .args(["top", "--endpoint", &endpoint, "--sort", "iops"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    eprintln!("kubectl iogate top:\n{stderr}{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains(spec.uid.as_str()))
        .unwrap_or_else(|| panic!("expected a row for the pod:\n{stdout}"));
    assert!(row.contains(" ! "), "the LIMIT cell is marked: {row}");
    assert!(
        stderr.contains("note: ! limits not what the policy says (unlimited_unexpectedly)"),
        "the mark is explained: {stderr}"
    );

    // Uncovered, the next pass finds the limits again.
    drop(covered);
    wait_for("limited", RECONCILE_INTERVAL + Duration::from_secs(5));
    stack.cri().remove_all_pods().unwrap();
    stack.finish().unwrap();
}
