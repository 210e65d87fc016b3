//! What the Kubernetes API says about the pods on this node: names for the
//! UIDs and container ids that cgroup paths carry.
//!
//! A [`PodDirectory`] reads a kube `reflector` store filled by a watcher on
//! the node's pods (field selector `spec.nodeName=<node>`), so it follows
//! changes as they happen instead of polling. The store does the relist
//! bookkeeping: a restarted watch lists everything again, and the listed pods
//! replace the old ones at once at the end of the list (`InitDone`), which
//! both drops pods deleted while the watch was down and avoids serving a
//! half-empty directory in between.
//!
//! The store is keyed by namespace and name; cgroup paths carry pod UIDs, so
//! the directory keeps an index by UID beside it, rebuilt from the store's
//! state on the first lookup after the watch changed something.
//!
//! Without a cluster the directory stays empty and says why
//! ([`DirectoryStatus::NotConnected`]); callers then name pods by UID.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use futures::StreamExt;
use iogate_core::cgroup::paths::{ContainerId, PodUid};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

/// The annotation by which a static pod's mirror names the UID the kubelet
/// gave the static pod (the one in its cgroup path).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// One pod's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub name: String,
    /// Container id → container name, over regular, init and ephemeral
    /// containers, including the previous instance of restarted ones (its
    /// cgroup can outlive the restart by a moment).
    pub containers: HashMap<ContainerId, String>,
}

impl PodNames {
    /// The pod's UIDs as cgroup paths carry them (its own, and for a mirror
    /// pod the static pod's), with its names; `None` for a pod without a
    /// valid UID or name.
    pub fn from_pod(pod: &Pod) -> Option<(Vec<PodUid>, PodNames)> {
        let meta = &pod.metadata;
        let mut uids = vec![meta.uid.as_deref()?.parse().ok()?];
        if let Some(hash) = meta.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)) {
            uids.extend(hash.parse().ok());
        }
        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            let all =
                [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
            for cs in all.into_iter().flatten().flatten() {
                for id in container_ids(cs) {
                    containers.insert(id, cs.name.clone());
                }
            }
        }
        let names = PodNames { namespace: meta.namespace.clone()?, name: meta.name.clone()?, containers };
        Some((uids, names))
    }
}

/// Current and previous container id of one status entry. The API writes
/// them as `<runtime>://<id>` (`containerd://`, `cri-o://`, `docker://`).
fn container_ids(cs: &ContainerStatus) -> impl Iterator<Item = ContainerId> + '_ {
    let current = cs.container_id.as_deref();
    let previous = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.container_id.as_deref());
    [current, previous].into_iter().flatten().filter_map(|s| s.split_once("://")?.1.parse().ok())
}

/// Whether the directory can be trusted to know every pod on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryStatus {
    /// No cluster: the directory stays empty. Says why.
    NotConnected(String),
    /// Watching, the first full list has not arrived yet.
    Syncing,
    /// The first full list arrived; changes follow as they happen.
    Synced,
}

/// The node's pods by UID, shared between the watcher and readers.
#[derive(Debug, Clone)]
pub struct PodDirectory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `Err(why)` without a cluster.
    store: Result<Store<Pod>, String>,
    /// Counts the events the store has taken, so the index knows when it is
    /// stale.
    changes: AtomicU64,
    synced: AtomicBool,
    index: Mutex<UidIndex>,
}

#[derive(Debug, Default)]
struct UidIndex {
    /// The value of `changes` the index was built at; `None`: never built.
    built_at: Option<u64>,
    pods: HashMap<PodUid, Arc<PodNames>>,
}

impl PodDirectory {
    /// An empty directory that will never learn names, and why.
    pub fn not_connected(reason: impl Into<String>) -> PodDirectory {
        PodDirectory::with_store(Err(reason.into()))
    }

    fn with_store(store: Result<Store<Pod>, String>) -> PodDirectory {
        PodDirectory {
            inner: Arc::new(Inner {
                store,
                changes: AtomicU64::new(0),
                synced: AtomicBool::new(false),
                index: Mutex::default(),
            }),
        }
    }

