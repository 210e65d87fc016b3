//! A blocking CRI client over containerd's unix socket: the calls the kubelet
//! makes to run a pod, enough for tests to drive containerd the way a node
//! does. It owns a single-threaded tokio runtime so tests stay synchronous.
//!
//! The tonic channel reconnects by itself, so one client survives a
//! containerd restart on the same socket.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{Container, ContainerState, PodSandbox};

/// Longest a single RPC may take; creating a container through a slow NRI
/// plugin is the slowest thing the tests do.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// A refused or failed CRI call: which call on which object, and the
/// runtime's status, kept whole so tests can assert on its message.
#[derive(Debug)]
pub struct RpcError {
    pub call: String,
    pub status: tonic::Status,
}

impl RpcError {
    fn new(call: impl Into<String>) -> impl FnOnce(tonic::Status) -> RpcError {
        let call = call.into();
        move |status| RpcError { call, status }
    }

    pub fn code(&self) -> tonic::Code {
        self.status.code()
    }

    pub fn message(&self) -> &str {
        self.status.message()
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {:?}: {}", self.call, self.status.code(), self.status.message())
    }
}

impl std::error::Error for RpcError {}

/// A pod as a test describes it. `uid` defaults to a fresh UUID-shaped id,
/// as the API server would assign.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// cgroupfs parent; `None` puts the pod where the kubelet's cgroupfs
    /// driver puts a BestEffort pod: `<client cgroup root>/besteffort/pod<uid>`.
    pub cgroup_parent: Option<String>,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            uid: fresh_uid(),
            annotations: HashMap::new(),
            labels: HashMap::new(),
            cgroup_parent: None,
        }
    }

    pub fn annotation(mut self, key: &str, value: &str) -> PodSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// A running pod sandbox and the config it was created with (CreateContainer
/// needs the latter again, as the kubelet passes it).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl Pod {
    pub fn name(&self) -> &str {
        self.config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.config.metadata.as_ref().map(|m| m.namespace.as_str()).unwrap_or("")
    }

    pub fn uid(&self) -> &str {
        self.config.metadata.as_ref().map(|m| m.uid.as_str()).unwrap_or("")
    }

    pub fn log_directory(&self) -> &Path {
        Path::new(&self.config.log_directory)
    }

    pub fn cgroup_parent(&self) -> &str {
        self.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or("")
    }

    fn describe(&self) -> String {
        format!("pod {}/{} ({})", self.namespace(), self.name(), short(&self.id))
    }
}

