//! The metrics sidecar binary, over HTTP, against ground truth: fio's own
//! count of what it did, `/proc/diskstats`, the limits in the cgroup files,
//! `promtool check metrics`, and a pod on real containerd.
//!
//! Root only. Each test takes the host lock; cgroups, disks, containerd and
//! the sidecar are removed or stopped by their guards.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use iogate_core::Device;
use iogate_metrics_sidecar::token_review::fake_api::{self, Grant};
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::fio::{within, Job, Rw};
use iogate_testbed::host_io::{diskstats, run_fio, BlkioCgroup, FioTotals};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::loop_disk::LoopDisk;
use iogate_testbed::sidecar::{sum, Sidecar};
use iogate_testbed::stack::{Stack, StackOptions, DATA_IN_CONTAINER};
use iogate_testbed::{fio, repo_root, require_root};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_secs(1);

/// The cgroup's path as the sidecar names it (relative to the blkio root).
fn cgroup_label(cg: &BlkioCgroup) -> String {
    format!("/{}", cg.path.file_name().expect("cgroup dir has a name").to_string_lossy())
}

fn device_of(disk: &LoopDisk) -> Result<Device> {
    let (major, minor) = disk.major_minor()?;
    Ok(Device::new(major, minor))
}

/// Counters the sidecar exports for one cgroup, device and direction, and
/// for the whole device.
#[derive(Debug, Default, Clone, Copy)]
struct Exported {
    ops: f64,
    bytes: f64,
    latency_count: f64,
    device_ops: f64,
    device_bytes: f64,
}

fn exported(sidecar: &Sidecar, cgroup: &str, device: Device, direction: &str) -> Result<Exported> {
    let m = sidecar.metrics()?;
    let dev = device.to_string();
    let mine = [("cgroup", cgroup), ("device", dev.as_str()), ("direction", direction)];
    let all = [("device", dev.as_str()), ("direction", direction)];
    Ok(Exported {
        ops: sum(&m, "iogate_io_requests_total", &mine),
        bytes: sum(&m, "iogate_io_bytes_total", &mine),
        latency_count: sum(&m, "iogate_io_latency_seconds_count", &mine),
        device_ops: sum(&m, "iogate_io_requests_total", &all),
        device_bytes: sum(&m, "iogate_io_bytes_total", &all),
    })
}

/// Runs fio in the cgroup and returns what fio, the sidecar and diskstats
/// saw of it: (fio, sidecar delta, diskstats delta (ops, bytes)).
fn measured_run(
    sidecar: &Sidecar,
    disk: &LoopDisk,
    cg: &BlkioCgroup,
    job: &Job,
) -> Result<(FioTotals, Exported, (u64, u64))> {
    let device = device_of(disk)?;
    let dir = disk.subdir(&job.name)?;
    job.prepare(&dir)?;
    let label = cgroup_label(cg);
    let direction = if job.rw == Rw::RandRead { "read" } else { "write" };
    let idx = usize::from(job.rw != Rw::RandRead);
    // Let the sidecar publish everything before the run, then read both
    // ground truths around it.
    sidecar.wait_windows(1);
    let (e0, d0) = (exported(sidecar, &label, device, direction)?, diskstats(device)?);
    let fio = run_fio(cg, &dir, job)?;
    let d1 = diskstats(device)?;
    sidecar.wait_windows(1);
    let e1 = exported(sidecar, &label, device, direction)?;
    let delta = Exported {
        ops: e1.ops - e0.ops,
        bytes: e1.bytes - e0.bytes,
        latency_count: e1.latency_count - e0.latency_count,
        device_ops: e1.device_ops - e0.device_ops,
        device_bytes: e1.device_bytes - e0.device_bytes,
    };
    Ok((fio, delta, (d1[idx].0 - d0[idx].0, d1[idx].1 - d0[idx].1)))
}

