//! What a pod asks for through its annotations.
//!
//! Pod-wide: `iogate.io/read-iops: "1000"`, `iogate.io/write-bps: "10Mi"`,
//! `iogate.io/exempt: "true"`. For one container, append `.<container-name>`:
//! `iogate.io/read-iops.db: "2k"`. The container form wins over the pod form.
//! Kubernetes container names are DNS labels and never contain a dot, so the
//! split is unambiguous.
//!
//! Every `iogate.io/` key is checked whichever container it names, including
//! misspelt ones: a typo must show up as a warning, not as a limit that
//! quietly never took effect. A per-container key is checked against the
//! containers of the pod the caller knows of; see [`parse`] for what that
//! can and cannot catch.

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

/// What is wrong with an annotation, which decides what happens to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Not in the grammar: an unknown key, a bad value, a bad container
    /// name. The knob keeps its default; strict mode refuses the container.
    Malformed,
    /// A per-container key naming a container the pod does not have so far.
    /// Always a warning, never a refusal: the runtime creates a pod's
    /// containers one at a time and never says which is the last, so the
    /// named container may still come (and refusing this one would stop
    /// the pod before it does).
    UnknownContainer,
    /// The runtime's own annotation JSON that iogate reads the pod's
    /// annotations from (CRI-O) does not parse. Strict mode refuses.
    ForeignJson,
}

impl ProblemKind {
    pub fn refuses_when_strict(self) -> bool {
        !matches!(self, ProblemKind::UnknownContainer)
    }

    /// What iogate does instead, when it is only a warning.
    pub fn fallback(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "using the default for it",
            ProblemKind::UnknownContainer => "it takes effect only if a container of that name is created later",
            ProblemKind::ForeignJson => "the pod's annotations in it are not read",
        }
    }
}

/// An annotation that could not be understood: pod, container and reason are
/// all in the message because operators grep logs for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: Source,
    pub reason: String,
    pub kind: ProblemKind,
}

impl Problem {
    fn malformed(source: Source, reason: impl Into<String>) -> Problem {
        Problem { source, reason: reason.into(), kind: ProblemKind::Malformed }
    }
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

/// A Kubernetes container name: a DNS-1123 label.
pub fn is_container_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    b.len() <= 63 && edge(b.first()) && edge(b.last()) && b.iter().all(inner)
}

/// What one annotation sets, once its value is read.
enum Setting {
    Knob(Knob, Option<u64>),
    Exempt(bool),
}

/// Reads one `iogate.io/<name>` value, whichever container it is for.
fn read_setting(name: &str, source: &Source) -> Result<Setting, Problem> {
    if name == EXEMPT {
        return parse_bool(&source.value).map(Setting::Exempt).map_err(|r| Problem::malformed(source.clone(), r));
    }
    let Some(knob) = Knob::from_name(name) else {
        return Err(Problem::malformed(
            source.clone(),
            format!(
                "unknown iogate annotation: expected one of {PREFIX}{{read-iops,write-iops,read-bps,write-bps,exempt}}[.<container>], found {}",
                source.key
            ),
        ));
    };
    quantity::parse(&source.value)
        .map(|q| Setting::Knob(knob, q.as_option()))
        .map_err(|e| Problem::malformed(source.clone(), e.to_string()))
}

