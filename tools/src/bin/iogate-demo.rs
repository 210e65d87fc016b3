//! `make demo`: iogate on a real containerd, on this machine, in a minute.
//!
//! Starts Debian's containerd 2.1 with NRI, the iogate plugin with its
//! built-in defaults (500 read and 500 write IOPS per container, the
//! `iops-limit-service` defaults) and a loop-device data disk, then runs
//! three pods whose only command is fio: a plain one, one that asks for less
//! with an annotation, and one exempt in a namespace the admin allows. The
//! metrics sidecar runs beside them. It prints what each pod got in its
//! cgroup, what fio measured, and what the sidecar saw from the kernel
//! (IOPS, latency percentiles, bottleneck), and tears everything down.

use std::time::Duration;

use anyhow::{Context, Result};
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::fio::{Job, Measured, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::sidecar::Sidecar;
use iogate_testbed::stack::{Stack, StackOptions, DATA_IN_CONTAINER};

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
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, DEMO_POLICY))?;
    println!("data disk: {} ({})", stack.device, stack.disks.first().context("disk")?.device().display());
    println!("starting the metrics sidecar (eBPF on the block tracepoints)...\n");
    let sidecar = Sidecar::start(Duration::from_secs(1), &[])?;
    let pods: [DemoPod; 3] = [
        ("shop", "plain", &[]),
        ("shop", "annotated", &[("iogate.io/read-iops", "150")]),
        ("trusted", "backup", &[("iogate.io/exempt", "true")]),
    ];
    println!(
        "{:<16} {:<28} {:<40} {:>8} {:>8} | {:>8} {:>9} {:>9} {:>10}",
        "pod",
        "annotation",
        "cgroup limits on the data disk",
        "fio IOPS",
        "1st sec",
        "sidecar",
        "p50 µs",
        "p99 µs",
        "bottleneck"
    );
    for (ns, name, ann) in pods {
        let spec = stack.pod_spec(ns, name, ann);
        let data = stack.data_dir(name)?;
        let job = Job::new("fio", Rw::RandRead, 5);
        job.prepare(&data)?;
        let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data)?;
        let limits = stack.limits_of(run.pid)?;
        // Mid-run, the sidecar's last one-second window lies inside fio's run.
        std::thread::sleep(Duration::from_secs(3));
        let seen = sidecar_view(&sidecar, &spec.uid);
        let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(60))?;
        anyhow::ensure!(code == 0, "fio in {ns}/{name} failed: {}", stack.cri().logs(&run.pod, "fio"));
        let m = Measured::read(&job, &data)?;
        let ann_text = ann.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let lim = if limits.is_unlimited() { "none".to_string() } else { limits.to_string() };
        println!(
            "{:<16} {:<28} {:<40} {:>8.0} {:>8.0} | {seen}",
            format!("{ns}/{name}"),
            if ann_text.is_empty() { "-" } else { &ann_text },
            lim,
            m.iops,
            m.per_second[0]
        );
    }
    println!("\nwhat the plugin logged:");
    for line in
        stack.plugin_log().lines().filter(|l| l.contains("limits") || l.contains("hook injected") || l.contains("WARN"))
    {
        println!("  {line}");
    }
    println!("\ntearing down (sidecar, pods, containerd, cgroups, loop device)...");
    drop(sidecar);
    drop(stack);
    println!("done.");
    Ok(())
}

/// The sidecar's columns for one pod (named by UID: no API server here).
fn sidecar_view(sidecar: &Sidecar, uid: &str) -> String {
    let v = match sidecar.json(&format!("/api/v1/metrics/pod/{uid}")) {
        Ok((200, v)) => v,
        Ok((status, v)) => return format!("sidecar answered {status}: {}", v["error"]),
        Err(e) => return format!("sidecar unreachable: {e:#}"),
    };
    let m = &v["pod_metrics"];
    let us = |f: &str| m[f].as_f64().map_or("n/a".to_string(), |ns| format!("{:.0}", ns / 1000.0));
    format!(
        "{:>8} {:>9} {:>9} {:>10}",
        m["read_iops"].as_u64().map_or("n/a".to_string(), |n| n.to_string()),
        us("read_latency_p50_ns"),
        us("read_latency_p99_ns"),
        v["bottleneck"].as_str().unwrap_or("?")
    )
}
