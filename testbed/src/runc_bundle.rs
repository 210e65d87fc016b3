//! An OCI bundle run by the machine's runc directly: the OCI hook's home
//! turf without any container manager in between.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub id: String,
}

impl Bundle {
    /// A bundle over `rootfs` running `args`, with `data` bind-mounted at
    /// /data, the given createRuntime hooks, annotations and cgroup path.
    pub fn new(
        rootfs: &Path,
        args: &[String],
        data: &Path,
        hooks: Value,
        annotations: Value,
        cgroups_path: &str,
    ) -> Result<Bundle> {
        let dir = tempfile::Builder::new().prefix("iogate-bundle-").tempdir()?;
        // runc wants the rootfs as an absolute path without symlinks.
        let rootfs = std::fs::canonicalize(rootfs).with_context(|| format!("resolving {}", rootfs.display()))?;
        let id = dir.path().file_name().unwrap().to_string_lossy().replace('.', "-");
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": args,
                "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": { "path": rootfs, "readonly": false },
            "hostname": "bundle",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
                { "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"] }
            ],
            "hooks": hooks,
            "annotations": annotations,
            "linux": {
                "cgroupsPath": cgroups_path,
                "namespaces": [ { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" } ],
                "resources": { "devices": [ { "allow": true, "access": "rwm" } ] }
            }
        });
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec_pretty(&config)?)?;
        Ok(Bundle { dir, id })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// `runc run` in the foreground: returns when the process exits.
    pub fn run(&self) -> Result<Output> {
        Command::new(runc())
            .args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg(&self.id)
            .output()
            .context("running runc")
    }

    /// `runc run --detach`: returns once the process runs.
    pub fn run_detached(&self) -> Result<Output> {
        Command::new(runc())
            .args(["run", "--detach", "--bundle"])
            .arg(self.dir.path())
            .arg(&self.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("output.log"))?)
            .stderr(std::fs::File::options().append(true).open(self.dir.path().join("output.log"))?)
            .status()
            .map(|status| Output { status, stdout: Vec::new(), stderr: self.output().into_bytes() })
            .context("running runc --detach")
    }

    /// What the container printed (detached runs), and runc's own errors.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    /// The running container's init PID.
    pub fn pid(&self) -> Result<u32> {
        let out = Command::new(runc()).args(["state", &self.id]).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("runc state {}", self.id))?;
        v["pid"].as_u64().map(|p| p as u32).context("runc state without pid")
    }
}

fn runc() -> &'static str {
    if Path::new("/usr/sbin/runc").exists() {
        "/usr/sbin/runc"
    } else {
        "/usr/bin/runc"
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new(runc()).args(["delete", "--force", &self.id]).output();
    }
}
