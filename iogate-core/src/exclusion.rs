//! Which containers are left without limits, and why.
//!
//! A tenant chooses its pod's name, its containers' names and its images, so
//! no exclusion may follow from a part of those: everything here matches
//! whole names the admin wrote down. Namespaces are the only default
//! (`kube-system`); container names and image repositories are opt-in lists.
//! The pod sandbox (the "pause" container) is always left alone: it runs no
//! workload.
//!
//! `iops-limit-service`'s rule (a keyword *contained in* the container name,
//! image, pod name or namespace) is kept only behind an explicit
//! compatibility switch, because under it a container named `xpsmdbx` or a
//! pod named `my-pause-app` escapes its limits.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::distribution::Reference;
use thiserror::Error;

/// An image repository as the registry names it, without tag or digest:
/// `registry.k8s.io/pause`, `docker.io/library/nginx` (what `nginx` means).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRepository(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageError {
    #[error("expected an image reference, found {text:?}: {reason}")]
    Malformed { text: String, reason: String },
    #[error("expected an image repository without tag or digest (e.g. registry.k8s.io/pause), found {0:?}")]
    Tagged(String),
}

impl ImageRepository {
    /// The repository of an image reference (`registry.k8s.io/pause:3.10`
    /// is `registry.k8s.io/pause`), normalized as the registry client does
    /// (`nginx` is `docker.io/library/nginx`).
    pub fn of_reference(reference: &str) -> Result<ImageRepository, ImageError> {
        let r = Reference::from_str(reference)
            .map_err(|e| ImageError::Malformed { text: reference.to_string(), reason: e.to_string() })?;
        Ok(ImageRepository(format!("{}/{}", r.registry(), r.repository())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A repository as the admin lists it: a reference with a tag or digest is
/// refused, since it would silently match every tag of the repository.
impl FromStr for ImageRepository {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let r =
            Reference::from_str(s).map_err(|e| ImageError::Malformed { text: s.to_string(), reason: e.to_string() })?;
        // The parser adds the implied `latest`; only a written tag counts.
        let tagged = r.tag().is_some_and(|t| s.ends_with(&format!(":{t}")));
        if r.digest().is_some() || tagged {
            return Err(ImageError::Tagged(s.to_string()));
        }
        Ok(ImageRepository(format!("{}/{}", r.registry(), r.repository())))
    }
}

impl fmt::Display for ImageRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The admin's exclusion lists, all matched whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusions {
    pub namespaces: Vec<String>,
    /// Container names (opt-in: empty unless the admin lists some).
    pub containers: Vec<String>,
    pub images: Vec<ImageRepository>,
    /// `iops-limit-service`'s substring keywords: non-empty only when the
    /// compatibility switch is on (`[compat] exclude-keywords`).
    pub keywords: Vec<String>,
}

pub const DEFAULT_EXCLUDE_NAMESPACES: &[&str] = &["kube-system"];

impl Default for Exclusions {
    fn default() -> Self {
        Exclusions {
            namespaces: DEFAULT_EXCLUDE_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            containers: Vec::new(),
            images: Vec::new(),
            keywords: Vec::new(),
        }
    }
}

/// Which rule left a container alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExclusionKind {
    Sandbox,
    Namespace,
    Container,
    Image,
    /// The compatibility rule.
    Keyword,
}

impl ExclusionKind {
    pub const ALL: [ExclusionKind; 5] = [
        ExclusionKind::Sandbox,
        ExclusionKind::Namespace,
        ExclusionKind::Container,
        ExclusionKind::Image,
        ExclusionKind::Keyword,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExclusionKind::Sandbox => "sandbox",
            ExclusionKind::Namespace => "namespace",
            ExclusionKind::Container => "container",
            ExclusionKind::Image => "image",
            ExclusionKind::Keyword => "keyword",
        }
    }
}

impl fmt::Display for ExclusionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One exclusion that applied, with what matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    Sandbox,
    Namespace(String),
    Container(String),
    Image { image: String, repository: ImageRepository },
    Keyword { field: &'static str, value: String, keyword: String },
}

