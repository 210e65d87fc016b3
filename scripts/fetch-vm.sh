#!/usr/bin/env bash
# Builds what the cgroup v2 node VM (testbed/src/vm) boots, under .cache/vm/:
#
#   kernel-<suite>/vmlinuz, config, release, modules.cpio
#       Debian's own kernels: bookworm's 6.1 (a Debian 12 node), trixie's
#       6.12 and sid's newest, with just the modules the guest loads
#       (virtio disk, ext4, loop, overlay), decompressed and depmod'ed.
#   rootfs.cpio
#       a debootstrap'ed Debian 12 with systemd as PID 1 (pure cgroup v2),
#       dbus for runc's systemd cgroup driver, runc, fio, busybox-static,
#       e2fsprogs, and containerd 1.7 and 2.1 from .cache/containerd (the
#       same binaries the host tests run), as an uncompressed initramfs.
#
# The project's freshly built binaries are not in here: each test run packs
# them into a small cpio of its own and the kernel unpacks the archives on
# top of each other.
#
# Installs the host tools it needs (qemu-system-x86, debootstrap, cpio,
# kmod) with apt-get, as root, when missing. Idempotent: each piece is
# rebuilt only when its inputs (package versions, this script's recipe)
# change.
#
#   scripts/fetch-vm.sh            (after scripts/fetch-containerd.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VM=$ROOT/.cache/vm
APT=$VM/apt
CONTAINERD=$ROOT/.cache/containerd

die() { echo "fetch-vm: $*" >&2; exit 1; }
say() { echo "fetch-vm: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install, debootstrap); found uid $(id -u)"

HOST_PACKAGES=(qemu-system-x86 debootstrap cpio kmod xz-utils zstd binutils)
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
fi

# ---------------------------------------------------------------- kernels
# The kernels the tests were written against; when a suite has moved on, its
# newest linux-image-amd64 is taken instead (and said).
declare -A PIN=([bookworm]=6.1.0-57-amd64 [trixie]=6.12.118+deb13-amd64 [sid]=7.2.13+deb14-amd64)
SUITES=(bookworm trixie sid)
# What the guest loads; their dependencies come along. A module built into
# a kernel is fine as well, and a name may be an alias (ext4 needs the
# crc32c algorithm, which no kernel names the same module for).
MODULES=(virtio_pci virtio_blk crc32c ext4 loop overlay)

mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
cat > "$APT/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
O=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State=$APT/state" -o "Dir::Cache=$APT/cache" -o Dir::State::status=/var/lib/dpkg/status
   -o APT::Sandbox::User=root)
apt_updated=
apt_update() {
  [ -n "$apt_updated" ] && return
  apt-get "${O[@]}" update -qq || die "apt-get update of the private bookworm/trixie/sid lists failed ($APT/sources.list)"
  apt_updated=1
}

# The kernel release (e.g. 6.12.118+deb13-amd64) to use from a suite: the
# pinned one while the archive has it, else what the suite's
# linux-image-amd64 names now (security updates included).
current_release() {
  local suite=$1 pin=${PIN[$1]}
  if apt-cache "${O[@]}" show "linux-image-$pin" >/dev/null 2>&1; then
    echo "$pin"; return
  fi
  local ver rel
  ver=$(apt-cache "${O[@]}" madison linux-image-amd64 \
        | awk -F' [|] ' -v s="$suite" '$3 ~ (" " s "(-security)?/") {print $2}' | sort -V | tail -1)
  [ -n "$ver" ] || die "expected linux-image-amd64 in Debian $suite, found none"
  rel=$(apt-cache "${O[@]}" show "linux-image-amd64=$ver" | awk -F': ' '/^Depends:/ {print $2; exit}' \
        | grep -o 'linux-image-[^ ,]*-amd64' | head -1 | sed 's/^linux-image-//')
  [ -n "$rel" ] || die "expected linux-image-amd64 $ver ($suite) to depend on a linux-image-<release>, found none"
  echo "fetch-vm: pinned kernel $pin is gone from $suite; taking $rel" >&2
  echo "$rel"
}

