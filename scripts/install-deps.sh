#!/usr/bin/env bash
# Installs the Debian packages iogate's build, tests and demo need.
# Idempotent: installs only what is missing, and runs apt-get update only then.
set -euo pipefail

PACKAGES=(
  runc            # the OCI runtime containerd and the hook tests drive
  fio             # the I/O load inside test containers
  busybox-static  # the test image's userland
  e2fsprogs util-linux  # mkfs.ext4, losetup, mount for loop-device disks
  protobuf-compiler     # the CRI client crate (k8s-cri) generates code with protoc
  ca-certificates
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get install, loop devices, cgroups)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
