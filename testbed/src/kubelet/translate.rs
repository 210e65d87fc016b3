//! The DaemonSet's pod template → CRI sandbox and container configs, field
//! by field as the kubelet fills them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec as K8sPodSpec, SecurityContext, Volume};

use super::fields;
use crate::cri_client::{ContainerSpec, Mount, PodSpec, Security};

/// What the node gives a pod besides the manifest: the node's name for the
/// downward API, ConfigMaps as directories, and host paths a test keeps
/// apart from the machine's own (`/opt/iogate/bin` → a directory of the
/// test's). A projected service-account volume holds its namespace only:
/// there is no API server here to issue a token or a CA.
pub struct NodeFiles {
    pub node_name: String,
    pub host_paths: HashMap<String, PathBuf>,
    pub config_maps: HashMap<String, PathBuf>,
    /// Where projected volumes are written.
    pub scratch: PathBuf,
}

/// `deploy/daemonset.yaml`, checked to use only fields [`fields`] covers.
pub struct DaemonSetPod {
    pub daemonset: DaemonSet,
    /// The namespace the kustomization puts it in.
    pub namespace: String,
}

impl DaemonSetPod {
    /// The repository's DaemonSet, in the kustomization's namespace.
    pub fn from_repo() -> Result<DaemonSetPod> {
        let root = crate::repo_root();
        let kustomization: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(root.join("deploy/kustomization.yaml"))
                .context("reading deploy/kustomization.yaml")?,
        )?;
        let namespace =
            kustomization["namespace"].as_str().context("deploy/kustomization.yaml sets no namespace")?.to_string();
        DaemonSetPod::load(&root.join("deploy/daemonset.yaml"), &namespace)
    }

    pub fn load(path: &Path, namespace: &str) -> Result<DaemonSetPod> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
        let unhandled = fields::unhandled(&value);
        ensure!(
            unhandled.is_empty(),
            "{} uses fields the kubelet stand-in does not translate (testbed/src/kubelet/fields.rs):\n  {}",
            path.display(),
            unhandled.join("\n  ")
        );
        let daemonset =
            serde_json::from_value(value).with_context(|| format!("{} is not a DaemonSet", path.display()))?;
        Ok(DaemonSetPod { daemonset, namespace: namespace.to_string() })
    }

    pub fn spec(&self) -> Result<&K8sPodSpec> {
        self.daemonset.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("the DaemonSet has no pod template")
    }

    /// Every container, init containers first.
    pub fn containers(&self) -> Result<Vec<&Container>> {
        let spec = self.spec()?;
        Ok(spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect())
    }

    pub fn container(&self, name: &str) -> Result<&Container> {
        self.containers()?
            .into_iter()
            .find(|c| c.name == name)
            .with_context(|| format!("the DaemonSet has no container {name}"))
    }

    /// The pod's name on this node, as the DaemonSet controller names it.
    pub fn pod_name(&self) -> String {
        format!("{}-testbed", self.daemonset.metadata.name.as_deref().unwrap_or("daemonset"))
    }

    /// Fills in what the pod template says of the sandbox: labels,
    /// annotations, `hostPID`.
    pub fn sandbox(&self, mut pod: PodSpec) -> Result<PodSpec> {
        let template = &self.daemonset.spec.as_ref().context("the DaemonSet has no spec")?.template;
        if let Some(meta) = &template.metadata {
            pod.labels.extend(meta.labels.clone().unwrap_or_default());
            pod.annotations.extend(meta.annotations.clone().unwrap_or_default());
        }
        pod.host_pid = self.spec()?.host_pid == Some(true);
        Ok(pod)
    }

    /// The container `name`'s config, its image `image`.
    pub fn container_spec(&self, name: &str, image: &str, node: &NodeFiles) -> Result<ContainerSpec> {
        let c = self.container(name)?;
        let spec = self.spec()?;
        let mut command = c.command.clone().unwrap_or_default();
        command.extend(c.args.clone().unwrap_or_default());
        let env = c.env.iter().flatten().map(|e| self.env_value(e, node)).collect::<Result<_>>()?;
        let mut volume_mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let volume =
                spec.volumes.iter().flatten().find(|v| v.name == m.name).with_context(|| {
                    format!("container {name} mounts volume {}, which the pod does not have", m.name)
                })?;
            let host_to_container = match m.mount_propagation.as_deref() {
                None | Some("None") => false,
                Some("HostToContainer") => true,
                Some(other) => bail!("container {name}: mountPropagation {other} is not translated"),
            };
            volume_mounts.push(Mount {
                host: self.volume_source(volume, node)?,
                container: m.mount_path.clone(),
                readonly: m.read_only == Some(true),
                host_to_container,
            });
        }
        let limits = c.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
        let requests = c.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
        Ok(ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            command,
            env,
            volume_mounts,
            security: security(spec, c)?,
            memory_limit_bytes: limits.get("memory").map(|q| bytes(&q.0)).transpose()?,
            cpu_shares: requests.get("cpu").map(|q| cpu_shares(&q.0)).transpose()?,
            ..Default::default()
        })
    }

    fn env_value(&self, e: &EnvVar, node: &NodeFiles) -> Result<(String, String)> {
        if let Some(value) = &e.value {
            return Ok((e.name.clone(), value.clone()));
        }
        let field = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.as_str());
        let value = match field {
            Some("spec.nodeName") => node.node_name.clone(),
            Some("metadata.namespace") => self.namespace.clone(),
            Some("metadata.name") => self.pod_name(),
            other => bail!(
                "env {}: only a value or a fieldRef to spec.nodeName or metadata.* is translated, found {other:?}",
                e.name
            ),
        };
        Ok((e.name.clone(), value))
    }

    /// Where a volume is on the host, made as the kubelet makes it.
    fn volume_source(&self, v: &Volume, node: &NodeFiles) -> Result<PathBuf> {
        if let Some(h) = &v.host_path {
            let path = node.host_paths.get(&h.path).cloned().unwrap_or_else(|| PathBuf::from(&h.path));
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => {
                    std::fs::create_dir_all(&path).with_context(|| format!("creating hostPath {}", path.display()))?
                }
                Some("Directory") => {
                    ensure!(
                        path.is_dir(),
                        "hostPath {} (volume {}) must be a directory; it is not",
                        path.display(),
                        v.name
                    )
                }
                None | Some("") => {}
                Some(other) => bail!("volume {}: hostPath type {other} is not translated", v.name),
            }
            return Ok(path);
        }
        if let Some(cm) = &v.config_map {
            return node
                .config_maps
                .get(&cm.name)
                .cloned()
                .with_context(|| format!("volume {}: no ConfigMap {} given to this node", v.name, cm.name));
        }
        if let Some(p) = &v.projected {
            let dir = node.scratch.join(&v.name);
            std::fs::create_dir_all(&dir)?;
            for source in p.sources.iter().flatten() {
                for item in source.downward_api.iter().flat_map(|d| d.items.iter().flatten()) {
                    let value = match item.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.namespace") => self.namespace.clone(),
                        Some("metadata.name") => self.pod_name(),
                        other => bail!("volume {}: downwardAPI field {other:?} is not translated", v.name),
                    };
                    std::fs::write(dir.join(&item.path), value)?;
                }
            }
            return Ok(dir);
        }
        bail!("volume {}: only hostPath, configMap and projected volumes are translated", v.name)
    }
}

