#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests next to the code, and the
# end-to-end tests in integration-tests/ (real containerd 1.7 and 2.1, runc,
# loop devices, cgroup v1 and — for the duration of its test — cgroup v2).
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests need the real eBPF program: a missing toolchain is a
# build error here, not a stub sidecar (see metrics-sidecar/build.rs).
export IOGATE_BPF="${IOGATE_BPF:-require}"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the real binaries: build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
