//! Every behaviour the policy promises, on one containerd, with real fio:
//! limits from the first second, annotations, ceilings, exemptions,
//! exclusions (by exact namespace, never by a name a tenant chooses),
//! malformed annotations, a containerd restart, containers that started
//! while no plugin ran, and strict mode.

use std::time::{Duration, Instant};

use iogate_core::{CgroupVersion, Limits};
use serde::{Deserialize, Serialize};

use super::notes::Notes;
use crate::containerd_daemon::{CgroupDriver, Version};
use crate::fio::{self, Job, Measured, Rw};
use crate::host_lock::HostLock;
use crate::stack::{Stack, StackOptions, DATA_IN_CONTAINER};

/// Defaults 100/100 IOPS, ceiling 200, namespace `trusted` may exempt.
/// Low enough that an emulated node's disk (the VM) keeps up with the limit,
/// so what fio measures is the throttle, not the disk.
pub const POLICY: &str = r#"
[defaults]
read-iops = 100
write-iops = 100
[ceilings]
default = { read-iops = 200, write-iops = 200 }
[exemptions]
namespaces = ["trusted"]
"#;

/// How much of the policy a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every behaviour: the host's suite.
    Everything,
    /// What depends on the cgroup version and driver: limits in the cgroup
    /// from the first I/O, annotations, ceilings, exemptions, a containerd
    /// restart, limits written at Synchronize. Exclusions, malformed
    /// annotations and strict mode decide before any cgroup is touched.
    Cgroups,
}

pub fn limits(read_iops: u64, write_iops: u64) -> Limits {
    Limits { read_iops: Some(read_iops), write_iops: Some(write_iops), ..Limits::UNLIMITED }
}

pub fn sleeper() -> Vec<String> {
    vec!["/bin/sleep".into(), "600".into()]
}

/// How the plugin gets limits into a container before it starts: `io.max`
/// in the spec on v2 with one device; the createRuntime hook on v1 (where
/// runc refuses unified resources) and for several devices.
pub fn mechanism(stack: &Stack) -> &'static str {
    if stack.cgroup_version() == CgroupVersion::V2 && stack.devices.len() == 1 {
        "io.max in the spec"
    } else {
        "createRuntime hook"
    }
}

/// Runs fio as the container's command and checks the limit held from its
/// first second: the first second at most 10% above `iops`, the seconds
/// after it within 10% of it.
pub fn assert_fio_throttled(
    stack: &mut Stack,
    ns: &str,
    pod: &str,
    ann: &[(&str, &str)],
    want: Limits,
    iops: f64,
    notes: &mut Notes,
) {
    let spec = stack.pod_spec(ns, pod, ann);
    let data = stack.data_dir(pod).unwrap();
    let job = Job::new("fio", Rw::RandRead, 5);
    job.prepare(&data).unwrap();
    let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data).unwrap();
    // Read while fio still runs: the cgroup goes away with the container.
    assert_eq!(stack.limits_of(run.pid).unwrap(), want, "cgroup of {ns}/{pod}");
    let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(120)).unwrap();
    let logs = stack.cri().logs(&run.pod, "fio");
    assert_eq!(code, 0, "fio failed: {logs}");
    let m = Measured::read(&job, &data).unwrap();
    let steady = m.steady_iops();
    notes.note(format!(
        "{ns}/{pod}: limit {iops} IOPS, measured {:.1} IOPS ({steady:.1} after the first second), per second {:?}",
        m.iops, m.per_second
    ));
    assert!(
        fio::within(steady, iops, 10.0),
        "{ns}/{pod}: measured {steady:.1} IOPS after the first second ({:?}), limit {iops}",
        m.per_second
    );
    assert!(
        m.per_second[0] <= iops * 1.10,
        "{ns}/{pod}: first second ran at {:.1} IOPS, above the limit {iops}: the container was not throttled from its start",
        m.per_second[0]
    );
}

/// The limits a new container gets (it sleeps; the pod stays up).
pub fn limits_of_new(stack: &mut Stack, ns: &str, pod: &str, ctr: &str, ann: &[(&str, &str)]) -> Limits {
    let spec = stack.pod_spec(ns, pod, ann);
    let data = stack.data_dir(pod).unwrap();
    let run = stack.run(&spec, ctr, sleeper(), &data).unwrap();
    stack.limits_of(run.pid).unwrap()
}

/// The plain pod's limits from its first I/O, and nothing else: what the
/// combinations without the whole suite run before their other checks.
pub fn first_io(stack: &mut Stack, notes: &mut Notes) {
    let mechanism = mechanism(stack);
    assert_fio_throttled(stack, "shop", "plain", &[], limits(100, 100), 100.0, notes);
    assert!(stack.plugin_log().contains(mechanism), "expected limits via {mechanism}:\n{}", stack.plugin_log());
}