fetch_kernel() {
  local suite=$1 out=$VM/kernel-$1
  apt_update
  local rel; rel=$(current_release "$suite")
  if [ -f "$out/release" ] && [ "$(cat "$out/release")" = "$rel" ] && [ -f "$out/modules.cpio" ] && [ -f "$out/vmlinuz" ]; then
    return
  fi
  say "kernel $rel ($suite)"
  local work=$VM/kernel-$suite.partial
  rm -rf "$work"; mkdir -p "$work/x" "$work/debs"
  # Newer kernels split the image package into binary and modules packages.
  local pkgs=("linux-image-$rel") dep
  for dep in $(apt-cache "${O[@]}" show "linux-image-$rel" | awk -F': ' '/^Depends:/ {print $2; exit}' \
               | tr ',' '\n' | grep -o "linux-\(binary\|modules\|base\)-$rel" || true); do
    pkgs+=("$dep")
  done
  (cd "$work/debs" && apt-get "${O[@]}" download -qq "${pkgs[@]}") || die "apt-get download ${pkgs[*]} failed"
  local deb
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/x"; done
  local moddir vmlinuz config
  moddir=$(find "$work/x" -type d -path "*/lib/modules/$rel" | head -1)
  [ -n "$moddir" ] || die "${pkgs[*]} have no lib/modules/$rel"
  vmlinuz=$(find "$work/x" -name "vmlinuz-$rel" -o -path "*/modules/$rel/vmlinuz" | head -1)
  config=$(find "$work/x" -name "config-$rel" -o -path "*/modules/$rel/config" | head -1)
  [ -n "$vmlinuz" ] && [ -n "$config" ] || die "${pkgs[*]} have no vmlinuz or config for $rel"
  # depmod looks under <base>/lib/modules.
  local base=$work/depmod
  mkdir -p "$base/lib/modules"
  ln -s "$moddir" "$base/lib/modules/$rel"
  depmod -b "$base" "$rel" || die "depmod of $rel failed"
  local dep_file=$moddir/modules.dep builtin=$moddir/modules.builtin
  # The closure of the wanted modules, as paths relative to $moddir.
  local -A want=()
  local m queue=() rel_path deps
  local name names
  for m in "${MODULES[@]}"; do
    if grep -q "/$m.ko\(\.[a-z]*\)\?$" "$builtin" 2>/dev/null; then continue; fi
    names=$(awk -v a="$m" '$1 == "alias" && $2 == a {print $3}' "$moddir/modules.alias")
    [ -n "$names" ] || names=$m
    local found=
    for name in $names; do
      rel_path=$(grep -E "(^|/)${name//[_-]/[_-]}\.ko(\.[a-z]+)?:" "$dep_file" | head -1 | cut -d: -f1)
      [ -n "$rel_path" ] && { queue+=("$rel_path"); found=1; }
    done
    [ -n "$found" ] || die "kernel $rel has neither a module, an alias nor a built-in $m"
  done
  while [ ${#queue[@]} -gt 0 ]; do
    rel_path=${queue[0]}; queue=("${queue[@]:1}")
    [ -n "${want[$rel_path]:-}" ] && continue
    want[$rel_path]=1
    deps=$(grep -E "^${rel_path//./\\.}:" "$dep_file" | cut -d: -f2-)
    for m in $deps; do queue+=("$m"); done
  done
  local tree=$work/tree/usr/lib/modules/$rel
  mkdir -p "$tree"
  for rel_path in "${!want[@]}"; do
    mkdir -p "$tree/$(dirname "$rel_path")"
    case $rel_path in
      *.ko.xz) xz -dc "$moddir/$rel_path" > "$tree/${rel_path%.xz}" ;;
      *.ko.zst) zstd -qdc "$moddir/$rel_path" > "$tree/${rel_path%.zst}" ;;
      *.ko) cp "$moddir/$rel_path" "$tree/$rel_path" ;;
      *) die "unexpected module file $rel_path" ;;
    esac
  done
  # modprobe reads these to know what is built in; depmod wants an order.
  cp "$moddir/modules.builtin" "$tree/"
  printf '%s\n' "${!want[@]}" | sed 's/\.\(xz\|zst\)$//' | sort > "$tree/modules.order"
  [ -f "$moddir/modules.builtin.modinfo" ] && cp "$moddir/modules.builtin.modinfo" "$tree/"
  rm -rf "$work/depmod2"; mkdir -p "$work/depmod2/lib/modules"
  ln -s "$tree" "$work/depmod2/lib/modules/$rel"
  depmod -b "$work/depmod2" "$rel" || die "depmod of the module subset of $rel failed"
  rm -rf "$out"; mkdir -p "$out"
  (cd "$work/tree" && find usr | cpio -o -H newc --quiet) > "$out/modules.cpio"
  cp "$vmlinuz" "$out/vmlinuz"
  cp "$config" "$out/config"
  echo "$rel" > "$out/release"
  echo "$suite" > "$out/suite"
  rm -rf "$work"
  say "kernel $rel: $(echo "${!want[@]}" | wc -w) modules -> $out"
}

