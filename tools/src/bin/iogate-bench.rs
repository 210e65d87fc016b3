//! `make bench`: what iogate costs, measured on this machine.
//!
//! * `policy`: the plugin's own work per CreateContainer (policy decision and
//!   adjustment), in-process;
//! * `hook`: one `iogate-oci-hook apply` run against a real cgroup, beside a
//!   `/bin/true` spawn measured in the same loop (the floor for any hook);
//! * `start`: CreateContainer + StartContainer on real containerd 2.1, with
//!   the plugin connected and without, alternating in blocks in one run;
//! * `reconcile`: the plugin's reconciler pass (read back every running
//!   container's limits, compare with the policy) with no container, then
//!   with 200 containers started as fast as containerd takes them.
//!
//! Figures are medians and 95th percentiles; compare the ratios within one
//! run, not absolute numbers across machines.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iogate_core::{CgroupFs, CgroupVersion, Config, Device, Policy};
use iogate_nri_plugin::admission::Admission;
use iogate_nri_plugin::api;
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::cri_client::ContainerSpec;
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::stack::{Stack, StackOptions};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.95))
}

fn bench_policy() -> Result<()> {
    let config = Config { exempt_namespaces: vec!["trusted".into()], ..Config::default() };
    let admission = Admission::new(
        Policy::new(config, vec![Device::new(8, 0)]),
        CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio"),
    );
    let mut pod = api::PodSandbox::new();
    pod.name = "web-0".into();
    pod.namespace = "shop".into();
    pod.annotations = HashMap::from([
        ("iogate.io/read-iops".to_string(), "300".to_string()),
        ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string()),
    ]);
    let mut ctr = api::Container::new();
    ctr.name = "app".into();
    // tracing has no subscriber here, so logging costs only its level check.
    let batch = 10_000;
    let mut per_call = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(admission.create_container(&pod, &ctr)?);
        }
        per_call.push(t.elapsed() / batch);
    }
    let (p50, p95) = summary(per_call);
    println!(
        "policy: CreateContainer decision + adjustment: median {p50:?} per call, p95 {p95:?} (30 batches of {batch})"
    );
    Ok(())
}

fn bench_hook() -> Result<()> {
    let hook = iogate_testbed::workspace_binary("iogate-oci-hook")?;
    let cg = format!("/sys/fs/cgroup/blkio/iogate-bench-{}", std::process::id());
    std::fs::create_dir_all(&cg)?;
    let mut sleeper = Command::new("sleep").arg("300").spawn()?;
    let result = (|| -> Result<()> {
        std::fs::write(format!("{cg}/cgroup.procs"), sleeper.id().to_string())?;
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"bench","status":"created","pid":{},"bundle":"/nonexistent"}}"#,
            sleeper.id()
        );
        let run = |cmd: &mut Command, state: &str| -> Result<Duration> {
            let t = Instant::now();
            let mut child = cmd.stdin(Stdio::piped()).stderr(Stdio::null()).spawn()?;
            // /bin/true may exit before reading: a broken pipe is expected there.
            let _ = child.stdin.take().context("stdin")?.write_all(state.as_bytes());
            let st = child.wait()?;
            anyhow::ensure!(st.success(), "{cmd:?} failed");
            Ok(t.elapsed())
        };
        // Decide mode reads a bundle, as under hooks.d: annotations as
        // containerd's CRI writes them, the data mount on the root disk.
        let bundle = tempfile::tempdir()?;
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{
                "io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app",
                "io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.image-name":"registry.local/app:1","iogate.io/read-iops":"300"}}"#,
        )?;
        let decide_state = state.replace("/nonexistent", &bundle.path().display().to_string());
        let (mut h, mut d, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..400 {
            // Alternating limits makes every second run a real write.
            let riops = if i % 2 == 0 { "7:0 riops=500" } else { "7:0 riops=600" };
            h.push(run(Command::new(&hook).args(["apply", "--io-max", riops]), &state)?);
            d.push(run(Command::new(&hook).env("DATA_MOUNT", "/var/tmp").env_remove("IOGATE_CONFIG"), &decide_state)?);
            t.push(run(&mut Command::new("/bin/true"), &state)?);
        }
        let ((h50, h95), (d50, d95), (t50, t95)) = (summary(h), summary(d), summary(t));
        println!("hook: iogate-oci-hook apply: median {h50:?}, p95 {h95:?}; decide (hooks.d mode): median {d50:?}, p95 {d95:?}; /bin/true spawn: median {t50:?}, p95 {t95:?} (400 runs each, interleaved)");
        Ok(())
    })();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir(&cg);
    result
}

