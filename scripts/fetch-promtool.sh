#!/usr/bin/env bash
# Fetches Debian's promtool (from the prometheus package) into a private
# directory, without installing the Prometheus server and its web assets:
# `apt-get download` then `dpkg -x`. The metrics tests run
# `promtool check metrics` on the sidecar's /metrics output.
#
#   scripts/fetch-promtool.sh [DEST]     (default DEST: .cache/prometheus)
#
# Produces DEST/usr/bin/promtool. Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.cache/prometheus}
die() { echo "fetch-promtool: $*" >&2; exit 1; }

[ -x "$DEST/usr/bin/promtool" ] && exit 0
mkdir -p "$DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -qq || die "apt-get update failed (are the Debian mirrors reachable?)"
  apt-get download prometheus >/dev/null || die "apt-get download prometheus failed"
fi
deb=$(ls prometheus_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || die "expected prometheus_*.deb after apt-get download, found none"
dpkg -x "$deb" "$DEST"
[ -x "$DEST/usr/bin/promtool" ] || die "expected usr/bin/promtool in $deb, found none"
echo "fetch-promtool: $("$DEST/usr/bin/promtool" --version 2>&1 | head -n1)"
