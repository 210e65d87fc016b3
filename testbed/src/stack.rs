//! The whole node in one fixture: a loop-device data disk, the test image, a
//! private containerd (1.7 or 2.1, cgroup v1 or v2) and the iogate NRI plugin
//! (external or pre-registered), plus a CRI client to run pods.
//!
//! `Drop` takes it down in the order that leaves nothing behind: pods, then
//! the plugin, containerd and its shims, the test's cgroups, the disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use iogate_core::{CgroupFs, CgroupVersion, Device, Limits};

use crate::cgroup_v2_host::CgroupV2Io;
use crate::containerd_daemon::{self, Containerd, Version};
use crate::cri_client::{ContainerSpec, Cri, Pod, PodSpec};
use crate::host_lock::HostLock;
use crate::loop_disk::LoopDisk;
use crate::oci_image::{self, TestImage};
use crate::process::Background;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginMode {
    /// A daemon connecting to containerd's NRI socket.
    External,
    /// Linked into containerd's plugin dir; its config arrives via NRI.
    PreRegistered,
    /// No NRI: the OCI hook in a CRI base runtime spec made by the shipped
    /// recipe (`oci-hook/config/containerd-base-runtime-spec.sh`).
    BaseRuntimeSpecHook,
}

pub struct StackOptions {
    pub version: Version,
    pub cgroup: CgroupVersion,
    pub plugin: PluginMode,
    /// The plugin's policy file (TOML); the data mount is added by the stack.
    pub policy: String,
    pub plugin_env: Vec<(String, String)>,
}

impl StackOptions {
    /// The common case: the plugin as an external daemon with `policy`.
    pub fn external(version: Version, cgroup: CgroupVersion, policy: &str) -> StackOptions {
        StackOptions { version, cgroup, plugin: PluginMode::External, policy: policy.into(), plugin_env: Vec::new() }
    }
}

/// Where the data disk appears inside containers.
pub const DATA_IN_CONTAINER: &str = "/data";

pub struct Running {
    pub pod: Pod,
    pub container_id: String,
    pub pid: u32,
}

pub struct Stack {
    pub cri: Option<Cri>,
    pub plugin: Option<Background>,
    pub containerd: Option<Containerd>,
    v2: bool,
    pub disk: Option<LoopDisk>,
    pub image: TestImage,
    pub device: Device,
    /// The cgroupfs parent of every test pod, removed at the end.
    pub cgroup_parent: String,
    cgroups: CgroupFs,
    /// The plugin's whole policy file (the test's TOML plus the data mount).
    policy_text: String,
    work: tempfile::TempDir,
    /// How many times an external plugin was started (names its log).
    plugin_starts: u32,
}

