//! `iogate-metrics-sidecar`: loads the block-I/O eBPF program, attributes
//! every request to its pod, and serves the IOEye REST API and Prometheus.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iogate_core::cgroup::CgroupMode;
use iogate_core::CgroupFs;
use iogate_metrics_sidecar::cgroup_stats::CgroupStatSource;
use iogate_metrics_sidecar::counters::{CounterSource, SourceKind};
use iogate_metrics_sidecar::diagnosis::NetworkMajors;
use iogate_metrics_sidecar::ebpf::EbpfSource;
use iogate_metrics_sidecar::host_cgroups::HostCgroups;
use iogate_metrics_sidecar::plugin_guarantee;
use iogate_metrics_sidecar::pods::{DirectoryStatus, PodDirectory};
use iogate_metrics_sidecar::sampler::Sampler;
use iogate_metrics_sidecar::serve::{self, Bounds};
use iogate_metrics_sidecar::state::{PodsStatus, SidecarState};
use iogate_metrics_sidecar::token_review::TokenReviewer;
use iogate_metrics_sidecar::web_access::WebAccess;
use iogate_metrics_sidecar::web_config::WebConfig;

/// How often the web config's files are looked at for a change: well
/// within the minute or so a secret update takes to reach the pod.
const WEB_CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(5);

const USAGE: &str = "\
usage: iogate-metrics-sidecar [options]

  --listen ADDR        HTTP address (default 0.0.0.0:9464)
  --interval SECONDS   sampling window (default 5)
  --source S           auto (eBPF, else cgroup statistics), ebpf (required),
                       or cgroup-stats (default auto)
  --node-name NAME     this node, to watch its pods (default $NODE_NAME)
  --no-kubernetes      don't contact the API; pods are named by UID
  --cgroup-version V   auto, v1 or v2 (default auto)
  --plugin ADDR        the NRI plugin's pod-local endpoint, asked for each
                       container's guarantee (default 127.0.0.1:9465)
  --no-plugin          don't ask; the guarantee fields stay null
  --web.config.file F  TLS and basic auth, in prometheus/exporter-toolkit's
                       format (/healthz and /readyz stay open); reloaded
                       when it or the files it names change
  --kube-auth          also accept Kubernetes bearer tokens whose user RBAC
                       lets get the path (nonResourceURLs), checked with
                       TokenReview and SubjectAccessReview; without a web
                       config, tokens are then required

