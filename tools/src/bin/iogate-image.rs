//! `iogate-image [DIR]`: builds deploy/Dockerfile's image without Docker or
//! a registry, from this workspace's release binaries, as an OCI layout
//! tarball that containerd and Podman import (`make image` runs it):
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p iogate-tools --bin iogate-image -- .cache/image
//! ctr -n k8s.io images import .cache/image/iogate.oci.tar
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use iogate_testbed::iogate_image::{build_iogate_image, Profile, REFERENCE};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => iogate_testbed::repo_root().join(".cache/image"),
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => bail!("usage: iogate-image [DIR] (default .cache/image); found arguments {args:?}"),
    };
    let image = build_iogate_image(&dir, Profile::Release, REFERENCE)?;
    let size = std::fs::metadata(&image.tarball)?.len();
    println!("{} ({:.1} MiB): {}", image.reference, size as f64 / (1 << 20) as f64, image.tarball.display());
    println!("import on a node:  ctr -n k8s.io images import {}", image.tarball.display());
    println!("or with Podman:    podman load -i {}", image.tarball.display());
    Ok(())
}