impl Stack {
    /// Starts the stack. The caller holds the host lock for as long as the
    /// stack lives and, for `CgroupVersion::V2`, the [`CgroupV2Io`] switch
    /// (one switch can serve several stacks: moving the controller is slow).
    pub fn start(_lock: &HostLock, opts: StackOptions) -> Result<Stack> {
        let image = oci_image::build_test_image(&oci_image::default_image_dir())?;
        let v2 = opts.cgroup == CgroupVersion::V2;
        if v2 && !CgroupV2Io::active() {
            anyhow::bail!("a cgroup v2 stack needs the io controller on cgroup2: hold a CgroupV2Io first");
        }
        let disk = LoopDisk::new(512)?;
        let (maj, min) = disk.major_minor()?;
        let work = tempfile::Builder::new().prefix("iogate-e2e-").tempdir()?;
        let plugin_bin = crate::workspace_binary("iogate-nri-plugin")?;
        let hook_bin = crate::workspace_binary("iogate-oci-hook")?;
        let policy = format!(
            "hook-path = \"{}\"\n{}\n[devices]\nmounts = [\"{}\"]\n",
            hook_bin.display(),
            opts.policy,
            disk.mount_point().display()
        );
        let cgroups = match opts.cgroup {
            CgroupVersion::V1 => CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio"),
            CgroupVersion::V2 => CgroupFs::new(CgroupVersion::V2, CgroupV2Io::unified_mount()),
        };
        let wrapper = if v2 { CgroupV2Io::wrapper() } else { Vec::new() };
        let plugin_log = work.path().join("plugin-pre-registered.log");
        let nri_plugins = match opts.plugin {
            PluginMode::PreRegistered => {
                // containerd starts plugins with only NRI_* in the
                // environment: a wrapper sets the rest, as an operator would.
                let wrapper = work.path().join("iogate-nri-plugin-wrapper");
                let mut script = format!("#!/bin/sh\nexport IOGATE_LOG_FILE='{}'\n", plugin_log.display());
                for (k, v) in &opts.plugin_env {
                    script.push_str(&format!("export {k}='{v}'\n"));
                }
                script.push_str(&format!("exec '{}' \"$@\"\n", plugin_bin.display()));
                std::fs::write(&wrapper, script)?;
                std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
                vec![("10-iogate".to_string(), wrapper, Some(policy.clone()))]
            }
            PluginMode::External | PluginMode::BaseRuntimeSpecHook => Vec::new(),
        };
        let base_runtime_spec = match opts.plugin {
            PluginMode::BaseRuntimeSpecHook => {
                let policy_path = work.path().join("iogate.toml");
                std::fs::write(&policy_path, &policy)?;
                Some(base_runtime_spec(opts.version, work.path(), &hook_bin, &policy_path)?)
            }
            _ => None,
        };
        let mut stack = Stack {
            cri: None,
            plugin: None,
            containerd: None,
            v2,
            disk: Some(disk),
            image,
            device: Device::new(maj, min),
            cgroup_parent: format!("/iogate-e2e-{}", std::process::id()),
            cgroups,
            policy_text: policy,
            work,
            plugin_starts: 0,
        };
        let containerd = Containerd::start(containerd_daemon::Options {
            version: opts.version,
            sandbox_image: stack.image.reference.clone(),
            nri_plugins,
            wrapper,
            env: Vec::new(),
            base_runtime_spec,
        })?;
        containerd.import_image(&stack.image.tarball)?;
        let mut cri = Cri::connect(&containerd.address(), &containerd.pod_log_dir())?;
        cri.wait_for_image(&stack.image.reference, Duration::from_secs(20))?;
        stack.cri = Some(cri);
        stack.containerd = Some(containerd);
        if opts.plugin == PluginMode::External {
            stack.start_external_plugin(&opts.plugin_env)?;
        }
        Ok(stack)
    }

    pub fn containerd(&mut self) -> &mut Containerd {
        self.containerd.as_mut().expect("containerd runs for the stack's life")
    }

    /// Restarts containerd on the same root and state, and reconnects the
    /// CRI client (the old connection dies with the daemon).
    pub fn restart_containerd(&mut self) -> Result<()> {
        let containerd = self.containerd.as_mut().context("containerd not running")?;
        containerd.restart()?;
        self.cri = Some(Cri::connect(&containerd.address(), &containerd.pod_log_dir())?);
        Ok(())
    }

