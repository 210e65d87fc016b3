#!/usr/bin/env bash
# Builds the iogate image, creates the kind cluster if it is missing (NRI on,
# /data on a real disk: integration-tests/kind/kind-config.yaml) and loads the
# image into it. Then:
#   IOGATE_KIND=1 cargo test -p iogate-integration-tests --test kind_e2e -- --nocapture
#
# Environment: KIND_CLUSTER (default iogate), IOGATE_IMAGE (default
# ghcr.io/iogate/iogate:0.1.0), KIND_NODE_IMAGE (kind's default if unset),
# IOGATE_VMLINUX_H (passed to deploy/Dockerfile for build hosts without BTF).
set -euo pipefail

die() { echo "kind-load: $*" >&2; exit 1; }

cd "$(dirname "$0")/.."
CLUSTER=${KIND_CLUSTER:-iogate}
IMAGE=${IOGATE_IMAGE:-ghcr.io/iogate/iogate:0.1.0}
CONFIG=integration-tests/kind/kind-config.yaml
# Must match extraMounts[].hostPath in $CONFIG.
DATA_DIR=/var/lib/iogate-kind-data

command -v docker >/dev/null || die "expected docker on PATH (to build the image and run kind's nodes), found none"
docker info >/dev/null 2>&1 || die "docker is installed but no Docker engine answers ('docker info' fails): start dockerd, or run this where one runs"
command -v kind >/dev/null || die "expected kind on PATH, found none: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || die "expected kubectl on PATH (the test applies deploy/ with kubectl apply -k), found none"

mkdir -p "$DATA_DIR"
src=$(findmnt -n -o SOURCE --target "$DATA_DIR" || true)
case "$src" in
  /dev/*) ;;
  *) die "expected $DATA_DIR on a block device (it becomes the kind node's /data, the disk iogate throttles), found it on '${src:-nothing}'" ;;
esac

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind-load: cluster $CLUSTER exists"
else
  echo "kind-load: creating cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$CONFIG" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi

echo "kind-load: building $IMAGE"
DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t "$IMAGE" \
  ${IOGATE_VMLINUX_H:+--build-arg IOGATE_VMLINUX_H="$IOGATE_VMLINUX_H"} .

echo "kind-load: loading $IMAGE into $CLUSTER"
kind load docker-image "$IMAGE" --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER" >/dev/null
echo "kind-load: done; now: IOGATE_KIND=1 cargo test -p iogate-integration-tests --test kind_e2e -- --nocapture"
