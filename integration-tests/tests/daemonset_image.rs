//! `deploy/`'s image, built here as `deploy/Dockerfile` builds it (no Docker
//! engine, no registry), and the DaemonSet's containers run from it on real
//! containerd as the kubelet would run them (testbed's `kubelet` stand-in):
//! with exactly the privileges the manifest gives them, then with one less
//! to show each is needed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::cri_client::{ContainerSpec, Mount};
use iogate_testbed::fio::{Job, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::iogate_image::{self, build_iogate_image, IogateImage, Profile};
use iogate_testbed::kubelet::{DaemonSetPod, NodeFiles};
use iogate_testbed::oci_image::layer_paths;
use iogate_testbed::repo_root;
use iogate_testbed::sidecar::http_get;
use iogate_testbed::stack::{Stack, StackOptions, DATA_IN_CONTAINER};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::Value;

/// The one image every container of the DaemonSet runs, which is the one
/// the local build (and `make image`) names.
fn image_reference(spec: &PodSpec) -> Result<String> {
    let images: std::collections::BTreeSet<_> =
        spec.init_containers.iter().flatten().chain(&spec.containers).filter_map(|c| c.image.clone()).collect();
    let want = iogate_image::REFERENCE;
    ensure!(
        images.len() == 1 && images.contains(want),
        "expected every container to run the one iogate image {want}, found {images:?}"
    );
    Ok(want.to_string())
}

fn build(dir: &Path, spec: &PodSpec) -> Result<IogateImage> {
    build_iogate_image(dir, Profile::Debug, &image_reference(spec)?)
}

/// The shell builtins install-hook's script may use; anything else it runs
/// must be a file in the image.
const SHELL_BUILTINS: &[&str] = &["set", "echo"];

/// The programs a container runs: its command, and for `sh -c SCRIPT`
/// each statement's first word.
fn programs(c: &Container) -> Result<Vec<String>> {
    let command = c.command.clone().unwrap_or_default();
    let first = command.first().with_context(|| format!("container {} names no command", c.name))?;
    let mut out = vec![first.clone()];
    if command.len() == 3 && command[1] == "-c" {
        for statement in command[2].split(';') {
            if let Some(word) = statement.split_whitespace().next() {
                if !SHELL_BUILTINS.contains(&word) {
                    out.push(if word.starts_with('/') { word.to_string() } else { format!("/bin/{word}") });
                }
            }
        }
    }
    Ok(out)
}

/// The Dockerfile's final stage, instruction by instruction (continuation
/// lines joined, comments dropped).
fn final_stage(dockerfile: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = instructions.iter().rposition(|i| i.starts_with("FROM ")).unwrap_or(0);
    instructions.split_off(last_from)
}

/// The Dockerfile and the local build make the same image: its final stage
/// is `scratch` plus the root `deploy/image-root.sh` stages (what the local
/// build packs), and sets the config the local build sets. Any other
/// instruction there would add files or settings the local build lacks.
#[test]
fn daemonset_image_dockerfile_stages_the_root_the_local_build_packs() -> Result<()> {
    let dockerfile = std::fs::read_to_string(repo_root().join("deploy/Dockerfile"))?;
    ensure!(
        dockerfile.contains("deploy/image-root.sh /out /rootfs"),
        "expected the build stage to run deploy/image-root.sh /out /rootfs"
    );
    let stage = final_stage(&dockerfile);
    let cmd = format!("CMD {}", serde_json::to_string(iogate_image::CMD)?.replace(',', ", "));
    let env: Vec<String> = iogate_image::ENV.iter().map(|e| format!("ENV {e}")).collect();
    let mut expected = vec!["FROM scratch".to_string(), "COPY --from=build /rootfs/ /".to_string()];
    expected.extend(env);
    for instruction in &stage {
        if let Some(labels) = instruction.strip_prefix("LABEL ") {
            let mut found = Vec::new();
            for pair in labels.split("\" ").map(|p| p.trim().trim_end_matches('"')) {
                let (k, v) = pair.split_once("=\"").with_context(|| format!("a LABEL pair key=\"value\": {pair}"))?;
                found.push((k.trim().to_string(), v.to_string()));
            }
            let local: Vec<(String, String)> =
                iogate_image::LABELS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            ensure!(found == local, "Dockerfile LABEL {found:?}, local build {local:?}");
        }
    }
    let without_labels: Vec<&String> = stage.iter().filter(|i| !i.starts_with("LABEL ")).collect();
    expected.push(cmd);
    ensure!(
        without_labels.iter().map(|s| s.as_str()).eq(expected.iter().map(|s| s.as_str())),
        "expected the Dockerfile's final stage to be\n  {}\nfound\n  {}",
        expected.join("\n  "),
        stage.join("\n  ")
    );
    Ok(())
}

/// The image holds every program each container of the DaemonSet runs,
/// they run from it (their libraries are all there), the hook is static,
/// and the packed layer is exactly the staged root.
#[test]
fn daemonset_image_holds_and_runs_what_each_container_runs() -> Result<()> {
    iogate_testbed::require_root();
    let ds = DaemonSetPod::from_repo()?;
    let spec = ds.spec()?;
    let dir = tempfile::tempdir()?;
    let image = build(dir.path(), spec)?;

    let out = Command::new("find").arg(".").current_dir(&image.rootfs).output()?;
    let mut staged: Vec<String> = String::from_utf8(out.stdout)?.lines().map(str::to_string).collect();
    staged.sort();
    let packed = layer_paths(&image.tarball)?;
    ensure!(packed == staged, "the layer differs from the staged root:\nlayer {packed:?}\nroot {staged:?}");
    eprintln!("{} files in {}: {packed:?}", packed.len(), image.reference);

    for c in ds.containers()? {
        for program in programs(c)? {
            let path = image.rootfs.join(program.trim_start_matches('/'));
            ensure!(path.exists(), "container {} runs {program}, which the image lacks", c.name);
        }
        let binary = &programs(c)?[0];
        if binary.starts_with("/usr/local/bin/") {
            let out = Command::new("chroot").arg(&image.rootfs).args([binary, "--help"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success() && text.starts_with("usage:"),
                "{binary} --help in the image: {} {text} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let hook = image.rootfs.join("usr/local/bin/iogate-oci-hook");
    let ldd = Command::new("ldd").arg(&hook).output()?;
    let text = String::from_utf8_lossy(&ldd.stdout);
    ensure!(!text.contains("=>"), "the image's hook must be static (it runs on the host's libc); ldd: {text}");
    Ok(())
}

/// Runs `spec` in a pod of the DaemonSet's (its labels, annotations,
/// `hostPID`) until it exits; returns its exit code and log.
fn run_to_exit(stack: &mut Stack, ds: &DaemonSetPod, spec: &ContainerSpec) -> Result<(i32, String)> {
    let name = format!("{}-{}", ds.pod_name(), unique());
    let pod = ds.sandbox(stack.pod_spec(&ds.namespace, &name, &[]))?;
    let cri = stack.cri();
    let p = cri.run_pod(&pod)?;
    let id = cri
        .create_container(&p, spec)
        .map_err(|s| anyhow::anyhow!("CreateContainer {}: {}", spec.name, s.message()))?;
    cri.start_container(&id)?;
    let code = cri.wait_exit(&id, Duration::from_secs(30))?;
    let log = cri.logs(&p, &spec.name);
    cri.remove_pod(&p)?;
    Ok((code, log))
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

/// A node whose `/opt/iogate/bin` is `hook_dir`, root-owned and 0755 as
/// the real one is.
fn node_with_hook_dir(hook_dir: &Path, scratch: &Path) -> Result<NodeFiles> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(hook_dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(NodeFiles {
        node_name: std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string(),
        host_paths: HashMap::from([("/opt/iogate/bin".to_string(), hook_dir.to_path_buf())]),
        config_maps: HashMap::new(),
        scratch: scratch.to_path_buf(),
    })
}

fn start_stack(lock: &HostLock, version: Version, image: &IogateImage) -> Result<Stack> {
    let mut stack = Stack::start(lock, StackOptions::external(version, "[defaults]\nread-iops = 1000\n"))?;
    stack.containerd().import_image(&image.tarball, &image.reference)?;
    stack.cri().wait_for_image(&image.reference, Duration::from_secs(30))?;
    Ok(stack)
}

fn install_hook_on_containerd(version: Version) -> Result<()> {
    iogate_testbed::require_root();
    let lock = HostLock::acquire()?;
    let ds = DaemonSetPod::from_repo()?;
    let dir = tempfile::tempdir()?;
    let image = build(dir.path(), ds.spec()?)?;
    let mut stack = start_stack(&lock, version, &image)?;

    // With exactly its declared privileges: the hook lands on the host,
    // whole, executable, the image's own bytes.
    let host = tempfile::tempdir()?;
    let node = node_with_hook_dir(host.path(), dir.path())?;
    let declared = ds.container_spec("install-hook", &image.reference, &node)?;
    ensure!(
        declared.security.readonly_rootfs
            && declared.security.no_new_privs
            && declared.security.drop_capabilities == ["ALL"]
            && declared.security.add_capabilities.is_empty(),
        "install-hook's manifest promises a read-only root, no privilege escalation and no capabilities; found {:?}",
        declared.security
    );
    let (code, log) = run_to_exit(&mut stack, &ds, &declared)?;
    let installed = host.path().join("iogate-oci-hook");
    ensure!(code == 0, "install-hook exited {code}: {log}");
    ensure!(log.contains("installed /opt/iogate/bin/iogate-oci-hook"), "install-hook's log: {log}");
    let want = std::fs::read(image.rootfs.join("usr/local/bin/iogate-oci-hook"))?;
    ensure!(std::fs::read(&installed)? == want, "the installed hook differs from the image's");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&installed)?.permissions().mode() & 0o7777;
    ensure!(mode == 0o755, "expected the installed hook mode 0755, found {mode:o}");
    let files: Vec<_> = std::fs::read_dir(host.path())?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    ensure!(files.len() == 1, "expected only the hook in the host directory, found {files:?}");

    // The one privilege it keeps, uid 0, is needed: as another user the
    // root-owned host directory refuses the copy.
    let host = tempfile::tempdir()?;
    let node = node_with_hook_dir(host.path(), dir.path())?;
    let mut as_user = ds.container_spec("install-hook", &image.reference, &node)?;
    as_user.security.run_as_user = Some(65534);
    let (code, log) = run_to_exit(&mut stack, &ds, &as_user)?;
    let landed = host.path().join("iogate-oci-hook").exists();
    ensure!(
        code != 0 && !landed,
        "install-hook as uid 65534 should fail on a root-owned directory; exited {code}, hook there: {landed}: {log}"
    );
    ensure!(log.contains("Permission denied"), "expected a permission error as uid 65534, found: {log}");
    stack.finish()
}

/// The sidecar's `/readyz` once its first window exists, with `spec`, and
/// its log; with `tenant` (a pod UID), also the `/metrics` lines of that
/// pod's reads once they appear.
fn sidecar_readyz(
    stack: &mut Stack,
    ds: &DaemonSetPod,
    spec: &ContainerSpec,
    tenant: Option<&str>,
) -> Result<(Value, String, String)> {
    let name = format!("{}-{}", ds.pod_name(), unique());
    let pod = ds.sandbox(stack.pod_spec(&ds.namespace, &name, &[]))?;
    let listen = listen_addr(spec)?;
    let cri = stack.cri();
    let p = cri.run_pod(&pod)?;
    let result = (|| -> Result<(Value, String)> {
        let id = cri
            .create_container(&p, spec)
            .map_err(|s| anyhow::anyhow!("CreateContainer {}: {}", spec.name, s.message()))?;
        cri.start_container(&id)?;
        // The readiness probe's schedule, from the manifest: ready within
        // initialDelaySeconds + failureThreshold × periodSeconds.
        let deadline = Instant::now() + Duration::from_secs(35);
        let ready: Value = loop {
            if let Ok((200, body)) = http_get(listen, "/readyz") {
                break serde_json::from_str(&body)?;
            }
            ensure!(Instant::now() < deadline, "the sidecar was not ready at {listen}/readyz within 35 s");
            std::thread::sleep(Duration::from_millis(500));
        };
        let Some(uid) = tenant else { return Ok((ready, String::new())) };
        // Two windows (--interval 5) at most.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body) = http_get(listen, "/metrics")?;
            let reads: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.starts_with("iogate_io_requests_total{") && l.contains(uid) && l.contains("direction=\"read\"")
                })
                .collect();
            let counted =
                reads.iter().any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0));
            if counted {
                return Ok((ready, reads.join("\n")));
            }
            ensure!(Instant::now() < deadline, "/metrics shows no reads of tenant pod {uid} within 15 s:\n{body}");
            std::thread::sleep(Duration::from_secs(1));
        }
    })();
    let log = cri.logs(&p, &spec.name);
    cri.remove_pod(&p)?;
    let (ready, metrics) = result.with_context(|| format!("sidecar log:\n{log}"))?;
    Ok((ready, log, metrics))
}

