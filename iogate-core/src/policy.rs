//! The decision for one container: excluded, exempt, or these limits.
//!
//! Order matters and is part of the contract:
//! 1. pod sandboxes and the admin's exclusions ([`crate::exclusion`]) are
//!    left alone;
//! 2. annotations are read; a malformed one falls back to the default for
//!    that knob with a warning — or, in strict mode, refuses the container
//!    (a key naming a container the pod does not have so far is a warning
//!    either way: see [`ProblemKind::UnknownContainer`]);
//! 3. an exemption is honoured only in namespaces the admin allows;
//! 4. every knob is clamped to the namespace's ceiling, so a tenant can never
//!    lift its own limits; each clamp is explained.

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use crate::annotations::{self, Problem, ProblemKind};
use crate::config::Config;
use crate::device::{Device, DeviceLimits};
use crate::exclusion::{Exclusion, Subject};
use crate::limits::{Knob, Limits};

/// What the policy needs to know about a container.
#[derive(Debug, Clone, Copy)]
pub struct ContainerInfo<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub image: &'a str,
    /// The pod's infrastructure ("pause") container.
    pub is_sandbox: bool,
    /// The pod's annotations (for the OCI hook: the container's, which CRI-O
    /// and Podman fill with the pod's).
    pub annotations: &'a HashMap<String, String>,
    /// The pod's other containers that the caller knows of (the NRI plugin:
    /// those the runtime created so far), for checking per-container keys.
    pub siblings: &'a [String],
    /// What the caller could not read of the runtime's annotations (CRI-O's
    /// annotation JSON), judged like malformed iogate annotations.
    pub foreign_problems: &'a [Problem],
}

impl<'a> ContainerInfo<'a> {
    /// A container known by these names, with no siblings and nothing the
    /// caller failed to read.
    pub fn new(
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        image: &'a str,
        annotations: &'a HashMap<String, String>,
    ) -> Self {
        ContainerInfo {
            namespace,
            pod,
            container,
            image,
            is_sandbox: false,
            annotations,
            siblings: &[],
            foreign_problems: &[],
        }
    }

    fn subject(&self) -> Subject<'a> {
        Subject {
            namespace: self.namespace,
            pod: self.pod,
            container: self.container,
            image: self.image,
            is_sandbox: self.is_sandbox,
        }
    }
}

impl fmt::Display for ContainerInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {}/{} container {}", self.namespace, self.pod, self.container)
    }
}

/// Where a knob's value came from, for the log line that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    Annotation { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnobDecision {
    pub knob: Knob,
    pub value: Option<u64>,
    pub origin: Origin,
    /// What was asked for before the ceiling clamped it.
    pub clamped_from: Option<Option<u64>>,
}

impl fmt::Display for KnobDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
        write!(f, "{}={}", self.knob, show(self.value))?;
        match &self.origin {
            Origin::Default => f.write_str(" (default")?,
            Origin::Annotation { key } => write!(f, " ({key}")?,
        }
        if let Some(asked) = self.clamped_from {
            write!(f, ", asked {} but clamped to the namespace ceiling", show(asked))?;
        }
        f.write_str(")")
    }
}

/// Limits to enforce, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforce {
    pub limits: Limits,
    pub devices: Vec<Device>,
    pub knobs: Vec<KnobDecision>,
    /// Malformed annotations (defaults used instead), keys for containers
    /// the pod does not have, clamps, refused exemptions: each is a line for
    /// the operator's log.
    pub warnings: Vec<String>,
}

impl Enforce {
    /// One `io.max`-style entry per device.
    pub fn device_limits(&self) -> Vec<DeviceLimits> {
        self.devices.iter().map(|&device| DeviceLimits { device, limits: self.limits }).collect()
    }

    /// `read-iops=500 (default), write-iops=2000 (iogate.io/write-iops, …)`
    pub fn explain(&self) -> String {
        self.knobs.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Left alone: a sandbox, or one of the admin's exclusions.
    Excluded(Exclusion),
    /// The pod exempted itself, in a namespace allowed to.
    Exempt {
        reason: String,
    },
    Enforce(Enforce),
}

/// Strict mode's refusal; the message reaches the user through the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("iogate refuses {container}: {}", problems.join("; "))]
pub struct Refusal {
    pub container: String,
    pub problems: Vec<String>,
}

/// The admin's config plus the devices it resolved to at start-up.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: Config,
    pub devices: Vec<Device>,
}

impl Policy {
    pub fn new(config: Config, devices: Vec<Device>) -> Self {
        Policy { config, devices }
    }

