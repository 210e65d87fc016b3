#!/usr/bin/env bash
# Benchmarks of iogate's own cost (figures go in docs/benchmarks.md): see
# tools/src/bin/iogate-bench.rs and iogate-sidecar-bench.rs for what each
# one measures. Arguments pick benchmarks of the first binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# The sidecar benchmarks measure the real eBPF program, never the stub.
export IOGATE_BPF="${IOGATE_BPF:-require}"

[ "$(id -u)" -eq 0 ] || { echo "bench: must run as root (containerd, loop devices, eBPF); found uid $(id -u)" >&2; exit 1; }

# bpftrace, the sidecar's peer, reads tracepoint formats from tracefs, which
# a fresh machine does not mount. Mounted here when missing, and unmounted
# again afterwards, so the machine is left as it was found.
TRACEFS=/sys/kernel/tracing
if ! mountpoint -q "$TRACEFS"; then
  mount -t tracefs tracefs "$TRACEFS" || { echo "bench: cannot mount tracefs at $TRACEFS" >&2; exit 1; }
  trap 'umount "$TRACEFS" 2>/dev/null || true' EXIT
fi

cargo build --release --workspace --bins
./target/release/iogate-bench "$@"
./target/release/iogate-sidecar-bench
