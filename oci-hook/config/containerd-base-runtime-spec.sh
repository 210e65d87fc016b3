#!/usr/bin/env bash
# For containerd without NRI (before 1.7, or NRI disabled): writes a CRI
# base runtime spec that carries iogate's createRuntime hook, so every
# container runc creates gets its limits before its process starts.
#
#   containerd-base-runtime-spec.sh [OUT] [HOOK]
#     OUT   default /etc/containerd/iogate-base-spec.json
#     HOOK  default /opt/iogate/bin/iogate-oci-hook
#
# Then, in containerd's config (1.6/1.7, config version 2):
#   [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
#     base_runtime_spec = "/etc/containerd/iogate-base-spec.json"
# and restart containerd. The hook decides from the container's annotations
# (containerd copies none of the pod's unless listed in the runtime's
# pod_annotations, e.g. pod_annotations = ["iogate.io/*"]) and from
# /etc/iogate/config.toml and IOGATE_* / DATA_MOUNT in its environment.
set -euo pipefail
OUT=${1:-/etc/containerd/iogate-base-spec.json}
HOOK=${2:-/opt/iogate/bin/iogate-oci-hook}
command -v ctr >/dev/null || { echo "expected containerd's ctr on PATH to print the default spec" >&2; exit 1; }
command -v jq >/dev/null || { echo "expected jq on PATH" >&2; exit 1; }
[ -x "$HOOK" ] || { echo "expected the iogate hook at $HOOK" >&2; exit 1; }
ctr oci spec | jq --arg hook "$HOOK" '
  .hooks.createRuntime = ((.hooks.createRuntime // []) + [{
    path: $hook,
    args: ["iogate-oci-hook", "--log", "/var/log/iogate-oci-hook.log"],
    env: ["IOGATE_CONFIG=/etc/iogate/config.toml"],
    timeout: 5
  }])' > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT"