/// A container's security context as the kubelet passes it to the CRI, the
/// pod's seccomp profile applying where the container sets none.
fn security(pod: &K8sPodSpec, c: &Container) -> Result<Security> {
    let SecurityContext {
        allow_privilege_escalation,
        capabilities,
        read_only_root_filesystem,
        run_as_user,
        run_as_non_root,
        seccomp_profile,
        ..
    } = c.security_context.clone().unwrap_or_default();
    ensure!(
        run_as_non_root != Some(true) || run_as_user.is_some_and(|u| u != 0),
        "container {}: runAsNonRoot with uid 0, which the kubelet refuses",
        c.name
    );
    let seccomp = seccomp_profile
        .or_else(|| pod.security_context.as_ref().and_then(|p| p.seccomp_profile.clone()))
        .map(|p| p.type_);
    let seccomp_runtime_default = match seccomp.as_deref() {
        None | Some("Unconfined") => false,
        Some("RuntimeDefault") => true,
        Some(other) => bail!("container {}: seccomp profile {other} is not translated", c.name),
    };
    let caps = capabilities.unwrap_or_default();
    Ok(Security {
        run_as_user,
        readonly_rootfs: read_only_root_filesystem == Some(true),
        // The kubelet's default is to allow escalation.
        no_new_privs: allow_privilege_escalation == Some(false),
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        seccomp_runtime_default,
    })
}

