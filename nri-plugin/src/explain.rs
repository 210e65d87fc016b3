//! `iogate-nri-plugin explain`: the policy's decision for a container that
//! is described on the command line instead of created, as JSON. The same
//! config discovery, environment, policy and sibling rule as the plugin,
//! so what it prints is what the plugin would do to the first container of
//! such a pod (or, with `--pod-container`, to one created after those).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iogate_core::device::DeviceResolver;
use iogate_core::explanation::Explanation;
use iogate_core::{config, Config, ContainerInfo, Device, Policy};

pub const USAGE: &str = "\
usage: iogate-nri-plugin explain [--config FILE] --namespace NS --pod NAME --container NAME [--image REF]
           [--annotation KEY=VALUE]... [--pod-container NAME]... [--device MAJ:MIN]...
  Prints, as JSON, what the policy does to that container: action (limit, exclude, exempt, refuse),
  reason, the limits per device (null: unlimited), each knob's source, and the warnings.
  --config FILE          the policy, found as the plugin finds it when not given ($IOGATE_CONFIG,
                         /etc/iogate/config.toml); the environment applies as it does to the plugin
  --annotation KEY=VALUE a pod annotation, exactly as written (the value may hold spaces)
  --pod-container NAME   a container of the pod created before this one (the plugin knows those)
  --device MAJ:MIN       throttle this device instead of resolving the config's mounts and devices
                         (for a machine that lacks them)
Exit status: 0 for any decision, 2 for a usage or config error.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainArgs {
    pub config: Option<PathBuf>,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub image: String,
    pub annotations: HashMap<String, String>,
    pub pod_containers: Vec<String>,
    pub devices: Vec<Device>,
}