impl Exclusion {
    pub fn kind(&self) -> ExclusionKind {
        match self {
            Exclusion::Sandbox => ExclusionKind::Sandbox,
            Exclusion::Namespace(_) => ExclusionKind::Namespace,
            Exclusion::Container(_) => ExclusionKind::Container,
            Exclusion::Image { .. } => ExclusionKind::Image,
            Exclusion::Keyword { .. } => ExclusionKind::Keyword,
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Sandbox => f.write_str("pod sandbox"),
            Exclusion::Namespace(ns) => write!(f, "namespace {ns} is in exclude.namespaces"),
            Exclusion::Container(c) => write!(f, "container name {c} is in exclude.containers"),
            Exclusion::Image { image, repository } => {
                write!(f, "image {image} is of repository {repository}, which is in exclude.images")
            }
            Exclusion::Keyword { field, value, keyword } => write!(
                f,
                "{field} {value:?} contains excluded keyword {keyword:?} (compatibility rule [compat] exclude-keywords)"
            ),
        }
    }
}

/// What the exclusion rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub image: &'a str,
    pub is_sandbox: bool,
}

impl Exclusions {
    /// The first rule that leaves `s` alone, in a fixed order: sandbox,
    /// namespace, container, image, then the compatibility keywords.
    pub fn check(&self, s: &Subject<'_>) -> Option<Exclusion> {
        if s.is_sandbox {
            return Some(Exclusion::Sandbox);
        }
        if self.namespaces.iter().any(|n| n == s.namespace) {
            return Some(Exclusion::Namespace(s.namespace.to_string()));
        }
        if self.containers.iter().any(|c| c == s.container) {
            return Some(Exclusion::Container(s.container.to_string()));
        }
        if !self.images.is_empty() {
            // An image the parser cannot read has no repository to match.
            if let Ok(repository) = ImageRepository::of_reference(s.image) {
                if self.images.contains(&repository) {
                    return Some(Exclusion::Image { image: s.image.to_string(), repository });
                }
            }
        }
        let fields =
            [("container name", s.container), ("image", s.image), ("pod name", s.pod), ("namespace", s.namespace)];
        self.keywords.iter().find_map(|kw| {
            fields.iter().find(|(_, v)| v.contains(kw.as_str())).map(|(field, v)| Exclusion::Keyword {
                field,
                value: v.to_string(),
                keyword: kw.clone(),
            })
        })
    }
}

/// How many containers each rule left alone since start-up; cheap enough
/// to bump on every admission, read by whoever exports it.
#[derive(Debug, Default)]
pub struct ExclusionCounter {
    counts: [AtomicU64; 5],
}