Environment: IOGATE_LOG (log filter, default info).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceChoice {
    Auto,
    Ebpf,
    CgroupStats,
}

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    interval: Duration,
    source: SourceChoice,
    node_name: Option<String>,
    kubernetes: bool,
    cgroup_mode: CgroupMode,
    plugin: Option<SocketAddr>,
    web_config: Option<std::path::PathBuf>,
    kube_auth: bool,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut args = Args {
        listen: "0.0.0.0:9464".parse().expect("valid default address"),
        interval: Duration::from_secs(5),
        source: SourceChoice::Auto,
        node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
        kubernetes: true,
        cgroup_mode: CgroupMode::Auto,
        plugin: Some("127.0.0.1:9465".parse().expect("valid default address")),
        web_config: None,
        kube_auth: false,
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().with_context(|| format!("{flag} expects a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v.parse().with_context(|| format!("--listen: expected HOST:PORT, found {v:?}"))?;
            }
            "--interval" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| (0.1..=3600.0).contains(s))
                    .with_context(|| format!("--interval: expected seconds between 0.1 and 3600, found {v:?}"))?;
                args.interval = Duration::from_secs_f64(secs);
            }
            "--source" => {
                let v = value()?;
                args.source = match v.as_str() {
                    "auto" => SourceChoice::Auto,
                    "ebpf" => SourceChoice::Ebpf,
                    "cgroup-stats" => SourceChoice::CgroupStats,
                    _ => bail!("--source: expected auto, ebpf or cgroup-stats, found {v:?}"),
                };
            }
            "--node-name" => args.node_name = Some(value()?),
            "--no-kubernetes" => args.kubernetes = false,
            "--plugin" => {
                let v = value()?;
                args.plugin = Some(v.parse().with_context(|| format!("--plugin: expected HOST:PORT, found {v:?}"))?);
            }
            "--no-plugin" => args.plugin = None,
            "--web.config.file" => args.web_config = Some(value()?.into()),
            "--kube-auth" => args.kube_auth = true,
            "--cgroup-version" => {
                let v = value()?;
                args.cgroup_mode = v.parse().map_err(|e| anyhow::anyhow!("--cgroup-version: {e}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.kube_auth && !args.kubernetes {
        bail!("--kube-auth asks the Kubernetes API about each token, which --no-kubernetes forbids: give one of them");
    }
    Ok(args)
}

/// The reviewer of bearer tokens, with `--kube-auth`: the API must be
/// configured (in-cluster or a kubeconfig), or the sidecar does not start,
/// so that a lock asked for is never silently missing.
async fn token_reviewer(args: &Args) -> Result<Option<Arc<TokenReviewer>>> {
    if !args.kube_auth {
        return Ok(None);
    }
    let client = kube::Client::try_default()
        .await
        .context("--kube-auth: no Kubernetes API configuration (neither in-cluster nor a kubeconfig)")?;
    let plain = args.web_config.is_none();
    if plain {
        tracing::warn!(
            "--kube-auth without a web config: bearer tokens travel in clear; serve TLS with --web.config.file"
        );
    }
    tracing::info!("bearer tokens are checked with TokenReview and SubjectAccessReview");
    Ok(Some(Arc::new(TokenReviewer::new(client))))
}

/// The eBPF program if it loads; else, unless eBPF was required, the
/// cgroup statistics, with the reason eBPF failed (said loudly: the
/// operator loses latency).
fn choose_source(choice: SourceChoice, fs: &CgroupFs) -> Result<(Box<dyn CounterSource>, Option<String>)> {
    let fallback = |why: String| -> Result<(Box<dyn CounterSource>, Option<String>)> {
        Ok((Box::new(CgroupStatSource::of(fs)), Some(why)))
    };
    match choice {
        SourceChoice::CgroupStats => {
            tracing::warn!("eBPF disabled by --source cgroup-stats: IOPS and throughput only, latency unavailable");
            fallback("disabled by --source cgroup-stats".into())
        }
        SourceChoice::Ebpf => Ok((Box::new(EbpfSource::load().context("loading the eBPF program")?), None)),
        SourceChoice::Auto => match EbpfSource::load() {
            Ok(source) => Ok((Box::new(source), None)),
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(
                    "eBPF UNAVAILABLE: {why}. Falling back to cgroup statistics: IOPS and throughput only, \
                     latency fields unavailable"
                );
                fallback(why)
            }
        },
    }
}

async fn pod_directory(args: &Args) -> PodDirectory {
    if !args.kubernetes {
        return PodDirectory::not_connected("disabled by --no-kubernetes");
    }
    let Some(node) = &args.node_name else {
        let why = "no node name (set NODE_NAME from the downward API's spec.nodeName, or --node-name)";
        tracing::warn!("pods are named by UID only: {why}");
        return PodDirectory::not_connected(why);
    };
    match PodDirectory::connect(node).await {
        Ok((directory, watch)) => {
            tokio::spawn(watch);
            tracing::info!(node = %node, "watching this node's pods");
            directory
        }
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!("pods are named by UID only: {why}");
            PodDirectory::not_connected(why)
        }
    }
}

fn pods_status(directory: &PodDirectory) -> PodsStatus {
    match directory.status() {
        DirectoryStatus::NotConnected(why) => PodsStatus { mode: "none".into(), synced: false, detail: why },
        DirectoryStatus::Syncing => {
            PodsStatus { mode: "kubernetes".into(), synced: false, detail: "listing this node's pods".into() }
        }
        DirectoryStatus::Synced => PodsStatus { mode: "kubernetes".into(), synced: true, detail: "watching".into() },
    }
}

/// The sampling loop, on its own thread: reading maps and walking cgroups
/// is blocking work that must not stall the HTTP handlers.
fn run_sampler(shared: Arc<SidecarState>, mut sampler: Sampler, mut cgroups: HostCgroups) {
    let mut next = Instant::now();
    loop {
        // The pods status first: publishing renders it into /metrics.
        shared.set_pods(pods_status(cgroups.pods()));
        match sampler.tick(&mut cgroups) {
            Ok(published) => shared.publish(published),
            Err(e) => tracing::warn!("sampling: {e:#}"),
        }
        release_freed_memory();
        next += shared.interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        std::thread::sleep(next - now);
    }
}

