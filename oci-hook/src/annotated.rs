//! A container as the annotations of its spec describe it: the names the
//! policy matches on, which each runtime writes under its own keys
//! (containerd's CRI, CRI-O, Podman). A plain `runc` bundle may carry none,
//! and is then known by its id alone.

use std::collections::HashMap;

/// The fields the policy matches on, owned (the spec is parsed per run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnotatedContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub image: String,
    pub is_sandbox: bool,
    /// The iogate annotations in scope: the container's own, plus the pod's
    /// where the runtime copied them in (CRI-O's `io.kubernetes.cri-o.Annotations`).
    pub annotations: HashMap<String, String>,
}

fn first(a: &HashMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| a.get(*k)).cloned()
}

pub fn from_annotations(container_id: &str, annotations: &HashMap<String, String>) -> AnnotatedContainer {
    let kind = first(annotations, &["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"]);
    let mut merged = HashMap::new();
    // CRI-O keeps the pod's annotations as one JSON object; explicit keys on
    // the container win over it.
    if let Some(json) = annotations.get("io.kubernetes.cri-o.Annotations") {
        if let Ok(pod) = serde_json::from_str::<HashMap<String, String>>(json) {
            merged.extend(pod);
        }
    }
    merged.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    AnnotatedContainer {
        namespace: first(annotations, &["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"])
            .unwrap_or_default(),
        pod: first(annotations, &["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]).unwrap_or_default(),
        container: first(annotations, &["io.kubernetes.cri.container-name", "io.kubernetes.container.name"])
            .unwrap_or_else(|| container_id.to_string()),
        image: first(
            annotations,
            &["io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName", "org.opencontainers.image.ref.name"],
        )
        .unwrap_or_default(),
        is_sandbox: kind.as_deref() == Some("sandbox"),
        annotations: merged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn containerd_cri() {
        let i = from_annotations(
            "abc",
            &ann(&[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.container-name", "app"),
                ("io.kubernetes.cri.sandbox-name", "web-0"),
                ("io.kubernetes.cri.sandbox-namespace", "shop"),
                ("io.kubernetes.cri.image-name", "registry.local/app:1"),
            ]),
        );
        assert_eq!((i.namespace.as_str(), i.pod.as_str(), i.container.as_str()), ("shop", "web-0", "app"));
        assert!(!i.is_sandbox);
        assert!(from_annotations("p", &ann(&[("io.kubernetes.cri.container-type", "sandbox")])).is_sandbox);
    }

    #[test]
    fn cri_o_pod_annotations_are_in_scope() {
        let i = from_annotations(
            "abc",
            &ann(&[
                ("io.kubernetes.cri-o.ContainerType", "container"),
                ("io.kubernetes.container.name", "db"),
                ("io.kubernetes.pod.namespace", "data"),
                ("io.kubernetes.cri-o.Annotations", r#"{"iogate.io/read-iops":"100","iogate.io/write-iops":"9"}"#),
                ("iogate.io/write-iops", "50"),
            ]),
        );
        assert_eq!(i.container, "db");
        assert_eq!(i.annotations["iogate.io/read-iops"], "100");
        assert_eq!(i.annotations["iogate.io/write-iops"], "50");
    }

    #[test]
    fn plain_bundle_is_known_by_its_id() {
        let i = from_annotations("bench-1", &HashMap::new());
        assert_eq!(i.container, "bench-1");
        assert_eq!(i.namespace, "");
        assert!(!i.is_sandbox);
    }
}
