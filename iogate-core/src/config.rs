//! The admin's policy: defaults, devices, exclusions, ceilings, exemptions.
//!
//! Sources, later wins: built-in defaults, the TOML file, the environment.
//! The environment keeps the names operators of `iops-limit-service` already
//! set in their manifests (`CONTAINER_IOPS_LIMIT`, `DATA_MOUNT`,
//! `CGROUP_VERSION`), with the same meaning; everything else is `IOGATE_*`.
//! `EXCLUDE_KEYWORDS` keeps its meaning too, but only with the compatibility
//! switch on: without it a keyword list is a start-up error that says what
//! to write instead, never a rule that silently changed. A value that cannot
//! be parsed is an error at start-up, never a silently ignored setting.
//!
//! The NRI plugin, the OCI hook and `explain` all find the file with
//! [`discover`] and read the environment here, so they cannot disagree.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::cgroup::CgroupMode;
use crate::exclusion::{Exclusions, ImageRepository};
use crate::limits::{Knob, Limits, PartialLimits};
use crate::quantity;

pub const DEFAULT_IOPS: u64 = 500;
pub const DEFAULT_DATA_MOUNT: &str = "/data";
/// `iops-limit-service`'s keywords, in force only with the compatibility
/// switch and no list of its own.
pub const DEFAULT_EXCLUDE_KEYWORDS: &str = "pause,istio-proxy,psmdb,kube-system,koordinator,apisix";
pub const DEFAULT_HOOK_PATH: &str = "/opt/iogate/bin/iogate-oci-hook";
/// Where every entry point looks for the policy file when neither
/// `--config` nor `$IOGATE_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/iogate/config.toml";

/// The policy file to read: `explicit` (`--config`), else `$IOGATE_CONFIG`,
/// else [`DEFAULT_CONFIG_PATH`] if it exists, else none (built-in defaults
/// and the environment).
pub fn discover(explicit: Option<PathBuf>, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    explicit
        .or_else(|| env("IOGATE_CONFIG").map(PathBuf::from))
        .or_else(|| Path::new(DEFAULT_CONFIG_PATH).exists().then(|| DEFAULT_CONFIG_PATH.into()))
}

/// Strict mode as the environment sets it (`IOGATE_STRICT`), the same
/// grammar everywhere: `None` when unset.
pub fn strict_from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<bool>, ConfigError> {
    env("IOGATE_STRICT")
        .map(|v| parse_bool(&v).map_err(|reason| ConfigError::Env { name: "IOGATE_STRICT", value: v.clone(), reason }))
        .transpose()
}

/// The ceilings: `[ceilings] default` over the defaults, then a
/// namespace's own table over that. Each table lifts only the knobs it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ceilings {
    pub default: PartialLimits,
    pub namespaces: BTreeMap<String, PartialLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Limits every container gets unless an annotation says otherwise.
    pub defaults: Limits,
    /// Paths whose filesystems' disks are throttled (`DATA_MOUNT`).
    pub mounts: Vec<PathBuf>,
    /// Devices named directly, `MAJ:MIN` or `/dev/...`.
    pub devices: Vec<String>,
    pub exclusions: Exclusions,
    /// The compatibility switch that brings back `iops-limit-service`'s
    /// substring keywords (`[compat] exclude-keywords`).
    pub compat_exclude_keywords: bool,
    pub ceilings: Ceilings,
    /// Namespaces whose pods may exempt themselves by annotation (`*`: all).
    pub exempt_namespaces: Vec<String>,
    /// Refuse a container whose iogate annotations are malformed, instead of
    /// applying the defaults with a warning.
    pub strict: bool,
    pub cgroup_mode: CgroupMode,
    /// The OCI hook binary the NRI plugin injects where it cannot express
    /// limits in the spec (cgroup v1, several devices on v2).
    pub hook_path: PathBuf,
    /// The file the injected hook appends its line to (a host path); none:
    /// the hook reports on stderr only, which runc passes on when it fails.
    pub hook_log: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            defaults: Limits { read_iops: Some(DEFAULT_IOPS), write_iops: Some(DEFAULT_IOPS), ..Limits::UNLIMITED },
            mounts: vec![PathBuf::from(DEFAULT_DATA_MOUNT)],
            devices: Vec::new(),
            exclusions: Exclusions::default(),
            compat_exclude_keywords: false,
            // Without a ceiling of their own, tenants can only lower limits.
            ceilings: Ceilings::default(),
            exempt_namespaces: Vec::new(),
            strict: false,
            cgroup_mode: CgroupMode::Auto,
            hook_path: PathBuf::from(DEFAULT_HOOK_PATH),
            hook_log: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?}: {reason}")]
    Env { name: &'static str, value: String, reason: String },
    #[error("{0}")]
    KeywordsWithoutCompat(String),
}

