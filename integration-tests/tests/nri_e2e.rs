//! The NRI plugin against real containerd 1.7 and 2.1, real runc, a loop
//! device and fio: every container gets its limits before its first I/O.

use std::time::Duration;

use iogate_core::{CgroupVersion, Limits};
use iogate_testbed::cgroup_v2_host::{CgroupV2Io, PinnedHierarchy};
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::fio::{self, Job, Measured, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::stack::{PluginMode, Stack, StackOptions, DATA_IN_CONTAINER};

/// Defaults 200/200 IOPS, ceiling 400, namespace `trusted` may exempt.
const POLICY: &str = r#"
[defaults]
read-iops = 200
write-iops = 200
[ceilings]
default = { read-iops = 400, write-iops = 400 }
[exemptions]
namespaces = ["trusted"]
"#;

fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("SKIPPED: the end-to-end tests need root (containerd, loop devices, cgroups)");
    false
}

fn limits(read_iops: u64, write_iops: u64) -> Limits {
    Limits { read_iops: Some(read_iops), write_iops: Some(write_iops), ..Limits::UNLIMITED }
}

fn sleeper() -> Vec<String> {
    vec!["/bin/sleep".into(), "600".into()]
}

/// Runs fio as the container's command and checks the limit held from its
/// first second: average and first second within 10% of `iops`.
fn assert_fio_throttled(stack: &mut Stack, ns: &str, pod: &str, ann: &[(&str, &str)], want: Limits, iops: f64) {
    let spec = stack.pod_spec(ns, pod, ann);
    let data = stack.data_dir(pod).unwrap();
    let job = Job::new("fio", Rw::RandRead, 5);
    job.prepare(&data).unwrap();
    let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data).unwrap();
    // Read while fio still runs: the cgroup goes away with the container.
    assert_eq!(stack.limits_of(run.pid).unwrap(), want, "cgroup of {ns}/{pod}");
    let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(60)).unwrap();
    let logs = stack.cri().logs(&run.pod, "fio");
    assert_eq!(code, 0, "fio failed: {logs}");
    let m = Measured::read(&job, &data).unwrap();
    eprintln!("{ns}/{pod}: limit {iops} IOPS, measured {:.1} IOPS, per second {:?}", m.iops, m.per_second);
    assert!(fio::within(m.iops, iops, 10.0), "{ns}/{pod}: measured {:.1} IOPS, limit {iops}", m.iops);
    assert!(
        m.per_second[0] <= iops * 1.10,
        "{ns}/{pod}: first second ran at {:.1} IOPS, above the limit {iops}: the container was not throttled from its start",
        m.per_second[0]
    );
}

fn limits_of_new(stack: &mut Stack, ns: &str, pod: &str, ctr: &str, ann: &[(&str, &str)]) -> Limits {
    let spec = stack.pod_spec(ns, pod, ann);
    let data = stack.data_dir(pod).unwrap();
    let run = stack.run(&spec, ctr, sleeper(), &data).unwrap();
    stack.limits_of(run.pid).unwrap()
}

/// Every behaviour the policy promises, on one containerd.
fn full_suite(lock: &HostLock, version: Version, cgroup: CgroupVersion) {
    let mut stack = Stack::start(lock, StackOptions::external(version, cgroup, POLICY)).unwrap();
    let v = format!("{version}, cgroup {cgroup}");
    // The mechanism matches the cgroup version: io.max in the spec on v2,
    // the createRuntime hook on v1 (where runc refuses unified resources).
    let mechanism = match cgroup {
        CgroupVersion::V2 => "io.max in the spec",
        CgroupVersion::V1 => "createRuntime hook",
    };

    // Defaults, from the first second.
    assert_fio_throttled(&mut stack, "shop", "plain", &[], limits(200, 200), 200.0);
    // Annotation override (below the ceiling).
    assert_fio_throttled(&mut stack, "shop", "annotated", &[("iogate.io/read-iops", "100")], limits(100, 200), 100.0);
    assert!(stack.plugin_log().contains(mechanism), "{v}: expected limits via {mechanism}:\n{}", stack.plugin_log());

    // Clamp to the namespace ceiling, with the reason logged.
    let got = limits_of_new(&mut stack, "shop", "greedy", "app", &[("iogate.io/read-iops", "5000")]);
    assert_eq!(got, limits(400, 200), "{v}: clamp");
    assert!(stack
        .plugin_log()
        .contains("read-iops: asked 5000 by iogate.io/read-iops, clamped to the ceiling 400 of namespace shop"));

    // Exemption where allowed; refused (limits kept) where not.
    let got = limits_of_new(&mut stack, "trusted", "backup", "app", &[("iogate.io/exempt", "true")]);
    assert_eq!(got, Limits::UNLIMITED, "{v}: exemption in trusted");
    let got = limits_of_new(&mut stack, "shop", "sneaky", "app", &[("iogate.io/exempt", "true")]);
    assert_eq!(got, limits(200, 200), "{v}: exemption outside trusted");

    // Excluded by keyword.
    let got = limits_of_new(&mut stack, "shop", "mesh", "istio-proxy", &[]);
    assert_eq!(got, Limits::UNLIMITED, "{v}: excluded container");

    // Malformed annotation: defaults, and a warning naming everything.
    let got = limits_of_new(&mut stack, "shop", "typo", "app", &[("iogate.io/read-iops", "fast")]);
    assert_eq!(got, limits(200, 200), "{v}: malformed annotation keeps the default");
    let log = stack.plugin_log();
    let warning = log
        .lines()
        .find(|l| {
            l.contains("WARN") && l.contains("iogate.io/read-iops=\\\"fast\\\"")
                || l.contains("WARN") && l.contains("iogate.io/read-iops=\"fast\"")
        })
        .unwrap_or_else(|| panic!("{v}: no warning for the malformed annotation in:\n{log}"));
    assert!(
        warning.contains("shop/typo") && warning.contains("app") && warning.contains("expected a whole number"),
        "{warning}"
    );

    // containerd restarts: the plugin reconnects and the next pod is limited.
    stack.restart_containerd().unwrap();
    stack.plugin.as_mut().unwrap().wait_for("connected to runtime", 2, Duration::from_secs(30)).unwrap();
    let got = limits_of_new(&mut stack, "shop", "after-restart", "app", &[]);
    assert_eq!(got, limits(200, 200), "{v}: pod after containerd restart");

    // A container that started while no plugin ran gets its limits when the
    // plugin connects (Synchronize).
    stack.plugin.take().unwrap().stop();
    let spec = stack.pod_spec("shop", "early", &[("iogate.io/read-iops", "120")]);
    let data = stack.data_dir("early").unwrap();
    let early = stack.run(&spec, "app", sleeper(), &data).unwrap();
    assert_eq!(stack.limits_of(early.pid).unwrap(), Limits::UNLIMITED, "{v}: no plugin, no limits");
    stack.start_external_plugin(&[]).unwrap();
    stack.plugin.as_mut().unwrap().wait_for("existing container limited", 1, Duration::from_secs(20)).unwrap();
    assert_eq!(stack.limits_of(early.pid).unwrap(), limits(120, 200), "{v}: limits applied at Synchronize");

    // Strict mode: the malformed annotation refuses the container.
    stack.start_external_plugin(&[("IOGATE_STRICT".into(), "true".into())]).unwrap();
    let spec = stack.pod_spec("shop", "strict", &[("iogate.io/read-iops", "fast")]);
    let data = stack.data_dir("strict").unwrap();
    let err = stack.run(&spec, "app", sleeper(), &data).err().expect("strict mode must refuse the container");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("iogate refuses pod shop/strict container app: annotation iogate.io/read-iops=\"fast\": expected a whole number"),
        "{v}: {msg}"
    );
}

