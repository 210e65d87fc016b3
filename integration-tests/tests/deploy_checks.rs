//! Checks of `deploy/` that need no cluster: the Grafana dashboard against
//! the real sidecar's `/metrics`, and every manifest read into the real
//! Kubernetes API types with unknown fields reported.
//!
//! The live-metrics test needs root (eBPF, a blkio cgroup, a loop disk) and
//! takes the host lock; the rest runs anywhere.

#[path = "deploy_checks/dashboard.rs"]
mod dashboard;
#[path = "deploy_checks/manifests.rs"]
mod manifests;
#[path = "deploy_checks/promql.rs"]
mod promql;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use iogate_core::Device;
use iogate_testbed::fio::{Job, Rw};
use iogate_testbed::host_io::{run_fio, BlkioCgroup};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::loop_disk::LoopDisk;
use iogate_testbed::repo_root;
use iogate_testbed::sidecar::{parse_exposition, Sidecar};
use manifests::{fail_on, Document};

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn dashboard_path() -> PathBuf {
    deploy_dir().join("dashboards/iogate.json")
}

fn promtool() -> Result<PathBuf> {
    let p = repo_root().join(".cache/prometheus/usr/bin/promtool");
    ensure!(p.exists(), "expected {} (scripts/fetch-promtool.sh)", p.display());
    Ok(p)
}

// ---------------------------------------------------------------- dashboard

#[test]
fn dashboard_is_well_formed() -> Result<()> {
    let dash = dashboard::load(&dashboard_path())?;
    fail_on("dashboard structure", &dashboard::structural_problems(&dash)?)?;
    let schema = dash["schemaVersion"].as_u64().context("expected a numeric schemaVersion")?;
    ensure!((36..=41).contains(&schema), "expected schemaVersion 36..=41 (Grafana 9–11), found {schema}");
    let vars: Vec<(&str, &str)> = dashboard::variables(&dash)?
        .into_iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v["type"].as_str().unwrap_or("")))
        .collect();
    for want in [("datasource", "datasource"), ("namespace", "query"), ("pod", "query")] {
        ensure!(vars.contains(&want), "expected template variable {want:?}, found {vars:?}");
    }
    let queries = dashboard::queries(&dash)?;
    ensure!(queries.len() >= 10, "expected the dashboard's queries, found only {queries:#?}");
    let read = dashboard::metrics_read(&queries)?;
    ensure!(read.keys().all(|m| m.starts_with("iogate_")), "expected only iogate_ metrics, found {:?}", read.keys());
    Ok(())
}

/// Every panel query is valid PromQL once Grafana's variables are filled
/// in: promtool parses them as recording rules.
#[test]
fn dashboard_queries_parse_as_promql() -> Result<()> {
    let promtool = promtool()?;
    let dash = dashboard::load(&dashboard_path())?;
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard::queries(&dash)?.iter().filter(|q| !q.at.starts_with("variable ")).enumerate() {
        let expr = dashboard::as_plain_promql(&q.expr).with_context(|| q.at.clone())?;
        rules += &format!("      - record: dashboard:query{i}\n        expr: {}\n", serde_json::to_string(&expr)?);
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules)?;
    let out = Command::new(&promtool).arg("check").arg("rules").arg(&file).output().context("running promtool")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "promtool check rules rejected the dashboard's queries:\n{said}\n{rules}");
    Ok(())
}

fn device_of(disk: &LoopDisk) -> Result<Device> {
    let (major, minor) = disk.major_minor()?;
    Ok(Device::new(major, minor))
}

