//! Test harness for iogate's end-to-end tests: real containerd (Debian's 1.7
//! and 2.1 packages), real runc, loop devices as data disks, images built
//! locally. Everything a fixture creates is undone by its `Drop`, so a failing
//! test leaves no mount, loop device, cgroup or process behind.

pub mod cgroup_v2_host;
pub mod containerd_daemon;
pub mod cri_client;
pub mod fio;
pub mod host_lock;
pub mod loop_disk;
pub mod oci_image;
pub mod process;
pub mod stack;

use std::path::PathBuf;

/// The workspace root (this crate sits one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("integration-tests has a parent").to_path_buf()
}

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (scripts/test.sh does that before the tests).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "expected the {name} binary under {}/{{debug,release}}; run `cargo build --workspace --bins` first",
        target.display()
    )
}
