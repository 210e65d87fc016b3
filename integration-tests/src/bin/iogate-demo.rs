//! `make demo`: iogate on a real containerd, on this machine, in a minute.
//!
//! Starts Debian's containerd 2.1 with NRI, the iogate plugin with its
//! built-in defaults (500 read and 500 write IOPS per container, the
//! `iops-limit-service` defaults) and a loop-device data disk, then runs
//! three pods whose only command is fio: a plain one, one that asks for less
//! with an annotation, and one exempt in a namespace the admin allows. It
//! prints what each got in its cgroup and what fio measured, and tears
//! everything down.

use std::time::Duration;

use anyhow::{Context, Result};
use iogate_core::CgroupVersion;
use iogate_integration_tests::containerd_daemon::Version;
use iogate_integration_tests::fio::{Job, Measured, Rw};
use iogate_integration_tests::host_lock::HostLock;
use iogate_integration_tests::stack::{PluginMode, Stack, StackOptions, DATA_IN_CONTAINER};

/// Built-in defaults, plus one namespace whose pods may exempt themselves.
const DEMO_POLICY: &str = "[exemptions]\nnamespaces = [\"trusted\"]\n";

/// namespace, pod name, annotations
type DemoPod = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

fn main() -> Result<()> {
    anyhow::ensure!(nix::unistd::Uid::effective().is_root(), "the demo needs root (containerd, loop devices, cgroups)");
    let lock = HostLock::acquire()?;
    println!(
        "starting containerd 2.1 with the iogate NRI plugin (cgroup v1 host: limits via the createRuntime hook)..."
    );
    let mut stack = Stack::start(
        &lock,
        StackOptions {
            version: Version::V2_1,
            cgroup: CgroupVersion::V1,
            plugin: PluginMode::External,
            policy: DEMO_POLICY.into(),
            plugin_env: Vec::new(),
        },
    )?;
    println!("data disk: {} ({})\n", stack.device, stack.disk.as_ref().context("disk")?.device().display());
    let pods: [DemoPod; 3] = [
        ("shop", "plain", &[]),
        ("shop", "annotated", &[("iogate.io/read-iops", "150")]),
        ("trusted", "backup", &[("iogate.io/exempt", "true")]),
    ];
    println!(
        "{:<20} {:<34} {:<44} {:>12} {:>14}",
        "pod", "annotation", "cgroup limits on the data disk", "fio IOPS", "first second"
    );
    for (ns, name, ann) in pods {
        let spec = stack.pod_spec(ns, name, ann);
        let data = stack.data_dir(name)?;
        let job = Job::new("fio", Rw::RandRead, 5);
        job.prepare(&data)?;
        let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data)?;
        let limits = stack.limits_of(run.pid)?;
        let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(60))?;
        anyhow::ensure!(code == 0, "fio in {ns}/{name} failed: {}", stack.cri().logs(&run.pod, "fio"));
        let m = Measured::read(&job, &data)?;
        let ann_text = ann.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let lim = if limits.is_unlimited() { "none".to_string() } else { limits.to_string() };
        println!(
            "{:<20} {:<34} {:<44} {:>12.0} {:>14.0}",
            format!("{ns}/{name}"),
            if ann_text.is_empty() { "-" } else { &ann_text },
            lim,
            m.iops,
            m.per_second[0]
        );
    }
    println!("\nwhat the plugin logged:");
    for line in
        stack.plugin_log().lines().filter(|l| l.contains("limits ") || l.contains("no limits") || l.contains("WARN"))
    {
        println!("  {line}");
    }
    println!("\ntearing down (pods, containerd, cgroups, loop device)...");
    drop(stack);
    println!("done.");
    Ok(())
}
