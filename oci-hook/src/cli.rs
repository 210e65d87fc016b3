//! Command line. Hand-rolled: the hook runs on every container start, and
//! the whole binary should stay small and start fast.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iogate_core::cgroup::CgroupMode;
use iogate_core::DeviceLimits;

pub const USAGE: &str = "\
usage: iogate-oci-hook [--config FILE] [--cgroup-version V] [--strict] [--log FILE]
           decide from the bundle's annotations and the iogate policy, then write the limits
       iogate-oci-hook apply --cgroup-version V --io-max 'MAJ:MIN riops=N wiops=N rbps=N wbps=N' [--io-max ...]
           [--strict] [--log FILE]
           write limits already decided (this is how the NRI plugin injects the hook, with its cgroup version)
--cgroup-version auto|v1|v2 overrides the config's (CGROUP_VERSION); the config is found as the plugin
finds it (--config, $IOGATE_CONFIG, /etc/iogate/config.toml). Reads the OCI state on standard input.
Fail-open by default: on error the container starts and the error is reported; with --strict (or
IOGATE_STRICT=true, any case) the hook exits 1 and the runtime refuses it.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Decide,
    Apply { limits: Vec<DeviceLimits> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub strict: bool,
    pub log: Option<PathBuf>,
    /// The cgroup version the caller chose (the NRI plugin passes its own).
    pub cgroup_mode: Option<CgroupMode>,
    /// `--config`: the policy file (decide mode; apply mode reads it only
    /// for the cgroup version when `--cgroup-version` is absent).
    pub config: Option<PathBuf>,
}

pub fn parse(args: &[String]) -> Result<Options> {
    let mut it = args.iter().peekable();
    let apply = it.peek().map(|a| a.as_str()) == Some("apply");
    if apply {
        it.next();
    }
    let (mut config, mut limits, mut strict, mut log, mut cgroup_mode) = (None, Vec::new(), false, None, None);
    while let Some(arg) = it.next() {
        let mut value =
            |name: &str| it.next().with_context(|| format!("{name} expects a value, found the end of the arguments"));
        match arg.as_str() {
            "--strict" => strict = true,
            "--log" => log = Some(PathBuf::from(value("--log")?)),
            "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--cgroup-version" => {
                let v = value("--cgroup-version")?;
                cgroup_mode = Some(v.parse::<CgroupMode>().map_err(|e| anyhow::anyhow!("--cgroup-version: {e}"))?);
            }
            "--io-max" if apply => limits.push(value("--io-max")?.parse()?),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let mode = if apply {
        if limits.is_empty() {
            bail!("apply expects at least one --io-max 'MAJ:MIN key=value...', found none");
        }
        Mode::Apply { limits }
    } else {
        Mode::Decide
    };
    Ok(Options { mode, strict, log, cgroup_mode, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn both_modes() {
        let o = parse(&args(&["--config", "/etc/iogate/config.toml", "--strict"])).unwrap();
        assert_eq!(o.mode, Mode::Decide);
        assert_eq!(o.config, Some("/etc/iogate/config.toml".into()));
        assert!(o.strict);
        assert_eq!(o.cgroup_mode, None);
        let o =
            parse(&args(&["apply", "--cgroup-version", "v1", "--io-max", "7:0 riops=500", "--io-max", "8:0 wbps=1Mi"]))
                .unwrap();
        assert_eq!(o.cgroup_mode, Some(CgroupMode::Only(iogate_core::CgroupVersion::V1)));
        let Mode::Apply { limits } = o.mode else { panic!() };
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[1].limits.write_bps, Some(1 << 20));
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(&args(&["apply"])).unwrap_err().to_string();
        assert_eq!(e, "apply expects at least one --io-max 'MAJ:MIN key=value...', found none");
        let e = parse(&args(&["--io-max", "7:0 riops=1"])).unwrap_err().to_string();
        assert!(e.starts_with("unexpected argument \"--io-max\""), "{e}");
        let e = parse(&args(&["apply", "--io-max", "7:0 riops=fast"])).unwrap_err().to_string();
        assert!(e.contains("riops: expected a whole number"), "{e}");
        let e = parse(&args(&["--config"])).unwrap_err().to_string();
        assert_eq!(e, "--config expects a value, found the end of the arguments");
        let e = parse(&args(&["apply", "--cgroup-version", "v3", "--io-max", "7:0 riops=1"])).unwrap_err().to_string();
        assert_eq!(e, "--cgroup-version: expected auto, v1 or v2, found \"v3\"");
    }
}