/// Reads the iogate annotations that concern `container`, and checks every
/// other one. `siblings` are the pod's other containers the caller knows of
/// (the NRI plugin: those created so far; the OCI hook: none). A key for a
/// container that is neither `container` nor a sibling is reported as
/// [`ProblemKind::UnknownContainer`]; with an incomplete sibling list this
/// also reports keys for containers that are still to be created.
pub fn parse(annotations: &HashMap<String, String>, container: &str, siblings: &[String]) -> Overrides {
    // Sorted so warnings come out in a stable order.
    let mut keys: Vec<&String> = annotations.keys().filter(|k| k.starts_with(PREFIX)).collect();
    keys.sort();
    let mut out = Overrides::default();
    // Pod-wide keys first, so a container key read later replaces them.
    let (mut pod, mut ctr) = (Vec::new(), Vec::new());
    for key in keys {
        let source = Source { key: key.clone(), value: annotations[key].clone() };
        let (name, target) = match key[PREFIX.len()..].split_once('.') {
            None => (&key[PREFIX.len()..], None),
            Some((name, target)) => (name, Some(target)),
        };
        let setting = read_setting(name, &source);
        match target {
            None => pod.push((source, setting)),
            Some(t) if !is_container_name(t) => out.problems.push(Problem::malformed(
                source,
                format!(
                    "expected a container name after the dot (lowercase letters, digits and '-', at most 63), found {t:?}"
                ),
            )),
            Some(t) if t == container => ctr.push((source, setting)),
            Some(t) => {
                if let Err(p) = &setting {
                    out.problems.push(p.clone());
                }
                if !siblings.iter().any(|s| s == t) {
                    let known = std::iter::once(container).chain(siblings.iter().map(String::as_str));
                    let reason = format!(
                        "names container {t:?}, which is not among the pod's containers so far ({})",
                        known.collect::<Vec<_>>().join(", ")
                    );
                    out.problems.push(Problem { source, reason, kind: ProblemKind::UnknownContainer });
                }
            }
        }
    }
    for (source, setting) in pod.into_iter().chain(ctr) {
        match setting {
            Ok(Setting::Exempt(b)) => out.exempt = Some(Requested { value: b, source }),
            Ok(Setting::Knob(knob, value)) => {
                out.knobs.retain(|(k, _)| *k != knob);
                out.knobs.push((knob, Requested { value, source }));
            }
            Err(p) => out.problems.push(p),
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
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
        let pod = names(&["db", "web", "cache"]);
        let o = parse(&a, "db", &pod);
        assert_eq!(o.knob(Knob::ReadIops).unwrap().value, Some(2000));
        assert_eq!(o.knob(Knob::ReadIops).unwrap().source.key, "iogate.io/read-iops.db");
        assert_eq!(o.knob(Knob::WriteBps).unwrap().value, Some(10 << 20));
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        assert_eq!(parse(&a, "web", &pod).knob(Knob::ReadIops).unwrap().value, Some(7));
        assert_eq!(parse(&a, "cache", &pod).knob(Knob::ReadIops).unwrap().value, Some(1000));
    }

    #[test]
    fn malformed_and_unknown_keys_are_problems() {
        let a = ann(&[("iogate.io/read-iops", "ten"), ("iogate.io/read-ios", "5"), ("iogate.io/exempt", "maybe")]);
        let o = parse(&a, "app", &[]);
        assert!(o.knobs.is_empty() && o.exempt.is_none());
        let msgs: Vec<String> = o.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("annotation iogate.io/exempt=\"maybe\": expected true or false"), "{msgs:?}");
        assert!(msgs[1].starts_with("annotation iogate.io/read-iops=\"ten\": expected a whole number"), "{msgs:?}");
        assert!(msgs[2].starts_with("annotation iogate.io/read-ios=\"5\": unknown iogate annotation"), "{msgs:?}");
        assert!(o.problems.iter().all(|p| p.kind == ProblemKind::Malformed));
    }

    #[test]
    fn values_have_no_spaces_around_them() {
        let o = parse(&ann(&[("iogate.io/write-iops", " 100"), ("iogate.io/exempt", "true ")]), "app", &[]);
        assert!(o.knobs.is_empty() && o.exempt.is_none());
        assert_eq!(o.problems.len(), 2, "{:?}", o.problems);
        assert!(o.problems.iter().all(|p| p.kind == ProblemKind::Malformed));
    }

    /// Keys for other containers are checked too: a typo in the name, a bad
    /// value, or a container the pod does not have.
    #[test]
    fn every_key_is_checked_whichever_container_it_names() {
        let a = ann(&[("iogate.io/write-iops.dbb", "100")]);
        let o = parse(&a, "db", &[]);
        assert!(o.knobs.is_empty());
        assert_eq!(o.problems.len(), 1);
        assert_eq!(o.problems[0].kind, ProblemKind::UnknownContainer);
        assert_eq!(
            o.problems[0].to_string(),
            "annotation iogate.io/write-iops.dbb=\"100\": names container \"dbb\", which is not among the pod's containers so far (db)"
        );
        assert!(!o.problems[0].kind.refuses_when_strict());

        // A sibling the caller knows of is fine, but its value still counts.
        let a = ann(&[("iogate.io/write-iops.web", "fast"), ("iogate.io/read-iops.web", "5")]);
        let o = parse(&a, "db", &names(&["web"]));
        assert_eq!(o.problems.len(), 1, "{:?}", o.problems);
        assert!(o.problems[0]
            .to_string()
            .starts_with("annotation iogate.io/write-iops.web=\"fast\": expected a whole number"));
        assert!(o.knobs.is_empty(), "another container's keys never apply here");

        for bad in [
            "iogate.io/write-iops.DB",
            "iogate.io/write-iops.db.x",
            "iogate.io/write-iops.",
            "iogate.io/write-iops.-db",
        ] {
            let o = parse(&ann(&[(bad, "100")]), "db", &[]);
            assert_eq!(o.problems.len(), 1, "{bad}");
            assert_eq!(o.problems[0].kind, ProblemKind::Malformed, "{bad}");
            assert!(o.problems[0].reason.starts_with("expected a container name after the dot"), "{bad}");
        }
    }

    #[test]
    fn container_names_are_dns_labels() {
        for good in ["db", "istio-proxy", "a", "x1", &"a".repeat(63)] {
            assert!(is_container_name(good), "{good}");
        }
        for bad in ["", "Db", "db_1", "-db", "db-", "d.b", &"a".repeat(64), "dé"] {
            assert!(!is_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn exemption_and_max() {
        let o = parse(&ann(&[("iogate.io/exempt.app", "true"), ("iogate.io/write-iops", "max")]), "app", &[]);
        assert!(o.exempt.as_ref().unwrap().value);
        assert_eq!(o.knob(Knob::WriteIops).unwrap().value, None);
    }
}
