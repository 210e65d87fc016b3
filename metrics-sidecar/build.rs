//! Compiles the eBPF program (`bpf/iogate.bpf.c`) into `OUT_DIR/iogate.bpf.o`,
//! which the sidecar embeds. The C program is CO-RE: it is compiled against
//! the build host's kernel types (`vmlinux.h`) and relocated by the loader to
//! whatever kernel it runs on.
//!
//! `IOGATE_VMLINUX_H` names a ready `vmlinux.h`, for build hosts whose kernel
//! has no BTF (containers, CI) and for cross builds; otherwise it is dumped
//! from `/sys/kernel/btf/vmlinux` with bpftool.
//!
//! `IOGATE_BPF` chooses what happens without the eBPF toolchain (clang, the
//! libbpf headers, and bpftool with kernel BTF or `IOGATE_VMLINUX_H`):
//! * `auto` (the default): a build host that has it builds the program, and a
//!   failure is an error; one that lacks any part builds a **stub** sidecar,
//!   with a warning naming what is missing, so that `cargo check`, `clippy`
//!   and the crates that only use the sidecar's library work anywhere. The
//!   stub has no program: at run time it reports eBPF unavailable, with that
//!   reason, and falls back to cgroup statistics (or refuses `--source ebpf`);
//! * `require`: a missing toolchain is an error (images, tests);
//! * `stub`: never build the program.
//!
//! The compiler's target architecture (`__TARGET_ARCH_*`, the multiarch
//! include directory) follows `CARGO_CFG_TARGET_ARCH`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "scripts/install-deps.sh installs it (Debian packages clang, llvm, libbpf-dev, bpftool)";
const LIBBPF_HEADER: &str = "/usr/include/bpf/bpf_helpers.h";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Set on a stub build; the sidecar then has no program to load.
const STUB_CFG: &str = "iogate_bpf_stub";
/// Why a stub build has no program, for the sidecar to report at run time.
const STUB_REASON_ENV: &str = "IOGATE_BPF_STUB_REASON";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    Require,
    Stub,
}

/// What clang needs to know about the target: the `bpf_tracing.h` arch name
/// and Debian's multiarch triple (for `asm/` headers).
struct TargetArch {
    bpf: &'static str,
    multiarch: &'static str,
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg({STUB_CFG})");
    if let Err(e) = run() {
        // A panic prints the message as the build error, without a backtrace
        // of the build script itself being useful to anyone.
        panic!("\n\nbuilding the eBPF program failed: {e}\n\n");
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?);
    let bpf_dir = manifest.parent().ok_or("metrics-sidecar has no parent directory")?.join("bpf");
    let source = bpf_dir.join("iogate.bpf.c");
    for f in [&source, &bpf_dir.join("iogate.h")] {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=IOGATE_VMLINUX_H");
    println!("cargo:rerun-if-env-changed=IOGATE_BPF");

    let mode = match env::var("IOGATE_BPF").unwrap_or_default().as_str() {
        "" | "auto" => Mode::Auto,
        "require" => Mode::Require,
        "stub" => Mode::Stub,
        other => return Err(format!("IOGATE_BPF: expected auto, require or stub, found {other:?}")),
    };
    if mode == Mode::Stub {
        stub("IOGATE_BPF=stub");
        return Ok(());
    }
    let target = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| format!("CARGO_CFG_TARGET_ARCH: {e}"))?;
    let little_endian = env::var("CARGO_CFG_TARGET_ENDIAN").is_ok_and(|e| e == "little");
    let host = env::var("HOST").unwrap_or_default();
    let vmlinux_given = env::var_os("IOGATE_VMLINUX_H");

