# The two commands of the quick start, and the pieces they are made of.
# Every target installs what it needs (as root, idempotently), so both work
# on a fresh Debian 12 machine.

CARGO ?= cargo
# The demo, tests and benchmarks need the real eBPF program: a missing
# toolchain is a build error, not a stub sidecar (metrics-sidecar/build.rs).
export IOGATE_BPF ?= require

.PHONY: demo test deps containerd vm build image bench fuzz

## Local demo: a real containerd with the iogate NRI plugin, a throttled pod
## and an annotated one on a loop-device disk; prints limits and measured IOPS.
demo: deps containerd
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p iogate-tools --bin iogate-demo

## Every test: formatting, lints, unit tests, and the end-to-end tests on real
## containerd 1.7 and 2.1, runc, cgroup v1 and v2.
test: deps containerd vm
	scripts/test.sh

deps:
	scripts/install-deps.sh
	scripts/fetch-promtool.sh
	scripts/fetch-prometheus.sh

containerd:
	scripts/fetch-containerd.sh

## The cgroup v2 node VM's kernels and root filesystem (after containerd:
## the VM runs the same containerd builds).
vm: containerd
	scripts/fetch-vm.sh

build:
	$(CARGO) build --workspace --all-targets

## deploy/Dockerfile's image without Docker: an OCI layout tarball of the
## release binaries under .cache/image, for `ctr images import`.
image: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p iogate-tools --bin iogate-image

bench: deps containerd
	scripts/bench.sh

## The fuzzing run, a benchmark: every cargo-fuzz target for FUZZ_SECONDS
## (default 600) each, on nightly (installed when missing). Each target's
## corpus is replayed on stable by `make test`.
fuzz:
	scripts/fuzz.sh