#[test]
fn counts_over_http_match_fio_and_diskstats() -> Result<()> {
    require_root();
    let _lock = HostLock::acquire()?;
    let disk = LoopDisk::new(256)?;
    let sidecar = Sidecar::start(INTERVAL, &["--source", "ebpf"])?;
    for (rw, iodepth) in [(Rw::RandRead, 32), (Rw::RandWrite, 8)] {
        let cg = BlkioCgroup::create(&format!("http-{iodepth}"))?;
        let mut job = Job::new(&format!("http{iodepth}"), rw, 4);
        job.iodepth = iodepth;
        let (fio, sc, (disk_ops, disk_bytes)) = measured_run(&sidecar, &disk, &cg, &job)?;
        eprintln!("{rw:?} iodepth {iodepth}: fio {fio:?}; sidecar {sc:?}; diskstats ops {disk_ops} bytes {disk_bytes}");
        assert!(fio.ios > 1000, "fio did too little I/O ({}) for a 5% comparison", fio.ios);
        assert!(within(sc.ops, fio.ios as f64, 5.0), "sidecar requests {} vs fio {}", sc.ops, fio.ios);
        assert!(within(sc.bytes, fio.bytes as f64, 5.0), "sidecar bytes {} vs fio {}", sc.bytes, fio.bytes);
        assert_eq!(sc.latency_count, sc.ops, "every request has a latency");
        assert!(
            within(sc.device_ops, disk_ops as f64, 2.0),
            "device requests {} vs diskstats {disk_ops}",
            sc.device_ops
        );
        assert!(
            within(sc.device_bytes, disk_bytes as f64, 2.0),
            "device bytes {} vs diskstats {disk_bytes}",
            sc.device_bytes
        );
    }
    Ok(())
}

fn cgroup_entry(sidecar: &Sidecar, label: &str) -> Result<(Value, Value)> {
    let (status, v) = sidecar.json("/api/v1/metrics")?;
    anyhow::ensure!(status == 200, "GET /api/v1/metrics answered {status}: {v}");
    let entry = v["cgroup_metrics"][label].clone();
    anyhow::ensure!(!entry.is_null(), "expected cgroup {label} in cgroup_metrics, found {}", v["cgroup_metrics"]);
    Ok((entry, v["cgroup_bottlenecks"][label].clone()))
}

