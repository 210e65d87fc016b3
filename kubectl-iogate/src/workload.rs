//! Which workload a pod belongs to.
//!
//! With a cluster, from the pod's controller owner reference: a ReplicaSet
//! named `<deployment>-<pod-template-hash>` stands for its Deployment, and a
//! StatefulSet, DaemonSet or Job is named by its owner. Without one (direct
//! `--endpoint` use, or a pod the API no longer knows), from the pod's name
//! alone, by the suffixes the controllers append; such a workload is marked
//! [`Workload::inferred`] because a bare pod can look the same.

use std::fmt;

/// Characters Kubernetes uses for generated name suffixes and the
/// pod-template-hash (`rand.SafeEncodeString`: no vowels, no 0, 1 or 3, so
/// no words and no look-alikes).
const SAFE_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix a ReplicaSet or DaemonSet gives a pod.
const POD_SUFFIX_LEN: usize = 5;
/// Longest pod-template-hash (a 32-bit FNV hash, safe-encoded).
const MAX_HASH_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    /// A ReplicaSet with no Deployment above it.
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    /// Any other controller (an operator's own kind), by its kind name.
    Other(String),
    /// No controller: the pod is its own workload.
    Pod,
}

impl WorkloadKind {
    /// kubectl's short resource names, to keep the column narrow.
    fn short(&self) -> &str {
        match self {
            WorkloadKind::Deployment => "deploy",
            WorkloadKind::ReplicaSet => "rs",
            WorkloadKind::StatefulSet => "sts",
            WorkloadKind::DaemonSet => "ds",
            WorkloadKind::Job => "job",
            WorkloadKind::Other(kind) => kind,
            WorkloadKind::Pod => "pod",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    /// Guessed from the pod name rather than read from the API.
    pub inferred: bool,
}

/// `deploy/web`, with a trailing `*` when inferred (the output's notes say
/// what the star means).
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.kind.short(), self.name, if self.inferred { "*" } else { "" })
    }
}

/// A pod's controlling owner, as the API has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// The workload of a pod the API knows: its controller owner (if any) and
/// its `pod-template-hash` label (set on ReplicaSet pods; it is the exact
/// suffix to strip, so no guessing is needed when it is there).
pub fn from_owner(pod_name: &str, owner: Option<&Owner>, template_hash: Option<&str>) -> Workload {
    let known = |kind, name: &str| Workload { kind, name: name.to_string(), inferred: false };
    let Some(owner) = owner else { return known(WorkloadKind::Pod, pod_name) };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = match template_hash {
                Some(hash) => owner.name.strip_suffix(hash).and_then(|n| n.strip_suffix('-')),
                None => strip_hash(&owner.name),
            };
            match deployment {
                Some(name) => known(WorkloadKind::Deployment, name),
                None => known(WorkloadKind::ReplicaSet, &owner.name),
            }
        }
        "StatefulSet" => known(WorkloadKind::StatefulSet, &owner.name),
        "DaemonSet" => known(WorkloadKind::DaemonSet, &owner.name),
        "Job" => known(WorkloadKind::Job, &owner.name),
        other => known(WorkloadKind::Other(other.to_string()), &owner.name),
    }
}

/// The workload guessed from a pod name: `web-7d9f8b6c5d-x2kq9` (hash and
/// random suffix) → Deployment `web`; `pg-0` (ordinal) → StatefulSet `pg`;
/// anything else is taken as a bare pod.
pub fn infer(pod_name: &str) -> Workload {
    let inferred = |kind, name: &str| Workload { kind, name: name.to_string(), inferred: true };
    if let Some(deployment) = strip_random_suffix(pod_name).and_then(strip_hash) {
        return inferred(WorkloadKind::Deployment, deployment);
    }
    if let Some(set) = strip_ordinal(pod_name) {
        return inferred(WorkloadKind::StatefulSet, set);
    }
    inferred(WorkloadKind::Pod, pod_name)
}