/// A host directory bind-mounted read-write into a container.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub host: PathBuf,
    pub container: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub mounts: Vec<BindMount>,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            command: Vec::new(),
            args: Vec::new(),
            mounts: Vec::new(),
            annotations: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    pub fn command<S: AsRef<str>>(mut self, argv: &[S]) -> ContainerSpec {
        self.command = argv.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    pub fn args<S: AsRef<str>>(mut self, argv: &[S]) -> ContainerSpec {
        self.args = argv.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    pub fn mount(mut self, host: &Path, container: &str) -> ContainerSpec {
        self.mounts.push(BindMount { host: host.to_path_buf(), container: PathBuf::from(container) });
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> ContainerSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ContainerSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
    log_root: PathBuf,
    cgroup_root: String,
}

impl CriClient {
    /// Connects to the CRI socket. Pod log directories go under `log_root`
    /// (one per pod uid); default pod cgroups under `cgroup_root` (a
    /// cgroupfs path such as `/kubepods`).
    pub fn connect(socket: &Path, log_root: &Path, cgroup_root: &str) -> Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the CRI client's tokio runtime")?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic but unused: the connector
                // ignores it and dials the unix socket.
                Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(RPC_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            socket: socket.to_path_buf(),
            log_root: log_root.to_path_buf(),
            cgroup_root: cgroup_root.trim_end_matches('/').to_string(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn version(&mut self) -> Result<cri::VersionResponse> {
        let req = cri::VersionRequest { version: "v1".into() };
        Ok(self.rt.block_on(self.runtime.version(req)).map_err(RpcError::new("CRI Version"))?.into_inner())
    }

    /// The image as the CRI plugin knows it, `None` if it does not.
    pub fn image_status(&mut self, reference: &str) -> Result<Option<cri::Image>> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: reference.into(), ..Default::default() }),
            verbose: false,
        };
        let resp = self
            .rt
            .block_on(self.images.image_status(req))
            .map_err(RpcError::new(format!("ImageStatus {reference}")))?;
        Ok(resp.into_inner().image)
    }

    /// Runs a pod sandbox the way the kubelet runs a host-network pod.
    pub fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod> {
        let what = format!("pod {}/{} (uid {})", spec.namespace, spec.name, spec.uid);
        let log_dir = self.log_root.join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating log directory {} of {what}", log_dir.display()))?;
        let cgroup_parent =
            spec.cgroup_parent.clone().unwrap_or_else(|| format!("{}/besteffort/pod{}", self.cgroup_root, spec.uid));
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .map_err(RpcError::new(format!("RunPodSandbox {what}")))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// Creates a container in `pod`. A refusal (e.g. by an NRI plugin) comes
    /// back as the runtime's status for the test to assert on.
    pub fn create_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String, RpcError> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: spec.image.clone(), ..Default::default() }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            mounts: spec
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container.display().to_string(),
                    host_path: m.host.display().to_string(),
                    readonly: false,
                    ..Default::default()
                })
                .collect(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            // The kubelet's layout: <pod log dir>/<container>/<attempt>.log.
            log_path: format!("{}/0.log", spec.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self
            .rt
            .block_on(self.runtime.create_container(req))
            .map_err(RpcError::new(format!("CreateContainer {} in {}", spec.name, pod.describe())))?
            .into_inner()
            .container_id)
    }

    pub fn start_container(&mut self, container_id: &str) -> Result<()> {
        let req = cri::StartContainerRequest { container_id: container_id.into() };
        self.rt
            .block_on(self.runtime.start_container(req))
            .map_err(RpcError::new(format!("StartContainer {}", short(container_id))))?;
        Ok(())
    }

    pub fn stop_container(&mut self, container_id: &str, grace: Duration) -> Result<()> {
        let req = cri::StopContainerRequest { container_id: container_id.into(), timeout: grace.as_secs() as i64 };
        self.rt
            .block_on(self.runtime.stop_container(req))
            .map_err(RpcError::new(format!("StopContainer {}", short(container_id))))?;
        Ok(())
    }

    /// ContainerStatus; with `verbose` its `info` map carries the runtime's
    /// JSON (pid, runtime spec).
    pub fn container_status(&mut self, container_id: &str, verbose: bool) -> Result<cri::ContainerStatusResponse> {
        let req = cri::ContainerStatusRequest { container_id: container_id.into(), verbose };
        Ok(self
            .rt
            .block_on(self.runtime.container_status(req))
            .map_err(RpcError::new(format!("ContainerStatus {}", short(container_id))))?
            .into_inner())
    }

    fn status_of(&mut self, container_id: &str) -> Result<cri::ContainerStatus> {
        self.container_status(container_id, false)?
            .status
            .with_context(|| format!("ContainerStatus {} answered without a status", short(container_id)))
    }

    /// Waits for the container to exit and returns its exit code.
    pub fn wait_exit(&mut self, container_id: &str, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status_of(container_id)?;
            if st.state == ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            if Instant::now() > deadline {
                bail!(
                    "expected container {} ({}) to exit within {timeout:?}, found it still {:?}",
                    short(container_id),
                    st.metadata.map(|m| m.name).unwrap_or_default(),
                    ContainerState::try_from(st.state).unwrap_or(ContainerState::ContainerUnknown)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the container wrote to stdout and stderr, from the CRI log file,
    /// without the per-line `<time> <stream> <tag> ` prefixes.
    pub fn container_logs(&mut self, container_id: &str) -> Result<String> {
        let st = self.status_of(container_id)?;
        if st.log_path.is_empty() {
            bail!("container {} has no log path in its status", short(container_id));
        }
        let text = std::fs::read_to_string(&st.log_path)
            .with_context(|| format!("reading the log {} of container {}", st.log_path, short(container_id)))?;
        Ok(strip_cri_log(&text))
    }

    /// The host PID of the container's first process.
    pub fn container_pid(&mut self, container_id: &str) -> Result<u32> {
        let resp = self.container_status(container_id, true)?;
        let info = resp
            .info
            .get("info")
            .with_context(|| format!("verbose ContainerStatus {} has no \"info\" entry", short(container_id)))?;
        let v: serde_json::Value = serde_json::from_str(info)
            .with_context(|| format!("ContainerStatus {} info is not JSON: {info}", short(container_id)))?;
        v["pid"]
            .as_u64()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .with_context(|| format!("expected a pid > 0 in ContainerStatus {} info, found {}", short(container_id), v["pid"]))
    }

    /// Containers, all or those of one pod.
    pub fn list_containers(&mut self, pod_id: Option<&str>) -> Result<Vec<Container>> {
        let filter = pod_id.map(|p| cri::ContainerFilter { pod_sandbox_id: p.into(), ..Default::default() });
        Ok(self
            .rt
            .block_on(self.runtime.list_containers(cri::ListContainersRequest { filter }))
            .map_err(RpcError::new(format!("ListContainers (pod {})", pod_id.map(short).unwrap_or("any"))))?
            .into_inner()
            .containers)
    }

    pub fn list_pods(&mut self) -> Result<Vec<PodSandbox>> {
        Ok(self
            .rt
            .block_on(self.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .map_err(RpcError::new("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// Stops the pod (its containers with it) and removes it, as the kubelet
    /// does on deletion.
    pub fn stop_and_remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod_id.into() }))
            .map_err(RpcError::new(format!("StopPodSandbox {}", short(pod_id))))?;
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod_id.into() }))
            .map_err(RpcError::new(format!("RemovePodSandbox {}", short(pod_id))))?;
        Ok(())
    }

    /// Stops and removes every pod this containerd has; every failure is
    /// reported, not just the first.
    pub fn remove_all_pods(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for p in self.list_pods()? {
            if let Err(e) = self.stop_and_remove_pod(&p.id) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("removing pods: {}", errors.join("; "));
        }
        Ok(())
    }
}

