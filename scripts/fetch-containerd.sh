#!/usr/bin/env bash
# Fetches Debian's containerd 1.7 (trixie) and 2.1 (sid) into a private
# directory, without touching the machine's packages: apt-get download
# through a private sources list and state, then dpkg -x. The binaries need
# only glibc 2.34, which Debian 12 has. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.cache/containerd}
APT=.cache/apt
declare -A SUITE=([1.7]=trixie [2.1]=sid)
declare -A PREFIX=([1.7]=1.7. [2.1]=2.1.)

need=()
for v in 1.7 2.1; do
  [ -x "$DEST/$v/usr/bin/containerd" ] || need+=("$v")
done
[ ${#need[@]} -eq 0 ] && exit 0

mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
cat > "$APT/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
ABS=$(cd "$APT" && pwd)
O=(-o "Dir::Etc::SourceList=$ABS/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State=$ABS/state" -o "Dir::Cache=$ABS/cache" -o Dir::State::status=/var/lib/dpkg/status
   -o APT::Sandbox::User=root)
apt-get "${O[@]}" update -qq || { echo "fetch-containerd: apt-get update of trixie/sid lists failed" >&2; exit 1; }

for v in "${need[@]}"; do
  # The newest containerd of that suite whose version starts with 1.7. / 2.1.
  ver=$(apt-cache "${O[@]}" madison containerd | awk -v s="${SUITE[$v]}" -v p="${PREFIX[$v]}" \
        '$0 ~ s"/main" && index($3, p) == 1 {print $3; exit}')
  if [ -z "$ver" ]; then
    echo "fetch-containerd: no containerd ${PREFIX[$v]}x in Debian ${SUITE[$v]}" >&2
    apt-cache "${O[@]}" madison containerd >&2
    exit 1
  fi
  (cd "$APT/debs" && apt-get "${O[@]}" download "containerd=$ver" -qq)
  deb=$(ls "$APT"/debs/containerd_"${ver/:/%3a}"_*.deb | head -1)
  rm -rf "$DEST/$v.partial" && mkdir -p "$DEST/$v.partial"
  dpkg -x "$deb" "$DEST/$v.partial"
  rm -rf "$DEST/$v" && mv "$DEST/$v.partial" "$DEST/$v"
  echo "fetch-containerd: containerd $ver -> $DEST/$v ($("$DEST/$v/usr/bin/containerd" --version))"
done
