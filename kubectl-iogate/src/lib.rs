//! `kubectl iogate top`, the client of the iogate metrics sidecars: it asks
//! every node's sidecar for `GET /api/v1/metrics` (an
//! [`iogate_api::MetricsResponse`]) and shows the cluster's block I/O per
//! namespace, workload, pod and container.
//!
//! It depends on the API's types, not on the sidecar: no eBPF toolchain, no
//! kernel headers, no particular architecture, so `cargo install` works
//! wherever kubectl runs.
//!
//! The pieces, each testable without a cluster:
//!
//! - [`cli`]: the command line;
//! - [`access`]: TLS trust, client certificate and password for a sidecar
//!   locked with `--web.config.file`;
//! - [`fetch`]: the sidecars' answers, directly (`--endpoint`) or through
//!   the API server's pod proxy, and the pods' owners;
//! - [`workload`]: a pod's workload, from its owner or its name;
//! - [`rows`]: merging the nodes, one row per container, sorting;
//! - [`table`]: the flat table, the tree, and the notes above them.
//!
//! [`top`] strings them together; the binary only prints and picks the exit
//! status.

pub mod access;
pub mod cli;
pub mod fetch;
pub mod rows;
pub mod table;
pub mod workload;

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use futures::future::join_all;

use crate::access::{DirectAccess, PASSWORD_ENV};
use crate::cli::{NamespaceChoice, TopArgs};
use crate::fetch::{Failure, Ownership, Scheme};
use crate::rows::{NodeReport, Scope};
use crate::workload::Workload;

/// What `top` prints: warnings and notes (stderr, first), then the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    pub table: String,
}

/// The sidecars' answers and what is known about the pods' owners.
struct Gathered {
    nodes: Vec<NodeReport>,
    failures: Vec<Failure>,
    scope: Scope,
    ownership: HashMap<(String, String), Ownership>,
    warnings: Vec<String>,
}

/// Runs `kubectl iogate top`: an error only when nothing can be shown (no
/// cluster, or no sidecar answered).
pub async fn top(args: &TopArgs) -> Result<Output> {
    let gathered = if args.endpoints.is_empty() { from_cluster(args).await? } else { from_endpoints(args).await? };
    let mut warnings: Vec<String> =
        gathered.failures.iter().map(|f| format!("warning: {}: {}", f.source, f.reason)).collect();
    warnings.extend(gathered.warnings);

    let merged = rows::merge(gathered.nodes);
    let ownership = gathered.ownership;
    let mut rows = rows::rows(&merged, &gathered.scope, |pod| workload_of(&ownership, &pod.namespace, &pod.pod_name));
    rows::sort(&mut rows, args.sort);
    rows.truncate(args.limit);

    let mut notes = table::notes(&rows, &merged.degraded_nodes);
    if rows.is_empty() {
        notes.push(format!("note: no block I/O in the last window ({})", describe(&gathered.scope)));
    }
    let table = if args.tree { table::render_tree(&rows) } else { table::render_flat(&rows) };
    Ok(Output { warnings, notes, table })
}

/// The owner from the API when it knows the pod, else a guess from the name.
fn workload_of(ownership: &HashMap<(String, String), Ownership>, namespace: &str, pod: &str) -> Workload {
    match ownership.get(&(namespace.to_string(), pod.to_string())) {
        Some(o) => workload::from_owner(pod, o.owner.as_ref(), o.template_hash.as_deref()),
        None => workload::infer(pod),
    }
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::AllNamespaces => "all namespaces".to_string(),
        Scope::Namespace(ns) => format!("namespace {ns}"),
    }
}

/// `--endpoint`: no cluster, so no "current namespace" and no owners.
async fn from_endpoints(args: &TopArgs) -> Result<Gathered> {
    let scope = match &args.namespaces {
        NamespaceChoice::Named(ns) => Scope::Namespace(ns.clone()),
        NamespaceChoice::All | NamespaceChoice::Current => Scope::AllNamespaces,
    };
    let tls = args.endpoints.iter().any(|e| e.scheme == Scheme::Https);
    let access = DirectAccess::new(&args.access, tls, std::env::var(PASSWORD_ENV).ok())
        .context("setting up access to the https:// sidecars")?;
    let access = &access;
    let answers = join_all(args.endpoints.iter().map(|e| async move {
        let result = fetch::get_direct(e, access, args.timeout).await;
        (e.to_string(), result)
    }))
    .await;
    let (nodes, failures) = fetch::gather(answers)?;
    Ok(Gathered { nodes, failures, scope, ownership: HashMap::new(), warnings: Vec::new() })
}

/// Every sidecar pod through the API server, and the pods' owners.
async fn from_cluster(args: &TopArgs) -> Result<Gathered> {
    // Only the top of kube's error: its sources repeat the same reasons.
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow!("no Kubernetes API configuration ({e}); --endpoint URL queries a sidecar directly"))?;
    let scope = match &args.namespaces {
        NamespaceChoice::Named(ns) => Scope::Namespace(ns.clone()),
        NamespaceChoice::All => Scope::AllNamespaces,
        NamespaceChoice::Current => Scope::Namespace(client.default_namespace().to_string()),
    };
    let (sidecars, mut failures) = fetch::sidecar_pods(&client, &args.sidecar_namespace, &args.selector).await?;
    let answers = join_all(sidecars.iter().map(|pod| {
        let client = &client;
        async move { (pod.node.clone(), fetch::get_via_proxy(client, pod, args.port, args.timeout).await) }
    }));
    let (answers, ownership) = futures::join!(answers, fetch::ownership(&client, &scope));
    let (nodes, more_failures) = match fetch::gather(answers) {
        Ok(gathered) => gathered,
        // Pods that were not running are reasons too.
        Err(e) if !failures.is_empty() => {
            let reasons: Vec<String> = failures.iter().map(|f| format!("  {}: {}", f.source, f.reason)).collect();
            return Err(e.context(format!("sidecar pods not running:\n{}", reasons.join("\n"))));
        }
        Err(e) => return Err(e),
    };
    failures.extend(more_failures);
    // Without owners the table is still right, only the workloads guessed.
    let (ownership, warnings) = match ownership {
        Ok(o) => (o, Vec::new()),
        Err(e) => (HashMap::new(), vec![format!("warning: {e:#}; workloads are inferred from pod names")]),
    };
    Ok(Gathered { nodes, failures, scope, ownership, warnings })
}
