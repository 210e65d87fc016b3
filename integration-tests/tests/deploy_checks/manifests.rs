//! Kubernetes manifests read into the real API types, with the fields those
//! types do not know reported.
//!
//! k8s-openapi's types ignore unknown fields when deserializing, so a
//! misspelt `imagePullPolcy` would pass unnoticed (and the API server would
//! drop it the same way). The detector: deserialize the document into its
//! type, serialize that value back to JSON, and walk the original document —
//! every key of the original that the round trip lost is a field the type
//! does not have. Keys whose value is `null` are not reported: serialization
//! drops an absent `Option`, so `null` and "unknown" cannot be told apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    /// 0-based position in the file (named 1-based in messages).
    pub index: usize,
    pub json: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap_or("")
    }

    pub fn api_version(&self) -> &str {
        self.json["apiVersion"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> String {
        let name = self.json["metadata"]["name"].as_str().unwrap_or("<unnamed>");
        format!("{} document {} ({} {name})", self.file.display(), self.index + 1, self.kind())
    }
}

/// Every `*.yaml`/`*.yml` under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_kustomization(path: &Path) -> bool {
    matches!(path.file_name().and_then(|n| n.to_str()), Some("kustomization.yaml" | "kustomization.yml"))
}

/// The documents of a multi-document YAML file (`---` separated), as JSON;
/// empty documents (only comments) are left out.
pub fn documents(file: &Path, text: &str) -> Result<Vec<Document>> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(de)
            .with_context(|| format!("{} document {index}: expected YAML", file.display()))?;
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml).with_context(|| {
            format!("{} document {index}: expected string keys (JSON-compatible YAML)", file.display())
        })?;
        out.push(Document { file: file.to_path_buf(), index, json });
    }
    Ok(out)
}

pub fn read_documents(file: &Path) -> Result<Vec<Document>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    documents(file, &text)
}

/// Keys of `original` that `round_tripped` lacks, as JSON paths
/// (`spec.template.spec.containers[0].imagePullPolcy`).
pub fn lost_keys(original: &Value, round_tripped: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(original, round_tripped, "", &mut out);
    out
}