    pub fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("CRI client lives for the stack's life")
    }

    /// (Re)starts the external plugin with `env` on top of the policy file.
    pub fn start_external_plugin(&mut self, env: &[(String, String)]) -> Result<()> {
        if let Some(mut p) = self.plugin.take() {
            p.stop();
        }
        let policy_path = self.work.path().join("iogate.toml");
        std::fs::write(&policy_path, &self.policy_text)?;
        let containerd = self.containerd.as_ref().context("containerd not running")?;
        let mut argv = if self.v2 { CgroupV2Io::wrapper() } else { Vec::new() };
        argv.push(crate::workspace_binary("iogate-nri-plugin")?.display().to_string());
        argv.extend(["--config".into(), policy_path.display().to_string()]);
        argv.extend(["--socket".into(), containerd.nri_socket().display().to_string()]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
        let log = self.work.path().join(format!("plugin-{}.log", self.plugin_starts));
        self.plugin_starts += 1;
        let mut p = Background::spawn("iogate-nri-plugin", cmd, &log)?;
        p.wait_for("connected to runtime", 1, Duration::from_secs(20))?;
        self.plugin = Some(p);
        Ok(())
    }

    /// Everything the plugin logged (an external one's output, or a
    /// pre-registered one's IOGATE_LOG_FILE), or the base-spec hook's log.
    pub fn plugin_log(&self) -> String {
        match &self.plugin {
            Some(p) => p.output(),
            None => ["plugin-pre-registered.log", "hook.log"]
                .iter()
                .map(|f| std::fs::read_to_string(self.work.path().join(f)).unwrap_or_default())
                .collect(),
        }
    }

    /// The data directory for one pod, on the loop disk.
    pub fn data_dir(&self, name: &str) -> Result<PathBuf> {
        self.disk.as_ref().context("disk gone")?.subdir(name)
    }

    pub fn pod_spec(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> PodSpec {
        let uid = pod_uid(namespace, name);
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            cgroup_parent: format!("{}/pod{uid}", self.cgroup_parent),
            uid,
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        }
    }

    /// Runs a pod with one container (the data dir mounted at /data);
    /// returns once the container runs. Creation errors come back as is.
    pub fn run(
        &mut self,
        pod: &PodSpec,
        container: &str,
        command: Vec<String>,
        data: &std::path::Path,
    ) -> Result<Running> {
        let image = self.image.reference.clone();
        let cri = self.cri();
        let p = cri.run_pod(pod)?;
        let spec = ContainerSpec {
            name: container.into(),
            image,
            command,
            mounts: vec![(data.to_path_buf(), DATA_IN_CONTAINER.to_string())],
        };
        let id = cri.create_container(&p, &spec).map_err(|s| {
            anyhow::anyhow!("CreateContainer {}/{} {container}: {}", pod.namespace, pod.name, s.message())
        })?;
        cri.start_container(&id)?;
        let pid = cri.container_pid(&id)?;
        Ok(Running { pod: p, container_id: id, pid })
    }

    /// The limits on the data disk in a running container's cgroup.
    pub fn limits_of(&self, pid: u32) -> Result<Limits> {
        let cg = self.cgroups.cgroup_of_pid(pid)?;
        Ok(self.cgroups.read_limits(&cg, self.device)?)
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut cri) = self.cri.take() {
            if let Err(e) = cri.remove_all_pods() {
                eprintln!("stack teardown: removing pods: {e:#}");
            }
        }
        drop(self.plugin.take());
        drop(self.containerd.take());
        containerd_daemon::remove_cgroup_tree(&self.cgroup_parent);
        drop(self.disk.take());
    }
}

/// Runs the shipped recipe with this version's `ctr`, then points the hook
/// at this build and this test's policy file.
fn base_runtime_spec(
    version: Version,
    dir: &std::path::Path,
    hook: &std::path::Path,
    policy: &std::path::Path,
) -> Result<PathBuf> {
    let out = dir.join("base-spec.json");
    let script = crate::repo_root().join("oci-hook/config/containerd-base-runtime-spec.sh");
    let st = Command::new(&script)
        .arg(&out)
        .arg(hook)
        .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", version.bin_dir().display()))
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(st.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&st.stderr));
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let hooks = spec["hooks"]["createRuntime"].as_array_mut().context("recipe wrote no createRuntime hook")?;
    let ours = hooks.last_mut().context("recipe wrote an empty createRuntime list")?;
    ours["env"] = serde_json::json!([format!("IOGATE_CONFIG={}", policy.display())]);
    ours["args"] = serde_json::json!(["iogate-oci-hook", "--log", dir.join("hook.log")]);
    std::fs::write(&out, serde_json::to_vec_pretty(&spec)?)?;
    Ok(out)
}

/// A UUID-shaped pod UID, as the kubelet gives pods (the metrics sidecar
/// recognises pod cgroups only by a real UID), unique per test process.
fn pod_uid(namespace: &str, name: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    (namespace, name, std::process::id()).hash(&mut hasher);
    let high = hasher.finish();
    "low half".hash(&mut hasher);
    let low = hasher.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    )
}
