//! Which cgroup version carries block I/O, and the admin's choice of it.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// The admin's choice: detect, or insist on one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    #[default]
    Auto,
    Only(CgroupVersion),
}

impl FromStr for CgroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(CgroupMode::Auto),
            "v1" | "1" => Ok(CgroupMode::Only(CgroupVersion::V1)),
            "v2" | "2" => Ok(CgroupMode::Only(CgroupVersion::V2)),
            _ => Err(format!("expected auto, v1 or v2, found {s:?}")),
        }
    }
}
