#!/usr/bin/env bash
# Fetches two Prometheus servers for the end-to-end test that evaluates the
# shipped dashboard's queries on a real Prometheus
# (integration-tests/tests/prometheus_e2e.rs), without installing either:
#
# * 2.x: Debian 12's own `prometheus` package, which scripts/fetch-promtool.sh
#   already unpacks into DEST (DEST/usr/bin/prometheus); linked as DEST/2.
# * 3.x: Debian sid's, through a private sources list and apt state
#   (as scripts/fetch-containerd.sh does), `apt-get download` + `dpkg -x`
#   into DEST/3. Debian builds it linked against libc only (3.5.3: needs
#   glibc 2.34; Debian 12 has 2.36); the script runs it before keeping it.
#
#   scripts/fetch-prometheus.sh [DEST]     (default DEST: .cache/prometheus)
#
# Produces DEST/2/usr/bin/prometheus and DEST/3/usr/bin/prometheus.
# Idempotent: a version already unpacked is skipped. Root (apt state).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.cache/prometheus}
die() { echo "fetch-prometheus: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (private apt state, dpkg -x)"
"$ROOT/scripts/fetch-promtool.sh" "$DEST"
DEST=$(cd "$DEST" && pwd)
[ -x "$DEST/usr/bin/prometheus" ] || die "expected $DEST/usr/bin/prometheus from Debian 12's prometheus package"
[ -e "$DEST/2" ] || ln -s . "$DEST/2"

# The major version the test is written against; the newest 3.x sid has is
# taken.
MAJOR=3
if [ -x "$DEST/$MAJOR/usr/bin/prometheus" ]; then exit 0; fi

APT=$ROOT/.cache/apt-prometheus
mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
cat > "$APT/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
O=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State=$APT/state" -o "Dir::Cache=$APT/cache" -o Dir::State::status=/var/lib/dpkg/status
   -o APT::Sandbox::User=root)
apt-get "${O[@]}" update -qq || die "apt-get update of the private sid list failed (sources: $APT/sources.list)"
madison=$(apt-cache "${O[@]}" madison prometheus)
ver=$(awk -v p="$MAJOR." '$3 ~ "^"p && index($0, "sid/main") {print $3; exit}' <<<"$madison")
[ -n "$ver" ] || die "expected prometheus $MAJOR.x in Debian sid, found only:
$madison"
(cd "$APT/debs" && apt-get "${O[@]}" download -qq "prometheus=$ver") \
  || die "apt-get download prometheus=$ver (Debian sid) failed"
deb=$(ls "$APT"/debs/prometheus_"${ver/:/%3a}"_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "apt-get download reported success but no prometheus_${ver}_*.deb is in $APT/debs"
rm -rf "$DEST/$MAJOR.partial"
mkdir -p "$DEST/$MAJOR.partial"
dpkg -x "$deb" "$DEST/$MAJOR.partial" || die "dpkg -x $deb failed"
[ -x "$DEST/$MAJOR.partial/usr/bin/prometheus" ] || die "$deb lacks usr/bin/prometheus"
# It must run here (Debian 12), not only unpack.
"$DEST/$MAJOR.partial/usr/bin/prometheus" --version >/dev/null 2>&1 \
  || die "prometheus $ver from sid does not run on this machine: $("$DEST/$MAJOR.partial/usr/bin/prometheus" --version 2>&1 | head -3)"
# Renamed into place only when whole, so an interrupted run is redone.
rm -rf "$DEST/$MAJOR"
mv "$DEST/$MAJOR.partial" "$DEST/$MAJOR"
echo "fetch-prometheus: prometheus $ver -> $DEST/$MAJOR ($("$DEST/$MAJOR/usr/bin/prometheus" --version 2>&1 | head -n1))"
