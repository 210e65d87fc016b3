//! What a pod asks for through its annotations.
//!
//! Pod-wide: `iogate.io/read-iops: "1000"`, `iogate.io/write-bps: "10Mi"`,
//! `iogate.io/exempt: "true"`. For one container, append `.<container-name>`:
//! `iogate.io/read-iops.db: "2k"`. The container form wins over the pod form.
//! Kubernetes container names are DNS labels and never contain a dot, so the
//! split is unambiguous.
//!
//! Every `iogate.io/` key is checked, including misspelt ones: a typo must
//! show up as a warning, not as a limit that quietly never took effect.

use std::collections::HashMap;
use std::fmt;

use crate::config::parse_bool;
use crate::limits::Knob;
use crate::quantity;

pub const PREFIX: &str = "iogate.io/";
const EXEMPT: &str = "exempt";

/// Which annotation set a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub value: String,
}

/// A value one annotation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested<T> {
    pub value: T,
    pub source: Source,
}

/// An annotation that could not be understood: pod, container and reason are
/// all in the message because operators grep logs for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: Source,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}={:?}: {}", self.source.key, self.source.value, self.reason)
    }
}

/// What the annotations ask for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `None` inside: the annotation said `max`.
    pub knobs: Vec<(Knob, Requested<Option<u64>>)>,
    pub exempt: Option<Requested<bool>>,
    pub problems: Vec<Problem>,
}

impl Overrides {
    pub fn knob(&self, knob: Knob) -> Option<&Requested<Option<u64>>> {
        self.knobs.iter().find(|(k, _)| *k == knob).map(|(_, r)| r)
    }
}

/// Reads the iogate annotations that concern `container`.
pub fn parse(annotations: &HashMap<String, String>, container: &str) -> Overrides {
    // Sorted so warnings come out in a stable order.
    let mut keys: Vec<&String> = annotations.keys().filter(|k| k.starts_with(PREFIX)).collect();
    keys.sort();
    let mut out = Overrides::default();
    // Pod-wide keys first, so a container key read later replaces them.
    let (mut pod, mut ctr) = (Vec::new(), Vec::new());
    for key in keys {
        let name = &key[PREFIX.len()..];
        match name.split_once('.') {
            None => pod.push((key, name)),
            Some((base, c)) if c == container => ctr.push((key, base)),
            Some(_) => {} // another container's
        }
    }
    for (key, name) in pod.into_iter().chain(ctr) {
        let value = &annotations[key];
        let source = Source { key: key.clone(), value: value.clone() };
        if name == EXEMPT {
            match parse_bool(value) {
                Ok(b) => out.exempt = Some(Requested { value: b, source }),
                Err(reason) => out.problems.push(Problem { source, reason }),
            }
        } else if let Some(knob) = Knob::from_name(name) {
            match quantity::parse(value) {
                Ok(q) => {
                    out.knobs.retain(|(k, _)| *k != knob);
                    out.knobs.push((knob, Requested { value: q.as_option(), source }));
                }
                Err(e) => out.problems.push(Problem { source, reason: e.to_string() }),
            }
        } else {
            let reason = format!(
                "unknown iogate annotation: expected one of {PREFIX}{{read-iops,write-iops,read-bps,write-bps,exempt}}[.<container>], found {key}"
            );
            out.problems.push(Problem { source, reason });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn container_form_wins_over_pod_form() {
        let a = ann(&[
            ("iogate.io/read-iops", "1000"),
            ("iogate.io/read-iops.db", "2k"),
            ("iogate.io/write-bps", "10Mi"),
            ("iogate.io/read-iops.web", "7"),
            ("other.io/read-iops", "x"),
        ]);
        let o = parse(&a, "db");
        assert_eq!(o.knob(Knob::ReadIops).unwrap().value, Some(2000));
        assert_eq!(o.knob(Knob::ReadIops).unwrap().source.key, "iogate.io/read-iops.db");
        assert_eq!(o.knob(Knob::WriteBps).unwrap().value, Some(10 << 20));
        assert!(o.problems.is_empty());
        assert_eq!(parse(&a, "web").knob(Knob::ReadIops).unwrap().value, Some(7));
        assert_eq!(parse(&a, "cache").knob(Knob::ReadIops).unwrap().value, Some(1000));
    }

    #[test]
    fn malformed_and_unknown_keys_are_problems() {
        let a = ann(&[("iogate.io/read-iops", "ten"), ("iogate.io/read-ios", "5"), ("iogate.io/exempt", "maybe")]);
        let o = parse(&a, "app");
        assert!(o.knobs.is_empty() && o.exempt.is_none());
        let msgs: Vec<String> = o.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("annotation iogate.io/exempt=\"maybe\": expected true or false"), "{msgs:?}");
        assert!(msgs[1].starts_with("annotation iogate.io/read-iops=\"ten\": expected a whole number"), "{msgs:?}");
        assert!(msgs[2].starts_with("annotation iogate.io/read-ios=\"5\": unknown iogate annotation"), "{msgs:?}");
    }

    #[test]
    fn exemption_and_max() {
        let o = parse(&ann(&[("iogate.io/exempt.app", "true"), ("iogate.io/write-iops", "max")]), "app");
        assert!(o.exempt.as_ref().unwrap().value);
        assert_eq!(o.knob(Knob::WriteIops).unwrap().value, None);
    }
}
