//! The whole node in one fixture: loop-device data disks, the test image, a
//! private containerd (1.7 or 2.1, either cgroup driver) and the iogate NRI
//! plugin (external or pre-registered), plus a CRI client to run pods. The
//! cgroup hierarchy is the machine's own: v1 on the host, v2 in the node VM.
//!
//! `Drop` takes it down in the order that leaves nothing behind: pods, then
//! the plugin, containerd and its shims, the test's cgroups, the disks.
//! Before that it asserts the guarantee every test relies on: after one
//! more reconciler pass, the plugin's `/metrics` count no container in
//! state `unlimited_unexpectedly` ([`Stack::finish`] does the same and
//! returns the error instead of panicking).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iogate_core::{CgroupFs, CgroupVersion, Device, Limits};

use crate::containerd_daemon::{self, CgroupDriver, Containerd, Version};
use crate::cri_client::{ContainerSpec, Cri, Pod, PodSpec};
use crate::host_lock::HostLock;
use crate::loop_disk::LoopDisk;
use crate::oci_image::{self, TestImage};
use crate::process::Background;
use crate::sidecar::{http_get, parse_exposition, sum, Sample};

/// The plugin's default reconcile interval (`--reconcile-interval`).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

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
    pub driver: CgroupDriver,
    pub plugin: PluginMode,
    /// The plugin's policy file (TOML); the data mounts are added by the
    /// stack.
    pub policy: String,
    pub plugin_env: Vec<(String, String)>,
    /// How many data disks (each its own loop device, all throttled).
    pub disks: usize,
    /// The disks' backing files on a tmpfs ([`LoopDisk::in_memory`]) rather
    /// than the root disk: for rate checks that need a device faster than
    /// the limit however busy the host's disk is.
    pub disks_in_memory: bool,
}

impl StackOptions {
    /// The common case: the plugin as an external daemon with `policy`, the
    /// cgroupfs driver, one data disk.
    pub fn external(version: Version, policy: &str) -> StackOptions {
        StackOptions {
            version,
            driver: CgroupDriver::Cgroupfs,
            plugin: PluginMode::External,
            policy: policy.into(),
            plugin_env: Vec::new(),
            disks: 1,
            disks_in_memory: false,
        }
    }

    pub fn with_driver(mut self, driver: CgroupDriver) -> StackOptions {
        self.driver = driver;
        self
    }

    pub fn with_disks(mut self, disks: usize) -> StackOptions {
        self.disks = disks;
        self
    }

    pub fn with_disks_in_memory(mut self) -> StackOptions {
        self.disks_in_memory = true;
        self
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
    /// The data disks; the first one is where pods' `/data` lives.
    pub disks: Vec<LoopDisk>,
    pub image: TestImage,
    /// The first data disk's device.
    pub device: Device,
    /// Every data disk's device, in the order of `disks`.
    pub devices: Vec<Device>,
    pub driver: CgroupDriver,
    /// The cgroupfs parent of every test pod, removed at the end (the
    /// systemd driver's slices are named after the pods instead).
    pub cgroup_parent: String,
    cgroups: CgroupFs,
    /// The plugin's whole policy file (the test's TOML plus the data mount).
    policy_text: String,
    /// What goes around the test's TOML in the policy file.
    policy_frame: (String, String),
    /// How many versions of the policy file were written (ConfigMap-style).
    policy_versions: u32,
    /// The plugin's `/metrics` (external and pre-registered alike).
    pub plugin_addr: SocketAddr,
    pub plugin_mode: PluginMode,
    /// The teardown's guarantee check ran (or was waived by `discard`).
    guarantee_checked: bool,
    work: tempfile::TempDir,
    /// How many times an external plugin was started (names its log).
    plugin_starts: u32,
    /// How long each step of [`Stack::start`] took.
    pub startup: Startup,
}

/// The steps of a stack's start and their durations, for the figures a
/// slow machine (the TCG node VM) makes worth knowing.
#[derive(Debug, Default, Clone)]
pub struct Startup {
    pub steps: Vec<(&'static str, Duration)>,
    last: Option<std::time::Instant>,
}

impl Startup {
    fn begin() -> Startup {
        Startup { steps: Vec::new(), last: Some(std::time::Instant::now()) }
    }

    fn lap(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        let since = self.last.unwrap_or(now);
        self.steps.push((step, now - since));
        self.last = Some(now);
    }

    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }
}

impl std::fmt::Display for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.steps.iter().map(|(s, d)| format!("{s} {:.1} s", d.as_secs_f64())).collect();
        write!(f, "{}", parts.join(", "))
    }
}

