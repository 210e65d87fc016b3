//! Limits that hold after the container started: what the plugin's
//! reconciler promises, on one containerd with real cgroups.
//!
//! * a hook that cannot write (its device disappeared) is reported, counted
//!   and repaired at start; in strict mode it refuses the container;
//! * a container created while the plugin was down gets its limits within
//!   one interval of the plugin's restart;
//! * a limit overwritten by hand is restored within one interval (and how:
//!   through the runtime's NRI UpdateContainers or a cgroup write);
//! * a changed annotation (through the API stand-in) and a changed policy
//!   file reach running containers within 10 s, with the ceilings; a broken
//!   policy file keeps the previous policy.
//!
//! Each leaves the stack as it found it, except the hook checks, which take
//! a data disk away (the caller discards that stack).

use std::time::{Duration, Instant};

use iogate_core::{Device, DeviceLimits, Limits};
use serde_json::json;

use super::notes::Notes;
use super::policy::{limits, sleeper, POLICY};
use crate::stack::{Stack, RECONCILE_INTERVAL};

/// Slack over one interval for a pass to read, write and read back.
const SLACK: Duration = Duration::from_secs(2);

fn label(stack: &Stack) -> String {
    format!(
        "{}, cgroup {}, {}",
        stack.containerd.as_ref().map(|c| c.version()).expect("containerd runs"),
        stack.cgroup_version(),
        stack.driver
    )
}

/// Polls `done` every 50 ms for up to `timeout`; the time it took.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The plugin's log lines about one pod that contain `what`.
fn log_lines(stack: &Stack, pod: &str, what: &str) -> Vec<String> {
    stack.plugin_log().lines().filter(|l| l.contains(pod) && l.contains(what)).map(str::to_string).collect()
}

/// The device the hook writes first: taking it away makes the hook fail
/// before it wrote anything.
fn first_device(stack: &Stack) -> Device {
    *stack.devices.iter().min().expect("a stack has disks")
}

/// Two or more data disks (so the limits go through the hook, whatever the
/// cgroup version): the first disappears; a new pod's hook fails, the
/// plugin says so, counts it, and repairs the remaining disk's limits before
/// the container's command runs.
pub fn hook_failure_repaired(stack: &mut Stack, notes: &mut Notes) {
    let v = label(stack);
    assert!(stack.devices.len() >= 2, "{v}: this check needs two data disks");
    let gone = first_device(stack);
    stack.remove_disk(gone).unwrap();
    let failures = |s: &Stack| s.plugin_metric("iogate_hook_failures_total", &[]).unwrap();
    let before = failures(stack);
    let spec = stack.pod_spec("shop", "hookfail", &[]);
    let data = stack.data_dir("hookfail").unwrap();
    let started = Instant::now();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    let counted =
        wait_until(RECONCILE_INTERVAL, || failures(stack) > before).map(|_| started.elapsed()).unwrap_or_else(|| {
            panic!("{v}: no hook failure counted within {RECONCILE_INTERVAL:?}:\n{}", stack.plugin_log())
        });
    for &d in &stack.devices {
        assert_eq!(stack.limits_on(run.pid, d).unwrap(), limits(100, 100), "{v}: device {d} repaired at start");
    }
    let warned = log_lines(stack, "shop/hookfail", "the injected hook failed");
    assert!(
        warned.iter().any(|l| l.contains("WARN") && l.contains("No such device")),
        "{v}: expected a WARN naming the pod and the hook's error:\n{}",
        stack.plugin_log()
    );
    let repaired = log_lines(stack, "shop/hookfail", "limits repaired and verified");
    assert!(repaired.iter().any(|l| l.contains("cause=hook_failed")), "{v}: {:?}\n{}", repaired, stack.plugin_log());
    let by_cause = stack.plugin_metric("iogate_repairs_total", &[("cause", "hook_failed"), ("outcome", "repaired")]);
    assert!(by_cause.unwrap() >= 1.0, "{v}: the repair is counted by cause");
    notes.note(format!(
        "{v}: device {gone} gone, the hook failed (fail-open); WARN and counter {:.2} s after the pod was asked for, limits repaired before the command ran",
        counted.as_secs_f64()
    ));
}

/// The same failure with the plugin in strict mode (the stack's plugin
/// started with `IOGATE_STRICT=true`): the hook refuses the container.
pub fn hook_failure_refused_in_strict_mode(stack: &mut Stack, notes: &mut Notes) {
    let v = label(stack);
    assert!(stack.devices.len() >= 2, "{v}: this check needs two data disks");
    let gone = first_device(stack);
    stack.remove_disk(gone).unwrap();
    let spec = stack.pod_spec("shop", "hookstrict", &[]);
    let data = stack.data_dir("hookstrict").unwrap();
    let err = stack.run(&spec, "app", sleeper(), &data).err().expect("strict mode must refuse the container");
    let msg = format!("{err:#}");
    assert!(msg.contains("refusing the container (strict mode)"), "{v}: {msg}");
    assert!(msg.contains("No such device"), "{v}: {msg}");
    notes.note(format!("{v}: device {gone} gone, strict mode: the container was refused: {msg}"));
}

