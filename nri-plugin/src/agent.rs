//! The plugin's parts put together: the policy in force, the reconciler's
//! loop, the watches that keep the policy and the pods' annotations live,
//! and the metrics endpoint. `main` adds the NRI stub on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use iogate_core::Config;
use nri::RuntimeHandle;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::current_policy::CurrentPolicy;
use crate::file_watch::{self, WatchedFile};
use crate::hook_reports::HookReports;
use crate::iogate_plugin::{build_admission, IogatePlugin};
use crate::pod_annotations::{self, PodAnnotations};
use crate::reconciler::{Reconciler, RepairVia, Settings};
use crate::telemetry::Telemetry;

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";
pub const DEFAULT_HOOK_LOG_DIR: &str = "/run/iogate/hooks";

pub const USAGE: &str = "\
  --metrics-listen ADDR        the plugin's /metrics (default 127.0.0.1:9465; $IOGATE_METRICS_LISTEN)
  --reconcile-interval DUR     how often every running container's limits are checked (default 10s; $IOGATE_RECONCILE_INTERVAL)
  --repair-via auto|cgroup|nri how repairs are written (default auto; $IOGATE_REPAIR_VIA)
  --hook-log-dir DIR           where injected hooks report, a host path (default /run/iogate/hooks; $IOGATE_HOOK_LOG_DIR)
  --pod-annotations-file FILE  JSON {\"ns/name\": {annotations}} standing in for the API server ($IOGATE_POD_ANNOTATIONS_FILE)
  --node-name NAME             watch this node's pods' annotations in the API server ($NODE_NAME)";

/// The plugin's settings beyond the policy.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The policy file, reloaded when it changes.
    pub config: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
    pub hook_log_dir: PathBuf,
    pub pod_annotations_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub settings: Settings,
}

impl AgentOptions {
    /// Defaults, then the environment (`env` is `std::env::var` in
    /// production).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<AgentOptions> {
        let mut o = AgentOptions {
            config: None,
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().expect("a valid default address"),
            hook_log_dir: PathBuf::from(DEFAULT_HOOK_LOG_DIR),
            pod_annotations_file: None,
            node_name: env("NODE_NAME").filter(|n| !n.is_empty()),
            settings: Settings::default(),
        };
        for (var, flag) in [
            ("IOGATE_METRICS_LISTEN", "--metrics-listen"),
            ("IOGATE_RECONCILE_INTERVAL", "--reconcile-interval"),
            ("IOGATE_REPAIR_VIA", "--repair-via"),
            ("IOGATE_HOOK_LOG_DIR", "--hook-log-dir"),
            ("IOGATE_POD_ANNOTATIONS_FILE", "--pod-annotations-file"),
        ] {
            if let Some(value) = env(var) {
                o.set(flag, value).with_context(|| format!("environment variable {var}"))?;
            }
        }
        Ok(o)
    }

    /// Whether `flag` is one of these options.
    pub fn accepts(flag: &str) -> bool {
        matches!(
            flag,
            "--metrics-listen"
                | "--reconcile-interval"
                | "--repair-via"
                | "--hook-log-dir"
                | "--pod-annotations-file"
                | "--node-name"
        )
    }

    pub fn set(&mut self, flag: &str, value: String) -> Result<()> {
        match flag {
            "--metrics-listen" => {
                self.metrics_listen = value
                    .parse()
                    .with_context(|| format!("{flag}: expected HOST:PORT (e.g. 127.0.0.1:9465), found {value:?}"))?
            }
            "--reconcile-interval" => {
                let d: Duration = humantime::parse_duration(&value)
                    .with_context(|| format!("{flag}: expected a duration (e.g. 10s), found {value:?}"))?;
                anyhow::ensure!(d >= Duration::from_millis(100), "{flag}: expected at least 100ms, found {value:?}");
                self.settings.interval = d;
            }
            "--repair-via" => {
                self.settings.repair_via = value.parse::<RepairVia>().map_err(|e| anyhow::anyhow!("{flag}: {e}"))?
            }
            "--hook-log-dir" => self.hook_log_dir = value.into(),
            "--pod-annotations-file" => self.pod_annotations_file = Some(value.into()),
            "--node-name" => self.node_name = Some(value).filter(|n| !n.is_empty()),
            other => anyhow::bail!("unexpected option {other:?}"),
        }
        Ok(())
    }
}

/// The running parts; dropping it ends the watches (the reconciler's thread
/// and the async runtime live as long as the process).
pub struct Agent {
    pub policy: Arc<CurrentPolicy>,
    pub reconciler: Arc<Reconciler>,
    pub plugin: Arc<IogatePlugin>,
    _watches: Vec<WatchedFile>,
    _runtime: tokio::runtime::Runtime,
}

