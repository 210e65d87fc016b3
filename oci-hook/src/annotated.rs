//! A container as the annotations of its spec describe it: the names the
//! policy matches on, which each runtime writes under its own keys
//! (containerd's CRI, CRI-O, Podman). A plain `runc` bundle may carry none,
//! and is then known by its id alone.

use std::collections::HashMap;

use iogate_core::annotations::{Problem, ProblemKind, Source};
use iogate_core::ContainerInfo;

/// CRI-O's copy of the pod's annotations, one JSON object.
const CRI_O_ANNOTATIONS: &str = "io.kubernetes.cri-o.Annotations";

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
    /// What could not be read: CRI-O's JSON when it does not parse (the
    /// policy warns, or refuses in strict mode).
    pub problems: Vec<Problem>,
}

impl AnnotatedContainer {
    /// What the policy decides on. A hook sees one container: no siblings.
    pub fn info(&self) -> ContainerInfo<'_> {
        ContainerInfo {
            is_sandbox: self.is_sandbox,
            foreign_problems: &self.problems,
            ..ContainerInfo::new(&self.namespace, &self.pod, &self.container, &self.image, &self.annotations)
        }
    }
}

fn first(a: &HashMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| a.get(*k)).cloned()
}

pub fn from_annotations(container_id: &str, annotations: &HashMap<String, String>) -> AnnotatedContainer {
    let kind = first(annotations, &["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"]);
    let mut merged = HashMap::new();
    let mut problems = Vec::new();
    // CRI-O keeps the pod's annotations as one JSON object; explicit keys on
    // the container win over it.
    if let Some(json) = annotations.get(CRI_O_ANNOTATIONS) {
        match serde_json::from_str::<HashMap<String, String>>(json) {
            Ok(pod) => merged.extend(pod),
            Err(e) => problems.push(Problem {
                source: Source { key: CRI_O_ANNOTATIONS.into(), value: json.clone() },
                reason: format!("expected a JSON object of string values (the pod's annotations), found {e}"),
                kind: ProblemKind::ForeignJson,
            }),
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
        problems,
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
    fn cri_o_json_that_does_not_parse_is_a_problem_not_silence() {
        let i = from_annotations(
            "abc",
            &ann(&[(CRI_O_ANNOTATIONS, r#"{"iogate.io/read-iops": 100"#), ("iogate.io/write-iops", "50")]),
        );
        assert_eq!(i.annotations["iogate.io/write-iops"], "50", "the container's own keys are still read");
        assert_eq!(i.problems.len(), 1);
        assert_eq!(i.problems[0].kind, ProblemKind::ForeignJson);
        assert!(
            i.problems[0].to_string().starts_with(
                "annotation io.kubernetes.cri-o.Annotations=\"{\\\"iogate.io/read-iops\\\": 100\": expected a JSON object of string values"
            ),
            "{}",
            i.problems[0]
        );
    }

    #[test]
    fn plain_bundle_is_known_by_its_id() {
        let i = from_annotations("bench-1", &HashMap::new());
        assert_eq!(i.container, "bench-1");
        assert_eq!(i.namespace, "");
        assert!(!i.is_sandbox);
    }
}
