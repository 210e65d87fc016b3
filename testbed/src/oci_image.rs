//! The test image, built here: no registry, no Docker.
//!
//! A root filesystem of Debian's static busybox plus the machine's `fio`
//! with every library it links, packed as an OCI image-layout tarball that
//! `ctr images import` and `podman load` both take. The same image serves as
//! the pod sandbox ("pause") image: its default command sleeps forever.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

pub const REFERENCE: &str = "localhost/iogate-test:latest";
/// Bump when the image's contents or config change.
const RECIPE: &str = "r2";

const APPLETS: &[&str] =
    &["sh", "sleep", "cat", "echo", "ls", "dd", "mkdir", "grep", "true", "false", "sync", "rm", "env", "id", "ps"];

pub struct TestImage {
    pub rootfs: PathBuf,
    pub tarball: PathBuf,
    pub reference: String,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn copy_host_file(rootfs: &Path, host: &Path) -> Result<()> {
    let dest = rootfs.join(host.strip_prefix("/").unwrap_or(host));
    std::fs::create_dir_all(dest.parent().unwrap()).with_context(|| format!("mkdir for {}", dest.display()))?;
    // Follows symlinks: the image gets the library itself under the name fio asks for.
    std::fs::copy(host, &dest).with_context(|| format!("copying {} into the image", host.display()))?;
    Ok(())
}

/// The shared libraries (and loader) `binary` needs, from `ldd`.
fn library_closure(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            bail!("{} needs a library the machine lacks: {}", binary.display(), line.trim());
        }
    }
    Ok(libs)
}

fn build_rootfs(rootfs: &Path) -> Result<()> {
    for d in ["bin", "usr/bin", "etc", "tmp", "data", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("creating {d} in the rootfs"))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("expected Debian's static busybox at /bin/busybox (package busybox-static; run scripts/install-deps.sh)");
    }
    copy_host_file(rootfs, busybox)?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))
            .with_context(|| format!("linking applet {a}"))?;
    }
    let fio = Path::new("/usr/bin/fio");
    if !fio.exists() {
        bail!("expected fio at /usr/bin/fio (package fio; run scripts/install-deps.sh)");
    }
    copy_host_file(rootfs, fio)?;
    for lib in library_closure(fio)? {
        copy_host_file(rootfs, &lib)?;
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().context("sha256sum printed nothing")?.to_string())
}

/// Writes `bytes` as a blob; returns (digest, size).
fn put_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let tmp = blobs.join("incoming");
    std::fs::write(&tmp, bytes)?;
    let digest = sha256_of(&tmp)?;
    std::fs::rename(&tmp, blobs.join(&digest))?;
    Ok((digest, bytes.len() as u64))
}

/// What an image runs by default, as its OCI config says.
pub struct ImageConfig<'a> {
    pub env: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub labels: &'a [(&'a str, &'a str)],
}

/// Packs `rootfs` as a one-layer OCI image-layout tarball at `tarball`,
/// named `reference` (for `ctr images import` and `podman load`). Owners and
/// times are fixed, so the same root gives the same digests.
pub fn pack_layout(rootfs: &Path, config: &ImageConfig, reference: &str, tarball: &Path) -> Result<()> {
    let work = tarball.with_extension("layout");
    let _ = std::fs::remove_dir_all(&work);
    let blobs = work.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let layer = blobs.join("layer.tar");
    run(Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layer_digest = sha256_of(&layer)?;
    let layer_size = std::fs::metadata(&layer)?.len();
    std::fs::rename(&layer, blobs.join(&layer_digest))?;

    let labels: serde_json::Map<String, serde_json::Value> =
        config.labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": config.env, "Cmd": config.cmd, "WorkingDir": "/", "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] }
    });
    let (config_digest, config_size) = put_blob(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_size }]
    });
    let (manifest_digest, manifest_size) = put_blob(&blobs, &serde_json::to_vec(&manifest)?)?;
    let tag = reference.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/')).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });
    std::fs::write(work.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(work.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // Docker's manifest.json too, so `podman load` names the image.
    let docker = json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [reference],
        "Layers": [format!("blobs/sha256/{layer_digest}")]
    }]);
    std::fs::write(work.join("manifest.json"), serde_json::to_vec(&docker)?)?;
    let partial = tarball.with_extension("partial");
    run(Command::new("tar").arg("-C").arg(&work).arg("-cf").arg(&partial).arg("."))?;
    std::fs::rename(&partial, tarball)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The paths in the image's layer, as `./usr/local/bin/...`, sorted.