#[test]
fn a_throttled_cgroup_shows_its_limit_and_a_queue_bottleneck() -> Result<()> {
    require_root();
    let _lock = HostLock::acquire()?;
    let disk = LoopDisk::in_memory(256)?;
    let device = device_of(&disk)?;
    let sidecar = Sidecar::start(INTERVAL, &["--source", "ebpf"])?;
    let cg = BlkioCgroup::create("throttled")?;
    cg.set("blkio.throttle.read_iops_device", &format!("{device} 200"))?;
    let dir = disk.subdir("throttled")?;
    let mut job = Job::new("throttled", Rw::RandRead, 6);
    job.iodepth = 8;
    job.prepare(&dir)?;
    let label = cgroup_label(&cg);

    let (entry, bottleneck) = std::thread::scope(|s| -> Result<(Value, Value)> {
        let fio = s.spawn(|| run_fio(&cg, &dir, &job));
        // Mid-run: the last window lies entirely inside fio's run.
        std::thread::sleep(Duration::from_secs(4));
        let seen = cgroup_entry(&sidecar, &label);
        fio.join().expect("fio thread")?;
        seen
    })?;
    eprintln!("{label}: {entry:#}");
    let iops = entry["read_iops"].as_f64().context("read_iops")?;
    assert!(within(iops, 200.0, 10.0), "sidecar read_iops {iops}, limit 200");
    let dev = &entry["containers"][0]["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .find(|d| d["device"] == device.to_string())
        .cloned()
        .with_context(|| format!("expected device {device} in {entry}"))?;
    assert_eq!(dev["limits"]["read_iops"], 200, "the limit in force is reported next to the usage");
    assert!(dev["limit_utilization"].as_f64().unwrap_or(0.0) >= 0.9, "utilization {}", dev["limit_utilization"]);
    assert_eq!(bottleneck, "queue", "a cgroup at its limit waits in the throttle queue");
    assert!(entry["read_latency_ns"].as_u64().is_some_and(|ns| ns > 0), "latency measured");
    let m = sidecar.metrics()?;
    let limit = sum(
        &m,
        "iogate_io_limit",
        &[("cgroup", label.as_str()), ("direction", "read"), ("unit", "iops"), ("device", &device.to_string())],
    );
    assert_eq!(limit, 200.0);
    Ok(())
}

#[test]
fn the_fallback_counts_without_latency_and_says_so() -> Result<()> {
    require_root();
    let _lock = HostLock::acquire()?;
    let disk = LoopDisk::new(256)?;
    let sidecar = Sidecar::start(INTERVAL, &["--source", "cgroup-stats"])?;
    let (status, ready) = sidecar.json("/readyz")?;
    assert_eq!(status, 200);
    assert_eq!(ready["source"], "cgroup-stats");
    assert_eq!(
        ready["degraded"],
        "eBPF unavailable (disabled by --source cgroup-stats); serving IOPS and throughput from cgroup statistics, \
         latency unavailable"
    );
    let cg = BlkioCgroup::create("fallback")?;
    cg.count_throttle_stats(device_of(&disk)?)?;
    let mut job = Job::new("fallback", Rw::RandRead, 3);
    job.iodepth = 8;
    let (fio, sc, _) = measured_run(&sidecar, &disk, &cg, &job)?;
    eprintln!("fallback: fio {fio:?}; sidecar {sc:?}");
    assert!(within(sc.ops, fio.ios as f64, 5.0), "fallback requests {} vs fio {}", sc.ops, fio.ios);
    assert!(within(sc.bytes, fio.bytes as f64, 5.0), "fallback bytes {} vs fio {}", sc.bytes, fio.bytes);
    assert_eq!(sc.latency_count, 0.0, "no latency series without eBPF");
    let (status, top) = sidecar.json("/api/v1/metrics/topslow")?;
    assert_eq!(status, 503, "{top}");
    assert!(sidecar.log().contains("disabled by --source cgroup-stats"));
    Ok(())
}

#[test]
fn promtool_accepts_the_exposition() -> Result<()> {
    require_root();
    let promtool = repo_root().join(".cache/prometheus/usr/bin/promtool");
    anyhow::ensure!(promtool.exists(), "expected {} (scripts/fetch-promtool.sh)", promtool.display());
    let _lock = HostLock::acquire()?;
    let disk = LoopDisk::new(256)?;
    let sidecar = Sidecar::start(INTERVAL, &["--source", "ebpf"])?;
    let cg = BlkioCgroup::create("promtool")?;
    cg.set("blkio.throttle.write_iops_device", &format!("{} 500", device_of(&disk)?))?;
    let mut job = Job::new("promtool", Rw::RandWrite, 2);
    job.iodepth = 4;
    measured_run(&sidecar, &disk, &cg, &job)?;
    let (status, body) = sidecar.get("/metrics")?;
    assert_eq!(status, 200);
    assert!(body.contains("iogate_io_latency_seconds_bucket{"), "expected histograms in:\n{body}");
    assert!(body.contains("iogate_io_limit{"), "expected a limit series in:\n{body}");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool")?;
    std::io::Write::write_all(&mut check.stdin.take().context("promtool stdin")?, body.as_bytes())?;
    let out = check.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {}\n{said}", out.status);
    Ok(())
}

/// The sidecar beside the NRI plugin on containerd 2.1: the pod's I/O is
/// attributed to the pod (named by UID: no API server here) and container,
/// at the limit the plugin set, with the plugin's word that the limits are
/// the policy's; once the plugin is gone, that word is gone too.
#[test]
fn a_pod_on_containerd_is_attributed_and_shown_at_its_limit_with_the_plugins_guarantee() -> Result<()> {
    require_root();
    let lock = HostLock::acquire()?;
    let policy = "[defaults]\nread-iops = 200\nwrite-iops = 200\n";
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, policy))?;
    let plugin = stack.plugin_addr.to_string();
    let sidecar = Sidecar::start(INTERVAL, &["--source", "ebpf", "--plugin", &plugin])?;
    let spec = stack.pod_spec("shop", "web-0", &[]);
    let data = stack.data_dir("web-0")?;
    let job = Job::new("fio", Rw::RandRead, 6);
    job.prepare(&data)?;
    let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data)?;
    std::thread::sleep(Duration::from_secs(4));
    let (status, v) = sidecar.json(&format!("/api/v1/metrics/pod/{}", spec.uid))?;
    let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(60))?;
    assert_eq!(code, 0, "fio failed: {}", stack.cri().logs(&run.pod, "fio"));
    assert_eq!(status, 200, "{v}");
    eprintln!("pod {}: {v:#}", spec.uid);
    let pod = &v["pod_metrics"];
    assert_eq!(pod["pod_uid"], spec.uid.as_str());
    let iops = pod["read_iops"].as_f64().context("read_iops")?;
    assert!(fio::within(iops, 200.0, 10.0), "sidecar read_iops {iops}, limit 200");
    let container = pod["containers"]
        .as_array()
        .context("containers")?
        .iter()
        .find(|c| c["container_id"] == run.container_id.as_str())
        .with_context(|| format!("expected container {} in {pod}", run.container_id))?;
    let on_disk = container["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .find(|d| d["limits"]["read_iops"] == 200)
        .with_context(|| format!("expected the data disk with its 200 IOPS limit in {container}"))?;
    assert!(on_disk["read_iops"].as_f64().is_some_and(|r| fio::within(r, 200.0, 10.0)), "{on_disk}");
    assert_eq!(v["bottleneck"], "queue");
    assert_eq!(container["guarantee"], "limited", "the plugin's word on {container}\n{}", sidecar.log());
    // The throttle held this pod back: its wait is measured where the
    // kernel lets the programs in (vm_v2 checks the figure), and where it
    // does not, /readyz says why and the fields are null, never zero.
    let (_, ready) = sidecar.json("/readyz")?;
    let measured = sidecar.get("/metrics")?.1.lines().any(|l| l == "iogate_sidecar_throttle_wait_measured 1");
    if ready["throttle_wait_available"] == true {
        assert!(measured, "/readyz and /metrics disagree");
        assert!(pod["throttled_seconds"].as_f64().is_some_and(|s| s > 0.0), "{pod}");
    } else {
        let why = ready["throttle_wait_unavailable"].as_str().unwrap_or_default();
        assert!(why.contains("blk-throttle"), "expected the reason in /readyz, found {ready}");
        assert!(!measured, "/readyz and /metrics disagree");
        for field in ["throttled_seconds", "throttle_wait_ns", "throttle_wait_p99_ns"] {
            assert!(pod[field].is_null(), "expected {field} null where the wait is not measured: {pod}");
        }
        eprintln!("throttle wait not measured on this kernel (null, as expected): {why}");
    }
    // The stall time likewise: vm_v2 checks the figure on cgroup v2; this
    // host's blkio is cgroup v1, which keeps none per cgroup.
    let metrics = sidecar.get("/metrics")?.1;
    if ready["io_pressure_available"] == true {
        assert!(metrics.lines().any(|l| l == "iogate_sidecar_io_pressure_measured 1"), "/readyz and /metrics disagree");
    } else {
        let why = ready["io_pressure_unavailable"].as_str().unwrap_or_default();
        assert!(why.contains("pressure stall information"), "expected the reason in /readyz, found {ready}");
        assert!(metrics.lines().any(|l| l == "iogate_sidecar_io_pressure_measured 0"), "/readyz and /metrics disagree");
        assert!(!metrics.contains("io_pressure_some_seconds_total"), "no stall series where unmeasured");
        for field in ["io_pressure_some_seconds", "io_pressure_full_seconds"] {
            assert!(pod[field].is_null(), "expected {field} null where stall time is not measured: {pod}");
            assert!(container[field].is_null(), "expected {field} null where stall time is not measured: {container}");
        }
        eprintln!("stall time not measured here (null, as expected): {why}");
    }

    // No plugin, no word: null, never the last answer kept.
    stack.kill_plugin()?;
    let job = Job::new("fio2", Rw::RandRead, 6);
    job.prepare(&data)?;
    let spec = stack.pod_spec("shop", "web-1", &[]);
    let run = stack.run(&spec, "fio", job.command(DATA_IN_CONTAINER), &data)?;
    std::thread::sleep(Duration::from_secs(4));
    let (status, v) = sidecar.json(&format!("/api/v1/metrics/pod/{}", spec.uid))?;
    stack.cri().wait_exit(&run.container_id, Duration::from_secs(60))?;
    assert_eq!(status, 200, "{v}");
    let containers = v["pod_metrics"]["containers"].as_array().context("containers")?;
    assert!(!containers.is_empty(), "{v}");
    for c in containers {
        assert_eq!(c["guarantee"], Value::Null, "the plugin is down: {c}");
    }
    assert!(sidecar.log().contains("no guarantee from the NRI plugin"), "{}", sidecar.log());
    stack.start_external_plugin(&[])?;
    stack.cri().remove_all_pods()?;
    stack.finish()
}

