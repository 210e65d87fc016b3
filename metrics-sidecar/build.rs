//! Compiles the eBPF program (`bpf/iogate.bpf.c`) into `OUT_DIR/iogate.bpf.o`,
//! which the sidecar embeds. The C program is CO-RE: it is compiled against
//! the build host's kernel types (`vmlinux.h`) and relocated by the loader to
//! whatever kernel it runs on.
//!
//! `IOGATE_VMLINUX_H` names a ready `vmlinux.h`, for build hosts whose kernel
//! has no BTF (containers, CI); otherwise it is dumped from
//! `/sys/kernel/btf/vmlinux` with bpftool.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "scripts/install-deps.sh installs it (Debian packages clang, llvm, libbpf-dev, bpftool)";
const LIBBPF_HEADER: &str = "/usr/include/bpf/bpf_helpers.h";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn main() {
    if let Err(e) = build() {
        // A panic prints the message as the build error, without a backtrace
        // of the build script itself being useful to anyone.
        panic!("\n\nbuilding the eBPF program failed: {e}\n\n");
    }
}

fn build() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?);
    let bpf_dir = manifest.parent().ok_or("metrics-sidecar has no parent directory")?.join("bpf");
    let source = bpf_dir.join("iogate.bpf.c");
    for f in [&source, &bpf_dir.join("iogate.h")] {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=IOGATE_VMLINUX_H");

    let vmlinux_h = out.join("vmlinux.h");
    match env::var_os("IOGATE_VMLINUX_H") {
        Some(given) => {
            println!("cargo:rerun-if-changed={}", Path::new(&given).display());
            std::fs::copy(&given, &vmlinux_h).map_err(|e| {
                format!(
                    "IOGATE_VMLINUX_H={}: expected a readable vmlinux.h, could not copy it: {e}",
                    given.to_string_lossy()
                )
            })?;
        }
        None => dump_vmlinux_h(&vmlinux_h)?,
    }

    if !Path::new(LIBBPF_HEADER).exists() {
        return Err(format!("expected the libbpf headers ({LIBBPF_HEADER}), found none; {INSTALL_HINT}"));
    }
    let object = out.join("iogate.bpf.o");
    let mut clang = Command::new("clang");
    clang
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .arg(format!("-I{}", out.display()))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object);
    run(clang, "clang")?;
    Ok(())
}

fn dump_vmlinux_h(dest: &Path) -> Result<(), String> {
    if !Path::new(KERNEL_BTF).exists() {
        return Err(format!(
            "expected kernel BTF at {KERNEL_BTF} to generate vmlinux.h, found none; \
             point IOGATE_VMLINUX_H at a vmlinux.h generated on a kernel with BTF"
        ));
    }
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["btf", "dump", "file", KERNEL_BTF, "format", "c"]);
    let header = run(bpftool, "bpftool")?;
    std::fs::write(dest, header).map_err(|e| format!("writing {}: {e}", dest.display()))
}

fn run(mut cmd: Command, tool: &str) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("expected `{tool}` on PATH, found none; {INSTALL_HINT}")
        } else {
            format!("running {cmd:?}: {e}")
        }
    })?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out.stdout)
}