/// Reads the arguments after `explain`.
pub fn parse_args(args: &[String]) -> Result<ExplainArgs> {
    let (mut config, mut namespace, mut pod, mut container, mut image) = (None, None, None, None, String::new());
    let (mut annotations, mut pod_containers, mut devices) = (HashMap::new(), Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value =
            || it.next().cloned().with_context(|| format!("{arg} expects a value, found the end of the arguments"));
        match arg.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--namespace" => namespace = Some(value()?),
            "--pod" => pod = Some(value()?),
            "--container" => container = Some(value()?),
            "--image" => image = value()?,
            "--annotation" => {
                let kv = value()?;
                let (k, v) =
                    kv.split_once('=').with_context(|| format!("--annotation expects KEY=VALUE, found {kv:?}"))?;
                if annotations.insert(k.to_string(), v.to_string()).is_some() {
                    bail!("--annotation {k} is given twice; a pod has one value per annotation");
                }
            }
            "--pod-container" => pod_containers.push(value()?),
            "--device" => {
                let d = value()?;
                devices.push(d.parse().with_context(|| format!("--device {d}"))?);
            }
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let need = |v: Option<String>, flag: &str| v.with_context(|| format!("{flag} is required"));
    Ok(ExplainArgs {
        config,
        namespace: need(namespace, "--namespace")?,
        pod: need(pod, "--pod")?,
        container: need(container, "--container")?,
        image,
        annotations,
        pod_containers,
        devices,
    })
}

/// The decision for `args` under the policy found as the plugin finds it;
/// `Err` is a config error (exit 2), every decision is `Ok`.
pub fn explain(args: &ExplainArgs, env: impl Fn(&str) -> Option<String>) -> Result<Explanation> {
    let path = config::discover(args.config.clone(), &env);
    let config = Config::load(path.as_deref(), &env)?;
    let devices = if args.devices.is_empty() {
        DeviceResolver::default()
            .resolve_all(&config.mounts, &config.devices)
            .context("resolving the config's devices (--device MAJ:MIN stands in for a mount this machine lacks)")?
    } else {
        let mut d = args.devices.clone();
        d.sort();
        d.dedup();
        d
    };
    let policy = Policy::new(config, devices);
    let info = ContainerInfo {
        siblings: &args.pod_containers,
        ..ContainerInfo::new(&args.namespace, &args.pod, &args.container, &args.image, &args.annotations)
    };
    Ok(Explanation::of(&policy.decide(&info)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iogate_core::explanation::{Action, KnobSource};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn run(config: &str, a: &[&str]) -> Explanation {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iogate.toml");
        std::fs::write(&path, config).unwrap();
        let mut full = args(&["--config", path.to_str().unwrap(), "--device", "7:0"]);
        full.extend(args(a));
        explain(&parse_args(&full).unwrap(), |_| None).unwrap()
    }

    #[test]
    fn arguments_and_their_mistakes() {
        let a = parse_args(&args(&[
            "--namespace",
            "shop",
            "--pod",
            "p",
            "--container",
            "db",
            "--annotation",
            "iogate.io/write-iops= 100",
            "--device",
            "8:0",
            "--pod-container",
            "web",
        ]))
        .unwrap();
        assert_eq!(a.annotations["iogate.io/write-iops"], " 100", "the value is kept as written");
        assert_eq!(a.devices, [Device::new(8, 0)]);
        assert_eq!(a.pod_containers, ["web"]);
        let e = parse_args(&args(&["--pod", "p", "--container", "c"])).unwrap_err().to_string();
        assert_eq!(e, "--namespace is required");
        let e = parse_args(&args(&["--annotation", "novalue"])).unwrap_err().to_string();
        assert_eq!(e, "--annotation expects KEY=VALUE, found \"novalue\"");
        let e = parse_args(&args(&["--device", "sda"])).unwrap_err();
        assert!(format!("{e:#}").contains("expected a device number MAJ:MIN"), "{e:#}");
        let e = parse_args(&args(&["--annotation", "a=1", "--annotation", "a=2"])).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn the_issues_cases() {
        let base = "[defaults]\nread-iops = 500\nwrite-iops = 500\n[ceilings.namespaces.batch]\nread-iops = \"5k\"\n";
        for (pod, ctr) in
            [("mesh", "istio-proxy"), ("my-pause-app", "app"), ("db", "xpsmdbx"), ("gw", "apisix-but-not-really")]
        {
            let x = run(base, &["--namespace", "shop", "--pod", pod, "--container", ctr]);
            assert_eq!(x.action, Action::Limit, "{pod}/{ctr}");
            assert_eq!((x.devices[0].read_iops, x.devices[0].write_iops), (Some(500), Some(500)), "{pod}/{ctr}");
            assert!(x.warnings.is_empty());
        }
        let x = run(
            base,
            &["--namespace", "batch", "--pod", "p", "--container", "c", "--annotation", "iogate.io/write-iops=max"],
        );
        assert_eq!(x.devices[0].write_iops, Some(500));
        let w = x.knobs.write_iops.unwrap();
        assert_eq!((w.source, w.asked), (KnobSource::Ceiling, Some(None)));
        let x = run(
            base,
            &["--namespace", "shop", "--pod", "p", "--container", "db", "--annotation", "iogate.io/write-iops.dbb=100"],
        );
        assert_eq!(x.devices[0].write_iops, Some(500));
        assert_eq!(x.warnings.len(), 1);
        let compat = format!("{base}[compat]\nexclude-keywords = true\n");
        let x = run(&compat, &["--namespace", "shop", "--pod", "p", "--container", "xpsmdbx"]);
        assert_eq!(x.action, Action::Exclude);
    }

    #[test]
    fn a_config_error_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iogate.toml");
        std::fs::write(&path, "[exclude]\nkeywords = [\"pause\"]\n").unwrap();
        let a = parse_args(&args(&[
            "--config",
            path.to_str().unwrap(),
            "--namespace",
            "n",
            "--pod",
            "p",
            "--container",
            "c",
            "--device",
            "7:0",
        ]))
        .unwrap();
        assert!(explain(&a, |_| None).unwrap_err().to_string().contains("[compat] exclude-keywords = true"));
    }
}
