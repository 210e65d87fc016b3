#!/usr/bin/env bash
# Benchmarks of iogate's own cost (figures go in docs/benchmarks.md): see
# tools/src/bin/iogate-bench.rs and iogate-sidecar-bench.rs for
# what each one measures. Arguments pick benchmarks of the first binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# The sidecar benchmarks measure the real eBPF program, never the stub.
export IOGATE_BPF="${IOGATE_BPF:-require}"
cargo build --release --workspace --bins
./target/release/iogate-bench "$@"
./target/release/iogate-sidecar-bench