    pub fn decide(&self, c: &ContainerInfo<'_>) -> Result<Decision, Refusal> {
        if let Some(exclusion) = self.config.exclusions.check(&c.subject()) {
            return Ok(Decision::Excluded(exclusion));
        }
        let overrides = annotations::parse(c.annotations, c.container, c.siblings);
        let problems: Vec<&Problem> = c.foreign_problems.iter().chain(&overrides.problems).collect();
        if self.config.strict {
            let refusing: Vec<String> =
                problems.iter().filter(|p| p.kind.refuses_when_strict()).map(|p| p.to_string()).collect();
            if !refusing.is_empty() {
                return Err(Refusal { container: c.to_string(), problems: refusing });
            }
        }
        let mut warnings: Vec<String> =
            problems.iter().map(|p| format!("{p}; {}", ProblemKind::fallback(p.kind))).collect();
        if let Some(ex) = overrides.exempt.as_ref().filter(|e| e.value) {
            if self.config.may_exempt(c.namespace) {
                return Ok(Decision::Exempt {
                    reason: format!("annotation {}=\"{}\"", ex.source.key, ex.source.value),
                });
            }
            warnings.push(format!(
                "annotation {}=\"{}\": namespace {} may not exempt its pods (not in exemptions.namespaces); limits applied",
                ex.source.key, ex.source.value, c.namespace
            ));
        }
        let ceiling = self.config.ceiling_for(c.namespace);
        let mut limits = Limits::UNLIMITED;
        let mut knobs = Vec::new();
        for knob in Knob::ALL {
            let (asked, origin) = match overrides.knob(knob) {
                Some(r) => (r.value, Origin::Annotation { key: r.source.key.clone() }),
                None => (self.config.defaults.get(knob), Origin::Default),
            };
            let value = clamp(asked, ceiling.get(knob));
            let clamped_from = (value != asked).then_some(asked);
            if clamped_from.is_some() {
                let show = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
                warnings.push(format!(
                    "{knob}: asked {} by {}, clamped to the ceiling {} of namespace {}",
                    show(asked),
                    match &origin {
                        Origin::Default => "default".to_string(),
                        Origin::Annotation { key } => key.clone(),
                    },
                    show(value),
                    c.namespace
                ));
            }
            limits.set(knob, value);
            knobs.push(KnobDecision { knob, value, origin, clamped_from });
        }
        Ok(Decision::Enforce(Enforce { limits, devices: self.devices.clone(), knobs, warnings }))
    }
}