/// Starts the real sidecar, runs fio in a throttled blkio cgroup so that
/// every family (counters, the three histograms, the limit) has samples, and
/// checks each metric the dashboard reads against that `/metrics`.
#[test]
fn dashboard_metrics_exist_in_the_live_exposition() -> Result<()> {
    iogate_testbed::require_root();
    let read = dashboard::metrics_read(&dashboard::queries(&dashboard::load(&dashboard_path())?)?)?;
    let _lock = HostLock::acquire()?;
    let disk = LoopDisk::new(128)?;
    let sidecar = Sidecar::start(Duration::from_secs(1), &["--source", "ebpf"])?;
    let cg = BlkioCgroup::create("dashboard")?;
    cg.set("blkio.throttle.read_iops_device", &format!("{} 2000", device_of(&disk)?))?;
    let dir = disk.subdir("dashboard")?;
    let mut job = Job::new("dashboard", Rw::RandRead, 2);
    job.size_mib = 16;
    job.iodepth = 4;
    job.prepare(&dir)?;
    run_fio(&cg, &dir, &job)?;
    sidecar.wait_windows(1);
    let (status, body) = sidecar.get("/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}: {body}");
    let samples = parse_exposition(&body)?;
    // Families this host cannot measure, as the sidecar itself says: their
    // names are checked by the rendered frame below instead.
    let mut read = read;
    for (gauge, families) in UNMEASURED_HERE {
        if body.lines().any(|l| l == format!("{gauge} 0")) {
            let skipped: Vec<String> =
                read.keys().filter(|m| families.iter().any(|f| m.starts_with(f))).cloned().collect();
            eprintln!("not checked live here ({gauge} 0 on this host): {skipped:?}");
            read.retain(|m, _| !skipped.contains(m));
        }
    }
    let missing = dashboard::missing_from(&read, &body, &samples);
    ensure!(
        missing.is_empty(),
        "the dashboard reads metrics the sidecar does not export:\n  {}\n/metrics was:\n{body}",
        missing.join("\n  ")
    );
    eprintln!("all {} metrics the dashboard reads are exported: {:?}", read.len(), read.keys());
    Ok(())
}

/// The families a host may not measure, by the gauge that says whether it
/// does: blk-throttle's wait (fentry, refused by a locked-down kernel) and
/// the stall time (cgroup v2 with PSI).
const UNMEASURED_HERE: [(&str, &[&str]); 2] = [
    ("iogate_sidecar_throttle_wait_measured", &["iogate_io_throttle_wait_seconds"]),
    ("iogate_sidecar_io_pressure_measured", &["iogate_pod_io_pressure_", "iogate_container_io_pressure_"]),
];

/// Every metric the dashboard reads, against the sidecar's own renderer
/// given a frame where everything is measured and has samples: a throttled
/// series with held bios, a stacked device, a limit, and stall time for
/// the pod and its container. This is what holds for the families a host
/// cannot measure live (the vm_v2 checks read them from a running sidecar).
#[test]
fn dashboard_metrics_exist_where_everything_is_measured() -> Result<()> {
    use std::collections::HashMap;
    use std::time::{Instant, SystemTime};

    use iogate_core::{cgroup::paths::PodCgroup, Limits};
    use iogate_metrics_sidecar::counters::{CgroupId, Direction, IoCounters, SourceKind};
    use iogate_metrics_sidecar::frame::{Frame, Series};
    use iogate_metrics_sidecar::host_cgroups::CgroupOwner;
    use iogate_metrics_sidecar::pressure::StallTotals;
    use iogate_metrics_sidecar::prometheus::{render, SelfState};

    let uid = "6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let mut owner = CgroupOwner::outside_pods(format!("/kubepods/burstable/pod{uid}/{}", "ab".repeat(32)));
    owner.namespace = Some("shop".into());
    owner.pod = Some("web-0".into());
    owner.pod_uid = Some(uid.parse()?);
    owner.container = Some("app".into());
    let mut c =
        IoCounters { ops: 10, bytes: 40_960, queued_ops: 10, queue_ns: 10_000, disk_ns: 90_000, ..Default::default() };
    c.throttled_ios = 10;
    c.throttle_wait_ns = 3_000_000_000;
    for _ in 0..10 {
        c.total_hist.record(10_000);
        c.queue_hist.record(1_000);
        c.disk_hist.record(9_000);
        c.throttle_hist.record(300_000_000);
    }
    let series = |device: Device, lower_layer_of: Option<Device>| Series {
        cgroup: CgroupId(7),
        owner: owner.clone(),
        device,
        direction: Direction::Read,
        counters: c,
        limits: Some(Limits { read_iops: Some(100), read_bps: Some(1 << 20), ..Limits::UNLIMITED }),
        lower_layer_of,
    };
    let (top, lower) = (Device::new(7, 0), Device::new(8, 0));
    let pod_dir = PodCgroup::pod_dir(&owner.cgroup).context("a pod path")?.to_string();
    let frame = Frame {
        taken_at: Instant::now(),
        wall: SystemTime::now(),
        source: SourceKind::Ebpf,
        series: vec![series(top, None), series(lower, Some(top))],
        removed: Vec::new(),
        throttle_wait: true,
        pressure: Some(HashMap::from([
            (owner.cgroup.clone(), StallTotals { some_us: 2_000_000, full_us: 1_000_000 }),
            (pod_dir, StallTotals { some_us: 2_500_000, full_us: 1_000_000 }),
        ])),
    };
    let body = render(Some(&frame), SelfState { ebpf_loaded: true, pods_synced: true });
    let read = dashboard::metrics_read(&dashboard::queries(&dashboard::load(&dashboard_path())?)?)?;
    let missing = dashboard::missing_from(&read, &body, &parse_exposition(&body)?);
    ensure!(
        missing.is_empty(),
        "the dashboard reads metrics the sidecar never exports:\n  {}\n/metrics was:\n{body}",
        missing.join("\n  ")
    );
    Ok(())
}

