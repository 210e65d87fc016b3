#!/usr/bin/env bash
# Assembles the iogate image's whole root filesystem: the three binaries and
# exactly what they need to run, nothing else. deploy/Dockerfile copies its
# output onto `scratch`, and the testbed's local image build
# (testbed/src/iogate_image.rs) packs the same output as an OCI layout, so
# the two images hold the same files by construction.
#
#   deploy/image-root.sh BIN_DIR ROOTFS
#
# BIN_DIR holds iogate-nri-plugin, iogate-metrics-sidecar and a statically
# linked iogate-oci-hook. ROOTFS must not exist yet.
#
# What goes in, and why:
#   /usr/local/bin/*        the binaries, without debug info; the DaemonSet
#                           names each one
#   their shared libraries  from ldd: glibc, libgcc_s, the loader
#   /bin/busybox + applets  sh, cp, chmod, mv: install-hook's command
#   /etc/ssl/certs/...      TLS roots for a sidecar pointed at an API
#                           server through a kubeconfig
#   /etc/passwd, /etc/group root only: the image runs as uid 0
#   /proc /sys /dev /tmp    mount points the runtime fills
set -euo pipefail

die() { echo "image-root: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 BIN_DIR ROOTFS (found $# arguments)"
bin_dir=$1
root=$2
[ ! -e "$root" ] || die "expected $root not to exist yet; found it there (the root is built whole, never merged)"

DYNAMIC=(iogate-nri-plugin iogate-metrics-sidecar)
STATIC=(iogate-oci-hook)
APPLETS=(sh cp chmod mv)
BUSYBOX=/bin/busybox
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

for b in "${DYNAMIC[@]}" "${STATIC[@]}"; do
  [ -x "$bin_dir/$b" ] || die "expected the executable $bin_dir/$b; found none"
done
for b in "${STATIC[@]}"; do
  # static-pie: ldd says "statically linked"; a dynamic one lists "=>"
  if ldd "$bin_dir/$b" 2>&1 | grep -q '=>'; then
    die "$b must be statically linked (it runs on the host, on any libc); ldd lists: $(ldd "$bin_dir/$b" | tr '\n' ' ')"
  fi
done
command -v strip >/dev/null || die "expected strip (package binutils) on PATH"
[ -x "$BUSYBOX" ] || die "expected Debian's static busybox at $BUSYBOX (package busybox-static)"
if ldd "$BUSYBOX" 2>&1 | grep -q '=>'; then die "$BUSYBOX is not statically linked"; fi
[ -s "$CA_BUNDLE" ] || die "expected the CA bundle at $CA_BUNDLE (package ca-certificates)"

# Copies a host file to the same path under the root, following symlinks:
# the image gets the library itself under the name the binary asks for.
copy() {
  mkdir -p "$root$(dirname "$2")"
  cp -L "$1" "$root$2"
}

mkdir -p "$root"
for d in proc sys dev tmp etc; do mkdir -p "$root/$d"; done
for b in "${DYNAMIC[@]}" "${STATIC[@]}"; do
  copy "$bin_dir/$b" "/usr/local/bin/$b"
  # The release profile keeps debug info for profiling; the image does not.
  strip --strip-debug "$root/usr/local/bin/$b"
  chmod 0755 "$root/usr/local/bin/$b"
done
for b in "${DYNAMIC[@]}"; do
  libs=$(ldd "$bin_dir/$b") || die "ldd $bin_dir/$b failed"
  if grep -q 'not found' <<<"$libs"; then
    die "$b needs a library this machine lacks: $(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')"
  fi
  for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$libs"); do
    copy "$lib" "$lib"
  done
done
copy "$BUSYBOX" /bin/busybox
for a in "${APPLETS[@]}"; do ln -s busybox "$root/bin/$a"; done
copy "$CA_BUNDLE" "$CA_BUNDLE"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
chmod 1777 "$root/tmp"
