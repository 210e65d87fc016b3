#!/usr/bin/env bash
# Benchmarks of iogate's own cost (figures go in the README): see
# integration-tests/src/bin/iogate-bench.rs for what each one measures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec ./target/release/iogate-bench "$@"
