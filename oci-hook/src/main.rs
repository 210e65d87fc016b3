//! `iogate-oci-hook`: iogate's limits from an OCI hook.
//!
//! Wired in as a `createRuntime` hook (or `prestart` on runtimes that lack
//! it), it runs after the runtime has put the container's init process into
//! its cgroup and before the user's process starts: the limits are in place
//! before the first I/O, with no watcher to race.
//!
//! Fail-open by default, because a broken hook must not take down every
//! container start on a node: the error is one line on stderr (and in
//! `--log`), and the container runs. `--strict` turns every error into a
//! refusal, which the runtime reports to the user.

mod annotated;
mod cli;
mod input;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use iogate_core::config::Config;
use iogate_core::device::DeviceResolver;
use iogate_core::{CgroupFs, ContainerInfo, Decision, DeviceLimits, Policy};

use cli::{Mode, Options};

const DEFAULT_CONFIG: &str = "/etc/iogate/config.toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    // Strictness must be known even when the arguments themselves are bad.
    let env_strict = std::env::var("IOGATE_STRICT").is_ok_and(|v| matches!(v.trim(), "true" | "1" | "yes" | "on"));
    let mut strict = env_strict || args.iter().any(|a| a == "--strict");
    let opts = cli::parse(&args);
    let log = opts.as_ref().ok().and_then(|o| o.log.clone());
    let result = opts.and_then(|o| run(&o, std::io::stdin().lock(), &mut strict));
    let (line, code) = match result {
        Ok(summary) => (format!("iogate-oci-hook: {summary}"), ExitCode::SUCCESS),
        Err(e) if strict => {
            (format!("iogate-oci-hook: error: {e:#}; refusing the container (strict mode)"), ExitCode::FAILURE)
        }
        Err(e) => (
            format!("iogate-oci-hook: error: {e:#}; the container starts without iogate limits (fail-open)"),
            ExitCode::SUCCESS,
        ),
    };
    // One line, whatever the error chain held, so log scrapers see one event.
    let line = line.replace('\n', " ");
    eprintln!("{line}");
    if let Some(path) = log {
        let appended =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("iogate-oci-hook: cannot append to log {}: {e}", path.display());
        }
    }
    code
}

/// Does the work; returns the summary line. `strict` is raised when the
/// policy file asks for it, so errors after loading it fail closed.
fn run(opts: &Options, stdin: impl std::io::Read, strict: &mut bool) -> Result<String> {
    *strict |= opts.strict;
    let state = input::read_state(stdin)?;
    let pid = input::pid_of(&state)?;
    match &opts.mode {
        Mode::Apply { limits } => {
            let cgroups = CgroupFs::detect(Default::default())?;
            write(&cgroups, pid, limits, state.id())
        }
        Mode::Decide { config } => {
            let path = config.clone().or_else(|| {
                std::env::var_os("IOGATE_CONFIG")
                    .map(Into::into)
                    .or_else(|| std::path::Path::new(DEFAULT_CONFIG).exists().then(|| DEFAULT_CONFIG.into()))
            });
            let mut config = Config::load(path.as_deref(), |k| std::env::var(k).ok())?;
            // --strict also makes the policy refuse malformed annotations.
            config.strict |= *strict;
            *strict = config.strict;
            let spec = input::read_spec(&state)?;
            let annotations = spec.annotations().clone().unwrap_or_default();
            let who = annotated::from_annotations(state.id(), &annotations);
            let info = ContainerInfo {
                namespace: &who.namespace,
                pod: &who.pod,
                container: &who.container,
                image: &who.image,
                is_sandbox: who.is_sandbox,
                annotations: &who.annotations,
            };
            let devices = resolve_devices(&config)?;
            let cgroups = CgroupFs::detect(config.cgroup_mode)?;
            let policy = Policy::new(config, devices);
            match policy.decide(&info)? {
                Decision::Excluded { reason } => Ok(format!("{info}: excluded ({reason}); no limits")),
                Decision::Exempt { reason } => Ok(format!("{info}: exempt ({reason}); no limits")),
                Decision::Enforce(e) => {
                    let mut summary = write(&cgroups, pid, &e.device_limits(), &info.to_string())?;
                    summary.push_str(&format!(" [{}]", e.explain()));
                    for w in &e.warnings {
                        summary.push_str(&format!("; warning: {w}"));
                    }
                    Ok(summary)
                }
            }
        }
    }
}

fn resolve_devices(config: &Config) -> Result<Vec<iogate_core::Device>> {
    let r = DeviceResolver::default();
    let mut out = Vec::new();
    for m in &config.mounts {
        out.push(r.resolve_mount(m)?);
    }
    for d in &config.devices {
        out.push(r.resolve_device(d)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn write(cgroups: &CgroupFs, pid: u32, limits: &[DeviceLimits], who: &str) -> Result<String> {
    let cg = cgroups.cgroup_of_pid(pid)?;
    let changes =
        cgroups.write_limits(&cg, limits).with_context(|| format!("writing limits for {who} into cgroup {cg}"))?;
    let wanted = limits.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ");
    Ok(if changes.is_empty() {
        format!("{who}: cgroup {v} {cg} already has {wanted}", v = cgroups.version)
    } else {
        format!("{who}: cgroup {v} {cg} set to {wanted}", v = cgroups.version)
    })
}
