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

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use iogate_core::config::{self, Config};
use iogate_core::device::DeviceResolver;
use iogate_core::{CgroupFs, Decision, DeviceLimits, Policy};

use iogate_oci_hook::cli::{self, Mode, Options};
use iogate_oci_hook::{annotated, input};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    // Strictness must be known even when the arguments themselves are bad;
    // an IOGATE_STRICT that does not parse asked for something, so the
    // hook fails closed on it.
    let env_strict = config::strict_from_env(env);
    let mut strict = env_strict.as_ref().map_or(true, |s| s.unwrap_or(false)) || args.iter().any(|a| a == "--strict");
    let opts = cli::parse(&args);
    let log = opts.as_ref().ok().and_then(|o| o.log.clone());
    let result =
        env_strict.map_err(anyhow::Error::from).and(opts).and_then(|o| run(&o, std::io::stdin().lock(), &mut strict));
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

/// The policy as the NRI plugin loads it: the same discovery, the same
/// environment.
fn load_config(opts: &Options) -> Result<Config> {
    let path = config::discover(opts.config.clone(), env);
    let mut config = Config::load(path.as_deref(), env)?;
    if let Some(mode) = opts.cgroup_mode {
        config.cgroup_mode = mode;
    }
    Ok(config)
}

/// Does the work; returns the summary line. `strict` is raised when the
/// policy file asks for it, so errors after loading it fail closed.
fn run(opts: &Options, stdin: impl std::io::Read, strict: &mut bool) -> Result<String> {
    *strict |= opts.strict;
    let state = input::read_state(stdin)?;
    let pid = input::pid_of(&state)?;
    match &opts.mode {
        Mode::Apply { limits } => {
            // The plugin passes its cgroup version; only a hand-run apply
            // without it reads the config for one.
            let mode = match opts.cgroup_mode {
                Some(mode) => mode,
                None => load_config(opts)?.cgroup_mode,
            };
            let cgroups = CgroupFs::detect(mode)?;
            write(&cgroups, pid, limits, state.id())
        }
        Mode::Decide => {
            let mut config = load_config(opts)?;
            // --strict also makes the policy refuse malformed annotations.
            config.strict |= *strict;
            *strict = config.strict;
            let spec = input::read_spec(&state)?;
            let annotations = spec.annotations().clone().unwrap_or_default();
            let who = annotated::from_annotations(state.id(), &annotations);
            let info = who.info();
            let devices = DeviceResolver::default().resolve_all(&config.mounts, &config.devices)?;
            let cgroups = CgroupFs::detect(config.cgroup_mode)?;
            let policy = Policy::new(config, devices);
            match policy.decide(&info)? {
                // Loud, as in the plugin, but for the sandbox, which runs no workload.
                Decision::Excluded(exclusion @ iogate_core::exclusion::Exclusion::Sandbox) => {
                    Ok(format!("{info}: excluded ({exclusion}); no limits"))
                }
                Decision::Excluded(exclusion) => Ok(format!("warning: {info}: excluded ({exclusion}); no limits")),
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
