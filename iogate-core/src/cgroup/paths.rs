//! Which pod and container a cgroup belongs to, read from its path alone.
//!
//! The kubelet names every pod's cgroup after the pod UID, and the container
//! runtime names each container's cgroup after the container id, so the path
//! says *who* without asking anyone. The spelling depends on the cgroup driver:
//!
//! | driver   | pod cgroup                                   | container cgroup                      |
//! |----------|----------------------------------------------|---------------------------------------|
//! | cgroupfs | `/kubepods/burstable/pod6f3a…-…`             | `<64 hex>` (containerd, Docker, CRI-O)|
//! | systemd  | `/kubepods.slice/kubepods-burstable.slice/`  | `cri-containerd-<id>.scope`,          |
//! |          | `kubepods-burstable-pod6f3a…_….slice`        | `crio-<id>.scope`, `docker-<id>.scope`|
//!
//! systemd reserves `-` as the slice nesting separator, so the kubelet writes
//! the UID's dashes as underscores there; they are turned back here.
//!
//! Whatever sits above the pod cgroup is ignored: kind nodes
//! (`/system.slice/docker-<node>.scope/kubelet.slice/…`), the containerd
//! service (`/system.slice/containerd.service/kubepods-…`) and our own e2e
//! parent (`/iogate-e2e-123/pod<uid>/<id>`) all work. The *first* pod cgroup
//! on the path wins, because a cluster nested inside a pod (kind in a pod) is
//! I/O of that outer pod, the one this node's API server knows.
//!
//! Identification is strict: a pod UID must be a canonical UUID (or the
//! 32-hex hash the kubelet uses as UID of static pods), a container id must
//! be 64 lowercase hex digits. Anything else is "not a pod" or "no container":
//! a missing attribution is a gap in a dashboard, a wrong one is a lie.
//!
//! Two cgroups under a pod are not containers of the pod spec:
//! * the sandbox ("pause") container has an ordinary 64-hex id and cannot be
//!   told apart by its path; callers that know the pod's containers can;
//! * CRI-O's `crio-conmon-<id>` holds conmon, the monitor that writes the
//!   container's log. Its I/O is the pod's, not the container's, so it maps
//!   to the pod with no container.
//!
//! Cgroups below a container cgroup (a container that nests its own cgroups,
//! crun's `…/container` leaf) belong to that container.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

use crate::cgroup::systemd;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("expected a pod UID (UUID like 6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c, or 32 hex digits for a static pod), found {0:?}")]
    PodUid(String),
    #[error("expected a container id of 64 lowercase hex digits, found {0:?}")]
    ContainerId(String),
}

/// A pod's `metadata.uid` as the kubelet uses it in cgroup names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PodUid(String);

impl PodUid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PodUid {
    type Err = IdError;

    /// Accepts the canonical lowercase UUID the API server assigns, and the
    /// 32-hex md5 the kubelet gives static pods (their cgroups carry it; the
    /// API's mirror pod has another UID and names this one in the
    /// `kubernetes.io/config.mirror` annotation).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let is_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        let uuid = s.len() == 36
            && s.bytes().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == b'-' } else { is_hex(c) });
        let static_hash = s.len() == 32 && s.bytes().all(is_hex);
        if uuid || static_hash {
            Ok(PodUid(s.to_string()))
        } else {
            Err(IdError::PodUid(s.to_string()))
        }
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container id as the runtime reports it (and names its cgroup).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContainerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            Ok(ContainerId(s.to_string()))
        } else {
            Err(IdError::ContainerId(s.to_string()))
        }
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pod's Kubernetes QoS class, which decides where the kubelet puts its
/// cgroup (Guaranteed pods sit directly under `kubepods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn name(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The class a QoS level's cgroup stands for: the last dash-separated word
    /// (`burstable`, `kubepods-besteffort`, `kubelet-kubepods`). Pods right
    /// under `kubepods` are Guaranteed. Other parents (our e2e's) say nothing.
    fn from_level(level: &str) -> Option<QosClass> {
        match level.rsplit('-').next()? {
            "kubepods" => Some(QosClass::Guaranteed),
            "burstable" => Some(QosClass::Burstable),
            "besteffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a pod's (or a pod container's) cgroup path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub pod_uid: PodUid,
    /// `None` for the pod cgroup itself, CRI-O's conmon, and cgroups under
    /// the pod that are not named like a container.
    pub container_id: Option<ContainerId>,
    /// `None` when the pod's parent is not a kubelet QoS level (e2e parents).
    pub qos: Option<QosClass>,
}

impl PodCgroup {
    /// Reads a path relative to the hierarchy root (`/kubepods/…`); `None`
    /// when no pod cgroup is on it.
    pub fn parse(path: &str) -> Option<PodCgroup> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (at, pod_uid, systemd_qos) =
            segments.iter().enumerate().find_map(|(i, s)| pod_segment(s).map(|(uid, qos)| (i, uid, qos)))?;
        let qos = match systemd_qos {
            Some(level) => QosClass::from_level(level),
            None => at.checked_sub(1).and_then(|p| QosClass::from_level(segments[p])),
        };
        let container_id = segments.get(at + 1).and_then(|s| container_segment(s));
        Some(PodCgroup { pod_uid, container_id, qos })
    }

    /// The pod's own cgroup on `path`: the path up to and including its pod
    /// segment (`/kubepods/burstable/pod<uid>` from a container's path);
    /// `None` when no pod cgroup is on it. What the pod as a whole shows
    /// (its pressure stall time, which does not add up over containers) is
    /// read there.
    pub fn pod_dir(path: &str) -> Option<&str> {
        let mut end = 0;
        for segment in path.split_inclusive('/') {
            let name = segment.trim_end_matches('/');
            end += segment.len();
            if !name.is_empty() && pod_segment(name).is_some() {
                return Some(&path[..end - (segment.len() - name.len())]);
            }
        }
        None
    }
}

