//! This build's binaries for the node VM, as a cpio archive laid out the
//! way the guest's agent expects them: the repository's layout under
//! `/opt/iogate` (the agent's `IOGATE_REPO_ROOT`), so that the testbed finds
//! its binaries and files in the guest where it finds them here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the repository appears inside the guest.
pub const GUEST_REPO_ROOT: &str = "/opt/iogate";

/// The workspace binaries the guest runs.
pub const BINARIES: [&str; 4] = ["iogate-vm-agent", "iogate-nri-plugin", "iogate-oci-hook", "iogate-metrics-sidecar"];

/// Repository files the checks read in the guest.
const FILES: [&str; 1] = ["oci-hook/config"];

pub struct Payload {
    cpio: PathBuf,
    _dir: tempfile::TempDir,
}

impl Payload {
    /// Packs the binaries (debug info stripped: they are copied into the
    /// guest's memory on every boot) and the files.
    pub fn build() -> Result<Payload> {
        let dir = tempfile::Builder::new().prefix("iogate-vm-payload-").tempdir_in("/var/tmp")?;
        let root = dir.path().join("root");
        let repo = root.join(GUEST_REPO_ROOT.trim_start_matches('/'));
        let bin_dir = repo.join("target/debug");
        std::fs::create_dir_all(&bin_dir)?;
        for name in BINARIES {
            let built = crate::workspace_binary(name)?;
            run(Command::new("objcopy").arg("--strip-debug").arg(&built).arg(bin_dir.join(name)))?;
        }
        for f in FILES {
            let src = crate::repo_root().join(f);
            let dest = repo.join(f);
            std::fs::create_dir_all(dest.parent().context("file without a parent")?)?;
            run(Command::new("cp").arg("-a").arg(&src).arg(&dest))?;
        }
        let cpio = dir.path().join("payload.cpio");
        let script = format!("cd '{}' && find . | cpio -o -H newc --quiet > '{}'", root.display(), cpio.display());
        run(Command::new("sh").arg("-c").arg(script))?;
        Ok(Payload { cpio, _dir: dir })
    }

    pub fn cpio(&self) -> &Path {
        &self.cpio
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