/// Where the sidecar listens, from its `--listen` (the pod shares the
/// host's network here: see NodeFiles).
fn listen_addr(spec: &ContainerSpec) -> Result<SocketAddr> {
    let at = spec.command.iter().position(|a| a == "--listen").context("the sidecar's args give no --listen")?;
    let addr: SocketAddr = spec.command.get(at + 1).context("--listen without an address")?.parse()?;
    Ok(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()))
}

fn sidecar_on_containerd(version: Version) -> Result<()> {
    iogate_testbed::require_root();
    let lock = HostLock::acquire()?;
    let ds = DaemonSetPod::from_repo()?;
    let dir = tempfile::tempdir()?;
    let image = build(dir.path(), ds.spec()?)?;
    let mut stack = start_stack(&lock, version, &image)?;
    let node = NodeFiles {
        node_name: std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string(),
        host_paths: HashMap::new(),
        config_maps: HashMap::new(),
        scratch: dir.path().to_path_buf(),
    };
    let declared = ds.container_spec("metrics-sidecar", &image.reference, &node)?;
    ensure!(
        declared.security.add_capabilities == ["BPF", "PERFMON"]
            && declared.security.drop_capabilities == ["ALL"]
            && declared.security.seccomp_runtime_default
            && declared.security.readonly_rootfs,
        "the manifest promises BPF and PERFMON only, RuntimeDefault seccomp and a read-only root; found {:?}",
        declared.security
    );
    // A tenant reading its disk for the whole run.
    let data = stack.data_dir("tenant")?;
    let job = Job::new("reader", Rw::RandRead, 120);
    job.prepare(&data)?;
    let tenant_pod = stack.pod_spec("shop", "tenant-0", &[]);
    let tenant = stack.run(&tenant_pod, "reader", job.command(DATA_IN_CONTAINER), &data)?;

    // Its declared privileges are enough: the eBPF program loads under the
    // runtime's default seccomp profile, from a read-only root, and through
    // its read-only host mounts it finds the tenant's cgroup and disk.
    let (ready, _, metrics) = sidecar_readyz(&mut stack, &ds, &declared, Some(&tenant_pod.uid))?;
    ensure!(ready["source"] == "ebpf", "with BPF and PERFMON the sidecar should measure with eBPF; /readyz: {ready}");
    eprintln!("containerd {version:?}, declared privileges: /readyz {ready}\n{metrics}");

    // The data disk is a loop device whose backing file is outside the
    // sidecar's mounts: it cannot know the disk below, and says so, since
    // the tenant's requests are then counted on both.
    let loop_device = stack.device;
    let backing = std::fs::read_to_string(format!("/sys/dev/block/{loop_device}/loop/backing_file"))
        .with_context(|| format!("expected the data disk {loop_device} to be a loop device"))?;
    let backing = Path::new(backing.trim());
    let names = |ready: &Value| {
        ready["stacking_unresolved"].as_array().is_some_and(|u| {
            u.iter().any(|s| s.as_str().is_some_and(|s| s.contains(&format!("loop device {loop_device}:"))))
        })
    };
    ensure!(names(&ready), "expected /readyz to name {loop_device}, whose backing file it cannot see; found {ready}");
    // The remedy it gives: the file's directory, read-only, at its path.
    let mut remedied = declared.clone();
    let dir_of_file = backing.parent().context("a backing file in a directory")?;
    remedied.volume_mounts.push(Mount {
        host: dir_of_file.to_path_buf(),
        container: dir_of_file.display().to_string(),
        readonly: true,
        host_to_container: false,
    });
    let (ready, _, metrics) = sidecar_readyz(&mut stack, &ds, &remedied, Some(&tenant_pod.uid))?;
    let off_loop: Vec<&str> = metrics.lines().filter(|l| !l.contains(&format!("device=\"{loop_device}\""))).collect();
    ensure!(
        !names(&ready) && off_loop.is_empty(),
        "with {} mounted the tenant's reads should count on {loop_device} only; /readyz {ready}, reads elsewhere {off_loop:?}",
        dir_of_file.display()
    );

    // And each is needed: without either, no eBPF (the sidecar says why).
    for cap in &declared.security.add_capabilities {
        let mut without = declared.clone();
        without.security.add_capabilities.retain(|c| c != cap);
        let (ready, log, _) = sidecar_readyz(&mut stack, &ds, &without, None)?;
        let refused = ready["degraded"].as_str().is_some_and(|d| d.contains("Operation not permitted"));
        ensure!(
            ready["source"] != "ebpf" && refused,
            "without {cap} the sidecar should not load its eBPF program and should say so; /readyz: {ready}\nlog: {log}"
        );
        eprintln!("containerd {version:?}, without {cap}: /readyz {ready}");
    }
    stack.cri().remove_pod(&tenant.pod)?;
    stack.finish()
}

#[test]
fn daemonset_sidecar_loads_ebpf_with_bpf_and_perfmon_only_on_containerd_2_1() -> Result<()> {
    sidecar_on_containerd(Version::V2_1)
}

#[test]
fn daemonset_sidecar_loads_ebpf_with_bpf_and_perfmon_only_on_containerd_1_7() -> Result<()> {
    sidecar_on_containerd(Version::V1_7)
}

#[test]
fn daemonset_install_hook_with_its_privileges_on_containerd_2_1() -> Result<()> {
    install_hook_on_containerd(Version::V2_1)
}

#[test]
fn daemonset_install_hook_with_its_privileges_on_containerd_1_7() -> Result<()> {
    install_hook_on_containerd(Version::V1_7)
}
