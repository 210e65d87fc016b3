//! A small blocking CRI client over containerd's unix socket: just what the
//! tests need to run pods the way the kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    log_root: PathBuf,
}

/// A pod as the test describes it.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// cgroupfs parent, e.g. `/iogate-e2e-123/pod<uid>`.
    pub cgroup_parent: String,
    /// `hostPID: true`: the pod and its containers in the host's PID
    /// namespace.
    pub host_pid: bool,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    config: cri::PodSandboxConfig,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// host path → container path, read-write.
    pub mounts: Vec<(PathBuf, String)>,
    /// Mounts with more than a read-write bind (a pod spec's volumes).
    pub volume_mounts: Vec<Mount>,
    pub env: Vec<(String, String)>,
    pub security: Security,
    pub memory_limit_bytes: Option<i64>,
    pub cpu_shares: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub readonly: bool,
    /// `mountPropagation: HostToContainer` (rslave): mounts made on the host
    /// later appear inside.
    pub host_to_container: bool,
}

/// A container's security context, in the terms the kubelet passes to the
/// CRI. The default is the testbed's ordinary container: the runtime's
/// defaults, no seccomp profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Security {
    pub run_as_user: Option<i64>,
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// Capability names as a pod spec gives them (`ALL`, `BPF`): containerd
    /// adds the `CAP_` prefix.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// seccomp `RuntimeDefault`: the runtime's own default profile.
    pub seccomp_runtime_default: bool,
}

impl Security {
    fn to_cri(&self, host_pid: bool) -> cri::LinuxContainerSecurityContext {
        let capabilities =
            (!self.add_capabilities.is_empty() || !self.drop_capabilities.is_empty()).then(|| cri::Capability {
                add_capabilities: self.add_capabilities.clone(),
                drop_capabilities: self.drop_capabilities.clone(),
                ..Default::default()
            });
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(host_network(host_pid)),
            capabilities,
            run_as_user: self.run_as_user.map(|value| cri::Int64Value { value }),
            readonly_rootfs: self.readonly_rootfs,
            no_new_privs: self.no_new_privs,
            seccomp: self.seccomp_runtime_default.then(|| cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Cri {
    pub fn connect(socket: &Path, log_root: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to CRI at {}", socket.display()))?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            log_root: log_root.to_path_buf(),
        })
    }

    /// Waits until CRI knows `reference`: `ctr images import` tells CRI by an
    /// event, asynchronously, and a pod started before would try a pull.
    pub fn wait_for_image(&mut self, reference: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: reference.into(), ..Default::default() }),
                verbose: false,
            };
            let found = self
                .rt
                .block_on(self.images.image_status(req))
                .map_err(|s| anyhow::anyhow!("ImageStatus {reference}: {}", s.message()))?
                .into_inner()
                .image
                .is_some();
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRI does not list image {reference} {timeout:?} after its import");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod> {
        let log_dir = self.log_root.join(&spec.uid);
        std::fs::create_dir_all(&log_dir)?;
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_dir.display().to_string(),
            annotations: spec.annotations.clone(),
            labels: spec.labels.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: spec.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network(spec.host_pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(req))
            .map_err(|s| anyhow::anyhow!("RunPodSandbox {}/{}: {}", spec.namespace, spec.name, s.message()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// Creates a container; a refusal comes back as the runtime's status
    /// (strict mode is asserted on its message).
    pub fn create_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String, tonic::Status> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: spec.image.clone(), ..Default::default() }),
            command: spec.command.clone(),
            mounts: (spec.mounts.iter().map(|(host, container)| Mount {
                host: host.clone(),
                container: container.clone(),
                readonly: false,
                host_to_container: false,
            }))
            .chain(spec.volume_mounts.iter().cloned())
            .map(|m| cri::Mount {
                container_path: m.container,
                host_path: m.host.display().to_string(),
                readonly: m.readonly,
                propagation: if m.host_to_container {
                    cri::MountPropagation::PropagationHostToContainer as i32
                } else {
                    cri::MountPropagation::PropagationPrivate as i32
                },
                ..Default::default()
            })
            .collect(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| cri::KeyValue { key: key.clone(), value: value.clone() })
                .collect(),
            log_path: format!("{}.log", spec.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(spec.security.to_cri(host_pid(&pod.config))),
                resources: (spec.memory_limit_bytes.is_some() || spec.cpu_shares.is_some()).then(|| {
                    cri::LinuxContainerResources {
                        memory_limit_in_bytes: spec.memory_limit_bytes.unwrap_or(0),
                        cpu_shares: spec.cpu_shares.unwrap_or(0),
                        ..Default::default()
                    }
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        self.rt.block_on(self.client.create_container(req)).map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<()> {
        self.rt
            .block_on(self.client.start_container(cri::StartContainerRequest { container_id: id.into() }))
            .map_err(|s| anyhow::anyhow!("StartContainer {id}: {}", s.message()))?;
        Ok(())
    }

    fn status(&mut self, id: &str, verbose: bool) -> Result<cri::ContainerStatusResponse> {
        Ok(self
            .rt
            .block_on(self.client.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose }))
            .map_err(|s| anyhow::anyhow!("ContainerStatus {id}: {}", s.message()))?
            .into_inner())
    }

    /// Waits for the container to exit; returns its exit code.
    pub fn wait_exit(&mut self, id: &str, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status(id, false)?.status.context("ContainerStatus without status")?;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            if Instant::now() > deadline {
                bail!("container {id} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container's init PID on the host.
    pub fn container_pid(&mut self, id: &str) -> Result<u32> {
        let resp = self.status(id, true)?;
        let info = resp.info.get("info").with_context(|| format!("ContainerStatus {id} verbose has no info"))?;
        let v: serde_json::Value = serde_json::from_str(info)?;
        v["pid"].as_u64().filter(|p| *p > 0).map(|p| p as u32).with_context(|| format!("no pid in status info of {id}"))
    }

    /// The container's log, without the CRI line prefixes.
    pub fn logs(&mut self, pod: &Pod, container: &str) -> String {
        let path = Path::new(&pod.config.log_directory).join(format!("{container}.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let id = pod.id.clone();
        self.rt
            .block_on(self.client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }))
            .map_err(|s| anyhow::anyhow!("StopPodSandbox {id}: {}", s.message()))?;
        self.rt
            .block_on(self.client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() }))
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
        Ok(())
    }

    /// Stops and removes every pod (the end of a test, or a restart check).
    pub fn remove_all_pods(&mut self) -> Result<()> {
        let pods = self
            .rt
            .block_on(self.client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .map_err(|s| anyhow::anyhow!("ListPodSandbox: {}", s.message()))?
            .into_inner()
            .items;
        for p in pods {
            let pod = Pod { id: p.id, config: Default::default() };
            self.remove_pod(&pod)?;
        }
        Ok(())
    }
}

/// Whether a pod sandbox shares the host's PID namespace: its containers
/// must say the same, as the kubelet makes them.
fn host_pid(sandbox: &cri::PodSandboxConfig) -> bool {
    let pid = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| n.pid);
    pid == Some(cri::NamespaceMode::Node as i32)
}

fn host_network(host_pid: bool) -> cri::NamespaceOption {
    let pid = if host_pid { cri::NamespaceMode::Node } else { cri::NamespaceMode::Container };
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
