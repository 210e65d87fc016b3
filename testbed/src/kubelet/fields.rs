//! Which fields of a DaemonSet the kubelet stand-in acts on. A manifest
//! field outside these lists would be silently ignored by the translation,
//! so [`unhandled`] names each one and the caller refuses the manifest.

use serde_json::Value;

/// Paths (from the DaemonSet's root; `[]` is any array element, a trailing
/// `.*` any key of a map) the translation turns into CRI fields.
pub const TRANSLATED: &[&str] = &[
    "spec.template.metadata.labels.*",
    "spec.template.metadata.annotations.*",
    "spec.template.spec.hostPID",
    "spec.template.spec.securityContext.seccompProfile.type",
    "spec.template.spec.automountServiceAccountToken",
    "spec.template.spec.volumes[].name",
    "spec.template.spec.volumes[].configMap.name",
    "spec.template.spec.volumes[].hostPath.path",
    "spec.template.spec.volumes[].hostPath.type",
    "spec.template.spec.volumes[].projected.defaultMode",
    "spec.template.spec.volumes[].projected.sources[].downwardAPI.items[].path",
    "spec.template.spec.volumes[].projected.sources[].downwardAPI.items[].fieldRef.apiVersion",
    "spec.template.spec.volumes[].projected.sources[].downwardAPI.items[].fieldRef.fieldPath",
];

/// Per container (init or not), below `spec.template.spec.containers[]`
/// and `spec.template.spec.initContainers[]`.
pub const CONTAINER: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command[]",
    "args[]",
    "env[].name",
    "env[].value",
    "env[].valueFrom.fieldRef.fieldPath",
    "env[].valueFrom.fieldRef.apiVersion",
    "ports[].name",
    "ports[].containerPort",
    "ports[].protocol",
    "securityContext.runAsUser",
    "securityContext.runAsNonRoot",
    "securityContext.allowPrivilegeEscalation",
    "securityContext.readOnlyRootFilesystem",
    "securityContext.capabilities.add[]",
    "securityContext.capabilities.drop[]",
    "securityContext.seccompProfile.type",
    "resources.requests.cpu",
    "resources.requests.memory",
    "resources.limits.memory",
    "volumeMounts[].name",
    "volumeMounts[].mountPath",
    "volumeMounts[].readOnly",
    "volumeMounts[].mountPropagation",
    // Acted on by the harness as the kubelet does: it waits for readiness
    // and asks for liveness over HTTP at the pod's IP.
    "readinessProbe.httpGet.path",
    "readinessProbe.httpGet.port",
    "readinessProbe.initialDelaySeconds",
    "readinessProbe.periodSeconds",
    "readinessProbe.timeoutSeconds",
    "readinessProbe.failureThreshold",
    "livenessProbe.httpGet.path",
    "livenessProbe.httpGet.port",
    "livenessProbe.initialDelaySeconds",
    "livenessProbe.periodSeconds",
    "livenessProbe.timeoutSeconds",
    "livenessProbe.failureThreshold",
];

/// Fields for the API server, the scheduler or the DaemonSet controller,
/// which have no meaning on a node (a one-node run has nothing to schedule
/// or roll).
pub const CLUSTER_SIDE: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata.name",
    "metadata.namespace",
    "metadata.labels.*",
    "metadata.annotations.*",
    "spec.selector.matchLabels.*",
    "spec.updateStrategy.type",
    "spec.updateStrategy.rollingUpdate.maxUnavailable",
    "spec.template.spec.tolerations[].operator",
    "spec.template.spec.serviceAccountName",
    // Eviction order and a rolling update's stop timeout: the stand-in
    // neither evicts nor rolls.
    "spec.template.spec.priorityClassName",
    "spec.template.spec.terminationGracePeriodSeconds",
    // Issued by the API server, which a node without a cluster lacks: the
    // projected service-account volume holds its namespace only.
    "spec.template.spec.volumes[].projected.sources[].serviceAccountToken.path",
    "spec.template.spec.volumes[].projected.sources[].serviceAccountToken.expirationSeconds",
    "spec.template.spec.volumes[].projected.sources[].configMap.name",
    "spec.template.spec.volumes[].projected.sources[].configMap.items[].key",
    "spec.template.spec.volumes[].projected.sources[].configMap.items[].path",
];

fn covered(path: &str) -> bool {
    let matches = |pattern: &str, path: &str| match pattern.strip_suffix(".*") {
        Some(map) => path.strip_prefix(map).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == path,
    };
    if TRANSLATED.iter().chain(CLUSTER_SIDE).any(|p| matches(p, path)) {
        return true;
    }
    ["spec.template.spec.containers[].", "spec.template.spec.initContainers[]."]
        .iter()
        .filter_map(|prefix| path.strip_prefix(prefix))
        .any(|rest| CONTAINER.iter().any(|p| matches(p, rest)))
}

/// Every leaf path of `daemonset` (as JSON) that no list covers, sorted.
pub fn unhandled(daemonset: &Value) -> Vec<String> {
    let mut leaves = Vec::new();
    walk(daemonset, String::new(), &mut leaves);
    let mut out: Vec<String> = leaves.into_iter().filter(|p| !covered(p)).collect();
    out.sort();
    out.dedup();
    out
}

fn walk(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let next = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(v, next, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, format!("{path}[]"), out);
            }
        }
        Value::Null => {}
        _ => out.push(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_nobody_handles_is_named() {
        let ds = json!({
            "kind": "DaemonSet",
            "spec": {"template": {"spec": {
                "hostPID": true,
                "hostNetwork": true,
                "containers": [{"name": "a", "securityContext": {"privileged": true, "runAsUser": 0}}]
            }}}
        });
        assert_eq!(
            unhandled(&ds),
            vec![
                "spec.template.spec.containers[].securityContext.privileged".to_string(),
                "spec.template.spec.hostNetwork".to_string()
            ]
        );
    }

    #[test]
    fn map_keys_are_covered_by_their_map_only() {
        assert!(covered("spec.template.metadata.labels.app"));
        assert!(!covered("spec.template.metadata.labelsx"));
        assert!(covered("spec.template.spec.initContainers[].command[]"));
        assert!(!covered("spec.template.spec.containers[].stdin"));
    }
}
