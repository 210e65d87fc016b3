//! The admin's policy: defaults, devices, exclusions, ceilings, exemptions.
//!
//! Sources, later wins: built-in defaults, the TOML file, the environment.
//! The environment keeps the names operators of `iops-limit-service` already
//! set in their manifests (`CONTAINER_IOPS_LIMIT`, `DATA_MOUNT`,
//! `EXCLUDE_KEYWORDS`, `CGROUP_VERSION`), with the same meaning; everything
//! else is `IOGATE_*`. A value that cannot be parsed is an error at start-up,
//! never a silently ignored setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::cgroup::CgroupMode;
use crate::limits::{Knob, Limits};
use crate::quantity;

pub const DEFAULT_IOPS: u64 = 500;
pub const DEFAULT_DATA_MOUNT: &str = "/data";
pub const DEFAULT_EXCLUDE_KEYWORDS: &str = "pause,istio-proxy,psmdb,kube-system,koordinator,apisix";
pub const DEFAULT_HOOK_PATH: &str = "/opt/iogate/bin/iogate-oci-hook";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Limits every container gets unless an annotation says otherwise.
    pub defaults: Limits,
    /// Paths whose filesystems' disks are throttled (`DATA_MOUNT`).
    pub mounts: Vec<PathBuf>,
    /// Devices named directly, `MAJ:MIN` or `/dev/...`.
    pub devices: Vec<String>,
    /// A container is left alone when its name, image, pod name or namespace
    /// contains one of these (the `iops-limit-service` rule).
    pub exclude_keywords: Vec<String>,
    /// Namespaces left alone entirely (exact names).
    pub exclude_namespaces: Vec<String>,
    /// The most a pod may ask for, per namespace; `default_ceiling` for
    /// namespaces without their own.
    pub default_ceiling: Limits,
    pub namespace_ceilings: BTreeMap<String, Limits>,
    /// Namespaces whose pods may exempt themselves by annotation (`*`: all).
    pub exempt_namespaces: Vec<String>,
    /// Refuse a container whose iogate annotations are malformed, instead of
    /// applying the defaults with a warning.
    pub strict: bool,
    pub cgroup_mode: CgroupMode,
    /// The OCI hook binary the NRI plugin injects where it cannot express
    /// limits in the spec (cgroup v1, several devices on v2).
    pub hook_path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        let defaults = Limits { read_iops: Some(DEFAULT_IOPS), write_iops: Some(DEFAULT_IOPS), ..Limits::UNLIMITED };
        Config {
            defaults,
            mounts: vec![PathBuf::from(DEFAULT_DATA_MOUNT)],
            devices: Vec::new(),
            exclude_keywords: split_list(DEFAULT_EXCLUDE_KEYWORDS),
            exclude_namespaces: Vec::new(),
            // Without a ceiling of their own, tenants can only lower limits.
            default_ceiling: defaults,
            namespace_ceilings: BTreeMap::new(),
            exempt_namespaces: Vec::new(),
            strict: false,
            cgroup_mode: CgroupMode::Auto,
            hook_path: PathBuf::from(DEFAULT_HOOK_PATH),
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
    defaults: Option<RawLimits>,
    devices: Option<RawDevices>,
    exclude: Option<RawExclude>,
    ceilings: Option<RawCeilings>,
    exemptions: Option<RawExemptions>,
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
    keywords: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
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

impl RawLimits {
    /// Overlays the keys present onto `base`; `at` names the table for errors.
    fn apply(&self, mut base: Limits, at: &str) -> Result<Limits, String> {
        let fields = [
            (Knob::ReadIops, &self.read_iops),
            (Knob::WriteIops, &self.write_iops),
            (Knob::ReadBps, &self.read_bps),
            (Knob::WriteBps, &self.write_bps),
        ];
        for (knob, raw) in fields {
            let Some(raw) = raw else { continue };
            let text = match raw {
                RawQuantity::Int(i) => i.to_string(),
                RawQuantity::Text(t) => t.clone(),
            };
            let q = quantity::parse(&text).map_err(|e| format!("{at}.{knob}: {e}"))?;
            base.set(knob, q.as_option());
        }
        Ok(base)
    }
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
            None => {
                let mut config = Config::default();
                config.merge_env(env)?;
                Ok(config)
            }
        }
    }

    /// Built-in defaults, then TOML `text` (which came from `origin`, named
    /// in errors), then the environment. The NRI plugin uses this for the
    /// config containerd hands a pre-registered plugin in `Configure`.
    pub fn from_toml(text: &str, origin: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.merge_toml(text).map_err(|message| ConfigError::Parse { path: origin.into(), message })?;
        config.merge_env(env)?;
        Ok(config)
    }

    /// The ceiling for a namespace.
    pub fn ceiling_for(&self, namespace: &str) -> Limits {
        self.namespace_ceilings.get(namespace).copied().unwrap_or(self.default_ceiling)
    }

    pub fn may_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.iter().any(|n| n == "*" || n == namespace)
    }

    fn merge_toml(&mut self, text: &str) -> Result<(), String> {
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
        let defaults_given = raw.defaults.is_some();
        if let Some(d) = raw.defaults {
            self.defaults = d.apply(self.defaults, "defaults")?;
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
            if let Some(k) = e.keywords {
                self.exclude_keywords = k;
            }
            if let Some(n) = e.namespaces {
                self.exclude_namespaces = n;
            }
        }
        match raw.ceilings.as_ref().and_then(|c| c.default.as_ref()) {
            Some(c) => self.default_ceiling = c.apply(Limits::UNLIMITED, "ceilings.default")?,
            None if defaults_given => self.default_ceiling = self.defaults,
            None => {}
        }
        if let Some(c) = raw.ceilings {
            for (ns, l) in c.namespaces {
                let at = format!("ceilings.namespaces.{ns}");
                self.namespace_ceilings.insert(ns, l.apply(Limits::UNLIMITED, &at)?);
            }
        }
        if let Some(e) = raw.exemptions.and_then(|e| e.namespaces) {
            self.exempt_namespaces = e;
        }
        Ok(())
    }

    fn merge_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let ceiling_followed_defaults = self.default_ceiling == self.defaults;
        let limit = |name: &'static str| -> Result<Option<Option<u64>>, ConfigError> {
            env(name)
                .map(|v| {
                    quantity::parse(&v).map(|q| q.as_option()).map_err(|e| ConfigError::Env {
                        name,
                        value: v.clone(),
                        reason: e.to_string(),
                    })
                })
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
        if ceiling_followed_defaults {
            self.default_ceiling = self.defaults;
        }
        if let Some(v) = env("DATA_MOUNT") {
            self.mounts = split_list(&v).into_iter().map(PathBuf::from).collect();
        }
        if let Some(v) = env("IOGATE_DEVICES") {
            self.devices = split_list(&v);
        }
        if let Some(v) = env("EXCLUDE_KEYWORDS") {
            self.exclude_keywords = split_list(&v);
        }
        if let Some(v) = env("IOGATE_EXCLUDE_NAMESPACES") {
            self.exclude_namespaces = split_list(&v);
        }
        if let Some(v) = env("IOGATE_EXEMPT_NAMESPACES") {
            self.exempt_namespaces = split_list(&v);
        }
        if let Some(v) = env("CGROUP_VERSION") {
            self.cgroup_mode =
                v.parse().map_err(|reason| ConfigError::Env { name: "CGROUP_VERSION", value: v.clone(), reason })?;
        }
        if let Some(v) = env("IOGATE_STRICT") {
            self.strict = parse_bool(&v).map_err(|reason| ConfigError::Env {
                name: "IOGATE_STRICT",
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = env("IOGATE_HOOK_PATH") {
            self.hook_path = PathBuf::from(v);
        }
        Ok(())
    }
}

pub(crate) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
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

    #[test]
    fn defaults_match_iops_limit_service() {
        let c = Config::load(None, env_of(&[])).unwrap();
        assert_eq!(c.defaults.read_iops, Some(500));
        assert_eq!(c.defaults.write_iops, Some(500));
        assert_eq!(c.defaults.read_bps, None);
        assert_eq!(c.mounts, vec![PathBuf::from("/data")]);
        assert_eq!(c.exclude_keywords, ["pause", "istio-proxy", "psmdb", "kube-system", "koordinator", "apisix"]);
        assert_eq!(c.ceiling_for("anyone"), c.defaults, "tenants may only lower limits by default");
        assert_eq!(c.cgroup_mode, CgroupMode::Auto);
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
                ("EXCLUDE_KEYWORDS", "pause"),
                ("CGROUP_VERSION", "v2"),
                ("IOGATE_STRICT", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.defaults.read_iops, Some(300));
        assert_eq!(c.defaults.write_iops, Some(200));
        assert_eq!(c.defaults.read_bps, Some(10 << 20));
        assert_eq!(c.mounts, vec![PathBuf::from("/data"), PathBuf::from("/scratch")]);
        assert_eq!(c.exclude_keywords, ["pause"]);
        assert!(c.strict);
        assert_eq!(c.default_ceiling, c.defaults);
    }

    #[test]
    fn bad_environment_is_an_error_naming_the_variable() {
        let e = Config::load(None, env_of(&[("CONTAINER_IOPS_LIMIT", "lots")])).unwrap_err().to_string();
        assert!(e.starts_with("environment variable CONTAINER_IOPS_LIMIT=\"lots\": expected a whole number"), "{e}");
        let e = Config::load(None, env_of(&[("CGROUP_VERSION", "v3")])).unwrap_err().to_string();
        assert!(e.contains("expected auto, v1 or v2, found \"v3\""), "{e}");
    }

    #[test]
    fn toml_file_with_ceilings_and_exemptions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iogate.toml");
        std::fs::write(
            &path,
            r#"
strict = true
[defaults]
read-iops = 400
write-bps = "20Mi"
[devices]
mounts = ["/srv"]
devices = ["8:16"]
[exclude]
namespaces = ["kube-system"]
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
        assert_eq!(c.defaults.read_iops, Some(400));
        assert_eq!(c.defaults.write_iops, Some(500));
        assert_eq!(c.defaults.write_bps, Some(20 << 20));
        assert_eq!(c.devices, ["8:16"]);
        assert_eq!(c.ceiling_for("web").read_iops, Some(1000));
        assert_eq!(c.ceiling_for("batch").read_iops, Some(5000));
        assert_eq!(c.ceiling_for("batch").write_iops, None);
        assert!(c.may_exempt("monitoring") && !c.may_exempt("web"));
    }

    #[test]
    fn toml_typos_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iogate.toml");
        std::fs::write(&path, "[defaults]\nread-iosp = 5\n").unwrap();
        let e = Config::load(Some(&path), env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("unknown field `read-iosp`"), "{e}");
        std::fs::write(&path, "[defaults]\nread-iops = \"fast\"\n").unwrap();
        let e = Config::load(Some(&path), env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("defaults.read-iops: expected a whole number"), "{e}");
    }
}