/// A limit as written in TOML: a number, or a quantity string (`"10Mi"`, `"max"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawQuantity {
    Int(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    read_iops: Option<RawQuantity>,
    write_iops: Option<RawQuantity>,
    read_bps: Option<RawQuantity>,
    write_bps: Option<RawQuantity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    strict: Option<bool>,
    cgroup_version: Option<String>,
    hook_path: Option<PathBuf>,
    hook_log: Option<PathBuf>,
    defaults: Option<RawLimits>,
    devices: Option<RawDevices>,
    exclude: Option<RawExclude>,
    ceilings: Option<RawCeilings>,
    exemptions: Option<RawExemptions>,
    compat: Option<RawCompat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    mounts: Option<Vec<PathBuf>>,
    devices: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclude {
    namespaces: Option<Vec<String>>,
    containers: Option<Vec<String>>,
    images: Option<Vec<String>>,
    keywords: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCeilings {
    default: Option<RawLimits>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExemptions {
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCompat {
    exclude_keywords: Option<bool>,
}

impl RawQuantity {
    fn parse(&self) -> Result<Option<u64>, quantity::QuantityError> {
        let q = match self {
            RawQuantity::Int(i) => quantity::parse(&i.to_string()),
            RawQuantity::Text(t) => quantity::parse(t),
        };
        q.map(quantity::Quantity::as_option)
    }
}

impl RawLimits {
    /// The knobs this table names; `at` names the table for errors.
    fn partial(&self, at: &str) -> Result<PartialLimits, String> {
        let fields = [
            (Knob::ReadIops, &self.read_iops),
            (Knob::WriteIops, &self.write_iops),
            (Knob::ReadBps, &self.read_bps),
            (Knob::WriteBps, &self.write_bps),
        ];
        let mut out = PartialLimits::default();
        for (knob, raw) in fields {
            if let Some(raw) = raw {
                out.set(knob, raw.parse().map_err(|e| format!("{at}.{knob}: {e}"))?);
            }
        }
        Ok(out)
    }
}

/// Where the keyword list came from, for the error that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeywordOrigin {
    File,
    Env,
}

impl Config {
    /// Built-in defaults, then `file` if given, then the environment
    /// (`env` is `std::env::var` in production, a map in tests).
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                Config::from_toml(&text, path, env)
            }
            None => Config::from_layers(None, env),
        }
    }

    /// Built-in defaults, then TOML `text` (which came from `origin`, named
    /// in errors), then the environment. The NRI plugin uses this for the
    /// config containerd hands a pre-registered plugin in `Configure`.
    pub fn from_toml(text: &str, origin: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_layers(Some((text, origin)), env)
    }

    fn from_layers(file: Option<(&str, &Path)>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut keywords = None;
        if let Some((text, origin)) = file {
            config
                .merge_toml(text, &mut keywords)
                .map_err(|message| ConfigError::Parse { path: origin.into(), message })?;
        }
        config.merge_env(&env, &mut keywords)?;
        config.settle_keywords(keywords)?;
        Ok(config)
    }

    /// The ceiling for a namespace: its own table over the default ceiling
    /// over the defaults.
    pub fn ceiling_for(&self, namespace: &str) -> Limits {
        let default = self.ceilings.default.over(self.defaults);
        match self.ceilings.namespaces.get(namespace) {
            Some(own) => own.over(default),
            None => default,
        }
    }

    /// Every namespace with a ceiling table of its own and its effective
    /// ceiling, after `None` (every other namespace): what start-up logs.
    pub fn effective_ceilings(&self) -> Vec<(Option<&str>, Limits)> {
        let mut out = vec![(None, self.ceiling_for(""))];
        out.extend(self.ceilings.namespaces.keys().map(|ns| (Some(ns.as_str()), self.ceiling_for(ns))));
        out
    }

    pub fn may_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.iter().any(|n| n == "*" || n == namespace)
    }

    fn merge_toml(&mut self, text: &str, keywords: &mut Option<(KeywordOrigin, Vec<String>)>) -> Result<(), String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(s) = raw.strict {
            self.strict = s;
        }
        if let Some(v) = raw.cgroup_version {
            self.cgroup_mode = v.parse().map_err(|e| format!("cgroup-version: {e}"))?;
        }
        if let Some(p) = raw.hook_path {
            self.hook_path = p;
        }
        if let Some(p) = raw.hook_log {
            self.hook_log = Some(p);
        }
        if let Some(d) = raw.defaults {
            self.defaults = d.partial("defaults")?.over(self.defaults);
        }
        if let Some(d) = raw.devices {
            if let Some(m) = d.mounts {
                self.mounts = m;
            }
            if let Some(d) = d.devices {
                self.devices = d;
            }
        }
        if let Some(e) = raw.exclude {
            if let Some(n) = e.namespaces {
                self.exclusions.namespaces = n;
            }
            if let Some(c) = e.containers {
                self.exclusions.containers = c;
            }
            if let Some(i) = e.images {
                self.exclusions.images = parse_images(&i).map_err(|e| format!("exclude.images: {e}"))?;
            }
            if let Some(k) = e.keywords {
                *keywords = Some((KeywordOrigin::File, k));
            }
        }
        if let Some(c) = raw.ceilings {
            if let Some(d) = c.default {
                self.ceilings.default = d.partial("ceilings.default")?;
            }
            for (ns, l) in c.namespaces {
                let table = l.partial(&format!("ceilings.namespaces.{ns}"))?;
                self.ceilings.namespaces.insert(ns, table);
            }
        }
        if let Some(e) = raw.exemptions.and_then(|e| e.namespaces) {
            self.exempt_namespaces = e;
        }
        if let Some(on) = raw.compat.and_then(|c| c.exclude_keywords) {
            self.compat_exclude_keywords = on;
        }
        Ok(())
    }

    fn merge_env(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
        keywords: &mut Option<(KeywordOrigin, Vec<String>)>,
    ) -> Result<(), ConfigError> {
        let bad = |name: &'static str, value: &str, reason: String| ConfigError::Env {
            name,
            value: value.to_string(),
            reason,
        };
        let limit = |name: &'static str| -> Result<Option<Option<u64>>, ConfigError> {
            env(name)
                .map(|v| quantity::parse(&v).map(|q| q.as_option()).map_err(|e| bad(name, &v, e.to_string())))
                .transpose()
        };
        if let Some(v) = limit("CONTAINER_IOPS_LIMIT")? {
            self.defaults.read_iops = v;
            self.defaults.write_iops = v;
        }
        for (name, knob) in [
            ("IOGATE_READ_IOPS", Knob::ReadIops),
            ("IOGATE_WRITE_IOPS", Knob::WriteIops),
            ("IOGATE_READ_BPS", Knob::ReadBps),
            ("IOGATE_WRITE_BPS", Knob::WriteBps),
        ] {
            if let Some(v) = limit(name)? {
                self.defaults.set(knob, v);
            }
        }
        if let Some(v) = env("DATA_MOUNT") {
            self.mounts = split_list(&v).into_iter().map(PathBuf::from).collect();
        }
        if let Some(v) = env("IOGATE_DEVICES") {
            self.devices = split_list(&v);
        }
        if let Some(v) = env("IOGATE_EXCLUDE_NAMESPACES") {
            self.exclusions.namespaces = split_list(&v);
        }
        if let Some(v) = env("IOGATE_EXCLUDE_CONTAINERS") {
            self.exclusions.containers = split_list(&v);
        }
        if let Some(v) = env("IOGATE_EXCLUDE_IMAGES") {
            self.exclusions.images =
                parse_images(&split_list(&v)).map_err(|e| bad("IOGATE_EXCLUDE_IMAGES", &v, e.to_string()))?;
        }
        if let Some(v) = env("EXCLUDE_KEYWORDS") {
            *keywords = Some((KeywordOrigin::Env, split_list(&v)));
        }
        if let Some(v) = env("IOGATE_COMPAT_EXCLUDE_KEYWORDS") {
            self.compat_exclude_keywords = parse_bool(&v).map_err(|r| bad("IOGATE_COMPAT_EXCLUDE_KEYWORDS", &v, r))?;
        }
        if let Some(v) = env("IOGATE_EXEMPT_NAMESPACES") {
            self.exempt_namespaces = split_list(&v);
        }
        if let Some(v) = env("CGROUP_VERSION") {
            self.cgroup_mode = v.parse().map_err(|reason| bad("CGROUP_VERSION", &v, reason))?;
        }
        if let Some(strict) = strict_from_env(env)? {
            self.strict = strict;
        }
        if let Some(v) = env("IOGATE_HOOK_PATH") {
            self.hook_path = PathBuf::from(v);
        }
        if let Some(v) = env("IOGATE_HOOK_LOG") {
            self.hook_log = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        Ok(())
    }

    /// Keywords are honoured only with the switch on (its default list when
    /// none is given); a list without the switch is an error, because
    /// reading it as exact names would silently change what it excludes.
    fn settle_keywords(&mut self, keywords: Option<(KeywordOrigin, Vec<String>)>) -> Result<(), ConfigError> {
        match (self.compat_exclude_keywords, keywords) {
            (true, Some((_, list))) => self.exclusions.keywords = list,
            (true, None) => self.exclusions.keywords = split_list(DEFAULT_EXCLUDE_KEYWORDS),
            (false, None) => self.exclusions.keywords = Vec::new(),
            (false, Some((origin, list))) => {
                let (what, switch) = match origin {
                    KeywordOrigin::File => ("exclude.keywords in the config file", "[compat] exclude-keywords = true"),
                    KeywordOrigin::Env => ("EXCLUDE_KEYWORDS", "IOGATE_COMPAT_EXCLUDE_KEYWORDS=true"),
                };
                return Err(ConfigError::KeywordsWithoutCompat(format!(
                    "{what} ({}) is iops-limit-service's substring rule, which lets a tenant escape its limits by naming \
                     (a container \"xpsmdbx\" contains \"psmdb\"); expected exact names instead: exclude.namespaces, \
                     exclude.containers, exclude.images (IOGATE_EXCLUDE_NAMESPACES, IOGATE_EXCLUDE_CONTAINERS, \
                     IOGATE_EXCLUDE_IMAGES), or {switch} to keep the substring rule (unsafe where tenants share a node)",
                    list.join(",")
                )));
            }
        }
        Ok(())
    }
}

