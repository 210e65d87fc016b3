//! The testbed of iogate's end-to-end tests, demo and benchmarks: real containerd (Debian's 1.7
//! and 2.1 packages), real runc, loop devices as data disks, images built
//! locally. Everything a fixture creates is undone by its `Drop`, so a failing
//! test leaves no mount, loop device, cgroup or process behind.

pub mod containerd_daemon;
pub mod cri_client;
pub mod fio;
pub mod host_io;
pub mod host_lock;
pub mod iogate_image;
pub mod kubelet;
pub mod loop_disk;
pub mod oci_image;
pub mod proc_stat;
pub mod process;
pub mod runc_bundle;
pub mod scenarios;
pub mod sidecar;
pub mod stack;
pub mod vm;

use std::path::PathBuf;

/// The end-to-end tests drive containerd, runc, loop devices, cgroups and
/// eBPF. Without root they cannot run at all, and a test that cannot run is
/// a failure with its reason, never a pass.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this end-to-end test needs root (containerd, loop devices, cgroups, eBPF); run it as root (make test does)"
    );
}

/// The workspace root (this crate sits one level below it), or
/// `IOGATE_REPO_ROOT`: the node VM's agent finds the repository's layout
/// under `/opt/iogate` in the guest.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("IOGATE_REPO_ROOT") {
        return PathBuf::from(root);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("testbed has a parent").to_path_buf()
}

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (scripts/test.sh does that before the tests). The one from the running
/// executable's own profile wins, so a release demo never runs a stale debug
/// plugin.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let own = std::env::current_exe().ok();
    let own_dirs = own.iter().flat_map(|e| e.ancestors().skip(1).take(2).map(PathBuf::from));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let fallback = ["debug", "release"].map(|p| target.join(p));
    for dir in own_dirs.chain(fallback) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "expected the {name} binary under {}/{{debug,release}}; run `cargo build --workspace --bins` first",
        target.display()
    )
}
