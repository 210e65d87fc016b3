//! What a running container's cgroup must hold, by the policy's decision
//! now ([`Policy::decide`]): the reconciler compares this with what it
//! reads back.

use iogate_core::policy::{Decision, Refusal};
use iogate_core::{ContainerInfo, DeviceLimits, Limits, Policy};

use crate::telemetry::Guarantee;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The state the container is in when its cgroup matches.
    pub guarantee: Guarantee,
    /// Each policy device with the limits it must carry (all unlimited for
    /// an exempt container); empty when the policy leaves it alone.
    pub want: Vec<DeviceLimits>,
    /// The policy's reasoning, for the log.
    pub why: String,
}

impl Expected {
    /// `7:0 riops=100 wiops=100 rbps=max wbps=max, …`
    pub fn describe(&self) -> String {
        describe(&self.want)
    }
}

pub fn describe(limits: &[DeviceLimits]) -> String {
    if limits.is_empty() {
        return "nothing".into();
    }
    limits.iter().map(DeviceLimits::to_string).collect::<Vec<_>>().join(", ")
}

/// The policy's decision for `info` as cgroup content. A strict-mode
/// refusal cannot undo a container that already runs; the caller keeps what
/// it last enforced.
pub fn expected(policy: &Policy, info: &ContainerInfo<'_>) -> Result<Expected, Refusal> {
    let unlimited = |guarantee, why| Expected {
        guarantee,
        want: policy.devices.iter().map(|&device| DeviceLimits { device, limits: Limits::UNLIMITED }).collect(),
        why,
    };
    Ok(match policy.decide(info)? {
        Decision::Excluded(exclusion) => {
            Expected { guarantee: Guarantee::Excluded, want: Vec::new(), why: exclusion.to_string() }
        }
        Decision::Exempt { reason } => unlimited(Guarantee::Exempt, format!("exempt by {reason}")),
        Decision::Enforce(e) if e.limits.is_unlimited() => {
            unlimited(Guarantee::UnlimitedByPolicy, format!("every knob is unlimited ({})", e.explain()))
        }
        Decision::Enforce(e) => Expected { guarantee: Guarantee::Limited, want: e.device_limits(), why: e.explain() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iogate_core::exclusion::Exclusions;
    use iogate_core::{Config, Device, Knob};
    use std::collections::HashMap;

    fn info<'a>(ns: &'a str, ann: &'a HashMap<String, String>) -> ContainerInfo<'a> {
        ContainerInfo::new(ns, "web-0", "app", "img", ann)
    }

    #[test]
    fn each_decision_as_cgroup_content() {
        let config = Config {
            exempt_namespaces: vec!["trusted".into()],
            exclusions: Exclusions { namespaces: vec!["infra".into()], ..Exclusions::default() },
            ..Config::default()
        };
        let policy = Policy::new(config, vec![Device::new(7, 0), Device::new(7, 1)]);
        let none = HashMap::new();
        let e = expected(&policy, &info("shop", &none)).unwrap();
        assert_eq!(e.guarantee, Guarantee::Limited);
        assert_eq!(
            e.describe(),
            "7:0 riops=500 wiops=500 rbps=max wbps=max, 7:1 riops=500 wiops=500 rbps=max wbps=max"
        );
        let exempt: HashMap<String, String> = [("iogate.io/exempt".to_string(), "true".to_string())].into();
        let e = expected(&policy, &info("trusted", &exempt)).unwrap();
        assert_eq!(e.guarantee, Guarantee::Exempt);
        assert_eq!(
            e.describe(),
            "7:0 riops=max wiops=max rbps=max wbps=max, 7:1 riops=max wiops=max rbps=max wbps=max"
        );
        let e = expected(&policy, &info("infra", &none)).unwrap();
        assert_eq!((e.guarantee, e.want.len()), (Guarantee::Excluded, 0));
        let all_max: HashMap<String, String> = [
            ("iogate.io/read-iops".to_string(), "max".to_string()),
            ("iogate.io/write-iops".to_string(), "max".to_string()),
        ]
        .into();
        let mut config = Config::default();
        for knob in Knob::ALL {
            config.ceilings.default.set(knob, None);
        }
        let unlimited = Policy::new(config, vec![Device::new(7, 0)]);
        let e = expected(&unlimited, &info("shop", &all_max)).unwrap();
        assert_eq!(e.guarantee, Guarantee::UnlimitedByPolicy);
    }
}