/// `pod<uid>` (cgroupfs) or `<level>-pod<uid_with_underscores>.slice`
/// (systemd); the systemd form also returns its QoS level (`kubepods-burstable`).
fn pod_segment(segment: &str) -> Option<(PodUid, Option<&str>)> {
    if segment.ends_with(systemd::SLICE_SUFFIX) {
        let (level, pod) = systemd::split_slice(segment)?;
        let uid = pod.strip_prefix("pod")?;
        // The systemd form never carries dashes inside the UID (they would be
        // slice separators); a dash here means the name is something else.
        if uid.contains('-') {
            return None;
        }
        return Some((systemd::pod_uid_from_slice(uid).parse().ok()?, Some(level)));
    }
    let uid = segment.strip_prefix("pod")?;
    Some((uid.parse().ok()?, None))
}

/// The container id in a container cgroup's name, `None` for anything that
/// is not one (including CRI-O's conmon).
fn container_segment(segment: &str) -> Option<ContainerId> {
    let name = systemd::scope_stem(segment).unwrap_or(segment);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-"].iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    // A bare id has no `.scope`: systemd only ever makes prefixed scopes.
    if id.len() == name.len() && name.len() != segment.len() {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    const UID_SYSTEMD: &str = "6f3a1b2c_0d4e_4f5a_8b6c_7d8e9f0a1b2c";
    const STATIC_UID: &str = "b4f3c0e1d2a5968778695a4b3c2d1e0f";
    const CID: &str = "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7";
    const CID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn pod(uid: &str, cid: Option<&str>, qos: Option<QosClass>) -> Option<PodCgroup> {
        Some(PodCgroup { pod_uid: uid.parse().unwrap(), container_id: cid.map(|c| c.parse().unwrap()), qos })
    }

    #[test]
    fn the_pod_dir_is_the_path_through_the_pod_segment() {
        let cgroupfs = format!("/kubepods/burstable/pod{UID}");
        assert_eq!(PodCgroup::pod_dir(&format!("{cgroupfs}/{CID}")), Some(cgroupfs.as_str()));
        assert_eq!(PodCgroup::pod_dir(&format!("{cgroupfs}/")), Some(cgroupfs.as_str()));
        assert_eq!(PodCgroup::pod_dir(&cgroupfs), Some(cgroupfs.as_str()));
        let slice = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice");
        assert_eq!(PodCgroup::pod_dir(&format!("{slice}/cri-containerd-{CID}.scope")), Some(slice.as_str()));
        assert_eq!(PodCgroup::pod_dir("/system.slice/containerd.service"), None);
        assert_eq!(PodCgroup::pod_dir("/"), None);
    }

    #[test]
    fn real_world_paths() {
        use QosClass::*;
        let cases: Vec<(String, Option<PodCgroup>)> = vec![
            // cgroupfs driver, v1 and v2 alike.
            (format!("/kubepods/burstable/pod{UID}/{CID}"), pod(UID, Some(CID), Some(Burstable))),
            (format!("/kubepods/pod{UID}/{CID}"), pod(UID, Some(CID), Some(Guaranteed))),
            (format!("/kubepods/besteffort/pod{UID}"), pod(UID, None, Some(BestEffort))),
            (format!("/kubepods/besteffort/pod{UID}/"), pod(UID, None, Some(BestEffort))),
            (format!("kubepods/burstable/pod{UID}/{CID}"), pod(UID, Some(CID), Some(Burstable))),
            // systemd driver: containerd, CRI-O, Docker (cri-dockerd).
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Some(CID), Some(Burstable)),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{CID}.scope"),
                pod(UID, Some(CID), Some(BestEffort)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{CID}.scope"),
                pod(UID, Some(CID), Some(Guaranteed)),
            ),
            (format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice"), pod(UID, None, Some(Guaranteed))),
            // CRI-O's conmon belongs to the pod, not to the container.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{CID}.scope"),
                pod(UID, None, Some(Burstable)),
            ),
            (format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}"), pod(UID, None, Some(Burstable))),
            (format!("/kubepods/burstable/pod{UID}/crio-{CID}"), pod(UID, Some(CID), Some(Burstable))),
            // crun's leaf and other cgroups a container makes below its own.
            (
                format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-{CID}.scope/container"),
                pod(UID, Some(CID), Some(Guaranteed)),
            ),
            (format!("/kubepods/pod{UID}/{CID}/inner/deeper"), pod(UID, Some(CID), Some(Guaranteed))),
            // kind: the node is a Docker container, the kubelet runs under kubelet.slice.
            (
                format!("/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Some(CID), Some(Burstable)),
            ),
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Some(CID), Some(Guaranteed)),
            ),
            // containerd nested in its service (cgroupfs parent under systemd).
            (
                format!("/system.slice/containerd.service/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Some(CID), Some(BestEffort)),
            ),
            // Our containerd e2e: cgroupfs parent /iogate-e2e-<pid>/pod<uid>.
            (format!("/iogate-e2e-123/pod{UID}/{CID}"), pod(UID, Some(CID), None)),
            (format!("/iogate-e2e-123/pod{UID}"), pod(UID, None, None)),
            // Static pods (etcd, kube-apiserver) carry the kubelet's hash.
            (format!("/kubepods/burstable/pod{STATIC_UID}/{CID}"), pod(STATIC_UID, Some(CID), Some(Burstable))),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope"),
                pod(STATIC_UID, Some(CID), Some(Burstable)),
            ),
            // A pod nested in a pod: the outer one is this node's.
            (
                format!("/kubepods/pod{UID}/{CID}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice/cri-containerd-{CID2}.scope", STATIC_UID),
                pod(UID, Some(CID), Some(Guaranteed)),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(PodCgroup::parse(&path), want, "{path}");
        }
    }

    #[test]
    fn not_pods() {
        let cases = [
            "/".to_string(),
            String::new(),
            "/kubepods".into(),
            "/kubepods/burstable".into(),
            "/kubepods.slice/kubepods-burstable.slice".into(),
            "/system.slice/containerd.service".into(),
            format!("/system.slice/docker-{CID}.scope"),
            "/user.slice/user-1000.slice/session-2.scope".into(),
            "/iogate-e2e-123".into(),
            // The systemd driver's cgroupsPath notation is not a path.
            format!("kubepods-besteffort-pod{UID_SYSTEMD}.slice:cri-containerd:{CID}"),
            // UIDs that are almost right.
            "/kubepods/burstable/pod6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2".into(),
            "/kubepods/burstable/pod6F3A1B2C-0D4E-4F5A-8B6C-7D8E9F0A1B2C".into(),
            "/kubepods/burstable/pod6f3a1b2c_0d4e_4f5a_8b6c_7d8e9f0a1b2c".into(),
            "/kubepods/burstable/pod6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c-x".into(),
            "/kubepods/burstable/pod6f3a1b2c00d4e-4f5a-8b6c-7d8e9f0a1b2c".into(),
            "/kubepods/burstable/podg4f3c0e1d2a5968778695a4b3c2d1e0f".into(),
            "/kubepods/burstable/pod".into(),
            "/kubepods/burstable/default-web-0-4242".into(),
            // systemd form with the UID's dashes left in (not the kubelet's spelling).
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.scope"),
            format!("/kubepods.slice/pod{UID_SYSTEMD}.slice"),
        ];
        for path in cases {
            assert_eq!(PodCgroup::parse(&path), None, "{path}");
        }
    }

    #[test]
    fn only_real_container_ids_are_containers() {
        let base = format!("/kubepods/burstable/pod{UID}");
        let sd = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice");
        let children = [
            format!("{base}/{}", &CID[..63]),
            format!("{base}/{CID}0"),
            format!("{base}/{}", CID.to_uppercase()),
            format!("{base}/{CID}.scope"),
            format!("{base}/cri-containerd-{}", &CID[..12]),
            format!("{base}/not-a-container"),
            format!("{sd}/cri-containerd-{}.scope", &CID[..12]),
            format!("{sd}/podman-{CID}.scope"),
            format!("{sd}/crio-conmon-{CID}.scope"),
            format!("{sd}/cri-containerd-{CID}.slice"),
        ];
        for path in children {
            let got = PodCgroup::parse(&path).unwrap_or_else(|| panic!("{path}: the pod must still be found"));
            assert_eq!(got.pod_uid.as_str(), UID, "{path}");
            assert_eq!(got.container_id, None, "{path}");
        }
    }

    #[test]
    fn id_errors_say_what_was_expected() {
        let e = "web-0".parse::<PodUid>().unwrap_err().to_string();
        assert!(e.starts_with("expected a pod UID (UUID like"), "{e}");
        assert!(e.ends_with("found \"web-0\""), "{e}");
        let e = "abc".parse::<ContainerId>().unwrap_err().to_string();
        assert_eq!(e, "expected a container id of 64 lowercase hex digits, found \"abc\"");
    }
}
