//! `iogate-nri-plugin`: block-I/O limits in every container's spec, before
//! it starts.
//!
//! Started by containerd from its NRI plugin directory (pre-registered), it
//! serves that one connection and exits with it. Started any other way (a
//! DaemonSet, systemd), it connects to containerd's NRI socket and
//! reconnects with backoff whenever containerd restarts. Either way the
//! reconciler keeps running containers' limits what the policy says, and
//! `/metrics` tells how that goes (`iogate_nri_plugin::agent`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use iogate_core::{config, Config};
use iogate_nri_plugin::agent::{Agent, AgentOptions};
use iogate_nri_plugin::iogate_plugin::build_admission;
use nri::{PreRegistered, Registration, Stub, DEFAULT_SOCKET_PATH};

const USAGE: &str = "\
usage: iogate-nri-plugin [--config FILE] [--socket PATH] [--name NAME] [--index NN]
       iogate-nri-plugin explain --namespace NS --pod NAME --container NAME ... (explain --help)
  --config FILE  policy file (TOML), reloaded when it changes; default $IOGATE_CONFIG, else /etc/iogate/config.toml if it exists
  --socket PATH  containerd's NRI socket for an external plugin (default /var/run/nri/nri.sock)
  --name, --index  NRI registration (default iogate, 10)
{AGENT}
Environment: CONTAINER_IOPS_LIMIT, DATA_MOUNT, EXCLUDE_KEYWORDS, CGROUP_VERSION, IOGATE_* (see docs/policy.md);
IOGATE_LOG (filter, default info), IOGATE_LOG_FILE (log to this file instead of stderr).
When containerd starts it from its plugin directory, the connection and name come from NRI_PLUGIN_*.";

fn usage() -> String {
    USAGE.replace("{AGENT}", iogate_nri_plugin::agent::USAGE)
}

struct Args {
    config: Option<PathBuf>,
    socket: PathBuf,
    name: String,
    index: String,
    agent: AgentOptions,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        config: None,
        socket: PathBuf::from(DEFAULT_SOCKET_PATH),
        name: "iogate".into(),
        index: "10".into(),
        agent: AgentOptions::from_env(|k| std::env::var(k).ok())?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} expects a value\n{}", usage()));
        match arg.as_str() {
            "--config" => a.config = Some(value()?.into()),
            "--socket" => a.socket = value()?.into(),
            "--name" => a.name = value()?,
            "--index" => a.index = value()?,
            flag if AgentOptions::accepts(flag) => a.agent.set(flag, value()?)?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?}\n{}", usage()),
        }
    }
    a.config = config::discover(a.config.take(), |k| std::env::var(k).ok());
    a.agent.config = a.config.clone();
    Ok(a)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    match PreRegistered::from_env()? {
        Some(launched) => {
            tracing::info!(
                name = launched.registration.name(),
                index = launched.registration.index(),
                "started by containerd"
            );
            // containerd may still hand us the policy in Configure.
            let initial = build_admission(config).map_err(|e| {
                tracing::warn!("start-up policy not usable, expecting one from containerd: {e:#}");
                format!("{e:#}")
            });
            let agent = Agent::start(args.agent, initial)?;
            let stub = Stub::new(agent.plugin.clone());
            agent.attach(stub.runtime());
            Ok(stub.run_pre_registered(launched)?)
        }
        None => {
            let agent = Agent::start(args.agent, Ok(build_admission(config)?))?;
            let stub = Stub::new(agent.plugin.clone());
            agent.attach(stub.runtime());
            let registration = Registration::new(&args.name, &args.index)?;
            tracing::info!(socket = %args.socket.display(), "connecting to containerd as an external plugin");
            Ok(stub.run_external(&args.socket, &registration)?)
        }
    }
}

/// `explain`: JSON on stdout, exit 0 for any decision; 2 for a usage or
/// config error, with the reason on stderr.
fn explain(args: &[String]) -> ExitCode {
    use iogate_nri_plugin::explain;
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", explain::USAGE);
        return ExitCode::SUCCESS;
    }
    let parsed = match explain::parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("iogate-nri-plugin explain: {e:#}\n{}", explain::USAGE);
            return ExitCode::from(2);
        }
    };
    match explain::explain(&parsed, |k| std::env::var(k).ok()) {
        Ok(x) => {
            println!("{}", serde_json::to_string_pretty(&x).expect("an explanation always serializes"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iogate-nri-plugin explain: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("explain") {
        return explain(&args[1..]);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOGATE_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    // containerd discards a pre-registered plugin's output and gives it
    // only NRI_* variables: a wrapper script can point this at a file.
    match std::env::var_os("IOGATE_LOG_FILE") {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => logs.with_writer(std::sync::Mutex::new(file)).init(),
            Err(e) => {
                eprintln!("iogate-nri-plugin: error: cannot open IOGATE_LOG_FILE {}: {e}", path.to_string_lossy());
                return ExitCode::FAILURE;
            }
        },
        None => logs.with_writer(std::io::stderr).init(),
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("iogate-nri-plugin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