/// The plugin killed by PID, a pod created meanwhile (unthrottled: NRI is
/// fail-open), the plugin restarted: the pod's limits are in its cgroup
/// within one interval of the restart.
pub fn outage_repaired_after_restart(stack: &mut Stack, notes: &mut Notes) {
    let v = label(stack);
    stack.kill_plugin().unwrap();
    let spec = stack.pod_spec("shop", "outage", &[("iogate.io/write-iops", "70")]);
    let data = stack.data_dir("outage").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    assert_eq!(stack.limits_of(run.pid).unwrap(), Limits::UNLIMITED, "{v}: no plugin, no limits");
    let restarted = Instant::now();
    stack.start_external_plugin(&[]).unwrap();
    let connected = restarted.elapsed();
    let took = wait_until(RECONCILE_INTERVAL + SLACK, || stack.limits_of(run.pid).unwrap() == limits(100, 70))
        .map(|_| restarted.elapsed())
        .unwrap_or_else(|| {
            panic!("{v}: the pod's limits did not arrive within an interval of the restart:\n{}", stack.plugin_log())
        });
    let verified = wait_until(SLACK, || !log_lines(stack, "shop/outage", "limits repaired and verified").is_empty());
    assert!(verified.is_some(), "{v}: expected the repair to be logged:\n{}", stack.plugin_log());
    assert!(log_lines(stack, "shop/outage", "cause=outage").iter().any(|l| l.contains("WARN")), "{v}");
    assert!(took <= RECONCILE_INTERVAL, "{v}: {took:?} from the restart to the verified limits");
    notes.note(format!(
        "{v}: pod created while the plugin was down; limits verified {:.2} s after the restart (connected after {:.2} s)",
        took.as_secs_f64(),
        connected.as_secs_f64()
    ));
}