    /// Connects with the usual kube configuration (in-cluster service
    /// account, else `KUBECONFIG` / `~/.kube/config`) and returns the
    /// directory plus the future that keeps it current; spawn the future.
    /// It retries with backoff whenever the API server fails and ends only
    /// if the watch stream does.
    pub async fn connect(node_name: &str) -> anyhow::Result<(PodDirectory, impl Future<Output = ()> + Send + 'static)> {
        anyhow::ensure!(!node_name.is_empty(), "expected the node's name to select its pods, found an empty name");
        let client = Client::try_default()
            .await
            .context("no Kubernetes API configuration (neither in-cluster nor a kubeconfig)")?;
        let (store, writer) = reflector::store();
        let directory = PodDirectory::with_store(Ok(store));
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let events = reflector::reflector(
            writer,
            watcher::watcher(Api::<Pod>::all(client), config).default_backoff().modify(prune),
        );
        let target = directory.clone();
        let node = node_name.to_string();
        let run = async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => target.observe(&event),
                    // The backoff retries; the store keeps its last state.
                    Err(e) => tracing::warn!("watching pods on node {node}: {e}"),
                }
            }
            tracing::warn!("the pod watch for node {node} ended; pod names are frozen from now on");
        };
        Ok((directory, run))
    }

    /// Takes note of an event the store has applied.
    fn observe(&self, event: &Event<Pod>) {
        self.inner.changes.fetch_add(1, Ordering::Release);
        if matches!(event, Event::InitDone) {
            self.inner.synced.store(true, Ordering::Release);
        }
    }

    /// The names of the pod whose cgroups carry this UID.
    pub fn pod(&self, uid: &PodUid) -> Option<Arc<PodNames>> {
        let store = self.inner.store.as_ref().ok()?;
        let mut index = self.index();
        let changes = self.inner.changes.load(Ordering::Acquire);
        if index.built_at != Some(changes) {
            index.pods = by_uid(&store.state());
            index.built_at = Some(changes);
        }
        index.pods.get(uid).cloned()
    }

    pub fn status(&self) -> DirectoryStatus {
        match &self.inner.store {
            Err(why) => DirectoryStatus::NotConnected(why.clone()),
            Ok(_) if self.is_synced() => DirectoryStatus::Synced,
            Ok(_) => DirectoryStatus::Syncing,
        }
    }

    /// The first full list has arrived (readiness).
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    // A panic while rebuilding leaves an index that the next lookup
    // rebuilds (its `built_at` is set last), so poisoning is not fatal here.
    fn index(&self) -> MutexGuard<'_, UidIndex> {
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn by_uid(pods: &[Arc<Pod>]) -> HashMap<PodUid, Arc<PodNames>> {
    let mut index = HashMap::with_capacity(pods.len());
    for pod in pods {
        let Some((uids, names)) = PodNames::from_pod(pod) else {
            tracing::debug!("ignoring pod without a valid UID, namespace or name: {:?}", pod.metadata);
            continue;
        };
        let names = Arc::new(names);
        for uid in uids {
            index.insert(uid, names.clone());
        }
    }
    index
}

/// Keeps only what [`PodNames::from_pod`] reads, before the store keeps a
/// copy of every pod: specs, managed fields and most annotations are many
/// kilobytes per pod, the names a few dozen bytes.
fn prune(pod: &mut Pod) {
    pod.spec = None;
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k == MIRROR_ANNOTATION);
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            container_statuses: status.container_statuses,
            init_container_statuses: status.init_container_statuses,
            ephemeral_container_statuses: status.ephemeral_container_statuses,
            ..PodStatus::default()
        });
    }
}

/// Feeds a directory by hand, the way the watch does: events go into the
/// store's writer, then the directory takes note.
#[cfg(test)]
pub(crate) struct HandFeed {
    writer: reflector::store::Writer<Pod>,
    directory: PodDirectory,
}

#[cfg(test)]
impl HandFeed {
    pub(crate) fn apply(&mut self, event: Event<Pod>) {
        self.writer.apply_watcher_event(&event);
        self.directory.observe(&event);
    }
}

