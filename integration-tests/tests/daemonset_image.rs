//! `deploy/`'s image, built here as `deploy/Dockerfile` builds it (no Docker
//! engine, no registry), and the DaemonSet's `install-hook` init container
//! run from it on real containerd with exactly the security context the
//! manifest gives it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::cri_client::{ContainerSpec, Security};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::iogate_image::{self, build_iogate_image, IogateImage, Profile};
use iogate_testbed::oci_image::layer_paths;
use iogate_testbed::repo_root;
use iogate_testbed::stack::{Stack, StackOptions};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

fn daemonset() -> Result<DaemonSet> {
    let path = repo_root().join("deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not a DaemonSet", path.display()))
}

fn pod_spec(ds: &DaemonSet) -> Result<&PodSpec> {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("the DaemonSet has no pod template spec")
}

/// Every container, init containers first.
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().chain(spec.containers.iter())
}

/// The one image every container of the DaemonSet runs, which is the one
/// the local build (and `make image`) names.
fn image_reference(spec: &PodSpec) -> Result<String> {
    let images: std::collections::BTreeSet<_> = containers(spec).filter_map(|c| c.image.clone()).collect();
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

/// What the kubelet passes to the CRI for a container's security context
/// (the pod's seccomp profile applying where the container sets none).
/// A field this does not translate is an error, never dropped.
fn security(pod: &PodSpec, c: &Container) -> Result<Security> {
    let sc = c.security_context.clone().unwrap_or_default();
    let SecurityContext {
        allow_privilege_escalation,
        capabilities,
        read_only_root_filesystem,
        run_as_user,
        run_as_non_root,
        seccomp_profile,
        ..
    } = sc.clone();
    let handled = SecurityContext {
        allow_privilege_escalation,
        capabilities: capabilities.clone(),
        read_only_root_filesystem,
        run_as_user,
        run_as_non_root,
        seccomp_profile: seccomp_profile.clone(),
        ..Default::default()
    };
    ensure!(handled == sc, "container {}: securityContext fields this test does not translate: {sc:?}", c.name);
    if run_as_non_root == Some(true) {
        bail!("container {}: runAsNonRoot true, which the kubelet checks against the image's user", c.name);
    }
    let seccomp = seccomp_profile
        .or_else(|| pod.security_context.as_ref().and_then(|p| p.seccomp_profile.clone()))
        .map(|p| p.type_);
    let seccomp_runtime_default = match seccomp.as_deref() {
        None | Some("Unconfined") => false,
        Some("RuntimeDefault") => true,
        Some(other) => bail!("container {}: seccomp profile {other} is not translated", c.name),
    };
    let caps = capabilities.unwrap_or_default();
    Ok(Security {
        run_as_user,
        readonly_rootfs: read_only_root_filesystem.unwrap_or(false),
        no_new_privs: allow_privilege_escalation == Some(false),
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        seccomp_runtime_default,
    })
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
    let ds = daemonset()?;
    let spec = pod_spec(&ds)?;
    let dir = tempfile::tempdir()?;
    let image = build(dir.path(), spec)?;

    let out = Command::new("find").arg(".").current_dir(&image.rootfs).output()?;
    let mut staged: Vec<String> = String::from_utf8(out.stdout)?.lines().map(str::to_string).collect();
    staged.sort();
    let packed = layer_paths(&image.tarball)?;
    ensure!(packed == staged, "the layer differs from the staged root:\nlayer {packed:?}\nroot {staged:?}");
    eprintln!("{} files in {}: {packed:?}", packed.len(), image.reference);

    for c in containers(spec) {
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

/// The host directory the manifest mounts at `mount`, in the test: a
/// directory of its own, root-owned as /opt/iogate/bin is.
fn host_dir_for(c: &Container, volume: &str) -> Result<String> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .with_context(|| format!("container {} mounts no volume {volume}", c.name))?;
    Ok(mount.mount_path.clone())
}

/// The init container run as the kubelet would run it: its command, its
/// mount (on `host`, a directory of this test's, root-owned and 0755 as
/// /opt/iogate/bin is), its security context. Returns its exit code and log.
fn run_install_hook(
    stack: &mut Stack,
    image: &IogateImage,
    c: &Container,
    security: Security,
    host: &Path,
) -> Result<(i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(0o755))?;
    let mount_path = host_dir_for(c, "hook-dir")?;
    let name =
        format!("install-hook-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    let pod = stack.pod_spec("iogate-system", &name, &[]);
    let cri = stack.cri();
    let p = cri.run_pod(&pod)?;
    let spec = ContainerSpec {
        name: c.name.clone(),
        image: image.reference.clone(),
        command: c.command.clone().unwrap_or_default(),
        mounts: vec![(host.to_path_buf(), mount_path)],
        security,
    };
    let id =
        cri.create_container(&p, &spec).map_err(|s| anyhow::anyhow!("CreateContainer {}: {}", c.name, s.message()))?;
    cri.start_container(&id)?;
    let code = cri.wait_exit(&id, Duration::from_secs(30))?;
    let log = cri.logs(&p, &c.name);
    cri.remove_pod(&p)?;
    Ok((code, log))
}

fn install_hook_on_containerd(version: Version) -> Result<()> {
    iogate_testbed::require_root();
    let lock = HostLock::acquire()?;
    let ds = daemonset()?;
    let spec = pod_spec(&ds)?;
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "install-hook")
        .context("the DaemonSet has no install-hook init container")?;
    let declared = security(spec, init)?;
    ensure!(
        declared.readonly_rootfs && declared.no_new_privs && declared.drop_capabilities == ["ALL"],
        "install-hook's manifest promises a read-only root, no privilege escalation and no capabilities; found {declared:?}"
    );
    let dir = tempfile::tempdir()?;
    let image = build(dir.path(), spec)?;
    let mut stack = Stack::start(&lock, StackOptions::external(version, "[defaults]\nread-iops = 1000\n"))?;
    stack.containerd().import_image(&image.tarball, &image.reference)?;
    stack.cri().wait_for_image(&image.reference, Duration::from_secs(30))?;

    // With exactly its declared privileges: the hook lands on the host,
    // whole, executable, the image's own bytes.
    let host = tempfile::tempdir()?;
    let (code, log) = run_install_hook(&mut stack, &image, init, declared.clone(), host.path())?;
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
    let as_user = Security { run_as_user: Some(65534), ..declared.clone() };
    let host = tempfile::tempdir()?;
    let (code, log) = run_install_hook(&mut stack, &image, init, as_user, host.path())?;
    let landed = host.path().join("iogate-oci-hook").exists();
    ensure!(
        code != 0 && !landed,
        "install-hook as uid 65534 should fail on a root-owned directory; exited {code}, hook there: {landed}: {log}"
    );
    ensure!(log.contains("Permission denied"), "expected a permission error as uid 65534, found: {log}");
    stack.finish()
}

#[test]
fn daemonset_install_hook_with_its_privileges_on_containerd_2_1() -> Result<()> {
    install_hook_on_containerd(Version::V2_1)
}

#[test]
fn daemonset_install_hook_with_its_privileges_on_containerd_1_7() -> Result<()> {
    install_hook_on_containerd(Version::V1_7)
}