/// Overwrites a running container's limit by hand and waits for the
/// reconciler to put it back: within one interval. Notes how it was
/// written (on cgroup v2 with one disk: whether NRI UpdateContainers lands
/// on this containerd).
pub fn overwritten_limit_restored(stack: &mut Stack, notes: &mut Notes) {
    let v = label(stack);
    let spec = stack.pod_spec("shop", "drift", &[]);
    let data = stack.data_dir("drift").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    let want = limits(100, 100);
    assert_eq!(stack.limits_of(run.pid).unwrap(), want, "{v}: limits at start");
    let cgroup = stack.cgroup_of(run.pid).unwrap();
    let by_hand = DeviceLimits { device: stack.device, limits: limits(9999, 100) };
    stack.cgroups().write_limits(&cgroup, &[by_hand]).unwrap();
    assert_eq!(stack.limits_of(run.pid).unwrap(), by_hand.limits);
    let took =
        wait_until(RECONCILE_INTERVAL + SLACK, || stack.limits_of(run.pid).unwrap() == want).unwrap_or_else(|| {
            panic!("{v}: the overwritten limit was not restored within an interval:\n{}", stack.plugin_log())
        });
    let line = wait_until(SLACK, || !log_lines(stack, "shop/drift", "limits repaired and verified").is_empty())
        .map(|_| log_lines(stack, "shop/drift", "limits repaired and verified").remove(0))
        .unwrap_or_else(|| panic!("{v}: no repair logged:\n{}", stack.plugin_log()));
    assert!(line.contains("cause=drift"), "{v}: {line}");
    let via = line.split("via=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
    let landing: Vec<String> =
        stack.plugin_log().lines().filter(|l| l.contains("NRI UpdateContainers")).map(str::to_string).collect();
    notes.note(format!(
        "{v}: read-iops overwritten by hand, restored {:.2} s later via {via} (at most one interval, {RECONCILE_INTERVAL:?}){}",
        took.as_secs_f64(),
        if landing.is_empty() { String::new() } else { format!("; the plugin on UpdateContainers: {}", landing.join(" | ")) }
    ));
    assert!(took <= RECONCILE_INTERVAL + Duration::from_secs(1), "{v}: restored after {took:?}");
}

/// What containerd does with NRI UpdateContainers carrying `unified`
/// `io.max` on this cgroup version: the plugin is made to try it first
/// (`--repair-via nri`) for an overwritten limit, and falls back to a
/// cgroup write when it does not land. Notes the outcome and containerd's
/// own words; returns whether it landed. Leaves the plugin as it was
/// started.
pub fn update_containers_measured(stack: &mut Stack, notes: &mut Notes) -> bool {
    let v = label(stack);
    stack.start_external_plugin(&[("IOGATE_REPAIR_VIA".into(), "nri".into())]).unwrap();
    let spec = stack.pod_spec("shop", "viaruntime", &[]);
    let data = stack.data_dir("viaruntime").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    let want = limits(100, 100);
    let cgroup = stack.cgroup_of(run.pid).unwrap();
    stack.cgroups().write_limits(&cgroup, &[DeviceLimits { device: stack.device, limits: limits(4321, 100) }]).unwrap();
    let took = wait_until(RECONCILE_INTERVAL + SLACK, || stack.limits_of(run.pid).unwrap() == want)
        .unwrap_or_else(|| panic!("{v}: not restored within an interval:\n{}", stack.plugin_log()));
    // The plugin logs the repair after its read-back, so the cgroup can be
    // right a moment before the log says how.
    let repaired =
        wait_until(SLACK, || !log_lines(stack, "shop/viaruntime", "limits repaired and verified").is_empty())
            .map(|_| log_lines(stack, "shop/viaruntime", "limits repaired and verified").remove(0))
            .unwrap_or_else(|| panic!("{v}: no repair logged:\n{}", stack.plugin_log()));
    let landed = repaired.contains("via=\"NRI UpdateContainers\"");
    let log = stack.plugin_log();
    let said: Vec<&str> =
        log.lines().filter(|l| l.contains("NRI UpdateContainers") || l.contains("limits repaired")).collect();
    let containerd_log = stack.containerd.as_ref().map(|c| c.log()).unwrap_or_default();
    let containerd_said: Vec<&str> = containerd_log
        .lines()
        .filter(|l| l.contains(&run.container_id[..12]) && (l.contains("update") || l.contains("unified")))
        .collect();
    notes.note(format!(
        "{v}: NRI UpdateContainers with unified io.max {} (restored after {:.2} s); plugin: {}; containerd: {}",
        if landed { "lands" } else { "does not land" },
        took.as_secs_f64(),
        said.join(" | "),
        if containerd_said.is_empty() { "nothing about it".to_string() } else { containerd_said.join(" | ") }
    ));
    stack.start_external_plugin(&[]).unwrap();
    landed
}

/// A pod's annotations changed while it runs (through the API server's
/// stand-in file), then the policy file (ConfigMap-style): each reaches the
/// running container within 10 s, with the ceilings; a policy file that does
/// not parse keeps the previous policy.
pub fn live_policy(stack: &mut Stack, notes: &mut Notes) {
    let v = label(stack);
    let within = Duration::from_secs(10);
    let spec = stack.pod_spec("shop", "live", &[("iogate.io/write-iops", "70")]);
    let data = stack.data_dir("live").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    assert_eq!(stack.limits_of(run.pid).unwrap(), limits(100, 70), "{v}: limits at creation");
    let reach = |stack: &Stack, want: Limits, what: &str| {
        wait_until(within, || stack.limits_of(run.pid).unwrap() == want).unwrap_or_else(|| {
            panic!(
                "{v}: {what}: expected {want} within {within:?}, the cgroup has {}:\n{}",
                stack.limits_of(run.pid).unwrap(),
                stack.plugin_log()
            )
        })
    };

    stack.set_pod_annotations(&json!({"shop/live": {"iogate.io/write-iops": "40"}})).unwrap();
    let annotated = reach(stack, limits(100, 40), "kubectl annotate write-iops=40");
    stack
        .set_pod_annotations(&json!({"shop/live": {"iogate.io/write-iops": "40", "iogate.io/read-iops": "5000"}}))
        .unwrap();
    let clamped = reach(stack, limits(200, 40), "read-iops=5000 above the ceiling 200");
    assert!(
        stack.plugin_log().contains("read-iops: asked 5000 by iogate.io/read-iops, clamped to the ceiling 200")
            || !log_lines(stack, "shop/live", "clamped to the namespace ceiling").is_empty(),
        "{v}: the clamp is explained:\n{}",
        stack.plugin_log()
    );

    let lower = POLICY
        .replace("default = { read-iops = 200, write-iops = 200 }", "default = { read-iops = 150, write-iops = 150 }");
    assert_ne!(lower, POLICY);
    stack.update_policy(&lower).unwrap();
    let reconfigured = reach(stack, limits(150, 40), "the ceiling lowered to 150 in the policy file");

    let failures = |s: &Stack| s.plugin_metric("iogate_config_reload_failures_total", &[]).unwrap();
    let before = failures(stack);
    stack.write_policy_file("[defaults\nread-iops = ").unwrap();
    wait_until(within, || failures(stack) > before)
        .unwrap_or_else(|| panic!("{v}: the broken policy file was not reported:\n{}", stack.plugin_log()));
    assert!(
        stack.plugin_log().lines().any(|l| l.contains("WARN") && l.contains("the previous policy stays in force")),
        "{v}: {}",
        stack.plugin_log()
    );
    stack.wait_for_reconcile_pass().unwrap();
    assert_eq!(stack.limits_of(run.pid).unwrap(), limits(150, 40), "{v}: the broken file changed nothing");

    // Back as it was: the test's policy, the annotations at creation.
    stack.update_policy(POLICY).unwrap();
    reach(stack, limits(200, 40), "the policy file restored");
    stack.set_pod_annotations(&json!({})).unwrap();
    reach(stack, limits(100, 70), "the stand-in emptied: the annotations at creation again");
    notes.note(format!(
        "{v}: annotation change in the cgroup after {:.2} s, clamp to the ceiling after {:.2} s, policy file change after {:.2} s; a broken policy file kept the previous policy",
        annotated.as_secs_f64(),
        clamped.as_secs_f64(),
        reconfigured.as_secs_f64()
    ));
}
