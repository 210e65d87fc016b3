//! `deploy/` on a real cluster: the kind cluster `scripts/kind-load.sh`
//! makes (NRI on, the iogate image loaded, the node's /data on a real disk).
//!
//! No Kubernetes can be had on the machines this project builds on, so the
//! test is ignored (the summary counts it, with the reason); run it where a
//! cluster is: `scripts/kind-load.sh`, then `IOGATE_KIND=1 cargo test -p
//! iogate-integration-tests --test kind_e2e -- --ignored`. Asked to run
//! without a reachable API server (the current kubeconfig context), it
//! fails and says why. When it runs it applies `deploy/` with `kubectl apply
//! -k`, waits for the DaemonSet and for the plugin's NRI registration, starts
//! a plain pod and one annotated `iogate.io/read-iops: "150"` that read a file
//! with O_DIRECT in a loop, checks the limits in each pod's own cgroup (v1
//! `blkio.throttle.read_iops_device` or v2 `io.max`) and each pod's metrics
//! from the node's sidecar (through the API server's pod proxy), and deletes
//! what it created.
//!
//! The pods' I/O goes to a hostPath under the node's /data, not an emptyDir:
//! iogate limits the disk under the data mount only, and an emptyDir lives
//! under the kubelet's root, which may be another disk.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use iogate_testbed::repo_root;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

const SYSTEM_NAMESPACE: &str = "iogate-system";
const DAEMONSET: &str = "iogate";
const IMAGE: &str = "ghcr.io/iogate/iogate:0.1.0";
const ANNOTATED_READ_IOPS: u64 = 150;
/// The default in deploy/configmap.yaml.
const DEFAULT_READ_IOPS: u64 = 500;

/// The cluster to test against, or why there is none.
async fn cluster() -> std::result::Result<Client, String> {
    match std::env::var("IOGATE_KIND") {
        Ok(v) if v == "1" => {}
        Ok(v) => return Err(format!("IOGATE_KIND={v:?}, not 1, so no cluster was looked for")),
        Err(_) => return Err("IOGATE_KIND is not set to 1, so no cluster was looked for".into()),
    }
    let client = Client::try_default().await.map_err(|e| format!("no usable kubeconfig: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server of the current kubeconfig context does not answer: {e}")),
        Err(_) => Err("the API server of the current kubeconfig context did not answer within 10 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: scripts/kind-load.sh, then IOGATE_KIND=1 ... --ignored"]
async fn deploy_limits_pods_and_reports_their_metrics() -> Result<()> {
    let client = match cluster().await {
        Ok(c) => c,
        Err(why) => bail!("no Kubernetes cluster ({why}); run scripts/kind-load.sh first, then IOGATE_KIND=1"),
    };
    let kubectl = Kubectl::find()?;
    let namespace = format!("iogate-e2e-{}", std::process::id());
    // Deletes the test namespace, then deploy/, however the test ends.
    let mut cleanup = Cleanup { kubectl: kubectl.clone(), namespace: namespace.clone(), pods: Vec::new() };

    kubectl.run(&["apply", "-k", &repo_root().join("deploy").display().to_string()])?;
    let plugin_pods = wait_for_daemonset(&client).await?;
    for p in &plugin_pods {
        wait_for_log(&kubectl, p, "nri-plugin", "connected to runtime", Duration::from_secs(90)).await?;
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))?,
        )
        .await
        .context("creating the test namespace")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let plain = format!("plain-{}", std::process::id());
    let annotated = format!("annotated-{}", std::process::id());
    for (name, annotations) in
        [(&plain, json!({})), (&annotated, json!({"iogate.io/read-iops": ANNOTATED_READ_IOPS.to_string()}))]
    {
        pods.create(&PostParams::default(), &serde_json::from_value(reader_pod(name, annotations))?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        cleanup.pods.push(name.clone());
    }

    for (name, want) in [(&plain, DEFAULT_READ_IOPS), (&annotated, ANNOTATED_READ_IOPS)] {
        let node = wait_running(&pods, name).await?;
        let files = kubectl.run(&[
            "exec",
            "-n",
            &namespace,
            name,
            "--",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/io.max 2>/dev/null || cat /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device",
        ])?;
        let limits = read_iops_limits(&files);
        ensure!(
            limits == [Some(want)],
            "pod {name}: expected one device limited to {want} read IOPS in its cgroup, found {limits:?} in:\n{files}"
        );
        eprintln!("pod {name}: cgroup carries read IOPS {want} ({})", files.trim());

        let sidecar = sidecar_on(&client, &node).await?;
        let metrics = wait_for_metrics(&client, &sidecar, &namespace, name, want).await?;
        eprintln!("pod {name}: sidecar {sidecar} reports {metrics}");
    }
    Ok(())
}