#[test]
fn cgroup_v1_containerd_1_7() {
    if root() {
        full_suite(&HostLock::acquire().unwrap(), Version::V1_7, CgroupVersion::V1);
    }
}

#[test]
fn cgroup_v1_containerd_2_1() {
    if root() {
        full_suite(&HostLock::acquire().unwrap(), Version::V2_1, CgroupVersion::V1);
    }
}

/// cgroup v2 for real: the io controller is moved from the host's v1
/// hierarchy to cgroup2 for this test (once, for both versions: the move
/// waits out the loop driver's 60 s hold on recent cgroups), and containerd
/// runs in a private mount namespace with cgroup2 at /sys/fs/cgroup. Limits
/// reach runc as `io.max` in the spec's unified resources.
#[test]
fn cgroup_v2_containerd_1_7_and_2_1() {
    if root() {
        let lock = HostLock::acquire().unwrap();
        let _v2 = match CgroupV2Io::acquire() {
            Ok(v2) => v2,
            Err(e) if e.downcast_ref::<PinnedHierarchy>().is_some() => {
                eprintln!("SKIPPED: cgroup v2 cannot be had on this machine: {e}");
                return;
            }
            Err(e) => panic!("switching the io controller to cgroup v2: {e:#}"),
        };
        for version in Version::ALL {
            full_suite(&lock, version, CgroupVersion::V2);
        }
    }
}

/// Started by containerd from its plugin directory, configured by the file
/// containerd hands it over NRI.
#[test]
fn pre_registered_plugin() {
    if !root() {
        return;
    }
    let lock = HostLock::acquire().unwrap();
    for version in Version::ALL {
        let mut stack = Stack::start(
            &lock,
            StackOptions {
                version,
                cgroup: CgroupVersion::V1,
                plugin: PluginMode::PreRegistered,
                policy: POLICY.into(),
                plugin_env: Vec::new(),
            },
        )
        .unwrap();
        let got = limits_of_new(&mut stack, "shop", "pre", "app", &[("iogate.io/write-iops", "150")]);
        assert_eq!(got, limits(200, 150), "{version}: pre-registered plugin");
        // The defaults came from the config containerd passed over NRI: the
        // plugin's own start-up default (/data) does not exist here.
        let log = stack.plugin_log();
        assert!(log.contains("start-up policy not usable, expecting one from containerd"), "{log}");
        assert!(log.contains("read-iops=200 (default)"), "{log}");
    }
}

/// containerd without NRI (the setup of clusters not yet on 1.7): the OCI
/// hook comes from a CRI base runtime spec made by the shipped recipe, and
/// decides from the pod annotations containerd copies into the spec.
#[test]
fn base_runtime_spec_hook_without_nri() {
    if !root() {
        return;
    }
    let lock = HostLock::acquire().unwrap();
    let mut stack = Stack::start(
        &lock,
        StackOptions {
            version: Version::V1_7,
            cgroup: CgroupVersion::V1,
            plugin: PluginMode::BaseRuntimeSpecHook,
            policy: POLICY.into(),
            plugin_env: Vec::new(),
        },
    )
    .unwrap();
    let got = limits_of_new(&mut stack, "shop", "legacy", "app", &[("iogate.io/write-iops", "90")]);
    assert_eq!(got, limits(200, 90), "base runtime spec hook");
    let log = stack.plugin_log();
    assert!(log.contains("pod shop/legacy container app: cgroup v1"), "{log}");
}
