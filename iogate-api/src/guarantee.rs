//! The NRI plugin's word on each running container: are its limits what
//! the policy says? Served by the plugin (`GET /api/v1/guarantee` on its
//! pod-local port) and passed on by the sidecar in each container's
//! `guarantee` field, so that `kubectl iogate top` can mark a container the
//! plugin could not limit. The sidecar only measures; it cannot know what
//! the policy wanted.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a running container stands against the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Its cgroup holds exactly the limits the policy decides now.
    Limited,
    /// The policy leaves it alone (sandbox, namespace, keyword).
    Excluded,
    /// Exempt by annotation where allowed: its cgroup holds no limits.
    Exempt,
    /// The policy's every knob is unlimited for it, and so is its cgroup.
    UnlimitedByPolicy,
    /// The policy wants limits its cgroup does not hold (absent or other
    /// values), even after a repair, or its cgroup cannot be read.
    UnlimitedUnexpectedly,
}

impl Guarantee {
    pub const ALL: [Guarantee; 5] = [
        Guarantee::Limited,
        Guarantee::Excluded,
        Guarantee::Exempt,
        Guarantee::UnlimitedByPolicy,
        Guarantee::UnlimitedUnexpectedly,
    ];

    /// The name in JSON and in Prometheus labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::Limited => "limited",
            Guarantee::Excluded => "excluded",
            Guarantee::Exempt => "exempt",
            Guarantee::UnlimitedByPolicy => "unlimited_by_policy",
            Guarantee::UnlimitedUnexpectedly => "unlimited_unexpectedly",
        }
    }

    /// Whether the container runs other than the policy says.
    pub fn is_broken(self) -> bool {
        self == Guarantee::UnlimitedUnexpectedly
    }
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/guarantee` (the NRI plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuaranteeResponse {
    pub containers: Vec<ContainerGuarantee>,
}

/// One started container the plugin tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerGuarantee {
    /// The runtime's container ID (64 hex digits under containerd).
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `null` until its limits have been read back once.
    pub state: Option<Guarantee>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_snake_case_in_json_and_match_their_label_names() {
        for g in Guarantee::ALL {
            assert_eq!(serde_json::to_string(&g).unwrap(), format!("\"{}\"", g.as_str()));
        }
        let doc: GuaranteeResponse = serde_json::from_str(
            r#"{"containers":[{"container_id":"abc","namespace":"ns","pod":"p","container":"c","state":null}]}"#,
        )
        .unwrap();
        assert_eq!(doc.containers[0].state, None);
        assert!(serde_json::from_str::<Guarantee>("\"limitless\"").is_err());
    }
}