/// A pod that writes a 4 MiB file under the node's /data and then reads it
/// with O_DIRECT (4 KiB blocks) forever, so every second is throttled reads.
fn reader_pod(name: &str, annotations: Value) -> Value {
    let script = format!(
        "set -eu; f=/work/{name}; \
         dd if=/dev/zero of=$f bs=4k count=1024 oflag=direct status=none; \
         echo written; \
         while true; do dd if=$f of=/dev/null bs=4k iflag=direct status=none; done"
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "reader",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/work"}],
            }],
            "volumes": [{"name": "data", "hostPath": {"path": "/data/iogate-e2e", "type": "DirectoryOrCreate"}}],
        }
    })
}

/// The read IOPS limit of each device in a v2 `io.max` (`8:0 riops=150 …`)
/// or a v1 `blkio.throttle.read_iops_device` (`8:0 150`); `None` = max.
fn read_iops_limits(text: &str) -> Vec<Option<u64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let value = match words.iter().find_map(|w| w.strip_prefix("riops=")) {
                Some(v) => v,
                None => words.get(1).copied().unwrap_or("max"),
            };
            value.parse().ok()
        })
        .collect()
}

/// Waits until every scheduled pod of the DaemonSet runs the current
/// template and is ready; returns their names.
async fn wait_for_daemonset(client: &Client) -> Result<Vec<String>> {
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = String::from("not found yet");
    while Instant::now() < deadline {
        if let Some(ds) = sets.get_opt(DAEMONSET).await? {
            let generation = ds.metadata.generation.unwrap_or(0);
            if let Some(s) = &ds.status {
                last = format!(
                    "desired {}, updated {}, ready {}, observed generation {:?} of {generation}",
                    s.desired_number_scheduled,
                    s.updated_number_scheduled.unwrap_or(0),
                    s.number_ready,
                    s.observed_generation
                );
                if s.desired_number_scheduled > 0
                    && s.observed_generation.unwrap_or(0) >= generation
                    && s.updated_number_scheduled == Some(s.desired_number_scheduled)
                    && s.number_ready == s.desired_number_scheduled
                {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
                    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=iogate")).await?;
                    return Ok(list.items.into_iter().filter_map(|p| p.metadata.name).collect());
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("DaemonSet {SYSTEM_NAMESPACE}/{DAEMONSET} not ready within 240 s: {last}")
}

/// Waits for `needle` in a container's log (the plugin logs "connected to
/// runtime" once containerd has accepted it over NRI).
async fn wait_for_log(kubectl: &Kubectl, pod: &str, container: &str, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut log = String::new();
    while Instant::now() < deadline {
        log = kubectl.run(&["logs", "-n", SYSTEM_NAMESPACE, pod, "-c", container]).unwrap_or_default();
        if log.contains(needle) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("expected {needle:?} in the log of {SYSTEM_NAMESPACE}/{pod} container {container} within {timeout:?}; the log:\n{log}")
}

/// Waits for the pod to run; returns its node.
async fn wait_running(pods: &Api<Pod>, name: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut phase = String::from("unknown");
    while Instant::now() < deadline {
        let pod = pods.get(name).await?;
        phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        match phase.as_str() {
            "Running" => {
                return pod.spec.and_then(|s| s.node_name).with_context(|| format!("pod {name} runs on no node"))
            }
            "Failed" | "Succeeded" => bail!("pod {name} ended ({phase}): {:?}", pod.status),
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
    bail!("pod {name} not running within 120 s (phase {phase})")
}

/// The iogate pod on `node`.
async fn sidecar_on(client: &Client, node: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=iogate").fields(&format!("spec.nodeName={node}")))
        .await?;
    list.items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .with_context(|| format!("expected an iogate pod on node {node}, found none"))
}

/// Polls the sidecar's per-pod endpoint until it shows the pod reading at
/// its limit (−15% / +10%) with the limit in force on a device.
async fn wait_for_metrics(client: &Client, sidecar: &str, namespace: &str, pod: &str, limit: u64) -> Result<String> {
    let path = format!(
        "/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{sidecar}:9464/proxy/api/v1/metrics/pod/{pod}?namespace={namespace}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let request = http::Request::get(&path).body(Vec::new())?;
        match client.request_text(request).await {
            Ok(body) => {
                let v: Value = serde_json::from_str(&body).with_context(|| format!("sidecar answered {body}"))?;
                let m = &v["pod_metrics"];
                let iops = m["read_iops"].as_u64().unwrap_or(0);
                let limited = m["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["devices"].as_array().into_iter().flatten())
                    .any(|d| d["limits"]["read_iops"].as_u64() == Some(limit));
                last =
                    format!("read_iops {iops}, read limit {limit} in force: {limited}, bottleneck {}", v["bottleneck"]);
                if limited && iops as f64 >= limit as f64 * 0.85 && iops as f64 <= limit as f64 * 1.10 {
                    return Ok(last);
                }
            }
            Err(e) => last = format!("{e}"),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    bail!("sidecar {sidecar}: expected pod {namespace}/{pod} reading at ~{limit} IOPS with that limit in force; last: {last}")
}

#[derive(Clone)]
struct Kubectl(PathBuf);

impl Kubectl {
    fn find() -> Result<Kubectl> {
        let found = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file());
        found.map(Kubectl).context("expected kubectl on PATH (the test applies deploy/ with kubectl apply -k)")
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.0).args(args).output().with_context(|| format!("running kubectl {args:?}"))?;
        ensure!(
            out.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Deletes the test's files on the node's /data, its namespace and the
/// deployment, whatever happened.
struct Cleanup {
    kubectl: Kubectl,
    namespace: String,
    pods: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pod in &self.pods {
            let rm = format!("rm -f /work/{pod}");
            let _ = self.kubectl.run(&["exec", "-n", &self.namespace, pod, "--", "sh", "-c", &rm]);
        }
        let deploy = repo_root().join("deploy").display().to_string();
        for args in [
            vec!["delete", "namespace", &self.namespace, "--ignore-not-found", "--wait=true", "--timeout=60s"],
            vec!["delete", "-k", &deploy, "--ignore-not-found", "--wait=false"],
        ] {
            if let Err(e) = self.kubectl.run(&args) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}

#[test]
fn read_iops_limits_from_v1_and_v2_files() {
    assert_eq!(read_iops_limits("8:0 riops=150 wiops=500 rbps=max wbps=max\n"), [Some(150)]);
    assert_eq!(read_iops_limits("8:0 rbps=max wbps=max riops=max wiops=500\n"), [None]);
    assert_eq!(read_iops_limits("8:0 500\n259:0 150\n"), [Some(500), Some(150)]);
    assert!(read_iops_limits("").is_empty());
}

/// The policy shipped in deploy/configmap.yaml loads with the plugin's own
/// parser (unknown keys are errors there) and says what its comments say.
#[test]
fn shipped_policy_parses_with_the_real_loader() {
    let path = repo_root().join("deploy/configmap.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let start = yaml.find("  config.toml: |\n").expect("a config.toml key in deploy/configmap.yaml");
    let toml: String = yaml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let c = iogate_core::Config::from_toml(&toml, &path, |_| None).unwrap();
    assert_eq!(c.defaults.read_iops, Some(DEFAULT_READ_IOPS));
    assert_eq!(c.defaults.write_iops, Some(DEFAULT_READ_IOPS));
    assert_eq!(c.mounts, [PathBuf::from("/data")]);
    assert_eq!(c.hook_path, PathBuf::from("/opt/iogate/bin/iogate-oci-hook"));
    assert_eq!(c.exclusions.namespaces, ["kube-system", "iogate-system"]);
    assert!(c.exclusions.keywords.is_empty(), "the shipped policy excludes by whole names only");
    assert_eq!(c.ceiling_for("anyone"), c.defaults, "tenants may only lower their limits");
    assert!(!c.strict);
}