/// The first pod on a fresh stack gets its limits.
pub fn first_pod_limited(stack: &mut Stack, notes: &mut Notes) {
    let started = Instant::now();
    let got = limits_of_new(stack, "shop", "ready", "app", &[]);
    notes.note(format!(
        "the first pod ran with its limits {:.1} s after it was asked for",
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(got, limits(100, 100), "the first pod");
}

/// The host's suite: a fresh stack, every behaviour. Its disks are in
/// memory: the host's root disk, shared with other work, can fall below the
/// limits for a second (measured once: 61 IOPS under a limit of 100).
pub fn full_suite(lock: &HostLock, version: Version, driver: CgroupDriver, notes: &mut Notes) {
    let opts = StackOptions::external(version, POLICY).with_driver(driver).with_disks_in_memory();
    let mut stack = Stack::start(lock, opts).unwrap();
    suite_on(&mut stack, Scope::Everything, notes);
}

/// The policy's behaviours on `stack` (started with [`POLICY`]); leaves it
/// with the plugin as started.
pub fn suite_on(stack: &mut Stack, scope: Scope, notes: &mut Notes) {
    let v = format!(
        "{}, cgroup {}, {}",
        stack.containerd.as_ref().map(|c| c.version()).expect("containerd runs"),
        stack.cgroup_version(),
        stack.driver
    );
    let mechanism = mechanism(stack);
    let lap = Instant::now();

    // Defaults, from the first second.
    notes.step("fio in a plain pod");
    assert_fio_throttled(stack, "shop", "plain", &[], limits(100, 100), 100.0, notes);
    notes.step("fio in an annotated pod");
    // Annotation override (below the ceiling).
    assert_fio_throttled(stack, "shop", "annotated", &[("iogate.io/read-iops", "50")], limits(50, 100), 50.0, notes);
    assert!(stack.plugin_log().contains(mechanism), "{v}: expected limits via {mechanism}:\n{}", stack.plugin_log());

    // Clamp to the namespace ceiling, with the reason logged.
    notes.step("ceilings and exemptions");
    let got = limits_of_new(stack, "shop", "greedy", "app", &[("iogate.io/read-iops", "5000")]);
    assert_eq!(got, limits(200, 100), "{v}: clamp");
    assert!(stack
        .plugin_log()
        .contains("read-iops: asked 5000 by iogate.io/read-iops, clamped to the ceiling 200 of namespace shop"));

    // Exemption where allowed; refused (limits kept) where not.
    let got = limits_of_new(stack, "trusted", "backup", "app", &[("iogate.io/exempt", "true")]);
    assert_eq!(got, Limits::UNLIMITED, "{v}: exemption in trusted");
    let got = limits_of_new(stack, "shop", "sneaky", "app", &[("iogate.io/exempt", "true")]);
    assert_eq!(got, limits(100, 100), "{v}: exemption outside trusted");

    if scope == Scope::Everything {
        notes.step("exclusions and malformed annotations");
        // Exclusions name namespaces exactly (the default: kube-system), so
        // a tenant cannot escape by naming: a container named istio-proxy
        // in shop gets the defaults, and only the real exclusion warns.
        let got = limits_of_new(stack, "shop", "mesh", "istio-proxy", &[]);
        assert_eq!(got, limits(100, 100), "{v}: a container named istio-proxy in shop");
        let got = limits_of_new(stack, "kube-system", "dns", "coredns", &[]);
        assert_eq!(got, Limits::UNLIMITED, "{v}: excluded namespace");
        let log = stack.plugin_log();
        let excluded: Vec<&str> = log.lines().filter(|l| l.contains("no limits: excluded")).collect();
        assert!(
            excluded.len() == 1
                && excluded[0].contains("WARN")
                && excluded[0].contains("namespace kube-system is in exclude.namespaces")
                && excluded[0].contains("kube-system/dns"),
            "{v}: expected one WARN, for kube-system/dns, found {excluded:#?}"
        );

        // Malformed annotation: defaults, and a warning naming everything.
        let got = limits_of_new(stack, "shop", "typo", "app", &[("iogate.io/read-iops", "fast")]);
        assert_eq!(got, limits(100, 100), "{v}: malformed annotation keeps the default");
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
    }

    // containerd restarts: the plugin reconnects and the next pod is limited.
    notes.step("containerd restart");
    stack.restart_containerd().unwrap();
    stack.plugin.as_mut().unwrap().wait_for("connected to runtime", 2, Duration::from_secs(120)).unwrap();
    let got = limits_of_new(stack, "shop", "after-restart", "app", &[]);
    assert_eq!(got, limits(100, 100), "{v}: pod after containerd restart");

    // A container that started while no plugin ran gets its limits when the
    // plugin connects (Synchronize): written into its cgroup, found by PID.
    notes.step("a container started while no plugin ran");
    stack.plugin.take().unwrap().stop();
    let spec = stack.pod_spec("shop", "early", &[("iogate.io/read-iops", "60")]);
    let data = stack.data_dir("early").unwrap();
    let early = stack.run(&spec, "app", sleeper(), &data).unwrap();
    assert_eq!(stack.limits_of(early.pid).unwrap(), Limits::UNLIMITED, "{v}: no plugin, no limits");
    stack.start_external_plugin(&[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let synced = loop {
        let got = stack.limits_of(early.pid).unwrap();
        if got == limits(60, 100) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(synced, limits(60, 100), "{v}: limits applied at Synchronize:\n{}", stack.plugin_log());

    if scope == Scope::Everything {
        // Strict mode: the malformed annotation refuses the container.
        notes.step("strict mode");
        stack.start_external_plugin(&[("IOGATE_STRICT".into(), "true".into())]).unwrap();
        let spec = stack.pod_spec("shop", "strict", &[("iogate.io/read-iops", "fast")]);
        let data = stack.data_dir("strict").unwrap();
        let err = stack.run(&spec, "app", sleeper(), &data).err().expect("strict mode must refuse the container");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("iogate refuses pod shop/strict container app: annotation iogate.io/read-iops=\"fast\": expected a whole number"),
            "{v}: {msg}"
        );
        stack.start_external_plugin(&[]).unwrap();
    }
    notes.note(format!(
        "{v}: {scope:?}: every case held (limits via {mechanism}) in {:.1} s",
        lap.elapsed().as_secs_f64()
    ));
}
