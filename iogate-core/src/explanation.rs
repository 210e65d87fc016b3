//! A decision as a document: what `iogate-nri-plugin explain` prints, so an
//! admin or a tenant can see what the policy does to a container before it
//! runs, with the source of every knob.

use serde::Serialize;

use crate::limits::{Knob, Limits};
use crate::policy::{Decision, Enforce, KnobDecision, Origin, Refusal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Limit,
    Exclude,
    Exempt,
    Refuse,
}

/// One device's limits; `None` (JSON `null`) is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceEntry {
    pub device: String,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KnobSource {
    /// The admin's default, within the ceiling.
    Default,
    /// An `iogate.io/` annotation, within the ceiling.
    Annotation,
    /// What was asked (default or annotation) was above the namespace's
    /// ceiling; the ceiling is what applies.
    Ceiling,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KnobEntry {
    pub value: Option<u64>,
    pub source: KnobSource,
    /// The annotation that asked, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
    /// What was asked before the ceiling clamped it (`null`: unlimited);
    /// absent when nothing was clamped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asked: Option<Option<u64>>,
}

/// Every knob's value and source; all absent unless the action is `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Knobs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<KnobEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<KnobEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<KnobEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<KnobEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub action: Action,
    pub reason: String,
    pub devices: Vec<DeviceEntry>,
    pub knobs: Knobs,
    pub warnings: Vec<String>,
}

impl Explanation {
    pub fn of(decided: &Result<Decision, Refusal>) -> Explanation {
        let plain = |action, reason: String| Explanation {
            action,
            reason,
            devices: Vec::new(),
            knobs: Knobs::default(),
            warnings: Vec::new(),
        };
        match decided {
            Err(refusal) => plain(Action::Refuse, refusal.to_string()),
            Ok(Decision::Excluded(exclusion)) => plain(Action::Exclude, exclusion.to_string()),
            Ok(Decision::Exempt { reason }) => plain(Action::Exempt, reason.clone()),
            Ok(Decision::Enforce(e)) => limit(e),
        }
    }
}

fn limit(e: &Enforce) -> Explanation {
    let devices = e.device_limits().iter().map(|d| device_entry(&d.device.to_string(), &d.limits)).collect();
    let mut knobs = Knobs::default();
    for k in &e.knobs {
        let entry = Some(knob_entry(k));
        match k.knob {
            Knob::ReadIops => knobs.read_iops = entry,
            Knob::WriteIops => knobs.write_iops = entry,
            Knob::ReadBps => knobs.read_bps = entry,
            Knob::WriteBps => knobs.write_bps = entry,
        }
    }
    Explanation { action: Action::Limit, reason: e.explain(), devices, knobs, warnings: e.warnings.clone() }
}

fn device_entry(device: &str, l: &Limits) -> DeviceEntry {
    DeviceEntry {
        device: device.to_string(),
        read_iops: l.read_iops,
        write_iops: l.write_iops,
        read_bps: l.read_bps,
        write_bps: l.write_bps,
    }
}

fn knob_entry(k: &KnobDecision) -> KnobEntry {
    let annotation = match &k.origin {
        Origin::Default => None,
        Origin::Annotation { key } => Some(key.clone()),
    };
    let source = match (&k.clamped_from, &k.origin) {
        (Some(_), _) => KnobSource::Ceiling,
        (None, Origin::Default) => KnobSource::Default,
        (None, Origin::Annotation { .. }) => KnobSource::Annotation,
    };
    KnobEntry { value: k.value, source, annotation, asked: k.clamped_from }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::policy::{ContainerInfo, Policy};
    use crate::{Config, Device};

    fn explain(ann: &[(&str, &str)], f: impl FnOnce(&mut Config)) -> Explanation {
        let mut c = Config::default();
        f(&mut c);
        let p = Policy::new(c, vec![Device::new(7, 0)]);
        let a: HashMap<String, String> = ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Explanation::of(&p.decide(&ContainerInfo::new("shop", "web-0", "app", "", &a)))
    }

    #[test]
    fn limits_with_every_knobs_source() {
        let mut x = explain(&[("iogate.io/write-iops", "100"), ("iogate.io/read-iops", "9000")], |_| {});
        assert_eq!(x.action, Action::Limit);
        assert_eq!(
            x.devices,
            [DeviceEntry {
                device: "7:0".into(),
                read_iops: Some(500),
                write_iops: Some(100),
                read_bps: None,
                write_bps: None
            }]
        );
        let read = x.knobs.read_iops.take().unwrap();
        assert_eq!(read.source, KnobSource::Ceiling);
        assert_eq!(read.asked, Some(Some(9000)));
        let json = serde_json::to_value(&x).unwrap();
        assert_eq!(
            json["knobs"]["write_iops"],
            serde_json::json!({"value": 100, "source": "annotation", "annotation": "iogate.io/write-iops"})
        );
        assert_eq!(json["knobs"]["read_bps"], serde_json::json!({"value": null, "source": "default"}));
        assert_eq!(json["devices"][0]["read_bps"], serde_json::Value::Null);
        assert_eq!(x.warnings.len(), 1);
    }

    #[test]
    fn exclusions_exemptions_and_refusals() {
        let x = explain(&[], |c| c.exclusions.containers = vec!["app".into()]);
        assert_eq!((x.action, x.reason.as_str()), (Action::Exclude, "container name app is in exclude.containers"));
        assert!(x.devices.is_empty());
        let x = explain(&[("iogate.io/exempt", "true")], |c| c.exempt_namespaces = vec!["shop".into()]);
        assert_eq!((x.action, x.reason.as_str()), (Action::Exempt, "annotation iogate.io/exempt=\"true\""));
        let x = explain(&[("iogate.io/read-iops", "fast")], |c| c.strict = true);
        assert_eq!(x.action, Action::Refuse);
        assert!(x
            .reason
            .starts_with("iogate refuses pod shop/web-0 container app: annotation iogate.io/read-iops=\"fast\""));
        let json = serde_json::to_string(&x).unwrap();
        assert!(json.starts_with(r#"{"action":"refuse","reason":"#), "{json}");
    }
}