#[cfg(test)]
impl PodDirectory {
    /// A directory waiting for events, and what feeds it.
    pub(crate) fn by_hand() -> (PodDirectory, HandFeed) {
        let (store, writer) = reflector::store();
        let directory = PodDirectory::with_store(Ok(store));
        (directory.clone(), HandFeed { writer, directory })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const UID_A: &str = "6f3a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    const UID_B: &str = "11111111-2222-4333-8444-555555555555";
    const STATIC: &str = "b4f3c0e1d2a5968778695a4b3c2d1e0f";

    fn cid(n: u8) -> String {
        format!("{:x}", n).repeat(64)
    }

    fn status(name: &str, id: Option<String>) -> ContainerStatus {
        ContainerStatus { name: name.into(), container_id: id, ..Default::default() }
    }

    fn pod(uid: &str, name: &str, containers: Vec<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                namespace: Some("shop".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus { container_statuses: Some(containers), ..Default::default() }),
            ..Default::default()
        }
    }

    fn uid(s: &str) -> PodUid {
        s.parse().unwrap()
    }

    fn names(d: &PodDirectory, u: &str) -> Option<(String, Vec<(String, String)>)> {
        let p = d.pod(&uid(u))?;
        let mut c: Vec<(String, String)> = p.containers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        c.sort();
        Some((format!("{}/{}", p.namespace, p.name), c))
    }

