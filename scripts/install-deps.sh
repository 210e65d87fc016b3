#!/usr/bin/env bash
# Installs the Debian packages iogate's build, tests, benchmarks and demo need
# on a Debian 12 machine. Idempotent: packages already installed are left as
# they are, and `apt-get update` runs only when something is missing.
#
#   sudo scripts/install-deps.sh
#
# containerd itself is not installed here: scripts/fetch-containerd.sh
# unpacks Debian's 1.7 and 2.1 builds privately, without touching the machine.
set -euo pipefail

die() { echo "install-deps: $*" >&2; exit 1; }

PACKAGES=(
  runc              # the OCI runtime containerd's shims and podman drive
  podman            # runs the OCI-hook (createRuntime) end-to-end tests
  fio               # the I/O load inside test containers; copied into the test image
  busybox-static    # the test image's userland and the iogate image's shell (/bin/busybox, static)
  binutils          # strip: the iogate image's binaries go in without debug info
  e2fsprogs         # mkfs.ext4 for the loop-device data disks
  util-linux        # losetup, mount, umount, chroot for the loop-disk and image fixtures
  make pkg-config   # the Makefile, and -sys crates that locate C libraries
  jq                # scripts read containerd/podman JSON output
  # The metrics sidecar's build compiles its eBPF program (bpf/iogate.bpf.c):
  # clang targets BPF, bpftool dumps the kernel's types into vmlinux.h, and
  # libbpf-dev has the bpf_helpers.h family of headers.
  clang llvm libbpf-dev bpftool
  # The CRI client crate (k8s-cri) runs protoc in its build script through
  # prost-build, which no longer bundles a protoc: without this the
  # testbed crate does not build.
  protobuf-compiler
  ca-certificates   # apt over https mirrors
  bpftrace          # the sidecar benchmark's peer measurement
)

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs apt-get install); found uid $(id -u). Try: sudo $0"
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
  || die "expected a Debian-family machine with dpkg-query and apt-get; found neither on PATH"

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
apt-get update -qq || die "apt-get update failed (are the Debian mirrors reachable?)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
  || die "apt-get install ${missing[*]} failed"

# apt-get can exit 0 while leaving a package half-configured; check again.
still=()
for p in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || still+=("$p:${status:-absent}")
done
[ ${#still[@]} -eq 0 ] || die "expected these packages installed after apt-get install, found: ${still[*]}"
echo "install-deps: done"