impl ExclusionCounter {
    pub fn record(&self, exclusion: &Exclusion) {
        self.counts[exclusion.kind() as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: ExclusionKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Every kind with its count, in [`ExclusionKind::ALL`] order.
    pub fn snapshot(&self) -> Vec<(ExclusionKind, u64)> {
        ExclusionKind::ALL.into_iter().map(|k| (k, self.get(k))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(namespace: &'a str, pod: &'a str, container: &'a str, image: &'a str) -> Subject<'a> {
        Subject { namespace, pod, container, image, is_sandbox: false }
    }

    #[test]
    fn repositories_are_normalized_and_must_be_untagged() {
        assert_eq!("registry.k8s.io/pause".parse::<ImageRepository>().unwrap().as_str(), "registry.k8s.io/pause");
        assert_eq!("nginx".parse::<ImageRepository>().unwrap().as_str(), "docker.io/library/nginx");
        assert_eq!("localhost:5000/app".parse::<ImageRepository>().unwrap().as_str(), "localhost:5000/app");
        assert_eq!(
            "registry.k8s.io/pause:3.10".parse::<ImageRepository>(),
            Err(ImageError::Tagged("registry.k8s.io/pause:3.10".into()))
        );
        assert!(matches!(
            format!("registry.k8s.io/pause@sha256:{}", "a".repeat(64)).parse::<ImageRepository>(),
            Err(ImageError::Tagged(_))
        ));
        assert!(matches!("Not An Image".parse::<ImageRepository>(), Err(ImageError::Malformed { .. })));
        let of = |r: &str| ImageRepository::of_reference(r).unwrap().as_str().to_string();
        assert_eq!(of("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause");
        assert_eq!(of("nginx:1.27"), "docker.io/library/nginx");
        assert_eq!(of("docker.io/library/nginx:latest"), "docker.io/library/nginx");
    }

    #[test]
    fn only_whole_names_match_by_default() {
        let x = Exclusions::default();
        for (pod, ctr, image) in [
            ("mesh", "istio-proxy", "docker.io/istio/proxyv2:1.22"),
            ("my-pause-app", "app", "registry.local/app:1"),
            ("db", "xpsmdbx", "registry.local/app:1"),
            ("gw", "apisix-but-not-really", "registry.local/apisix:3"),
        ] {
            assert_eq!(x.check(&subject("shop", pod, ctr, image)), None, "{pod}/{ctr}");
        }
        assert_eq!(
            x.check(&subject("kube-system", "dns", "coredns", "")),
            Some(Exclusion::Namespace("kube-system".into()))
        );
        assert_eq!(x.check(&subject("kube-system-not", "p", "c", "")), None);
        let sandbox = Subject { is_sandbox: true, ..subject("shop", "p", "", "") };
        assert_eq!(x.check(&sandbox), Some(Exclusion::Sandbox));
    }

    #[test]
    fn opt_in_lists_match_exactly() {
        let x = Exclusions {
            containers: vec!["istio-proxy".into()],
            images: vec!["registry.k8s.io/pause".parse().unwrap()],
            ..Exclusions::default()
        };
        let e = x.check(&subject("shop", "p", "istio-proxy", "")).unwrap();
        assert_eq!(e.to_string(), "container name istio-proxy is in exclude.containers");
        assert_eq!(x.check(&subject("shop", "p", "istio-proxy-2", "")), None);
        let e = x.check(&subject("shop", "p", "app", "registry.k8s.io/pause:3.10")).unwrap();
        assert_eq!(e.kind(), ExclusionKind::Image);
        assert_eq!(
            e.to_string(),
            "image registry.k8s.io/pause:3.10 is of repository registry.k8s.io/pause, which is in exclude.images"
        );
        assert_eq!(x.check(&subject("shop", "p", "app", "registry.k8s.io/pause-not:3.10")), None);
        assert_eq!(x.check(&subject("shop", "p", "app", "evil.io/registry.k8s.io/pause:1")), None);
    }

    #[test]
    fn the_compatibility_keywords_match_substrings() {
        let x = Exclusions { keywords: vec!["pause".into(), "psmdb".into()], ..Exclusions::default() };
        let e = x.check(&subject("shop", "my-pause-app", "app", "")).unwrap();
        assert_eq!(
            e.to_string(),
            "pod name \"my-pause-app\" contains excluded keyword \"pause\" (compatibility rule [compat] exclude-keywords)"
        );
        assert_eq!(x.check(&subject("shop", "p", "xpsmdbx", "")).unwrap().kind(), ExclusionKind::Keyword);
    }

    #[test]
    fn every_exclusion_is_counted_by_kind() {
        let counter = ExclusionCounter::default();
        counter.record(&Exclusion::Namespace("kube-system".into()));
        counter.record(&Exclusion::Namespace("kube-system".into()));
        counter.record(&Exclusion::Container("istio-proxy".into()));
        assert_eq!(counter.get(ExclusionKind::Namespace), 2);
        assert_eq!(
            counter.snapshot(),
            [
                (ExclusionKind::Sandbox, 0),
                (ExclusionKind::Namespace, 2),
                (ExclusionKind::Container, 1),
                (ExclusionKind::Image, 0),
                (ExclusionKind::Keyword, 0)
            ]
        );
    }
}