// ---------------------------------------------------------------- manifests

/// The manifests under `deploy/` (kustomization files apart).
fn deploy_documents() -> Result<Vec<Document>> {
    let dir = deploy_dir();
    let files: Vec<PathBuf> =
        manifests::yaml_files(&dir)?.into_iter().filter(|f| !manifests::is_kustomization(f)).collect();
    ensure!(
        !files.is_empty(),
        "expected Kubernetes manifests (*.yaml) under {}, found none (they come with the deploy/ manifests branch)",
        dir.display()
    );
    let mut docs = Vec::new();
    for f in &files {
        let found = manifests::read_documents(f)?;
        ensure!(!found.is_empty(), "expected at least one document in {}, found none", f.display());
        docs.extend(found);
    }
    Ok(docs)
}

#[test]
fn deploy_manifests_are_known_kubernetes_types_without_unknown_fields() -> Result<()> {
    let docs = deploy_documents()?;
    let problems: Vec<String> = docs.iter().flat_map(manifests::problems).collect();
    fail_on("deploy/ manifests", &problems)?;
    let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
    for want in ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service"] {
        ensure!(kinds.contains(&want), "expected a {want} under deploy/, found kinds {kinds:?}");
    }
    Ok(())
}

#[test]
fn deploy_configmap_policy_parses_as_iogate_config() -> Result<()> {
    let mut parsed = Vec::new();
    for doc in deploy_documents()?.iter().filter(|d| d.kind() == "ConfigMap") {
        for (key, text) in manifests::toml_entries(doc)? {
            let origin = PathBuf::from(format!("{}:{key}", doc.file.display()));
            iogate_core::Config::from_toml(&text, &origin, |_| None)
                .with_context(|| format!("{}: data.{key} is not a valid iogate policy", doc.name()))?;
            parsed.push(origin);
        }
    }
    ensure!(!parsed.is_empty(), "expected a ConfigMap under deploy/ with a *.toml key in data, found none");
    Ok(())
}

/// The sidecar's series carry `namespace`, `pod` and `container` labels,
/// which collide with the target labels prometheus-operator adds; without
/// `honorLabels: true` they become `exported_pod` … and the dashboard's
/// queries see the sidecar's own pod instead.
#[test]
fn deploy_service_monitor_keeps_the_sidecars_labels() -> Result<()> {
    let docs = deploy_documents()?;
    let monitors: Vec<&Document> = docs.iter().filter(|d| d.kind() == "ServiceMonitor").collect();
    ensure!(!monitors.is_empty(), "expected a ServiceMonitor under deploy/, found none");
    for doc in monitors {
        let sm = manifests::service_monitor(doc)?;
        ensure!(!sm.spec.endpoints.is_empty(), "{}: expected an endpoint", doc.name());
        for (i, e) in sm.spec.endpoints.iter().enumerate() {
            ensure!(
                e.honor_labels == Some(true),
                "{}: endpoints[{i}] expected honorLabels: true (the dashboard reads the exported namespace/pod), \
                 found {:?}",
                doc.name(),
                e.honor_labels
            );
        }
    }
    Ok(())
}

