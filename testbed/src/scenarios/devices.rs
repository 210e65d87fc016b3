//! Several data disks: one `io.max` write names one device, and the spec's
//! unified resources hold one value per file, so on cgroup v2 the plugin
//! injects the createRuntime hook, which writes a line per device before
//! the container's process runs.

use super::notes::Notes;
use super::policy::{assert_fio_throttled, limits, mechanism, sleeper};
use crate::stack::Stack;

pub fn several_devices(stack: &mut Stack, notes: &mut Notes) {
    let version = stack.containerd.as_ref().map(|c| c.version()).expect("containerd runs");
    let driver = stack.driver;
    assert!(stack.devices.len() >= 2, "this check needs a stack with several data disks");
    assert_eq!(mechanism(stack), "createRuntime hook");
    // From the first second on the first disk...
    assert_fio_throttled(stack, "shop", "two-disks", &[("iogate.io/read-iops", "70")], limits(70, 100), 70.0, notes);
    // ...and the limits on every disk.
    let spec = stack.pod_spec("shop", "both", &[]);
    let data = stack.data_dir("both").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    for device in stack.devices.clone() {
        let got = stack.limits_on(run.pid, device).unwrap();
        assert_eq!(got, limits(100, 100), "{version}, {driver}: limits on {device}");
    }
    let log = stack.plugin_log();
    assert!(log.contains("createRuntime hook"), "{version}, {driver}: expected the hook in the plugin's log:\n{log}");
    let devices = stack.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" and ");
    notes.note(format!("{version}, {driver}: limits on {devices} through the createRuntime hook"));
}
