#!/usr/bin/env bash
# Fetches Debian's containerd 1.7 (trixie) and 2.1 (sid) into a private
# directory without touching the machine's packages: `apt-get download`
# through a private sources list and apt state, then `dpkg -x`. Their
# binaries need only glibc 2.34, which Debian 12 has. Also installs the
# machine packages the end-to-end harness runs them with (runc).
#
#   scripts/fetch-containerd.sh [DEST]     (default DEST: .cache/containerd)
#
# Produces DEST/1.7/usr/bin/{containerd,containerd-shim-runc-v2,ctr} and the
# same under DEST/2.1. Idempotent: a version already unpacked is skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.cache/containerd}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
APT=$ROOT/.cache/apt

die() { echo "fetch-containerd: $*" >&2; exit 1; }

# The versions the tests were written against; when a suite moves on and
# drops one, the newest 1.7.x / 2.1.x that suite has is taken instead.
declare -A PIN=([1.7]="1.7.24~ds1-6+deb13u1" [2.1]="2.1.9+ds1-5")
declare -A SUITE=([1.7]=trixie [2.1]=sid)
BINARIES=(containerd containerd-shim-runc-v2 ctr)

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install runc)"

# The machine's own runc: containerd's shims run it as the OCI runtime.
if ! dpkg-query -W -f='${Status}' runc 2>/dev/null | grep -q "install ok installed"; then
  echo "fetch-containerd: installing runc"
  apt-get update -qq || die "apt-get update failed; cannot install runc"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc \
    || die "apt-get install runc failed"
fi

complete() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$DEST/$1/usr/bin/$b" ] || return 1; done
}

need=()
for v in 1.7 2.1; do complete "$v" || need+=("$v"); done
[ ${#need[@]} -eq 0 ] && exit 0

mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
cat > "$APT/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
# Private lists and cache; the machine's dpkg status only so apt can resolve.
# The sandbox user (_apt) cannot write into a root-owned private cache.
O=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State=$APT/state" -o "Dir::Cache=$APT/cache" -o Dir::State::status=/var/lib/dpkg/status
   -o APT::Sandbox::User=root)
apt-get "${O[@]}" update -qq \
  || die "apt-get update of the private trixie/sid lists failed (sources: $APT/sources.list)"

for v in "${need[@]}"; do
  suite=${SUITE[$v]}
  madison=$(apt-cache "${O[@]}" madison containerd)
  ver=${PIN[$v]}
  if ! awk -v s="$suite/main" -v want="$ver" '$3 == want && index($0, s) {found=1} END {exit !found}' <<<"$madison"; then
    ver=$(awk -v s="$suite/main" -v p="$v." '$3 ~ "^"p && index($0, s) {print $3; exit}' <<<"$madison")
    [ -n "$ver" ] || die "expected containerd $v.x in Debian $suite, found only:
$madison"
    echo "fetch-containerd: pinned containerd ${PIN[$v]} is gone from $suite; taking $ver"
  fi
  (cd "$APT/debs" && apt-get "${O[@]}" download -qq "containerd=$ver") \
    || die "apt-get download containerd=$ver (Debian $suite) failed"
  # apt writes an epoch's colon as %3a in file names.
  deb=$(ls "$APT"/debs/containerd_"${ver/:/%3a}"_*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || die "apt-get download reported success but no containerd_${ver}_*.deb is in $APT/debs"
  rm -rf "$DEST/$v.partial"
  mkdir -p "$DEST/$v.partial"
  dpkg -x "$deb" "$DEST/$v.partial" || die "dpkg -x $deb failed"
  # Renamed into place only when whole, so an interrupted run is redone.
  rm -rf "$DEST/$v"
  mv "$DEST/$v.partial" "$DEST/$v"
  complete "$v" || die "$deb lacks one of ${BINARIES[*]} under usr/bin"
  echo "fetch-containerd: containerd $ver -> $DEST/$v ($("$DEST/$v/usr/bin/containerd" --version))"
done
