//! How the systemd cgroup driver names cgroups.
//!
//! Under the systemd driver every cgroup is a unit: slices (`.slice`) nest,
//! and a container is a scope (`.scope`) in its pod's slice. A slice's name
//! spells out its ancestry with dashes, `kubepods-burstable-pod<uid>.slice`
//! living in `kubepods-burstable.slice` in `kubepods.slice`, which is why the
//! kubelet writes a pod UID's dashes as underscores there.
//!
//! OCI specs (and NRI) give such a cgroup as `linux.cgroupsPath` in runc's
//! notation `slice:prefix:name` (`kubepods-burstable-pod<uid>.slice:
//! cri-containerd:<id>`), which is not a path; [`CgroupsPath`] turns it into
//! one.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub const SLICE_SUFFIX: &str = ".slice";
pub const SCOPE_SUFFIX: &str = ".scope";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SystemdError {
    #[error(
        "expected a systemd slice name like kubepods-burstable.slice (no empty dash-separated parts), found {0:?}"
    )]
    Slice(String),
    #[error("expected a systemd cgroupsPath \"slice:prefix:name\", found {0:?}")]
    CgroupsPath(String),
}

/// A slice name split at its last dash: the parent slice's stem and the
/// slice's own last word (`kubepods-burstable-pod1.slice` →
/// `("kubepods-burstable", "pod1")`). `None` for a name that is no slice or
/// has no parent but the root.
pub fn split_slice(unit: &str) -> Option<(&str, &str)> {
    unit.strip_suffix(SLICE_SUFFIX)?.rsplit_once('-')
}

/// A scope's name without `.scope` (`cri-containerd-<id>.scope` →
/// `cri-containerd-<id>`).
pub fn scope_stem(unit: &str) -> Option<&str> {
    unit.strip_suffix(SCOPE_SUFFIX)
}

/// The kubelet's spelling of a pod UID inside a slice name.
pub fn pod_uid_in_slice(uid: &str) -> String {
    uid.replace('-', "_")
}

/// A pod UID as a slice name spells it, back in its own form.
pub fn pod_uid_from_slice(spelled: &str) -> String {
    spelled.replace('_', "-")
}

/// The path of a slice from the hierarchy's root:
/// `kubepods-burstable.slice` → `/kubepods.slice/kubepods-burstable.slice`;
/// the root slice `-.slice` is `/`.
pub fn slice_path(slice: &str) -> Result<String, SystemdError> {
    let bad = || SystemdError::Slice(slice.to_string());
    if slice == "-.slice" {
        return Ok("/".to_string());
    }
    let stem = slice.strip_suffix(SLICE_SUFFIX).ok_or_else(bad)?;
    if stem.is_empty() || stem.split('-').any(str::is_empty) || stem.contains('/') {
        return Err(bad());
    }
    let mut path = String::new();
    for (end, _) in stem.match_indices('-').chain([(stem.len(), "")]) {
        path.push('/');
        path.push_str(&stem[..end]);
        path.push_str(SLICE_SUFFIX);
    }
    Ok(path)
}

/// runc's systemd notation of a container's cgroup: the parent slice, and
/// the scope `<prefix>-<name>.scope` in it (or, when `name` is itself a
/// slice, that slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupsPath {
    pub slice: String,
    pub prefix: String,
    pub name: String,
}

impl CgroupsPath {
    /// The cgroup's path from the hierarchy's root, as `/proc/<pid>/cgroup`
    /// shows it.
    pub fn path(&self) -> Result<String, SystemdError> {
        // runc puts a container without a parent slice in system.slice.
        let slice = if self.slice.is_empty() { "system.slice" } else { &self.slice };
        let parent = slice_path(slice)?;
        let unit = if self.name.ends_with(SLICE_SUFFIX) {
            self.name.clone()
        } else if self.prefix.is_empty() {
            format!("{}{SCOPE_SUFFIX}", self.name)
        } else {
            format!("{}-{}{SCOPE_SUFFIX}", self.prefix, self.name)
        };
        Ok(format!("{}/{unit}", parent.trim_end_matches('/')))
    }
}

impl FromStr for CgroupsPath {
    type Err = SystemdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(slice), Some(prefix), Some(name), None) if !name.is_empty() && !s.contains('/') => {
                Ok(CgroupsPath { slice: slice.into(), prefix: prefix.into(), name: name.into() })
            }
            _ => Err(SystemdError::CgroupsPath(s.to_string())),
        }
    }
}

impl fmt::Display for CgroupsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.slice, self.prefix, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    const CID: &str = "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7";

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(slice_path("kubepods.slice").unwrap(), "/kubepods.slice");
        assert_eq!(
            slice_path("kubepods-besteffort-podx.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice"
        );
        assert_eq!(slice_path("-.slice").unwrap(), "/");
        for bad in ["kubepods", "kubepods--x.slice", "-kubepods.slice", "kubepods-.slice", ".slice", "a/b.slice"] {
            assert_eq!(slice_path(bad), Err(SystemdError::Slice(bad.into())), "{bad}");
        }
        assert_eq!(split_slice("kubepods-burstable-pod1.slice"), Some(("kubepods-burstable", "pod1")));
        assert_eq!(split_slice("kubepods.slice"), None);
        assert_eq!(scope_stem("crio-1.scope"), Some("crio-1"));
    }

    #[test]
    fn a_containers_cgroups_path_becomes_its_cgroup() {
        let spelled = pod_uid_in_slice(UID);
        assert_eq!(pod_uid_from_slice(&spelled), UID);
        let given = format!("kubepods-burstable-pod{spelled}.slice:cri-containerd:{CID}");
        let p: CgroupsPath = given.parse().unwrap();
        assert_eq!(p.to_string(), given);
        assert_eq!(
            p.path().unwrap(),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{spelled}.slice/cri-containerd-{CID}.scope"
            )
        );
        let plain: CgroupsPath = ":docker:abc".parse().unwrap();
        assert_eq!(plain.path().unwrap(), "/system.slice/docker-abc.scope");
        let slice: CgroupsPath = "kubepods.slice::kubepods-besteffort.slice".parse().unwrap();
        assert_eq!(slice.path().unwrap(), "/kubepods.slice/kubepods-besteffort.slice");
        for bad in ["/kubepods/pod1/abc", "a:b", "a:b:", "a:b:c:d"] {
            assert_eq!(bad.parse::<CgroupsPath>(), Err(SystemdError::CgroupsPath(bad.into())), "{bad}");
        }
    }
}