fn parse_images(list: &[String]) -> Result<Vec<ImageRepository>, crate::exclusion::ImageError> {
    list.iter().map(|i| i.parse()).collect()
}

/// The one boolean grammar of every setting and annotation: `true`/`false`
/// (or `1`/`0`, `yes`/`no`, `on`/`off`) in any case, with nothing around it.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, found {v:?}")),
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn from_toml(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("iogate.toml"), env_of(env))
    }

    fn limits(read_iops: Option<u64>, write_iops: Option<u64>) -> Limits {
        Limits { read_iops, write_iops, ..Limits::UNLIMITED }
    }

    #[test]
    fn defaults_match_iops_limit_service_but_exclude_by_exact_namespace() {
        let c = Config::load(None, env_of(&[])).unwrap();
        assert_eq!(c.defaults.read_iops, Some(500));
        assert_eq!(c.defaults.write_iops, Some(500));
        assert_eq!(c.defaults.read_bps, None);
        assert_eq!(c.mounts, vec![PathBuf::from("/data")]);
        assert_eq!(c.exclusions.namespaces, ["kube-system"]);
        assert!(c.exclusions.containers.is_empty() && c.exclusions.images.is_empty());
        assert!(c.exclusions.keywords.is_empty(), "no substring rule without the switch");
        assert_eq!(c.ceiling_for("anyone"), c.defaults, "tenants may only lower limits by default");
        assert_eq!(c.cgroup_mode, CgroupMode::Auto);
        assert_eq!(c.hook_log, None);
    }

    #[test]
    fn environment_overrides_each_knob() {
        let c = Config::load(
            None,
            env_of(&[
                ("CONTAINER_IOPS_LIMIT", "300"),
                ("IOGATE_WRITE_IOPS", "200"),
                ("IOGATE_READ_BPS", "10Mi"),
                ("DATA_MOUNT", "/data, /scratch"),
                ("IOGATE_EXCLUDE_CONTAINERS", "istio-proxy"),
                ("IOGATE_EXCLUDE_IMAGES", "registry.k8s.io/pause"),
                ("CGROUP_VERSION", "v2"),
                ("IOGATE_STRICT", "TRUE"),
                ("IOGATE_HOOK_LOG", "/var/log/iogate-hook.log"),
            ]),
        )
        .unwrap();
        assert_eq!(c.defaults.read_iops, Some(300));
        assert_eq!(c.defaults.write_iops, Some(200));
        assert_eq!(c.defaults.read_bps, Some(10 << 20));
        assert_eq!(c.mounts, vec![PathBuf::from("/data"), PathBuf::from("/scratch")]);
        assert_eq!(c.exclusions.containers, ["istio-proxy"]);
        assert_eq!(c.exclusions.images[0].as_str(), "registry.k8s.io/pause");
        assert!(c.strict, "TRUE is strict, as everywhere");
        assert_eq!(c.hook_log, Some(PathBuf::from("/var/log/iogate-hook.log")));
        assert_eq!(c.ceiling_for("web"), c.defaults, "the ceiling follows the defaults the environment set");
    }

    #[test]
    fn bad_environment_is_an_error_naming_the_variable() {
        let e = Config::load(None, env_of(&[("CONTAINER_IOPS_LIMIT", "lots")])).unwrap_err().to_string();
        assert!(e.starts_with("environment variable CONTAINER_IOPS_LIMIT=\"lots\": expected a whole number"), "{e}");
        let e = Config::load(None, env_of(&[("CONTAINER_IOPS_LIMIT", " 100")])).unwrap_err().to_string();
        assert!(e.starts_with("environment variable CONTAINER_IOPS_LIMIT=\" 100\": expected a whole number"), "{e}");
        let e = Config::load(None, env_of(&[("CGROUP_VERSION", "v3")])).unwrap_err().to_string();
        assert!(e.contains("expected auto, v1 or v2, found \"v3\""), "{e}");
        let e = Config::load(None, env_of(&[("IOGATE_STRICT", "sure")])).unwrap_err().to_string();
        assert_eq!(e, "environment variable IOGATE_STRICT=\"sure\": expected true or false, found \"sure\"");
        let e = Config::load(None, env_of(&[("IOGATE_EXCLUDE_IMAGES", "registry.k8s.io/pause:3.10")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an image repository without tag or digest"), "{e}");
    }

    #[test]
    fn strictness_reads_the_same_everywhere() {
        for (v, want) in [("TRUE", true), ("true", true), ("1", true), ("On", true), ("false", false), ("0", false)] {
            assert_eq!(strict_from_env(env_of(&[("IOGATE_STRICT", v)])).unwrap(), Some(want), "{v}");
        }
        assert_eq!(strict_from_env(env_of(&[])).unwrap(), None);
        assert!(strict_from_env(env_of(&[("IOGATE_STRICT", " true")])).is_err(), "no spaces around it");
    }

    #[test]
    fn discovery_order() {
        let env = env_of(&[("IOGATE_CONFIG", "/from/env.toml")]);
        assert_eq!(discover(Some("/explicit.toml".into()), &env), Some(PathBuf::from("/explicit.toml")));
        assert_eq!(discover(None, &env), Some(PathBuf::from("/from/env.toml")));
        let none = discover(None, env_of(&[]));
        assert_eq!(none.is_some(), Path::new(DEFAULT_CONFIG_PATH).exists());
    }

    #[test]
    fn toml_file_with_ceilings_and_exemptions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iogate.toml");
        std::fs::write(
            &path,
            r#"
strict = true
hook-log = "/var/log/iogate/hook.log"
[defaults]
read-iops = 400
write-bps = "20Mi"
[devices]
mounts = ["/srv"]
devices = ["8:16"]
[exclude]
namespaces = ["kube-system"]
containers = ["istio-proxy"]
images = ["registry.k8s.io/pause"]
[ceilings]
default = { read-iops = 1000, write-iops = 1000, write-bps = "50Mi" }
[ceilings.namespaces.batch]
read-iops = "5k"
[exemptions]
namespaces = ["monitoring"]
"#,
        )
        .unwrap();
        let c = Config::load(Some(&path), env_of(&[])).unwrap();
        assert!(c.strict);
        assert_eq!(c.hook_log, Some(PathBuf::from("/var/log/iogate/hook.log")));
        assert_eq!(c.defaults.read_iops, Some(400));
        assert_eq!(c.defaults.write_iops, Some(500));
        assert_eq!(c.defaults.write_bps, Some(20 << 20));
        assert_eq!(c.devices, ["8:16"]);
        assert_eq!(c.exclusions.containers, ["istio-proxy"]);
        assert_eq!(c.ceiling_for("web").read_iops, Some(1000));
        assert_eq!(c.ceiling_for("batch").read_iops, Some(5000));
        assert_eq!(c.ceiling_for("batch").write_iops, Some(1000), "batch's table names only read-iops");
        assert_eq!(c.ceiling_for("batch").write_bps, Some(50 << 20));
        assert!(c.may_exempt("monitoring") && !c.may_exempt("web"));
    }

    /// The issue's case: defaults 500/500, only `batch`'s read ceiling
    /// raised. Every other knob of `batch` stays where the defaults put it.
    #[test]
    fn a_partial_ceiling_lifts_only_the_knob_it_names() {
        let c = from_toml("[ceilings.namespaces.batch]\nread-iops = \"5k\"\n", &[]).unwrap();
        assert_eq!(c.ceiling_for("batch"), limits(Some(5000), Some(500)));
        assert_eq!(c.ceiling_for("web"), limits(Some(500), Some(500)));
        let c = from_toml("[ceilings.namespaces.batch]\nwrite-iops = \"max\"\n", &[]).unwrap();
        assert_eq!(c.ceiling_for("batch"), limits(Some(500), None), "max lifts a knob when named");
        // The default ceiling overlays the defaults the same way.
        let c = from_toml(
            "[ceilings]\ndefault = { write-iops = 2000 }\n[ceilings.namespaces.batch]\nread-iops = 900\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.ceiling_for("web"), limits(Some(500), Some(2000)));
        assert_eq!(c.ceiling_for("batch"), limits(Some(900), Some(2000)));
        assert_eq!(
            c.effective_ceilings(),
            [(None, limits(Some(500), Some(2000))), (Some("batch"), limits(Some(900), Some(2000)))]
        );
    }

    #[test]
    fn keywords_need_the_compatibility_switch() {
        let e = from_toml("[exclude]\nkeywords = [\"pause\", \"istio-proxy\"]\n", &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "exclude.keywords in the config file (pause,istio-proxy) is iops-limit-service's substring rule"
            ),
            "{e}"
        );
        assert!(
            e.contains("expected exact names instead: exclude.namespaces, exclude.containers, exclude.images"),
            "{e}"
        );
        assert!(
            e.contains(
                "or [compat] exclude-keywords = true to keep the substring rule (unsafe where tenants share a node)"
            ),
            "{e}"
        );
        let e = Config::load(None, env_of(&[("EXCLUDE_KEYWORDS", "pause")])).unwrap_err().to_string();
        assert!(e.starts_with("EXCLUDE_KEYWORDS (pause) is iops-limit-service's substring rule"), "{e}");
        assert!(e.contains("IOGATE_COMPAT_EXCLUDE_KEYWORDS=true"), "{e}");

        // With the switch: the list given, or iops-limit-service's default.
        let c = from_toml("[compat]\nexclude-keywords = true\n[exclude]\nkeywords = [\"pause\"]\n", &[]).unwrap();
        assert_eq!(c.exclusions.keywords, ["pause"]);
        let c = from_toml("[compat]\nexclude-keywords = true\n", &[]).unwrap();
        assert_eq!(c.exclusions.keywords, ["pause", "istio-proxy", "psmdb", "kube-system", "koordinator", "apisix"]);
        let c =
            Config::load(None, env_of(&[("IOGATE_COMPAT_EXCLUDE_KEYWORDS", "true"), ("EXCLUDE_KEYWORDS", "apisix")]))
                .unwrap();
        assert_eq!(c.exclusions.keywords, ["apisix"]);
    }

    #[test]
    fn toml_typos_are_rejected() {
        let e = from_toml("[defaults]\nread-iosp = 5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field `read-iosp`"), "{e}");
        let e = from_toml("[defaults]\nread-iops = \"fast\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("defaults.read-iops: expected a whole number"), "{e}");
        let e = from_toml("[defaults]\nread-iops = \" 100\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("defaults.read-iops: expected a whole number"), "{e}");
        let e = from_toml("[exclude]\nimages = [\"registry.k8s.io/pause:3.10\"]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("exclude.images: expected an image repository without tag or digest"), "{e}");
    }
}