/// `None` is unlimited, so it is above every ceiling.
fn clamp(asked: Option<u64>, ceiling: Option<u64>) -> Option<u64> {
    match (asked, ceiling) {
        (_, None) => asked,
        (None, Some(c)) => Some(c),
        (Some(a), Some(c)) => Some(a.min(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut Config)) -> Policy {
        let mut c = Config::default();
        f(&mut c);
        Policy::new(c, vec![Device::new(7, 0)])
    }

    fn decide(p: &Policy, ns: &str, ctr: &str, ann: &[(&str, &str)]) -> Result<Decision, Refusal> {
        let a: HashMap<String, String> = ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.decide(&ContainerInfo::new(ns, "web-0", ctr, "registry.local/app:1", &a))
    }

    fn enforced(d: Result<Decision, Refusal>) -> Enforce {
        match d {
            Ok(Decision::Enforce(e)) => e,
            other => panic!("expected limits, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_to_every_device() {
        let e = enforced(decide(&policy(|_| {}), "web", "app", &[]));
        assert_eq!(e.device_limits()[0].to_string(), "7:0 riops=500 wiops=500 rbps=max wbps=max");
        assert!(e.warnings.is_empty());
        assert_eq!(
            e.explain(),
            "read-iops=500 (default), write-iops=500 (default), read-bps=max (default), write-bps=max (default)"
        );
    }

    #[test]
    fn annotation_lowers_and_ceiling_clamps() {
        let p = policy(|c| {
            c.ceilings.default.set(Knob::ReadIops, Some(1000));
            c.ceilings.default.set(Knob::WriteBps, Some(50 << 20));
        });
        let e =
            enforced(decide(&p, "web", "app", &[("iogate.io/read-iops", "5000"), ("iogate.io/write-iops.app", "100")]));
        assert_eq!(e.limits.read_iops, Some(1000));
        assert_eq!(e.limits.write_iops, Some(100));
        // Unlimited by default but capped by the ceiling.
        assert_eq!(e.limits.write_bps, Some(50 << 20));
        assert!(
            e.warnings
                .iter()
                .any(|w| w
                    == "read-iops: asked 5000 by iogate.io/read-iops, clamped to the ceiling 1000 of namespace web"),
            "{:?}",
            e.warnings
        );
    }

    #[test]
    fn malformed_annotation_keeps_the_default_and_warns() {
        let e = enforced(decide(
            &policy(|_| {}),
            "web",
            "app",
            &[("iogate.io/read-iops", "fast"), ("iogate.io/write-iops", "100")],
        ));
        assert_eq!(e.limits.read_iops, Some(500), "the limit must never be dropped");
        assert_eq!(e.limits.write_iops, Some(100), "valid overrides still apply");
        assert_eq!(e.warnings.len(), 1);
        assert!(
            e.warnings[0].starts_with("annotation iogate.io/read-iops=\"fast\": expected a whole number"),
            "{:?}",
            e.warnings
        );
        assert!(e.warnings[0].ends_with("using the default for it"));
    }

    #[test]
    fn strict_mode_refuses_with_the_reason() {
        let p = policy(|c| c.strict = true);
        let r = decide(&p, "web", "app", &[("iogate.io/read-iops", "fast")]).unwrap_err();
        let msg = r.to_string();
        assert!(msg.starts_with("iogate refuses pod web/web-0 container app: annotation iogate.io/read-iops=\"fast\": expected a whole number"), "{msg}");
    }

    #[test]
    fn exemption_only_where_allowed() {
        let p = policy(|c| c.exempt_namespaces = vec!["monitoring".into()]);
        assert!(matches!(
            decide(&p, "monitoring", "app", &[("iogate.io/exempt", "true")]),
            Ok(Decision::Exempt { .. })
        ));
        let e = enforced(decide(&p, "web", "app", &[("iogate.io/exempt", "true")]));
        assert_eq!(e.limits.read_iops, Some(500));
        assert!(e.warnings[0].contains("namespace web may not exempt its pods"), "{:?}", e.warnings);
        // `false` is not an exemption and not a warning.
        assert!(enforced(decide(&p, "web", "app", &[("iogate.io/exempt", "false")])).warnings.is_empty());
    }

    #[test]
    fn exclusions() {
        let p = policy(|c| c.exclusions.namespaces = vec!["infra".into(), "kube-system".into()]);
        // Names a tenant chooses never exclude by default.
        assert!(matches!(decide(&p, "web", "istio-proxy", &[]), Ok(Decision::Enforce(_))));
        assert_eq!(decide(&p, "infra", "app", &[]).unwrap(), Decision::Excluded(Exclusion::Namespace("infra".into())));
        assert!(matches!(decide(&p, "kube-system", "coredns", &[]), Ok(Decision::Excluded(_))));
        let a = HashMap::new();
        let sandbox = ContainerInfo { is_sandbox: true, ..ContainerInfo::new("web", "p", "", "", &a) };
        assert_eq!(p.decide(&sandbox).unwrap(), Decision::Excluded(Exclusion::Sandbox));
    }

    /// The partial ceiling: only batch's read ceiling raised, so a
    /// write-iops annotation of max or 100k stays at the default 500.
    #[test]
    fn a_partial_ceiling_keeps_the_other_knobs_at_the_defaults() {
        let mut batch = crate::limits::PartialLimits::default();
        batch.set(Knob::ReadIops, Some(5000));
        let p = policy(|c| {
            c.ceilings.namespaces.insert("batch".into(), batch);
        });
        for asked in ["max", "100k"] {
            let e = enforced(decide(&p, "batch", "app", &[("iogate.io/write-iops", asked)]));
            assert_eq!(e.limits.write_iops, Some(500), "{asked}");
            assert!(
                e.warnings.iter().any(|w| w.starts_with(&format!(
                    "write-iops: asked {} by iogate.io/write-iops, clamped to the ceiling 500",
                    if asked == "max" { "max" } else { "100000" }
                ))),
                "{:?}",
                e.warnings
            );
        }
        let e = enforced(decide(&p, "batch", "app", &[("iogate.io/read-iops", "4k")]));
        assert_eq!(e.limits.read_iops, Some(4000), "the named knob is lifted");
    }

    #[test]
    fn typos_in_container_names_warn_even_in_strict_mode() {
        for strict in [false, true] {
            let p = policy(|c| c.strict = strict);
            let e = enforced(decide(&p, "web", "db", &[("iogate.io/write-iops.dbb", "100")]));
            assert_eq!(e.limits.write_iops, Some(500));
            assert_eq!(
                e.warnings,
                ["annotation iogate.io/write-iops.dbb=\"100\": names container \"dbb\", which is not among the pod's containers so far (db); it takes effect only if a container of that name is created later"]
            );
        }
        // A malformed container name is a refusal in strict mode.
        let p = policy(|c| c.strict = true);
        assert!(decide(&p, "web", "db", &[("iogate.io/write-iops.DB", "100")]).is_err());
    }

    #[test]
    fn foreign_json_problems_warn_or_refuse() {
        let a = HashMap::new();
        let problem = Problem {
            source: annotations::Source { key: "io.kubernetes.cri-o.Annotations".into(), value: "{".into() },
            reason: "expected a JSON object of strings".into(),
            kind: ProblemKind::ForeignJson,
        };
        let problems = [problem];
        let info = ContainerInfo { foreign_problems: &problems, ..ContainerInfo::new("web", "p", "app", "", &a) };
        let e = enforced(policy(|_| {}).decide(&info));
        assert_eq!(
            e.warnings,
            ["annotation io.kubernetes.cri-o.Annotations=\"{\": expected a JSON object of strings; the pod's annotations in it are not read"]
        );
        let r = policy(|c| c.strict = true).decide(&info).unwrap_err();
        assert_eq!(r.problems.len(), 1);
    }
}