impl Agent {
    /// Starts everything but the NRI connection. `initial` is the start-up
    /// policy, or why it is not usable (a pre-registered plugin then waits
    /// for containerd's).
    pub fn start(options: AgentOptions, initial: Result<Admission, String>) -> Result<Agent> {
        let hooks = HookReports::new(&options.hook_log_dir)?;
        info!(dir = %hooks.dir().display(), "injected hooks report into this directory");
        let policy = Arc::new(match initial {
            Ok(admission) => CurrentPolicy::new(admission.with_hook_reports(Some(hooks.clone()))),
            Err(reason) => CurrentPolicy::awaiting(reason),
        });
        let telemetry = Arc::new(Telemetry::new());
        let reconciler =
            Arc::new(Reconciler::new(policy.clone(), telemetry.clone(), Some(hooks.clone()), options.settings.clone()));
        let plugin = Arc::new(IogatePlugin::new(policy.clone(), reconciler.clone()));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("iogate-async")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let listener = std::net::TcpListener::bind(options.metrics_listen)
            .with_context(|| format!("binding the metrics endpoint {}", options.metrics_listen))?;
        info!(addr = %listener.local_addr()?, "metrics served at http://{}/metrics", listener.local_addr()?);
        let state_of = Arc::downgrade(&reconciler);
        let sources = crate::metrics_server::Sources {
            telemetry,
            guarantee: Arc::new(move || state_of.upgrade().map(|r| r.guarantee()).unwrap_or_default()),
        };
        runtime.spawn(async move {
            if let Err(e) = crate::metrics_server::serve(listener, sources).await {
                tracing::error!("the metrics endpoint failed: {e}");
            }
        });

        let mut watches = Vec::new();
        if let Some(path) = &options.config {
            watches.push(watch_config(path, &policy, &reconciler, &hooks)?);
        }
        match (&options.pod_annotations_file, &options.node_name) {
            (Some(path), _) => watches.push(watch_annotations_file(path, &reconciler)?),
            (None, Some(node)) => {
                let wake = Arc::downgrade(&reconciler);
                let on_change = move || {
                    if let Some(r) = wake.upgrade() {
                        r.wake();
                    }
                };
                match runtime.block_on(pod_annotations::connect(node, on_change)) {
                    Ok((source, watch)) => {
                        runtime.spawn(watch);
                        reconciler.set_annotations(source);
                    }
                    Err(e) => warn!(
                        "annotation changes on running pods will not be seen: {e:#}; limits follow the annotations as of each pod's creation"
                    ),
                }
            }
            (None, None) => info!(
                "no API server and no --pod-annotations-file: limits follow each pod's annotations as of its creation"
            ),
        }

        let looping = reconciler.clone();
        std::thread::Builder::new()
            .name("iogate-reconciler".into())
            .spawn(move || looping.run())
            .context("starting the reconciler")?;
        Ok(Agent { policy, reconciler, plugin, _watches: watches, _runtime: runtime })
    }

    /// Repairs through the runtime need its connection.
    pub fn attach(&self, runtime: RuntimeHandle) {
        self.reconciler.set_runtime(runtime);
    }
}

/// Reloads the policy when its file changes; a file that does not load
/// leaves the policy in force as it was, and says why.
fn watch_config(
    path: &Path,
    policy: &Arc<CurrentPolicy>,
    reconciler: &Arc<Reconciler>,
    hooks: &HookReports,
) -> Result<WatchedFile> {
    let initial = std::fs::read_to_string(path).ok();
    let (policy, reconciler, hooks, file) = (policy.clone(), reconciler.clone(), hooks.clone(), path.to_path_buf());
    file_watch::watch(path, initial, move |read| {
        let loaded = read.map_err(anyhow::Error::msg).and_then(|text| {
            let config = Config::from_toml(&text, &file, |k| std::env::var(k).ok())?;
            build_admission(config)
        });
        match loaded {
            Ok(admission) => {
                info!(path = %file.display(), "config file changed: new policy in force, applying it to running containers");
                policy.set(admission.with_hook_reports(Some(hooks.clone())));
                reconciler.wake();
            }
            Err(e) => {
                reconciler.telemetry().config_reload_failure();
                warn!(path = %file.display(), "config file changed but not applied, the previous policy stays in force: {e:#}");
            }
        }
    })
}

/// Loads the annotations stand-in and reloads it when it changes; a file
/// that does not parse keeps the previous content.
fn watch_annotations_file(path: &Path, reconciler: &Arc<Reconciler>) -> Result<WatchedFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the pod annotations file {}", path.display()))?;
    let pods =
        pod_annotations::parse_file(&text).with_context(|| format!("pod annotations file {}", path.display()))?;
    let shared = Arc::new(RwLock::new(pods));
    reconciler.set_annotations(PodAnnotations::File(shared.clone()));
    let (reconciler, file) = (reconciler.clone(), path.to_path_buf());
    file_watch::watch(path, Some(text), move |read| {
        match read.map_err(anyhow::Error::msg).and_then(|t| pod_annotations::parse_file(&t)) {
            Ok(pods) => {
                info!(path = %file.display(), pods = pods.len(), "pod annotations changed");
                *shared.write().unwrap_or_else(|p| p.into_inner()) = pods;
                reconciler.wake();
            }
            Err(e) => {
                warn!(path = %file.display(), "pod annotations file changed but not applied, keeping the previous annotations: {e:#}")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn options_from_the_environment_and_flags() {
        let env: HashMap<&str, &str> = [("IOGATE_RECONCILE_INTERVAL", "2s"), ("NODE_NAME", "node-1")].into();
        let mut o = AgentOptions::from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(o.settings.interval, Duration::from_secs(2));
        assert_eq!(o.node_name.as_deref(), Some("node-1"));
        assert_eq!(o.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert!(AgentOptions::accepts("--repair-via"));
        o.set("--repair-via", "cgroup".into()).unwrap();
        assert_eq!(o.settings.repair_via, RepairVia::Cgroup);
        let e = o.set("--reconcile-interval", "soon".into()).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--reconcile-interval: expected a duration (e.g. 10s), found \"soon\""),
            "{e:#}"
        );
        let e = format!("{:#}", o.set("--repair-via", "magic".into()).unwrap_err());
        assert_eq!(e, "--repair-via: expected auto, cgroup or nri, found \"magic\"");
        let bad: HashMap<&str, &str> = [("IOGATE_METRICS_LISTEN", "everywhere")].into();
        let e = format!("{:#}", AgentOptions::from_env(|k| bad.get(k).map(|v| v.to_string())).unwrap_err());
        assert!(
            e.starts_with("environment variable IOGATE_METRICS_LISTEN: --metrics-listen: expected HOST:PORT"),
            "{e}"
        );
    }
}