fn bench_start() -> Result<()> {
    let lock = HostLock::acquire()?;
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, ""))?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut n = 0;
    for block in 0..6 {
        let plugged = block % 2 == 0;
        if plugged && stack.plugin.is_none() {
            stack.start_external_plugin(&[])?;
        } else if !plugged {
            if let Some(mut p) = stack.plugin.take() {
                p.stop();
                // Let containerd notice the disconnect before measuring.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for _ in 0..8 {
            n += 1;
            let spec = stack.pod_spec("bench", &format!("p{n}"), &[]);
            let data = stack.data_dir("bench")?;
            let image = stack.image.reference.clone();
            let cri = stack.cri();
            let pod = cri.run_pod(&spec)?;
            let ctr = ContainerSpec {
                name: "app".into(),
                image,
                command: vec!["/bin/sleep".into(), "60".into()],
                mounts: vec![(data, "/data".into())],
                ..Default::default()
            };
            let t = Instant::now();
            let id = cri.create_container(&pod, &ctr).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            cri.start_container(&id)?;
            let took = t.elapsed();
            if plugged {
                with.push(took)
            } else {
                without.push(took)
            }
            cri.remove_pod(&pod)?;
        }
    }
    let ((w50, w95), (o50, o95)) = (summary(with), summary(without));
    println!(
        "start: containerd 2.1 CreateContainer+StartContainer: with plugin median {w50:?} p95 {w95:?}; without median {o50:?} p95 {o95:?}; median ratio {:.2} (24 containers each, alternating blocks of 8)",
        w50.as_secs_f64() / o50.as_secs_f64()
    );
    Ok(())
}

/// The `took_us` of the plugin's `reconcile pass` debug lines that
/// checked `containers` containers, once there are at least `n` of them.
fn passes_over(stack: &Stack, containers: usize, n: usize, timeout: Duration) -> Result<Vec<Duration>> {
    let deadline = Instant::now() + timeout;
    loop {
        let field = |line: &str, key: &str| -> Option<u64> {
            line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        let took: Vec<Duration> = stack
            .plugin_log()
            .lines()
            .filter(|l| l.contains("reconcile pass") && field(l, "containers") == Some(containers as u64))
            .filter_map(|l| field(l, "took_us"))
            .map(Duration::from_micros)
            .collect();
        if took.len() >= n {
            return Ok(took);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} reconcile passes over {containers} containers within {timeout:?}",
            took.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bench_reconcile() -> Result<()> {
    const CONTAINERS: usize = 200;
    const WORKERS: usize = 4;
    let lock = HostLock::acquire()?;
    let mut opts = StackOptions::external(Version::V2_1, "");
    opts.plugin_env = vec![
        ("IOGATE_RECONCILE_INTERVAL".into(), "250ms".into()),
        ("IOGATE_LOG".into(), "info,iogate_nri_plugin::reconciler=debug".into()),
    ];
    let stack = Stack::start(&lock, opts)?;
    let idle = passes_over(&stack, 0, 40, Duration::from_secs(60))?;

    let containerd = stack.containerd.as_ref().context("containerd runs")?;
    let (address, logs) = (containerd.address(), containerd.pod_log_dir());
    let data = stack.data_dir("reconcile")?;
    let specs: Vec<_> = (0..CONTAINERS).map(|i| stack.pod_spec("bench", &format!("r{i}"), &[])).collect();
    let image = stack.image.reference.clone();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = specs
            .chunks(CONTAINERS.div_ceil(WORKERS))
            .map(|chunk| {
                let (address, logs, data, image) = (&address, &logs, &data, &image);
                scope.spawn(move || -> Result<()> {
                    let mut cri = iogate_testbed::cri_client::Cri::connect(address, logs)?;
                    for spec in chunk {
                        let pod = cri.run_pod(spec)?;
                        let ctr = ContainerSpec {
                            name: "app".into(),
                            image: image.clone(),
                            command: vec!["/bin/sleep".into(), "3600".into()],
                            mounts: vec![(data.clone(), "/data".into())],
                            ..Default::default()
                        };
                        let id = cri.create_container(&pod, &ctr).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                        cri.start_container(&id)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    })?;
    let start_took = started.elapsed();
    let full = passes_over(&stack, CONTAINERS, 200, Duration::from_secs(180))?;
    let p = |mut v: Vec<Duration>| {
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.99), *v.last().expect("passes"))
    };
    let ((i50, i99, _), (f50, f99, fmax)) = (p(idle.clone()), p(full.clone()));
    println!(
        "reconcile: {CONTAINERS} containers started in {:.1} s ({WORKERS} CRI clients, {:.1}/s); pass over {CONTAINERS}: median {f50:?}, p99 {f99:?}, max {fmax:?} ({} passes); over none: median {i50:?}, p99 {i99:?} ({} passes); per container {:.1} µs (median difference / {CONTAINERS})",
        start_took.as_secs_f64(),
        CONTAINERS as f64 / start_took.as_secs_f64(),
        full.len(),
        idle.len(),
        (f50.as_secs_f64() - i50.as_secs_f64()) * 1e6 / CONTAINERS as f64
    );
    let unexpected = stack.plugin_metric("iogate_containers", &[("state", "unlimited_unexpectedly")])?;
    let limited = stack.plugin_metric("iogate_containers", &[("state", "limited")])?;
    println!("reconcile: states at the end: {limited} limited, {unexpected} unlimited_unexpectedly");
    stack.finish()
}

fn main() -> Result<()> {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    let want = |n: &str| all || which.iter().any(|w| w == n);
    if want("policy") {
        bench_policy()?;
    }
    if want("hook") {
        bench_hook()?;
    }
    if want("start") {
        bench_start()?;
    }
    if want("reconcile") {
        bench_reconcile()?;
    }
    Ok(())
}