async fn run(args: Args) -> Result<()> {
    // First: a config that does not load must stop the sidecar before it
    // serves anything in the open.
    let tokens = token_reviewer(&args).await?;
    let access = match &args.web_config {
        Some(path) => {
            let config = WebConfig::load(path).context("--web.config.file")?;
            WebAccess::watch(path.clone(), config, WEB_CONFIG_POLL, tokens).await
        }
        None => WebAccess::fixed(&WebConfig::open(), tokens),
    };
    let fs = CgroupFs::detect(args.cgroup_mode).context("finding the cgroup hierarchy with the io controller")?;
    let (source, ebpf_error) = choose_source(args.source, &fs)?;
    let kind = source.kind();
    let throttle_wait = source.throttle_wait();
    match &throttle_wait {
        Ok(()) => tracing::info!("timing blk-throttle's wait per bio (throttle_wait_ns, throttled_seconds)"),
        Err(why) => tracing::warn!("throttle wait unavailable, its fields are null: {why}"),
    }
    let directory = pod_directory(&args).await;
    let root = fs.mount.clone();
    let cgroups = HostCgroups::new(fs, directory.clone())
        .with_context(|| format!("scanning the cgroup hierarchy at {}", root.display()))?;
    match cgroups.pressure_kept() {
        Ok(()) => tracing::info!("reading pods' and containers' I/O stall time (io_pressure_*_seconds)"),
        Err(why) => tracing::warn!("I/O stall time unavailable, its fields are null: {why}"),
    }
    let shared = Arc::new(
        SidecarState::new(args.interval, kind, ebpf_error, pods_status(&directory))
            .with_throttle_wait(throttle_wait)
            .with_io_pressure(cgroups.pressure_kept()),
    );
    let sampler = Sampler::new(source, NetworkMajors::load());
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || run_sampler(shared, sampler, cgroups))
            .context("starting the sampler thread")?;
    }
    if let Some(plugin) = args.plugin {
        let shared = shared.clone();
        tokio::spawn(async move { plugin_guarantee::poll(plugin, shared.interval, &shared.guarantee).await });
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        source = kind.name(),
        latency = kind == SourceKind::Ebpf,
        cgroups = %root.display(),
        interval_s = args.interval.as_secs_f64(),
        "serving"
    );
    let bounds = Bounds::default().within_fd_limit(serve::raise_fd_limit());
    tracing::info!(
        header_timeout_s = bounds.header_timeout.as_secs_f64(),
        request_timeout_s = bounds.request_timeout.as_secs_f64(),
        max_connections = bounds.max_connections,
        "HTTP bounds"
    );
    serve::serve(listener, iogate_metrics_sidecar::http::router(shared), bounds, access, shutdown()).await;
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// Keeps glibc from holding on to freed scrape buffers: a `/metrics` body
/// at 1,000 pods is megabytes, and glibc's dynamic mmap threshold would
/// otherwise grow to that size after the first scrape, so later bodies come
/// from the heap and stay resident. A fixed threshold returns them to the
/// kernel on free; two arenas are plenty for a sampler and two HTTP workers.
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands freed heap pages back to the kernel. Each tick frees the previous
/// frame, window and report — thousands of small allocations at 1,000 pods
/// — in holes glibc would otherwise keep resident.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    bound_malloc_retention();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOGATE_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("iogate-metrics-sidecar: error: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iogate-metrics-sidecar: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iogate-metrics-sidecar: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_parse_and_bad_values_say_what_was_expected() {
        let a =
            parse(&["--listen", "127.0.0.1:9000", "--interval", "0.5", "--source", "ebpf", "--no-kubernetes"]).unwrap();
        assert_eq!(a.listen.port(), 9000);
        assert_eq!(a.interval, Duration::from_millis(500));
        assert_eq!(a.source, SourceChoice::Ebpf);
        assert!(!a.kubernetes);
        let msg = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert_eq!(msg(&["--interval", "0"]), "--interval: expected seconds between 0.1 and 3600, found \"0\"");
        assert_eq!(msg(&["--source", "bpf"]), "--source: expected auto, ebpf or cgroup-stats, found \"bpf\"");
        assert_eq!(
            msg(&["--listen", "9464"]),
            "--listen: expected HOST:PORT, found \"9464\": invalid socket address syntax"
        );
        assert_eq!(msg(&["--listen"]), "--listen expects a value");
        assert_eq!(
            msg(&["--plugin", "localhost"]),
            "--plugin: expected HOST:PORT, found \"localhost\": invalid socket address syntax"
        );
        assert_eq!(parse(&["--no-plugin"]).unwrap().plugin, None);
        assert_eq!(parse(&[]).unwrap().plugin.unwrap().port(), 9465);
        assert_eq!(msg(&["--frobnicate"]), "unknown argument \"--frobnicate\"");
    }
}