fn is_safe(s: &str) -> bool {
    s.chars().all(|c| SAFE_ALPHABET.contains(c))
}

/// `name-x2kq9` → `name`: the five random characters a ReplicaSet adds.
fn strip_random_suffix(name: &str) -> Option<&str> {
    let (base, suffix) = name.rsplit_once('-')?;
    (suffix.len() == POD_SUFFIX_LEN && is_safe(suffix) && !base.is_empty()).then_some(base)
}

/// `web-7d9f8b6c5d` → `web`: a pod-template-hash. Requiring a digit keeps
/// an ordinary word of consonants (`web-rss`) from passing for a hash.
fn strip_hash(name: &str) -> Option<&str> {
    let (base, hash) = name.rsplit_once('-')?;
    let plausible =
        (1..=MAX_HASH_LEN).contains(&hash.len()) && is_safe(hash) && hash.chars().any(|c| c.is_ascii_digit());
    (plausible && !base.is_empty()).then_some(base)
}

/// `pg-0` → `pg`. A leading zero is no StatefulSet ordinal (`build-007`).
fn strip_ordinal(name: &str) -> Option<&str> {
    let (base, ordinal) = name.rsplit_once('-')?;
    let is_ordinal = !ordinal.is_empty()
        && ordinal.chars().all(|c| c.is_ascii_digit())
        && (ordinal == "0" || !ordinal.starts_with('0'));
    (is_ordinal && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str) -> Owner {
        Owner { kind: kind.into(), name: name.into() }
    }

    #[test]
    fn replica_set_owner_becomes_its_deployment() {
        let w = from_owner("web-7d9f8b6c5d-x2kq9", Some(&owner("ReplicaSet", "web-7d9f8b6c5d")), Some("7d9f8b6c5d"));
        assert_eq!(w.to_string(), "deploy/web");
        // No label (an older pod): the hash is recognised by its shape.
        let w = from_owner("api-v2-5c8b9-abcde", Some(&owner("ReplicaSet", "api-v2-5c8b9")), None);
        assert_eq!(w.to_string(), "deploy/api-v2");
        // A ReplicaSet created by hand has no hash to strip.
        let w = from_owner("frontend-x2kq9", Some(&owner("ReplicaSet", "frontend")), None);
        assert_eq!(w.to_string(), "rs/frontend");
    }

    #[test]
    fn other_owners_by_name() {
        assert_eq!(from_owner("pg-1", Some(&owner("StatefulSet", "pg")), None).to_string(), "sts/pg");
        assert_eq!(from_owner("fluentd-x2kq9", Some(&owner("DaemonSet", "fluentd")), None).to_string(), "ds/fluentd");
        assert_eq!(
            from_owner("backup-28934-zz9k2", Some(&owner("Job", "backup-28934")), None).to_string(),
            "job/backup-28934"
        );
        let w = from_owner("mongo-rs0-0", Some(&owner("PerconaServerMongoDB", "mongo")), None);
        assert_eq!(w.to_string(), "PerconaServerMongoDB/mongo");
        assert_eq!(from_owner("debug", None, None).to_string(), "pod/debug");
    }

    #[test]
    fn inference_from_pod_names() {
        let cases = [
            ("web-7d9f8b6c5d-x2kq9", "deploy/web*"),
            ("my-api-server-5c8b9d7f4-zxv2m", "deploy/my-api-server*"),
            ("pg-0", "sts/pg*"),
            ("kafka-broker-12", "sts/kafka-broker*"),
            ("build-007", "pod/build-007*"),
            // Vowels: a word, not a generated suffix.
            ("web-admin-house", "pod/web-admin-house*"),
            // A random suffix without a hash before it is not a Deployment pod.
            ("fluentd-x2kq9", "pod/fluentd-x2kq9*"),
            ("standalone", "pod/standalone*"),
            ("-0", "pod/-0*"),
        ];
        for (pod, want) in cases {
            assert_eq!(infer(pod).to_string(), want, "{pod}");
        }
    }
}