/// `--kube-auth` in the real binary: it asks the API server its kubeconfig
/// names (a fake answering TokenReview and SubjectAccessReview from a
/// table) about each bearer token, lets through what RBAC grants, refuses
/// the rest with 401 or 403, and leaves the probes open; over TLS,
/// `kubectl iogate top --token-file` reads it. Asked for where no API is
/// configured, it does not start.
#[test]
fn kube_auth_lets_through_what_rbac_grants_a_token_and_refuses_the_rest() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let grants = vec![
        Grant { token: "scraper", user: "system:serviceaccount:monitoring:prometheus-k8s", prefix: "/metrics" },
        Grant { token: "viewer", user: "sre@example.com", prefix: "/api/v1/" },
    ];
    let api = runtime.block_on(fake_api::start(grants));
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let sidecar = Sidecar::start_with_api(INTERVAL, &["--source", "cgroup-stats", "--kube-auth"], &kubeconfig)?;
    let status = |path: &str, token: Option<&str>| -> Result<u16> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        Ok(iogate_testbed::sidecar::http_get_with(sidecar.addr(), path, &headers)?.status)
    };
    assert_eq!(status("/healthz", None)?, 200);
    assert_eq!(status("/readyz", None)?, 200);
    assert_eq!(status("/metrics", None)?, 401);
    assert_eq!(status("/metrics", Some("scraper"))?, 200, "{}", sidecar.log());
    assert_eq!(status("/api/v1/metrics", Some("scraper"))?, 403, "RBAC grants /metrics only");
    assert_eq!(status("/metrics", Some("stolen"))?, 401);
    assert!(api.reviews() >= 3, "the API server was asked");
    assert!(sidecar.log().contains("bearer tokens travel in clear"), "{}", sidecar.log());
    drop(sidecar);

    // Over TLS, as deployed: `kubectl iogate top --token-file` reads it.
    issue_certificates(dir.path(), "iogate test CA", &["server"])?;
    let config = dir.path().join("web.yml");
    std::fs::write(&config, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")?;
    let web_config = config.to_string_lossy().into_owned();
    let sidecar = Sidecar::spawn_with_api(
        INTERVAL,
        &["--source", "cgroup-stats", "--kube-auth", "--web.config.file", &web_config],
        &kubeconfig,
    )?;
    let endpoint = format!("https://{}", sidecar.addr());
    let kubectl = |token: &str| -> Result<(Option<i32>, String)> {
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n"))?;
        let out = Command::new(iogate_testbed::workspace_binary("kubectl-iogate")?)
            .args(["top", "--endpoint", &endpoint, "--ca-file"])
            .arg(dir.path().join("ca.crt"))
            .arg("--token-file")
            .arg(&token_file)
            .stdin(Stdio::null())
            .output()?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (code, stderr) = loop {
        let seen = kubectl("viewer")?;
        if seen.0 == Some(0) || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(0), "stderr:\n{stderr}\nsidecar:\n{}", sidecar.log());
    assert!(!sidecar.log().contains("travel in clear"), "{}", sidecar.log());
    let (code, stderr) = kubectl("stolen")?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{endpoint}: HTTP 401")), "{stderr}");
    let (code, stderr) = kubectl("scraper")?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{endpoint}: HTTP 403")), "RBAC grants the scraper /metrics only: {stderr}");
    drop(sidecar);

    let out = Command::new(iogate_testbed::workspace_binary("iogate-metrics-sidecar")?)
        .args(["--listen", "127.0.0.1:0", "--source", "cgroup-stats", "--no-plugin", "--kube-auth"])
        .env("KUBECONFIG", dir.path().join("absent"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--kube-auth: no Kubernetes API configuration"), "{stderr}");
    Ok(())
}

/// A web config the sidecar cannot honour stops it before it serves
/// anything in the open: status 1, and the field by name.
#[test]
fn a_web_config_that_does_not_load_stops_the_sidecar_with_its_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
    )?;
    let out = Command::new(iogate_testbed::workspace_binary("iogate-metrics-sidecar")?)
        .args(["--listen", "127.0.0.1:0", "--no-kubernetes", "--no-plugin", "--web.config.file"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--web.config.file"), "{stderr}");
    assert!(stderr.contains("tls_server_config.cipher_suites is not supported by iogate"), "{stderr}");
    Ok(())
}

/// A CA and certificates it signed, as PEM files in `dir`: `ca.crt`, and
/// `NAME.crt` with `NAME.key` for each of `names` (valid for 127.0.0.1).
fn issue_certificates(dir: &std::path::Path, ca_name: &str, names: &[&str]) -> Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    std::fs::write(dir.join("ca.crt"), params.self_signed(&ca_key)?.pem())?;
    let ca = rcgen::Issuer::new(params, ca_key);
    for name in names {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// `kubectl iogate top` against a sidecar locked the exporter way (TLS,
/// client certificates from the cluster's CA, a bcrypt password): with
/// the CA, its certificate and the password it reads the sidecar; without
/// any one of them it gets nothing, and says which.
#[test]
fn kubectl_iogate_reads_a_sidecar_locked_with_tls_a_client_certificate_and_a_password() -> Result<()> {
    require_root();
    let _lock = HostLock::acquire()?;
    let pki = tempfile::tempdir()?;
    issue_certificates(pki.path(), "iogate test CA", &["server", "client"])?;
    let stranger = tempfile::tempdir()?;
    issue_certificates(stranger.path(), "someone else's CA", &["client"])?;
    let config = pki.path().join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  prometheus: {}\n",
            bcrypt::hash("right", 4)?
        ),
    )?;
    let web_config = config.to_string_lossy().into_owned();
    let sidecar = Sidecar::spawn(INTERVAL, &["--source", "ebpf", "--web.config.file", &web_config])?;
    let endpoint = format!("https://{}", sidecar.addr());
    let file = |dir: &tempfile::TempDir, name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let kubectl = |password: &str, ca: &str, cert: Option<(&str, &str)>| -> Result<(Option<i32>, String, String)> {
        let mut cmd = Command::new(iogate_testbed::workspace_binary("kubectl-iogate")?);
        cmd.args(["top", "--endpoint", &endpoint, "--ca-file", ca, "--user", "prometheus"]);
        if let Some((cert, key)) = cert {
            cmd.args(["--cert", cert, "--key", key]);
        }
        let out = cmd.env("IOGATE_PASSWORD", password).stdin(Stdio::null()).output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ca, cert, key) = (file(&pki, "ca.crt"), file(&pki, "client.crt"), file(&pki, "client.key"));
    let client = Some((cert.as_str(), key.as_str()));

    // The sidecar loads its eBPF program before it serves: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (code, stdout, stderr) = loop {
        let seen = kubectl("right", &ca, client)?;
        if seen.0 == Some(0) || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}\nsidecar:\n{}", sidecar.log());
    assert!(stderr.contains("note: no block I/O in the last window (all namespaces)"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    let (code, _, stderr) = kubectl("wrong", &ca, client)?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{endpoint}: HTTP 401")), "{stderr}");

    // The handshake admits a client without a certificate (the probes stay
    // open); the API does not.
    let (code, _, stderr) = kubectl("right", &ca, None)?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{endpoint}: HTTP 401")), "no client certificate: {stderr}");

    let (stranger_cert, stranger_key) = (file(&stranger, "client.crt"), file(&stranger, "client.key"));
    let (code, _, stderr) = kubectl("right", &ca, Some((&stranger_cert, &stranger_key)))?;
    assert_eq!(code, Some(1), "a certificate from another CA: {stderr}");
    assert!(
        stderr.contains("the sidecar does not accept this client certificate: is it signed by its client_ca_file?"),
        "a certificate from another CA: {stderr}"
    );

    let (code, _, stderr) = kubectl("right", &file(&stranger, "ca.crt"), client)?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS: ") && stderr.contains("--ca-file names the CA that signed the sidecar's certificate"),
        "trusting another CA: {stderr}"
    );
    Ok(())
}