/// A NetworkPolicy whose selector or port misses the sidecars locks
/// nothing (or the wrong pods): it must select the DaemonSet's pods and
/// name a port their sidecar container has.
#[test]
fn deploy_network_policy_selects_the_sidecars_and_their_metrics_port() -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let docs = deploy_documents()?;
    let daemonset: DaemonSet = serde_json::from_value(
        docs.iter().find(|d| d.kind() == "DaemonSet").context("expected the DaemonSet under deploy/")?.json.clone(),
    )?;
    let template = daemonset.spec.context("DaemonSet spec")?.template;
    let pod_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let pod = template.spec.context("pod spec")?;
    let ports: Vec<(String, i32)> = pod
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    let policies: Vec<&Document> = docs.iter().filter(|d| d.kind() == "NetworkPolicy").collect();
    ensure!(!policies.is_empty(), "expected a NetworkPolicy under deploy/, found none");
    for doc in policies {
        let policy: NetworkPolicy = serde_json::from_value(doc.json.clone())?;
        let spec = policy.spec.context("NetworkPolicy spec")?;
        let wanted = spec.pod_selector.and_then(|s| s.match_labels).unwrap_or_default();
        ensure!(
            !wanted.is_empty() && wanted.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{}: podSelector {wanted:?} expected to select the DaemonSet's pods, labelled {pod_labels:?}",
            doc.name()
        );
        for rule in spec.ingress.iter().flatten() {
            for port in rule.ports.iter().flatten() {
                let found = match &port.port {
                    Some(IntOrString::String(name)) => ports.iter().any(|(n, _)| n == name),
                    Some(IntOrString::Int(number)) => ports.iter().any(|(_, p)| p == number),
                    None => true,
                };
                ensure!(found, "{}: port {:?} is none of the pod's ports {ports:?}", doc.name(), port.port);
            }
        }
    }
    Ok(())
}

#[test]
fn deploy_kustomization_is_typed_and_names_existing_files() -> Result<()> {
    let files: Vec<PathBuf> =
        manifests::yaml_files(&deploy_dir())?.into_iter().filter(|f| manifests::is_kustomization(f)).collect();
    ensure!(!files.is_empty(), "expected a kustomization.yaml under {}, found none", deploy_dir().display());
    for f in files {
        let k = manifests::kustomization(&f)?;
        fail_on("kustomization references", &manifests::missing_references(&f, &k))?;
    }
    Ok(())
}

// ------------------------------------------------ the detector, on fixtures

fn fixture(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().expect("fixture path has a parent")).expect("fixture dir");
    std::fs::write(&p, text).expect("fixture file");
    p
}

const GOOD: &str = r#"
# a comment-only document is skipped
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: iogate
  namespace: iogate-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: iogate
  namespace: iogate-system
  labels: {app: iogate}
spec:
  selector:
    matchLabels: {app: iogate}
  template:
    metadata:
      labels: {app: iogate}
      creationTimestamp: null
    spec:
      serviceAccountName: iogate
      containers:
        - name: sidecar
          image: iogate:dev
          imagePullPolicy: IfNotPresent
          args: ["--listen", "0.0.0.0:9464"]
          ports: [{name: metrics, containerPort: 9464}]
          resources:
            limits: {memory: 64Mi, cpu: 100m}
          securityContext: {privileged: true}
          volumeMounts: [{name: sys, mountPath: /sys, readOnly: true}]
      volumes:
        - name: sys
          hostPath: {path: /sys}
"#;

fn problems_of(file: &Path) -> Vec<String> {
    manifests::read_documents(file).unwrap().iter().flat_map(manifests::problems).collect()
}

#[test]
fn detector_accepts_a_valid_multi_document_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path(), "deploy/daemonset.yaml", GOOD);
    let docs = manifests::read_documents(&f).unwrap();
    assert_eq!(docs.iter().map(Document::kind).collect::<Vec<_>>(), ["ServiceAccount", "DaemonSet"]);
    assert_eq!(problems_of(&f), Vec::<String>::new());
}

#[test]
fn detector_names_a_misspelt_field_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path(), "ds.yaml", &GOOD.replace("imagePullPolicy", "imagePullPolcy"));
    let p = problems_of(&f);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with(&format!("{} document 2 (DaemonSet", f.display())), "{p:#?}");
    assert!(p[0].ends_with("unknown field spec.template.spec.containers[0].imagePullPolcy"), "{p:#?}");
}