/// Host network, as the pods iogate cares about need no CNI; a shared PID
/// namespace per pod, as the kubelet's default.
fn pod_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Container and sandbox ids are 64 hex digits; 12 identify them in messages.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A UUID-shaped pod uid, unique per process and call.
fn fresh_uid() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// Turns CRI log lines (`<RFC3339 time> <stdout|stderr> <P|F> <text>`) back
/// into the stream: `P` marks a line the runtime split, continued by the next.
pub fn strip_cri_log(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, stream, tag, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
        match (stream, tag) {
            (Some("stdout" | "stderr"), Some("P")) => out.push_str(rest.unwrap_or("")),
            (Some("stdout" | "stderr"), Some("F")) => {
                out.push_str(rest.unwrap_or(""));
                out.push('\n');
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_prefixes_are_stripped_and_partial_lines_joined() {
        let log = "2024-05-01T10:00:00.000000001Z stdout F hello world\n\
                   2024-05-01T10:00:00.000000002Z stderr P part one \n\
                   2024-05-01T10:00:00.000000003Z stderr F and two\n\
                   2024-05-01T10:00:00.000000004Z stdout F \n";
        assert_eq!(strip_cri_log(log), "hello world\npart one and two\n\n");
    }

    #[test]
    fn pod_uids_are_uuid_shaped_and_distinct() {
        let (a, b) = (fresh_uid(), fresh_uid());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
    }
}