/// A memory quantity (`128Mi`, `64M`, `1Gi`, `1000`) in bytes.
fn bytes(q: &str) -> Result<i64> {
    const SUFFIXES: [(&str, i64); 6] =
        [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)];
    let (number, factor) = SUFFIXES.iter().find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f))).unwrap_or((q, 1));
    let n: i64 = number.parse().with_context(|| format!("expected a memory quantity like 128Mi, found {q:?}"))?;
    Ok(n * factor)
}

/// CPU shares from a CPU request, as the kubelet computes them
/// (milli-CPUs × 1024 / 1000, at least 2).
fn cpu_shares(q: &str) -> Result<i64> {
    let milli: i64 = match q.strip_suffix('m') {
        Some(m) => m.parse(),
        None => q.parse::<i64>().map(|c| c * 1000),
    }
    .with_context(|| format!("expected a CPU quantity like 20m or 1, found {q:?}"))?;
    Ok((milli * 1024 / 1000).max(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_the_kubelet_reads_them() {
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("64M").unwrap(), 64_000_000);
        assert_eq!(bytes("1000").unwrap(), 1000);
        assert!(bytes("lots").unwrap_err().to_string().contains("128Mi"));
        assert_eq!(cpu_shares("20m").unwrap(), 20);
        assert_eq!(cpu_shares("1m").unwrap(), 2);
        assert_eq!(cpu_shares("2").unwrap(), 2048);
    }

    #[test]
    fn the_repository_daemonset_translates_in_full() {
        let ds = DaemonSetPod::from_repo().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let hook_dir = scratch.path().join("hook-dir");
        let node = NodeFiles {
            node_name: "node-1".into(),
            host_paths: HashMap::from([
                ("/opt/iogate/bin".to_string(), hook_dir.clone()),
                ("/run/iogate/hooks".to_string(), scratch.path().join("reports")),
                ("/var/run/nri".to_string(), scratch.path().join("nri")),
                ("/data".to_string(), scratch.path().to_path_buf()),
            ]),
            config_maps: HashMap::from([("iogate-config".to_string(), config.path().to_path_buf())]),
            scratch: scratch.path().to_path_buf(),
        };
        let sidecar = ds.container_spec("metrics-sidecar", "img", &node).unwrap();
        assert_eq!(sidecar.command[0], "/usr/local/bin/iogate-metrics-sidecar");
        assert!(sidecar.env.contains(&("NODE_NAME".to_string(), "node-1".to_string())));
        assert_eq!(sidecar.security.add_capabilities, ["BPF", "PERFMON"]);
        assert_eq!(sidecar.security.drop_capabilities, ["ALL"]);
        assert!(sidecar.security.readonly_rootfs && sidecar.security.no_new_privs);
        assert!(sidecar.security.seccomp_runtime_default, "the pod's RuntimeDefault applies");
        assert_eq!(sidecar.memory_limit_bytes, Some(128 << 20));
        assert!(sidecar.volume_mounts.iter().all(|m| m.readonly));
        let hook = ds.container_spec("install-hook", "img", &node).unwrap();
        assert_eq!(hook.volume_mounts[0].host, hook_dir);
        assert!(hook_dir.is_dir(), "DirectoryOrCreate makes the directory");
        let plugin = ds.container_spec("nri-plugin", "img", &node).unwrap();
        assert!(plugin.volume_mounts.iter().any(|m| m.container == "/data" && m.host_to_container && m.readonly));
        let token = plugin.volume_mounts.iter().find(|m| m.container.ends_with("serviceaccount")).unwrap();
        assert_eq!(std::fs::read_to_string(token.host.join("namespace")).unwrap(), "iogate-system");
        let sandbox = ds.sandbox(PodSpec::default()).unwrap();
        assert!(sandbox.host_pid);
        assert!(!sandbox.labels.is_empty());
    }
}
