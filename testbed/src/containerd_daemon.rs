//! A private containerd: Debian's 1.7 or 2.1 binaries (fetched by
//! `scripts/fetch-containerd.sh` into `.cache/containerd/<version>`), its own
//! config, root, state and sockets under a temporary directory, NRI enabled.
//!
//! `Drop` stops it by PID, then removes what it leaves behind if a test
//! failed half-way: container processes (found by the test's cgroup parent),
//! shims (found by our socket address on their command line), mounts under
//! its root and state, and the test's cgroups.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V1_7,
    V2_1,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V1_7, Version::V2_1];

    fn dir_name(self) -> &'static str {
        match self {
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    /// `.cache/containerd/<version>/usr/bin`.
    pub fn bin_dir(self) -> PathBuf {
        crate::repo_root().join(".cache/containerd").join(self.dir_name()).join("usr/bin")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "containerd {}", self.dir_name())
    }
}

/// Who creates the containers' cgroups: runc itself under the pod's
/// cgroupfs path, or systemd (as a scope per container, in a slice per pod)
/// at runc's request over D-Bus, which is what kubeadm sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    pub const ALL: [CgroupDriver; 2] = [CgroupDriver::Systemd, CgroupDriver::Cgroupfs];

    pub fn name(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} driver", self.name())
    }
}

/// How to start it.
pub struct Options {
    pub version: Version,
    pub cgroup_driver: CgroupDriver,
    /// The sandbox ("pause") image; must be imported before pods run.
    pub sandbox_image: String,
    /// Pre-registered NRI plugins to put in the plugin dir: (file name like
    /// `10-iogate`, binary to link) and their config file text.
    pub nri_plugins: Vec<(String, PathBuf, Option<String>)>,
    /// Environment for containerd.
    pub env: Vec<(String, String)>,
    /// containerd without NRI: a CRI base runtime spec for runc (which is
    /// how the OCI hook is wired in before NRI), with `iogate.io/*` pod
    /// annotations passed into container specs.
    pub base_runtime_spec: Option<PathBuf>,
    /// A root (content store, snapshots, metadata) that outlives this
    /// containerd, for the next one of the same version to find the test
    /// image already imported and unpacked; see [`shared_root`].
    pub root: Option<PathBuf>,
}

/// Where `IOGATE_TEST_CONTAINERD_ROOTS` says containerd roots are kept
/// between stacks, one per version (`<dir>/1.7`, `<dir>/2.1`); `None` (the
/// default) gives every containerd a fresh root that goes with it. Only the
/// node VM sets it: importing and unpacking the test image takes most of a
/// minute under emulation, and the VM is thrown away afterwards.
pub fn shared_root(version: Version) -> Option<PathBuf> {
    std::env::var_os("IOGATE_TEST_CONTAINERD_ROOTS").map(|d| PathBuf::from(d).join(version.dir_name()))
}