fn walk(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match b.get(key) {
                    Some(v) => walk(value, v, &here, out),
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, (value, v)) in o.iter().zip(b).enumerate() {
                walk(value, v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Deserializes `json` as `T`, serializes it back, and returns the value
/// and the keys `T` does not know.
fn round_trip<T: DeserializeOwned + Serialize>(json: &Value) -> Result<(T, Vec<String>)> {
    let typed: T = serde_json::from_value(json.clone())?;
    let back = serde_json::to_value(&typed)?;
    Ok((typed, lost_keys(json, &back)))
}

fn check_as<T: Resource + DeserializeOwned + Serialize>(json: &Value) -> Result<Vec<String>> {
    let what = format!("{} {}", T::API_VERSION, T::KIND);
    round_trip::<T>(json).map(|(_, lost)| lost).with_context(|| format!("expected a valid {what}"))
}

type Checker = fn(&Value) -> Result<Vec<String>>;

/// The type a document's `apiVersion` and `kind` name, as a checker.
fn checker(api_version: &str, kind: &str) -> Option<Checker> {
    fn entry<T: Resource + DeserializeOwned + Serialize>() -> (&'static str, &'static str, Checker) {
        (T::API_VERSION, T::KIND, check_as::<T>)
    }
    let known = [
        entry::<Namespace>(),
        entry::<ServiceAccount>(),
        entry::<ConfigMap>(),
        entry::<Secret>(),
        entry::<Service>(),
        entry::<DaemonSet>(),
        entry::<Deployment>(),
        entry::<ClusterRole>(),
        entry::<ClusterRoleBinding>(),
        entry::<Role>(),
        entry::<RoleBinding>(),
        entry::<PriorityClass>(),
        entry::<PodDisruptionBudget>(),
        entry::<NetworkPolicy>(),
        (SERVICE_MONITOR_API_VERSION, "ServiceMonitor", |json| {
            round_trip::<ServiceMonitor>(json).map(|(_, lost)| lost).context("expected a valid ServiceMonitor")
        }),
    ];
    known.into_iter().find(|(v, k, _)| *v == api_version && *k == kind).map(|(_, _, check)| check)
}

/// Problems with one document: an unknown kind, a document its type
/// rejects, or fields its type does not have.
pub fn problems(doc: &Document) -> Vec<String> {
    let Some(check) = checker(doc.api_version(), doc.kind()) else {
        return vec![format!(
            "{}: no known type for apiVersion {:?} kind {:?}",
            doc.name(),
            doc.api_version(),
            doc.kind()
        )];
    };
    match check(&doc.json) {
        Ok(lost) => lost.into_iter().map(|path| format!("{}: unknown field {path}", doc.name())).collect(),
        Err(e) => vec![format!("{}: {e:#}", doc.name())],
    }
}

/// The policy TOML files a ConfigMap carries: (key, text).
pub fn toml_entries(doc: &Document) -> Result<Vec<(String, String)>> {
    let (cm, _) =
        round_trip::<ConfigMap>(&doc.json).with_context(|| format!("{}: expected a ConfigMap", doc.name()))?;
    Ok(cm.data.unwrap_or_default().into_iter().filter(|(k, _)| k.ends_with(".toml")).collect())
}

pub const SERVICE_MONITOR_API_VERSION: &str = "monitoring.coreos.com/v1";

/// The fields of prometheus-operator's ServiceMonitor that a scrape of the
/// sidecar can use; anything else is rejected (a CRD: no k8s-openapi type).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_target_labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_names: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honor_labels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honor_timestamps: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relabelings: Option<Vec<Relabeling>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_relabelings: Option<Vec<Relabeling>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Relabeling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

pub fn service_monitor(doc: &Document) -> Result<ServiceMonitor> {
    round_trip::<ServiceMonitor>(&doc.json).map(|(sm, _)| sm).with_context(|| doc.name())
}

/// `kustomization.yaml`, the fields a plain kustomization of these
/// manifests uses; anything else is rejected.
// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    pub labels: Option<Vec<KustomizeLabels>>,
    pub common_labels: Option<BTreeMap<String, String>>,
    pub common_annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub config_map_generator: Vec<ConfigMapGenerator>,
    pub generator_options: Option<GeneratorOptions>,
    pub images: Option<Vec<KustomizeImage>>,
    pub patches: Option<Vec<KustomizePatch>>,
}

// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeLabels {
    pub pairs: BTreeMap<String, String>,
    pub include_selectors: Option<bool>,
    pub include_templates: Option<bool>,
}

// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapGenerator {
    pub name: String,
    pub namespace: Option<String>,
    pub behavior: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
    pub literals: Option<Vec<String>>,
    pub envs: Option<Vec<String>>,
    pub options: Option<GeneratorOptions>,
}

// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GeneratorOptions {
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub disable_name_suffix_hash: Option<bool>,
    pub immutable: Option<bool>,
}

// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeImage {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

// Its fields are the schema serde validates the file against; only some are read.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizePatch {
    pub path: Option<String>,
    pub patch: Option<String>,
    pub target: Option<BTreeMap<String, String>>,
}

pub fn kustomization(file: &Path) -> Result<Kustomization> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}: expected a kustomization", file.display()))
}

/// Local files a kustomization names (resources, generator files, patches)
/// that do not exist next to it.
pub fn missing_references(file: &Path, k: &Kustomization) -> Vec<String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let generator_files = k.config_map_generator.iter().flat_map(|g| &g.files).map(|f| match f.split_once('=') {
        Some((_key, path)) => path,
        None => f.as_str(),
    });
    let patches = k.patches.iter().flatten().filter_map(|p| p.path.as_deref());
    k.resources
        .iter()
        .map(String::as_str)
        .filter(|r| !r.contains("://") && !r.starts_with("github.com/"))
        .chain(generator_files)
        .chain(patches)
        .filter(|r| !dir.join(r).exists())
        .map(|r| format!("{}: names {r}, which does not exist in {}", file.display(), dir.display()))
        .collect()
}

/// `bail!` with every problem, one a line, if there are any.
pub fn fail_on(what: &str, problems: &[String]) -> Result<()> {
    if !problems.is_empty() {
        bail!("{what}:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