    let arch = target_arch(&target, little_endian);
    let mut missing = Vec::new();
    if arch.is_none() {
        missing.push(format!("an eBPF target for architecture {target} (known: x86_64, x86, aarch64, arm, riscv64, powerpc64, s390x, loongarch64)"));
    }
    if !runs("clang") {
        missing.push("clang on PATH".to_string());
    }
    if !Path::new(LIBBPF_HEADER).exists() {
        missing.push(format!("the libbpf headers ({LIBBPF_HEADER})"));
    }
    if vmlinux_given.is_none() {
        // The build host's BTF describes the build host's architecture.
        if !host.starts_with(&format!("{target}-")) {
            missing.push(format!(
                "a vmlinux.h for {target} (the build host {host}'s kernel BTF is another architecture's; set IOGATE_VMLINUX_H)"
            ));
        } else if !Path::new(KERNEL_BTF).exists() {
            missing.push(format!("kernel BTF at {KERNEL_BTF} (or a vmlinux.h in IOGATE_VMLINUX_H)"));
        } else if !runs("bpftool") {
            missing.push("bpftool on PATH (or a vmlinux.h in IOGATE_VMLINUX_H)".to_string());
        }
    }
    match (missing.is_empty(), arch) {
        (true, Some(arch)) => build(&out, &source, &arch, vmlinux_given.as_deref().map(Path::new)),
        _ if mode == Mode::Require => {
            Err(format!("IOGATE_BPF=require, but expected {}, found none; {INSTALL_HINT}", missing.join(", ")))
        }
        _ => {
            // Installing the toolchain changes none of cargo's inputs, but a
            // changed PATH may bring clang.
            println!("cargo:rerun-if-env-changed=PATH");
            stub(&format!("missing {}", missing.join(", ")));
            Ok(())
        }
    }
}

/// Builds a sidecar without the program and says so.
fn stub(reason: &str) {
    println!(
        "cargo:warning=iogate-metrics-sidecar is built WITHOUT its eBPF program ({reason}): it will report eBPF \
         unavailable at run time and serve cgroup statistics only, without latency. {INSTALL_HINT}; after \
         installing, rebuild with `cargo clean -p iogate-metrics-sidecar`, or set IOGATE_BPF=require to make this an error"
    );
    println!("cargo:rustc-cfg={STUB_CFG}");
    println!("cargo:rustc-env={STUB_REASON_ENV}={reason}");
}

fn target_arch(arch: &str, little_endian: bool) -> Option<TargetArch> {
    let (bpf, multiarch) = match arch {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "x86" => ("x86", "i386-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        "arm" => ("arm", "arm-linux-gnueabihf"),
        "riscv64" => ("riscv", "riscv64-linux-gnu"),
        "powerpc64" if little_endian => ("powerpc", "powerpc64le-linux-gnu"),
        "powerpc64" => ("powerpc", "powerpc64-linux-gnu"),
        "s390x" => ("s390", "s390x-linux-gnu"),
        "loongarch64" => ("loongarch", "loongarch64-linux-gnu"),
        _ => return None,
    };
    Some(TargetArch { bpf, multiarch })
}

/// Whether `tool --version` runs: the tool is there and works.
fn runs(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|out| out.status.success())
}

fn build(out: &Path, source: &Path, arch: &TargetArch, vmlinux_given: Option<&Path>) -> Result<(), String> {
    let vmlinux_h = out.join("vmlinux.h");
    match vmlinux_given {
        Some(given) => {
            println!("cargo:rerun-if-changed={}", given.display());
            std::fs::copy(given, &vmlinux_h).map_err(|e| {
                format!("IOGATE_VMLINUX_H={}: expected a readable vmlinux.h, could not copy it: {e}", given.display())
            })?;
        }
        None => dump_vmlinux_h(&vmlinux_h)?,
    }

    let object = out.join("iogate.bpf.o");
    let mut clang = Command::new("clang");
    clang
        .args(["-O2", "-g", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{}", arch.bpf))
        .args(["-Wall", "-Werror"])
        .arg(format!("-I{}", out.display()))
        .arg(format!("-I/usr/include/{}", arch.multiarch))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&object);
    run_tool(clang, "clang")?;
    Ok(())
}

fn dump_vmlinux_h(dest: &Path) -> Result<(), String> {
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["btf", "dump", "file", KERNEL_BTF, "format", "c"]);
    let header = run_tool(bpftool, "bpftool")?;
    std::fs::write(dest, header).map_err(|e| format!("writing {}: {e}", dest.display()))
}

fn run_tool(mut cmd: Command, tool: &str) -> Result<Vec<u8>, String> {
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
