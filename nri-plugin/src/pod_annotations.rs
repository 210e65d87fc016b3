//! Pod annotations as they are now. NRI hands the plugin a pod's
//! annotations when its containers are created and never again, so a
//! `kubectl annotate` on a running pod needs another source:
//!
//! * the API server: a watch on this node's pods (field selector
//!   `spec.nodeName`), kept by kube's reflector, pods get/list/watch only;
//! * without a cluster (the local demo, the tests), a JSON file standing in
//!   for the API, `{"namespace/name": {"iogate.io/write-iops": "200"}}`,
//!   reloaded when it changes. A pod listed there has exactly the listed
//!   annotations, as a pod in the API has exactly its current ones;
//! * neither: the annotations at creation.
//!
//! A pod the source does not know (not yet listed, another node's) keeps
//! the annotations NRI gave at creation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use iogate_core::annotations::PREFIX;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use crate::inventory::PodInfo;

pub type Annotations = Arc<HashMap<String, String>>;

/// Pods by `namespace/name`.
pub type ByPod = HashMap<String, Annotations>;

#[derive(Clone)]
pub enum PodAnnotations {
    /// Only NRI's, as of creation.
    AtCreation,
    /// The stand-in file's content, replaced whenever it changes.
    File(Arc<RwLock<ByPod>>),
    /// This node's pods from the API server.
    Kube(Store<Pod>),
}

impl PodAnnotations {
    /// The pod's annotations now, if this source knows the pod.
    pub fn current(&self, pod: &PodInfo) -> Option<Annotations> {
        match self {
            PodAnnotations::AtCreation => None,
            PodAnnotations::File(pods) => pods.read().unwrap_or_else(|p| p.into_inner()).get(&pod.key()).cloned(),
            PodAnnotations::Kube(store) => {
                let found = store.get(&ObjectRef::new(&pod.name).within(&pod.namespace))?;
                let meta = &found.metadata;
                // Same name, another pod (deleted and recreated): not ours.
                if !pod.uid.is_empty() && meta.uid.as_deref().is_some_and(|uid| uid != pod.uid) {
                    return None;
                }
                let annotations =
                    meta.annotations.as_ref().map(|a| a.clone().into_iter().collect()).unwrap_or_default();
                Some(Arc::new(annotations))
            }
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            PodAnnotations::AtCreation => "annotations as of each pod's creation (no API server, no stand-in file)",
            PodAnnotations::File(_) => "annotations from the stand-in file",
            PodAnnotations::Kube(_) => "annotations from the API server's watch of this node's pods",
        }
    }
}

/// Reads the stand-in file: an object of `namespace/name` to an object of
/// annotation to string value.
pub fn parse_file(text: &str) -> Result<ByPod> {
    let raw: HashMap<String, HashMap<String, serde_json::Value>> = serde_json::from_str(text).context(
        "expected a JSON object of \"namespace/name\" to an object of annotations, e.g. {\"shop/db-0\": {\"iogate.io/write-iops\": \"200\"}}",
    )?;
    let mut out = HashMap::with_capacity(raw.len());
    for (pod, annotations) in raw {
        match pod.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => bail!("expected pods as \"namespace/name\", found {pod:?}"),
        }
        let mut values = HashMap::with_capacity(annotations.len());
        for (key, value) in annotations {
            match value {
                serde_json::Value::String(s) => values.insert(key, s),
                other => {
                    bail!("pod {pod}: annotation {key}: expected a string (as Kubernetes stores them), found {other}")
                }
            };
        }
        out.insert(pod, Arc::new(values));
    }
    Ok(out)
}

/// Watches this node's pods. Returns the source and the future that keeps
/// it current (spawn it); `on_change` runs after every change the store
/// takes, so the reconciler applies it without waiting for its interval.
pub async fn connect(
    node_name: &str,
    on_change: impl Fn() + Send + 'static,
) -> Result<(PodAnnotations, impl Future<Output = ()> + Send + 'static)> {
    anyhow::ensure!(!node_name.is_empty(), "expected the node's name to select its pods, found an empty name");
    let client =
        Client::try_default().await.context("no Kubernetes API configuration (neither in-cluster nor a kubeconfig)")?;
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let events =
        reflector::reflector(writer, watcher::watcher(Api::<Pod>::all(client), config).default_backoff().modify(prune));
    let node = node_name.to_string();
    let run = async move {
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => on_change(),
                // The backoff retries; the store keeps its last state.
                Err(e) => tracing::warn!("watching pods on node {node}: {e}"),
            }
        }
        tracing::warn!("the pod watch for node {node} ended; annotation changes are no longer seen");
    };
    Ok((PodAnnotations::Kube(store), run))
}

/// Keeps what the policy reads (iogate's annotations) and what identifies
/// the pod: a pod's spec, status and other annotations are kilobytes.
fn prune(pod: &mut Pod) {
    pod.spec = None;
    pod.status = None;
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k.starts_with(PREFIX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;

    fn info(uid: &str) -> PodInfo {
        PodInfo { uid: uid.into(), namespace: "shop".into(), name: "db-0".into(), annotations: HashMap::new() }
    }

    #[test]
    fn the_stand_in_file() {
        let pods = parse_file(r#"{"shop/db-0": {"iogate.io/write-iops": "200"}, "shop/idle": {}}"#).unwrap();
        let source = PodAnnotations::File(Arc::new(RwLock::new(pods)));
        assert_eq!(source.current(&info("u")).unwrap()["iogate.io/write-iops"], "200");
        let other = PodInfo { name: "web-0".into(), ..info("u") };
        assert_eq!(source.current(&other), None, "a pod not listed keeps NRI's annotations");

        let e = parse_file(r#"{"db-0": {}}"#).unwrap_err().to_string();
        assert_eq!(e, "expected pods as \"namespace/name\", found \"db-0\"");
        let e = parse_file(r#"{"shop/db-0": {"iogate.io/write-iops": 200}}"#).unwrap_err().to_string();
        assert_eq!(
            e,
            "pod shop/db-0: annotation iogate.io/write-iops: expected a string (as Kubernetes stores them), found 200"
        );
        let e = format!("{:#}", parse_file("[").unwrap_err());
        assert!(e.starts_with("expected a JSON object of \"namespace/name\""), "{e}");
    }

    #[test]
    fn the_api_servers_pods_pruned_to_iogates_annotations() {
        let (store, mut writer) = reflector::store::<Pod>();
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                annotations: Some(
                    [
                        ("iogate.io/write-iops".to_string(), "200".to_string()),
                        ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{…}".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        prune(&mut pod);
        writer.apply_watcher_event(&Event::Apply(pod));
        let source = PodAnnotations::Kube(store);
        let got = source.current(&info("u1")).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["iogate.io/write-iops"], "200");
        assert_eq!(source.current(&info("u2")), None, "a recreated pod of the same name is another pod");
    }
}