pub fn layer_paths(tarball: &Path) -> Result<Vec<String>> {
    let index: serde_json::Value =
        serde_json::from_str(&run(Command::new("tar").arg("-xOf").arg(tarball).arg("./index.json"))?)
            .context("index.json of the image is not JSON")?;
    let blob = |digest: &serde_json::Value| -> Result<String> {
        let d = digest.as_str().context("expected a digest string")?.trim_start_matches("sha256:");
        Ok(format!("./blobs/sha256/{d}"))
    };
    let manifest: serde_json::Value = serde_json::from_str(&run(Command::new("tar")
        .arg("-xOf")
        .arg(tarball)
        .arg(blob(&index["manifests"][0]["digest"])?))?)
    .context("the image's manifest is not JSON")?;
    let layer = blob(&manifest["layers"][0]["digest"])?;
    let listing = run(Command::new("sh").arg("-c").arg("tar -xOf \"$0\" \"$1\" | tar -t").arg(tarball).arg(&layer))?;
    let mut paths: Vec<String> = listing.lines().map(|l| l.trim_end_matches('/').to_string()).collect();
    paths.sort();
    Ok(paths)
}

/// Builds the image under `dest_dir` (reused when already there).
pub fn build_test_image(dest_dir: &Path) -> Result<TestImage> {
    let rootfs = dest_dir.join("rootfs");
    // The name carries the recipe's version: a changed recipe rebuilds.
    let tarball = dest_dir.join(format!("iogate-test-{RECIPE}.oci.tar"));
    let image = TestImage { rootfs: rootfs.clone(), tarball: tarball.clone(), reference: REFERENCE.to_string() };
    if tarball.exists() && rootfs.join("usr/bin/fio").exists() {
        return Ok(image);
    }
    let _ = std::fs::remove_dir_all(dest_dir);
    std::fs::create_dir_all(dest_dir).with_context(|| format!("creating {}", dest_dir.display()))?;
    build_rootfs(&rootfs)?;

    let config = ImageConfig {
        env: &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        // Cmd, not Entrypoint: `podman run IMAGE fio ...` and CRI
        // containers replace it instead of appending to it.
        cmd: &["/bin/sleep", "2147483647"],
        labels: &[],
    };
    pack_layout(&rootfs, &config, REFERENCE, &tarball)?;
    Ok(image)
}

/// Where tests keep the image between runs: `<repo>/.cache/test-image`, or
/// `IOGATE_TEST_IMAGE_DIR` (the node VM keeps it on its scratch disk, which
/// outlives a boot).
pub fn default_image_dir() -> PathBuf {
    match std::env::var_os("IOGATE_TEST_IMAGE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::repo_root().join(".cache/test-image"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_runs_fio_and_is_a_valid_layout() {
        let dir = tempfile::tempdir().unwrap();
        let img = build_test_image(dir.path()).unwrap();
        // The library closure is complete: fio runs inside the rootfs.
        if nix::unistd::Uid::effective().is_root() {
            let v = run(Command::new("chroot").arg(&img.rootfs).args(["/usr/bin/fio", "--version"])).unwrap();
            assert!(v.starts_with("fio-"), "{v}");
        }
        let list = run(Command::new("tar").arg("-tf").arg(&img.tarball)).unwrap();
        for f in ["./index.json", "./oci-layout", "./manifest.json"] {
            assert!(list.lines().any(|l| l == f), "{f} missing from {list}");
        }
        let index: serde_json::Value =
            serde_json::from_str(&run(Command::new("tar").arg("-xOf").arg(&img.tarball).arg("./index.json")).unwrap())
                .unwrap();
        let digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        assert!(list.contains(&format!("./blobs/sha256/{digest}")));
        // Reused, not rebuilt.
        let mtime = std::fs::metadata(&img.tarball).unwrap().modified().unwrap();
        let again = build_test_image(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&again.tarball).unwrap().modified().unwrap(), mtime);
    }
}