    #[test]
    fn container_ids_from_every_runtime_and_every_kind_of_container() {
        let mut p = pod(UID_A, "web-0", vec![status("app", Some(format!("containerd://{}", cid(1))))]);
        let st = p.status.as_mut().unwrap();
        st.init_container_statuses = Some(vec![status("init", Some(format!("cri-o://{}", cid(2))))]);
        st.ephemeral_container_statuses = Some(vec![status("debug", Some(format!("docker://{}", cid(3))))]);
        st.container_statuses.as_mut().unwrap().push(ContainerStatus {
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    container_id: Some(format!("containerd://{}", cid(5))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..status("sidecar", Some(format!("containerd://{}", cid(4))))
        });
        // Not started yet, and ids that are not ids: skipped, never guessed.
        st.container_statuses.as_mut().unwrap().push(status("waiting", None));
        st.container_statuses.as_mut().unwrap().push(status("odd", Some(cid(6))));
        st.container_statuses.as_mut().unwrap().push(status("short", Some("containerd://abc".into())));

        let (uids, n) = PodNames::from_pod(&p).unwrap();
        assert_eq!(uids, [uid(UID_A)]);
        let mut got: Vec<(String, &str)> = n.containers.iter().map(|(k, v)| (k.to_string(), v.as_str())).collect();
        got.sort();
        assert_eq!(
            got,
            [(cid(1), "app"), (cid(2), "init"), (cid(3), "debug"), (cid(4), "sidecar"), (cid(5), "sidecar")]
        );
    }

    #[test]
    fn pods_without_a_valid_uid_or_names_are_ignored() {
        let (d, mut feed) = PodDirectory::by_hand();
        let mut p = pod("web-0-uid", "web-0", vec![]);
        feed.apply(Event::Apply(p.clone()));
        p.metadata.uid = Some(UID_A.into());
        p.metadata.namespace = None;
        feed.apply(Event::Apply(p));
        assert_eq!(d.pod(&uid(UID_A)), None);
    }

    #[test]
    fn initial_list_then_changes() {
        let (d, mut feed) = PodDirectory::by_hand();
        assert!(!d.is_synced());
        feed.apply(Event::Init);
        feed.apply(Event::InitApply(pod(
            UID_A,
            "web-0",
            vec![status("app", Some(format!("containerd://{}", cid(1))))],
        )));
        // Listed pods become visible all at once, at InitDone.
        assert_eq!(names(&d, UID_A), None);
        assert!(!d.is_synced());
        feed.apply(Event::InitDone);
        assert!(d.is_synced());
        assert_eq!(names(&d, UID_A), Some(("shop/web-0".into(), vec![(cid(1), "app".into())])));

        // The container restarts: a new id, the old one kept as last state.
        feed.apply(Event::Apply(pod(UID_A, "web-0", vec![status("app", Some(format!("containerd://{}", cid(2))))])));
        assert_eq!(names(&d, UID_A).unwrap().1, [(cid(2), "app".into())]);
        feed.apply(Event::Apply(pod(UID_B, "web-1", vec![])));
        assert_eq!(names(&d, UID_B), Some(("shop/web-1".into(), vec![])));
        feed.apply(Event::Delete(pod(UID_A, "web-0", vec![])));
        assert_eq!(names(&d, UID_A), None);
        assert!(names(&d, UID_B).is_some());
    }

    #[test]
    fn a_restarted_watch_replaces_the_state() {
        let (d, mut feed) = PodDirectory::by_hand();
        feed.apply(Event::Init);
        feed.apply(Event::InitApply(pod(UID_A, "web-0", vec![])));
        feed.apply(Event::InitApply(pod(UID_B, "web-1", vec![])));
        feed.apply(Event::InitDone);

        // web-0 was deleted while the watch was down: the relist lacks it.
        feed.apply(Event::Init);
        feed.apply(Event::InitApply(pod(UID_B, "web-1-renamed", vec![])));
        // Until the relist is complete, readers keep the previous state.
        assert!(names(&d, UID_A).is_some());
        assert_eq!(names(&d, UID_B).unwrap().0, "shop/web-1");
        assert!(d.is_synced(), "a relist does not make a synced directory unready");
        feed.apply(Event::InitDone);
        assert_eq!(names(&d, UID_A), None);
        assert_eq!(names(&d, UID_B).unwrap().0, "shop/web-1-renamed");
    }

    #[test]
    fn a_mirror_pod_also_answers_for_its_static_pods_uid() {
        let mut p = pod(UID_A, "etcd-node1", vec![status("etcd", Some(format!("containerd://{}", cid(7))))]);
        p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_string(), STATIC.to_string())].into());
        let (d, mut feed) = PodDirectory::by_hand();
        feed.apply(Event::Apply(p.clone()));
        assert_eq!(names(&d, STATIC).unwrap().0, "shop/etcd-node1");
        assert_eq!(names(&d, UID_A).unwrap().0, "shop/etcd-node1");
        feed.apply(Event::Delete(p));
        assert_eq!(names(&d, STATIC), None);
    }

    /// The only test that touches the process environment (`KUBECONFIG`),
    /// so it cannot race another.
    #[tokio::test]
    async fn connect_without_a_reachable_cluster() {
        let t = tempfile::tempdir().unwrap();
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        std::env::set_var("KUBECONFIG", t.path().join("absent"));
        let e = PodDirectory::connect("node1").await.err().expect("no configuration must fail");
        assert!(format!("{e:#}").starts_with("no Kubernetes API configuration"), "{e:#}");

        // A configuration whose server refuses connections: the directory
        // exists and keeps syncing, the watch retries instead of panicking.
        let config = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
            clusters: [{name: k, cluster: {server: \"https://127.0.0.1:9\"}}]\n\
            users: [{name: u, user: {token: t}}]\n\
            contexts: [{name: c, context: {cluster: k, user: u}}]\n";
        std::fs::write(t.path().join("config"), config).unwrap();
        std::env::set_var("KUBECONFIG", t.path().join("config"));
        let (d, run) = PodDirectory::connect("node1").await.unwrap();
        let watch = tokio::spawn(run);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!watch.is_finished(), "the watch must keep retrying");
        assert_eq!(d.status(), DirectoryStatus::Syncing);
        watch.abort();
        let e = PodDirectory::connect("").await.err().unwrap().to_string();
        assert_eq!(e, "expected the node's name to select its pods, found an empty name");
    }

    #[test]
    fn pruning_keeps_what_the_names_need() {
        let mut p = pod(UID_A, "etcd-node1", vec![status("etcd", Some(format!("containerd://{}", cid(7))))]);
        p.metadata.annotations = Some(
            [
                (MIRROR_ANNOTATION.to_string(), STATIC.to_string()),
                ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{...}".repeat(1000)),
            ]
            .into(),
        );
        p.spec = Some(Default::default());
        p.status.as_mut().unwrap().phase = Some("Running".into());
        let before = PodNames::from_pod(&p);
        prune(&mut p);
        assert_eq!(PodNames::from_pod(&p), before);
        assert!(p.spec.is_none() && p.status.as_ref().unwrap().phase.is_none());
        assert_eq!(p.metadata.annotations.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn not_connected_says_why() {
        let d = PodDirectory::not_connected("no kubeconfig");
        assert_eq!(d.status(), DirectoryStatus::NotConnected("no kubeconfig".into()));
        assert!(!d.is_synced());
    }
}