for s in "${SUITES[@]}"; do fetch_kernel "$s"; done

# ---------------------------------------------------------------- rootfs
ROOTFS_PACKAGES=systemd-sysv,dbus,kmod,runc,fio,busybox-static,e2fsprogs,util-linux,mount,procps,iproute2
# The recipe below, the package list and the containerd builds decide
# whether the cached rootfs is still the right one.
for v in 1.7 2.1; do
  [ -x "$CONTAINERD/$v/usr/bin/containerd" ] || die "expected containerd $v under $CONTAINERD (run scripts/fetch-containerd.sh first)"
done
recipe_hash=$( { sed -n '/^# ---- rootfs recipe/,/^# ---- end of recipe/p' "$0"; echo "$ROOTFS_PACKAGES";
                 for v in 1.7 2.1; do sha256sum "$CONTAINERD/$v/usr/bin/"{containerd,containerd-shim-runc-v2,ctr}; done; } \
               | sha256sum | cut -c1-16)
if [ -f "$VM/rootfs.cpio" ] && [ "$(cat "$VM/rootfs.stamp" 2>/dev/null)" = "$recipe_hash" ]; then
  say "rootfs up to date"
  exit 0
fi

# ---- rootfs recipe
work=$VM/rootfs.partial
rm -rf "$work"; mkdir -p "$work"
say "debootstrap bookworm (about a minute)"
debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$work/root" http://deb.debian.org/debian \
  > "$VM/debootstrap.log" 2>&1 || die "debootstrap failed; see $VM/debootstrap.log"
r=$work/root
# What a test node does not need, in RAM under every test.
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
       "$r"/usr/share/locale/* "$r"/usr/share/info/*
echo iogate-node > "$r/etc/hostname"
: > "$r/etc/fstab"
# containerd's CRI copies these into every sandbox.
printf '127.0.0.1 localhost\n::1 localhost\n127.0.1.1 iogate-node\n' > "$r/etc/hosts"
: > "$r/etc/resolv.conf"
# A quiet, quick boot: no logins, timers or time sync on a throwaway node.
for unit in getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service systemd-timesyncd.service \
            apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            systemd-logind.service dpkg-db-backup.timer; do
  ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
# The guest side of the tests: answers the host on the second serial port
# (the first is the console). Its binary comes with each run's payload.
cat > "$r/etc/systemd/system/iogate-vm-agent.service" <<'UNIT'
[Unit]
Description=iogate test agent (talks to the host test on ttyS1)
After=dbus.service
Wants=dbus.service

[Service]
Type=simple
Environment=IOGATE_REPO_ROOT=/opt/iogate
# One containerd root per version for the whole boot: the test image is
# imported and unpacked once, not by every check (testbed's shared_root).
Environment=IOGATE_TEST_CONTAINERD_ROOTS=/var/tmp/containerd-roots
# /var/tmp is the scratch disk, kept from one kernel's boot to the next.
Environment=IOGATE_TEST_IMAGE_DIR=/var/tmp/test-image
ExecStart=/opt/iogate/target/debug/iogate-vm-agent /dev/ttyS1
# A failed agent powers the node off: the host test then says why (the
# console log holds the agent's output).
ExecStopPost=/bin/systemctl poweroff --no-block
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
ln -sf ../iogate-vm-agent.service "$r/etc/systemd/system/multi-user.target.wants/iogate-vm-agent.service"
# pivot_root, which runc does for every container, refuses to leave a root
# that is not mounted on anything, and the initramfs root is such a one. A
# bind mount of it moved over / is mounted on it, so systemd starts there.
cat > "$r/iogate-init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /newroot
/bin/busybox mount --bind / /newroot
cd /newroot
/bin/busybox mount --move . /
exec /bin/busybox chroot . /sbin/init "$@"
INIT
chmod 755 "$r/iogate-init"
for v in 1.7 2.1; do
  mkdir -p "$r/opt/iogate/.cache/containerd/$v/usr/bin"
  cp "$CONTAINERD/$v/usr/bin/"{containerd,containerd-shim-runc-v2,ctr} "$r/opt/iogate/.cache/containerd/$v/usr/bin/"
done
(cd "$r" && find . | cpio -o -H newc --quiet) > "$work/rootfs.cpio"
# ---- end of recipe
mv "$work/rootfs.cpio" "$VM/rootfs.cpio"
echo "$recipe_hash" > "$VM/rootfs.stamp"
rm -rf "$work"
say "rootfs $(du -h "$VM/rootfs.cpio" | cut -f1) -> $VM/rootfs.cpio"
