//! The project's own image, `deploy/Dockerfile`'s, built here without a
//! Docker engine or a registry: the same root filesystem script
//! (`deploy/image-root.sh`) on the same binaries, packed as an OCI layout
//! that containerd imports under the name the manifests use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::oci_image::{pack_layout, ImageConfig};

/// The name `deploy/daemonset.yaml` runs (checked by `integration-tests`).
pub const REFERENCE: &str = "ghcr.io/iogate/iogate:0.1.0";

/// What `deploy/Dockerfile`'s final stage sets, and the local build gives
/// its config; `integration-tests` checks the Dockerfile says the same.
pub const ENV: &[&str] = &["PATH=/usr/local/bin:/bin"];
pub const CMD: &[&str] = &["/usr/local/bin/iogate-nri-plugin", "--help"];

pub const LABELS: &[(&str, &str)] = &[
    ("org.opencontainers.image.title", "iogate"),
    (
        "org.opencontainers.image.description",
        "Block-I/O limits in every container's spec (NRI plugin, OCI hook) and per-pod I/O metrics (eBPF sidecar)",
    ),
    ("org.opencontainers.image.licenses", "Apache-2.0"),
    ("org.opencontainers.image.version", "0.1.0"),
];

/// The binaries the image carries (each its crate's name); the hook is
/// linked statically, the others against the libraries the script copies.
const DYNAMIC: [&str; 2] = ["iogate-nri-plugin", "iogate-metrics-sidecar"];
const HOOK: &str = "iogate-oci-hook";

pub struct IogateImage {
    pub rootfs: PathBuf,
    pub tarball: PathBuf,
    pub reference: String,
}

/// The cargo profile whose binaries go in: `make test` builds `debug`, the
/// Dockerfile `release`.
#[derive(Clone, Copy, Debug)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host triple")
}

/// Builds the hook statically linked, as the Dockerfile does: `--target`
/// keeps build scripts and proc macros dynamic, and its own directory
/// leaves the workspace's ordinary build alone.
fn build_static_hook(profile: Profile) -> Result<PathBuf> {
    let host = host_triple()?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(crate::repo_root()).args(["build", "-q", "--locked", "-p", HOOK, "--target", &host]);
    if let Profile::Release = profile {
        cargo.arg("--release");
    }
    cargo.env("RUSTFLAGS", "-C target-feature=+crt-static");
    let status = cargo.status().with_context(|| format!("running {cargo:?}"))?;
    ensure!(status.success(), "{cargo:?} failed ({status})");
    Ok(crate::repo_root().join("target").join(host).join(profile.dir()).join(HOOK))
}

/// Builds the image under `dest_dir` (rebuilt every time: the binaries are
/// the workspace's current ones) with the `reference` the manifests name.
pub fn build_iogate_image(dest_dir: &Path, profile: Profile, reference: &str) -> Result<IogateImage> {
    let target = crate::repo_root().join("target").join(profile.dir());
    let _ = std::fs::remove_dir_all(dest_dir);
    let bin_dir = dest_dir.join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    for binary in DYNAMIC {
        let built = target.join(binary);
        if !built.exists() {
            bail!(
                "expected {}; run `cargo build --workspace --bins{}` first",
                built.display(),
                if let Profile::Release = profile { " --release" } else { "" }
            );
        }
        std::fs::copy(&built, bin_dir.join(binary)).with_context(|| format!("copying {}", built.display()))?;
    }
    let hook = build_static_hook(profile)?;
    std::fs::copy(&hook, bin_dir.join(HOOK)).with_context(|| format!("copying {}", hook.display()))?;

    let rootfs = dest_dir.join("rootfs");
    let script = crate::repo_root().join("deploy/image-root.sh");
    let out = Command::new("bash").arg(&script).arg(&bin_dir).arg(&rootfs).output()?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let tarball = dest_dir.join("iogate.oci.tar");
    pack_layout(&rootfs, &ImageConfig { env: ENV, cmd: CMD, labels: LABELS }, reference, &tarball)?;
    Ok(IogateImage { rootfs, tarball, reference: reference.to_string() })
}