impl Stack {
    /// Starts the stack. The caller holds the host lock for as long as the
    /// stack lives.
    pub fn start(_lock: &HostLock, opts: StackOptions) -> Result<Stack> {
        anyhow::ensure!(opts.disks >= 1, "a stack needs at least one data disk, asked for {}", opts.disks);
        let mut startup = Startup::begin();
        let image = oci_image::build_test_image(&oci_image::default_image_dir())?;
        startup.lap("test image");
        let cgroups = CgroupFs::detect(iogate_core::cgroup::CgroupMode::Auto)
            .context("finding this machine's block-I/O cgroup hierarchy")?;
        let mut disks = Vec::with_capacity(opts.disks);
        let mut devices = Vec::with_capacity(opts.disks);
        for _ in 0..opts.disks {
            let disk = if opts.disks_in_memory { LoopDisk::in_memory(512)? } else { LoopDisk::new(512)? };
            let (maj, min) = disk.major_minor()?;
            devices.push(Device::new(maj, min));
            disks.push(disk);
        }
        startup.lap("data disks");
        let work = tempfile::Builder::new().prefix("iogate-e2e-").tempdir()?;
        let plugin_bin = crate::workspace_binary("iogate-nri-plugin")?;
        let hook_bin = crate::workspace_binary("iogate-oci-hook")?;
        let mounts = disks.iter().map(|d| format!("\"{}\"", d.mount_point().display())).collect::<Vec<_>>();
        let policy_frame = (
            format!("hook-path = \"{}\"\n", hook_bin.display()),
            format!("\n[devices]\nmounts = [{}]\n", mounts.join(", ")),
        );
        let policy = format!("{}{}{}", policy_frame.0, opts.policy, policy_frame.1);
        // Port 0 picks a free port; the plugin binds it right after.
        let plugin_addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        std::fs::write(work.path().join("pod-annotations.json"), "{}\n")?;
        let plugin_log = work.path().join("plugin-pre-registered.log");
        let nri_plugins = match opts.plugin {
            PluginMode::PreRegistered => {
                // containerd starts plugins with only NRI_* in the
                // environment: a wrapper sets the rest, as an operator would.
                let wrapper = work.path().join("iogate-nri-plugin-wrapper");
                let mut script = format!("#!/bin/sh\nexport IOGATE_LOG_FILE='{}'\n", plugin_log.display());
                for (k, v) in plugin_settings(work.path(), plugin_addr) {
                    script.push_str(&format!("export {k}='{v}'\n"));
                }
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
            disks,
            image,
            device: devices[0],
            devices,
            driver: opts.driver,
            cgroup_parent: format!("/iogate-e2e-{}", std::process::id()),
            cgroups,
            policy_text: policy,
            policy_frame,
            policy_versions: 0,
            plugin_addr,
            plugin_mode: opts.plugin,
            guarantee_checked: false,
            work,
            plugin_starts: 0,
            startup: Startup::default(),
        };
        let containerd = Containerd::start(containerd_daemon::Options {
            version: opts.version,
            cgroup_driver: opts.driver,
            sandbox_image: stack.image.reference.clone(),
            nri_plugins,
            env: Vec::new(),
            base_runtime_spec,
            root: containerd_daemon::shared_root(opts.version),
        })?;
        startup.lap("containerd up");
        containerd.import_image(&stack.image.tarball, &stack.image.reference)?;
        let mut cri = Cri::connect(&containerd.address(), &containerd.pod_log_dir())?;
        cri.wait_for_image(&stack.image.reference, Duration::from_secs(60))?;
        startup.lap("image imported");
        stack.cri = Some(cri);
        stack.containerd = Some(containerd);
        if opts.plugin == PluginMode::External {
            stack.start_external_plugin(&opts.plugin_env)?;
            startup.lap("plugin connected");
        }
        stack.startup = startup;
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
        if self.policy_versions == 0 {
            let text = self.policy_text.clone();
            self.write_policy_file(&text)?;
        }
        let containerd = self.containerd.as_ref().context("containerd not running")?;
        let mut argv = vec![crate::workspace_binary("iogate-nri-plugin")?.display().to_string()];
        argv.extend(["--config".into(), self.policy_path().display().to_string()]);
        argv.extend(["--socket".into(), containerd.nri_socket().display().to_string()]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(plugin_settings(self.work.path(), self.plugin_addr))
            .envs(env.iter().map(|(k, v)| (k, v)));
        let log = self.work.path().join(format!("plugin-{}.log", self.plugin_starts));
        self.plugin_starts += 1;
        let mut p = Background::spawn("iogate-nri-plugin", cmd, &log)?;
        p.wait_for("connected to runtime", 1, Duration::from_secs(20))?;
        self.plugin = Some(p);
        Ok(())
    }

    /// Where the external plugin's policy file is: `config/iogate.toml`, a
    /// symlink into `config/..data/`, laid out as Kubernetes mounts a
    /// ConfigMap.
    pub fn policy_path(&self) -> PathBuf {
        self.work.path().join("config/iogate.toml")
    }

    /// Replaces the test's part of the policy (the hook path and the data
    /// mounts stay), as an edited ConfigMap reaches the pod.
    pub fn update_policy(&mut self, policy: &str) -> Result<()> {
        let text = format!("{}{}{}", self.policy_frame.0, policy, self.policy_frame.1);
        self.write_policy_file(&text)?;
        self.policy_text = text;
        Ok(())
    }

    /// Writes `text` as the policy file's new version the way the kubelet
    /// updates a ConfigMap volume: a new directory, then the `..data`
    /// symlink renamed onto it, then the old directory removed.
    pub fn write_policy_file(&mut self, text: &str) -> Result<()> {
        let dir = self.work.path().join("config");
        std::fs::create_dir_all(&dir)?;
        self.policy_versions += 1;
        let version = format!("..v{}", self.policy_versions);
        std::fs::create_dir(dir.join(&version))?;
        std::fs::write(dir.join(&version).join("iogate.toml"), text)?;
        let _ = std::fs::remove_file(dir.join("..data_tmp"));
        std::os::unix::fs::symlink(&version, dir.join("..data_tmp"))?;
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
        if self.policy_versions == 1 {
            std::os::unix::fs::symlink("..data/iogate.toml", dir.join("iogate.toml"))?;
        } else {
            std::fs::remove_dir_all(dir.join(format!("..v{}", self.policy_versions - 1)))?;
        }
        Ok(())
    }

    /// Sets the pod annotations the plugin sees as the API server's
    /// (`--pod-annotations-file`): `{"namespace/name": {key: value}}`,
    /// written whole and renamed into place.
    pub fn set_pod_annotations(&self, pods: &serde_json::Value) -> Result<()> {
        let path = self.work.path().join("pod-annotations.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(pods)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Where the plugin's injected hooks report.
    pub fn hook_log_dir(&self) -> PathBuf {
        self.work.path().join("hooks")
    }

    /// The plugin's `/metrics`, parsed.
    pub fn plugin_metrics(&self) -> Result<Vec<Sample>> {
        let (status, body) = http_get(self.plugin_addr, "/metrics").context("reading the plugin's /metrics")?;
        anyhow::ensure!(status == 200, "the plugin's /metrics answered {status}: {body}");
        parse_exposition(&body)
    }

    /// One value of the plugin's metrics: the sum of `name`'s samples
    /// whose labels include `labels`.
    pub fn plugin_metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(sum(&self.plugin_metrics()?, name, labels))
    }

    /// Waits until the reconciler has completed a pass that began after
    /// this call (at most an interval and a bit).
    pub fn wait_for_reconcile_pass(&self) -> Result<()> {
        let passes = |s: &Stack| s.plugin_metric("iogate_reconcile_tick_seconds_count", &[]);
        let before = passes(self)?;
        let deadline = Instant::now() + RECONCILE_INTERVAL + Duration::from_secs(10);
        // A pass already under way when this starts (it takes
        // milliseconds every interval) would count too: a negligible window.
        while passes(self)? < before + 1.0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the plugin's reconciler completed no pass within {:?}",
                RECONCILE_INTERVAL + Duration::from_secs(10)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The guarantee: after a fresh reconciler pass, no container of this
    /// stack's containerd is in state `unlimited_unexpectedly`. Skipped,
    /// with a note, where no plugin runs (the hook-only stack, or a test
    /// that ended with the plugin stopped).
    pub fn assert_no_unlimited_unexpectedly(&self) -> Result<()> {
        let running = match self.plugin_mode {
            PluginMode::BaseRuntimeSpecHook => false,
            PluginMode::External => self.plugin.is_some(),
            PluginMode::PreRegistered => self.containerd.is_some(),
        };
        if !running {
            eprintln!(
                "stack teardown: no iogate plugin runs, so there is no reconciler to ask about unlimited containers"
            );
            return Ok(());
        }
        self.wait_for_reconcile_pass()?;
        let metrics = self.plugin_metrics()?;
        let unexpected = sum(&metrics, "iogate_containers", &[("state", "unlimited_unexpectedly")]);
        if unexpected > 0.0 {
            let log = self.plugin_log();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
            anyhow::bail!(
                "{unexpected} container(s) in state unlimited_unexpectedly at the end of the test; the plugin's warnings:\n{}",
                warnings.join("\n")
            );
        }
        Ok(())
    }

    /// Takes the stack down after asserting the guarantee; the error
    /// instead of the teardown's panic.
    pub fn finish(mut self) -> Result<()> {
        self.guarantee_checked = true;
        self.assert_no_unlimited_unexpectedly()
    }

    /// Takes the stack down without the guarantee's check: for a stack
    /// whose check already failed and was reported (the node VM's agent).
    pub fn discard(mut self) {
        self.guarantee_checked = true;
    }

    /// Takes data disk `device` away from the host (unmounted, loop device
    /// detached and removed) and waits until the kernel no longer knows it: the
    /// "device that disappears" under a running policy. Pods' data dirs
    /// move to the first remaining disk.
    pub fn remove_disk(&mut self, device: Device) -> Result<()> {
        let at = self.devices.iter().position(|d| *d == device).context("no such data disk")?;
        anyhow::ensure!(self.disks.len() > 1, "the stack's only data disk cannot go");
        self.disks.remove(at).unplug(Duration::from_secs(10))?;
        self.devices.remove(at);
        self.device = self.devices[0];
        let node = PathBuf::from(format!("/sys/dev/block/{device}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.exists() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} still exists 10 s after the disk was detached",
                node.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the external plugin by PID (SIGKILL: no goodbye to
    /// containerd), as a crash or an OOM kill would.
    pub fn kill_plugin(&mut self) -> Result<()> {
        let mut p = self.plugin.take().context("no external plugin runs")?;
        p.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        Ok(())
    }

    /// The plugin's whole policy file: the test's TOML with the hook path
    /// and the data mounts (what `explain --config` must read to agree).
    pub fn policy_text(&self) -> &str {
        &self.policy_text
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

    /// The data directory for one pod, on the first data disk.
    pub fn data_dir(&self, name: &str) -> Result<PathBuf> {
        self.disks.first().context("disk gone")?.subdir(name)
    }

    pub fn pod_spec(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> PodSpec {
        let uid = pod_uid(namespace, name);
        let cgroup_parent = match self.driver {
            CgroupDriver::Cgroupfs => format!("{}/pod{uid}", self.cgroup_parent),
            // As the kubelet names a pod's slice for the systemd driver;
            // systemd reads each dash as one level down.
            CgroupDriver::Systemd => format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
        };
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            cgroup_parent,
            uid,
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
            ..Default::default()
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
            ..Default::default()
        };
        let id = cri.create_container(&p, &spec).map_err(|s| {
            anyhow::anyhow!("CreateContainer {}/{} {container}: {}", pod.namespace, pod.name, s.message())
        })?;
        cri.start_container(&id)?;
        let pid = cri.container_pid(&id)?;
        Ok(Running { pod: p, container_id: id, pid })
    }

    /// The limits on the first data disk in a running container's cgroup.
    pub fn limits_of(&self, pid: u32) -> Result<Limits> {
        self.limits_on(pid, self.device)
    }

    /// The limits on `device` in a running container's cgroup.
    pub fn limits_on(&self, pid: u32, device: Device) -> Result<Limits> {
        let cg = self.cgroups.cgroup_of_pid(pid)?;
        Ok(self.cgroups.read_limits(&cg, device)?)
    }

    /// The running container's block-I/O cgroup directory.
    pub fn cgroup_of(&self, pid: u32) -> Result<iogate_core::CgroupPath> {
        Ok(self.cgroups.cgroup_of_pid(pid)?)
    }

    /// This machine's block-I/O cgroup hierarchy.
    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Checked first, while pods and plugin run; reported last, so the
        // teardown happens either way.
        let guarantee =
            (!self.guarantee_checked && !std::thread::panicking()).then(|| self.assert_no_unlimited_unexpectedly());
        if let Some(mut cri) = self.cri.take() {
            if let Err(e) = cri.remove_all_pods() {
                eprintln!("stack teardown: removing pods: {e:#}");
            }
        }
        drop(self.plugin.take());
        drop(self.containerd.take());
        containerd_daemon::remove_cgroup_tree(&self.cgroup_parent);
        if self.driver == CgroupDriver::Systemd {
            // Stopping the slice ends whatever scope a failed test left.
            let _ = Command::new("systemctl").args(["stop", "kubepods-besteffort.slice"]).status();
        }
        self.disks.clear();
        if let Some(Err(e)) = guarantee {
            panic!("stack teardown: {e:#}");
        }
    }
}

/// The plugin's settings every stack gives it: its metrics port, its hooks'
/// report directory and the annotations stand-in, in the stack's work dir.
fn plugin_settings(work: &Path, addr: SocketAddr) -> Vec<(String, String)> {
    vec![
        ("IOGATE_METRICS_LISTEN".into(), addr.to_string()),
        ("IOGATE_HOOK_LOG_DIR".into(), work.join("hooks").display().to_string()),
        ("IOGATE_POD_ANNOTATIONS_FILE".into(), work.join("pod-annotations.json").display().to_string()),
    ]
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