#[test]
fn detector_finds_unknown_fields_at_every_depth() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD
        .replace("  namespace: iogate-system\n  labels", "  namespace: iogate-system\n  lables: {a: b}\n  labels")
        .replace("hostPath: {path: /sys}", "hostPath: {path: /sys, tpye: Directory}")
        .replace("kind: ServiceAccount", "kind: ServiceAccount\nautomountToken: false");
    let f = fixture(dir.path(), "ds.yaml", &text);
    let p = problems_of(&f);
    let tails: Vec<&str> = p.iter().map(|l| l.rsplit(": ").next().unwrap()).collect();
    assert_eq!(
        tails,
        [
            "unknown field automountToken",
            "unknown field metadata.lables",
            "unknown field spec.template.spec.volumes[0].hostPath.tpye"
        ],
        "{p:#?}"
    );
}

#[test]
fn detector_rejects_unknown_kinds_and_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path(), "x.yaml", "apiVersion: v1\nkind: Podd\nmetadata: {name: a}\n");
    let p = problems_of(&f);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("x.yaml") && p[0].contains("no known type for apiVersion \"v1\" kind \"Podd\""), "{p:#?}");
    let f = fixture(
        dir.path(),
        "y.yaml",
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: a}\nspec: {selector: 3}\n",
    );
    let p = problems_of(&f);
    assert!(p[0].contains("expected a valid apps/v1 DaemonSet"), "{p:#?}");
}

#[test]
fn detector_checks_service_monitors_and_configmap_toml() {
    let dir = tempfile::tempdir().unwrap();
    let sm = r#"
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: iogate}
spec:
  selector: {matchLabels: {app: iogate}}
  endpoints: [{port: metrics, honorLabels: true, intervall: 30s}]
"#;
    let p = problems_of(&fixture(dir.path(), "sm.yaml", sm));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("unknown field `intervall`"), "{p:#?}");
    let ok = sm.replace(", intervall: 30s", "");
    assert!(problems_of(&fixture(dir.path(), "sm2.yaml", &ok)).is_empty());

    let cm = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data:
  config.toml: |
    [defaults]
    read-iops = 300
  other: x
"#;
    let docs = manifests::read_documents(&fixture(dir.path(), "cm.yaml", cm)).unwrap();
    let entries = manifests::toml_entries(&docs[0]).unwrap();
    assert_eq!(entries.len(), 1);
    let config = iogate_core::Config::from_toml(&entries[0].1, Path::new("cm"), |_| None).unwrap();
    assert_eq!(config.defaults.read_iops, Some(300));
    let bad = cm.replace("read-iops", "read-ipos");
    let docs = manifests::read_documents(&fixture(dir.path(), "cm2.yaml", &bad)).unwrap();
    let entries = manifests::toml_entries(&docs[0]).unwrap();
    assert!(iogate_core::Config::from_toml(&entries[0].1, Path::new("cm2"), |_| None).is_err());
}

#[test]
fn kustomization_rejects_unknown_fields_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "deploy/daemonset.yaml", GOOD);
    let good = r#"
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: iogate-system
resources: [daemonset.yaml]
configMapGenerator:
  - name: dash
    files: [iogate.json=dashboards/iogate.json]
    options: {labels: {grafana_dashboard: "1"}, disableNameSuffixHash: true}
"#;
    let f = fixture(dir.path(), "deploy/kustomization.yaml", good);
    let k = manifests::kustomization(&f).unwrap();
    let missing = manifests::missing_references(&f, &k);
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert!(missing[0].contains("names dashboards/iogate.json, which does not exist"), "{missing:#?}");
    fixture(dir.path(), "deploy/dashboards/iogate.json", "{}");
    assert!(manifests::missing_references(&f, &k).is_empty());
    let f = fixture(dir.path(), "deploy/kustomization.yaml", &good.replace("resources:", "resource:"));
    let err = format!("{:#}", manifests::kustomization(&f).unwrap_err());
    assert!(err.contains("unknown field `resource`"), "{err}");
}

#[test]
fn yaml_files_are_found_recursively_and_kustomizations_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "a.yaml", GOOD);
    fixture(dir.path(), "sub/b.yml", GOOD);
    fixture(dir.path(), "sub/kustomization.yaml", "resources: []\n");
    fixture(dir.path(), "dashboards/x.json", "{}");
    let files = manifests::yaml_files(dir.path()).unwrap();
    let names: Vec<String> = files.iter().map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
    assert_eq!(names, ["a.yaml", "sub/b.yml", "sub/kustomization.yaml"]);
    assert_eq!(files.iter().filter(|f| manifests::is_kustomization(f)).count(), 1);
}