pub struct Containerd {
    version: Version,
    dir: tempfile::TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

fn runc_path() -> Result<PathBuf> {
    // A wrapper (e.g. one that keeps bundles) for debugging a failing start.
    if let Some(p) = std::env::var_os("IOGATE_TEST_RUNC") {
        return Ok(PathBuf::from(p));
    }
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("expected Debian's runc at /usr/sbin/runc (run scripts/install-deps.sh)")
}

impl Containerd {
    pub fn start(opts: Options) -> Result<Containerd> {
        let bin = opts.version.bin_dir();
        if !bin.join("containerd").exists() {
            bail!("expected {} at {} (run scripts/fetch-containerd.sh)", opts.version, bin.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("iogate-ctrd-")
            .tempdir_in("/var/tmp")
            .context("creating containerd dir")?;
        let d = dir.path();
        for sub in ["root", "state", "nri-plugins", "nri-conf", "cni-conf", "cni-bin", "pod-logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let root = opts.root.clone().unwrap_or_else(|| d.join("root"));
        std::fs::create_dir_all(&root).with_context(|| format!("creating containerd root {}", root.display()))?;
        for (name, binary, conf) in &opts.nri_plugins {
            std::os::unix::fs::symlink(binary, d.join("nri-plugins").join(name)).context("linking NRI plugin")?;
            if let Some(text) = conf {
                std::fs::write(d.join("nri-conf").join(format!("{name}.conf")), text)?;
            }
        }
        let mut config = render_config(opts.version, opts.cgroup_driver, d, &root, &opts.sandbox_image, &runc_path()?);
        if let Some(spec) = &opts.base_runtime_spec {
            // Keys of the runc runtime table, the same in both config versions.
            let runtime_table = "runtime_type = \"io.containerd.runc.v2\"\n";
            let extra = format!(
                "runtime_type = \"io.containerd.runc.v2\"\n      base_runtime_spec = \"{}\"\n      pod_annotations = [\"iogate.io/*\"]\n",
                spec.display()
            );
            config = config.replace(runtime_table, &extra);
            config =
                config.replace("  disable = false\n  disable_connections", "  disable = true\n  disable_connections");
        }
        std::fs::write(d.join("config.toml"), config)?;
        let mut c = Containerd { version: opts.version, dir, child: None, env: opts.env };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let bin = self.version.bin_dir();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("containerd.log"))?;
        let mut cmd = Command::new(bin.join("containerd"));
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", self.version))?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("{} exited at start-up ({status}); log:\n{}", self.version, self.log());
            }
            if self.ctr(&["version"]).is_ok() && self.log().contains("containerd successfully booted") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} did not come up within 30 s; log:\n{}", self.version, self.log())
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn nri_socket(&self) -> PathBuf {
        self.dir.path().join("nri.sock")
    }

    pub fn pod_log_dir(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs this version's `ctr` against this containerd, namespace k8s.io.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.version.bin_dir().join("ctr"))
            .arg("--address")
            .arg(self.address())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!("ctr {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Imports the image unless this containerd's root already has it.
    pub fn import_image(&self, tarball: &Path, reference: &str) -> Result<()> {
        if self.ctr(&["images", "ls", "-q"])?.lines().any(|l| l.trim() == reference) {
            return Ok(());
        }
        let t = tarball.to_str().context("image path is not UTF-8")?;
        self.ctr(&["images", "import", "--no-unpack", t]).or_else(|_| self.ctr(&["images", "import", t]))?;
        Ok(())
    }

    /// Stops it by PID (SIGTERM, then SIGKILL after 10 s). Containers keep
    /// running under their shims, as in production.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
            child.wait()?;
        }
        Ok(())
    }

    /// Stop and start again on the same root and state.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// PIDs of processes whose command line names our socket (the shims).
    fn our_shims(&self) -> Vec<i32> {
        let needle = self.address().display().to_string();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Kills every process in cgroups under `relative` (in every mounted
/// hierarchy) and removes those cgroups, deepest first.
pub fn remove_cgroup_tree(relative: &str) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect();
    for m in mounts {
        let top = m.join(relative.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        for _ in 0..3 {
            for dir in walk_dirs(&top) {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut dirs = walk_dirs(&top);
            dirs.reverse();
            for dir in dirs {
                let _ = std::fs::remove_dir(&dir);
            }
            if !top.exists() {
                break;
            }
        }
    }
}

fn walk_dirs(top: &Path) -> Vec<PathBuf> {
    let mut out = vec![top.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Unmounts everything mounted below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if Command::new("umount").arg(&p).status().map(|s| !s.success()).unwrap_or(true) {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.stop();
        for pid in self.our_shims() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
        unmount_below(self.dir.path());
    }
}

fn render_config(
    version: Version,
    driver: CgroupDriver,
    d: &Path,
    root: &Path,
    sandbox_image: &str,
    runc: &Path,
) -> String {
    let p = |s: &str| d.join(s).display().to_string();
    let nri = format!(
        r#"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  disable_connections = false
  socket_path = "{nri}"
  plugin_path = "{plugins}"
  plugin_config_path = "{conf}"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "5s"
"#,
        nri = p("nri.sock"),
        plugins = p("nri-plugins"),
        conf = p("nri-conf")
    );
    // The runc runtime table is the same in both versions, under the
    // plugin that owns runtimes there.
    let runc_runtime = |plugin: &str| {
        format!(
            r#"    [plugins."{plugin}".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."{plugin}".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = {systemd}
        # runc's state under ours, not in the host's /run/containerd/runc.
        Root = "{runc_root}"
"#,
            systemd = driver == CgroupDriver::Systemd,
            runc = runc.display(),
            runc_root = p("state/runc"),
        )
    };
    let common = format!(
        r#"root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
"#,
        root = root.display(),
        state = p("state"),
        sock = p("containerd.sock")
    );
    match version {
        Version::V1_7 => format!(
            r#"version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  enable_selinux = false
  # This machine's root may not lower oom_score_adj (no CAP_SYS_RESOURCE);
  # the sandbox's default -998 would fail in runc.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
{runc_runtime}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
{nri}"#,
            cni_bin = p("cni-bin"),
            cni_conf = p("cni-conf"),
            runc_runtime = runc_runtime("io.containerd.grpc.v1.cri"),
        ),
        Version::V2_1 => format!(
            r#"version = 3
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
{runc_runtime}  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
{nri}"#,
            cni_bin = p("cni-bin"),
            cni_conf = p("cni-conf"),
            runc_runtime = runc_runtime("io.containerd.cri.v1.runtime"),
        ),
    }
}
