//! Getting `GET /api/v1/metrics` from the sidecars: directly from given
//! endpoints, or through the API server's pod proxy from every sidecar pod
//! the cluster runs; and, with a cluster, the pods' owners.
//!
//! Every source answers or fails on its own: a node that does not answer
//! becomes a [`Failure`] that the caller shows as a warning, and only when
//! no node answers is the whole command an error.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use iogate_api::{ErrorResponse, MetricsResponse};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::access::DirectAccess;
use crate::rows::{NodeReport, Scope};
use crate::workload::Owner;

/// The sidecar's HTTP port (its `--listen` default).
pub const SIDECAR_PORT: u16 = 9464;
const METRICS_PATH: &str = "/api/v1/metrics";

/// A sidecar to query directly: `http[s]://HOST[:PORT][/PREFIX]`, the
/// scheme and port optional (`http`, 9464) since a node IP is what one
/// usually has at hand. `https://` is for a sidecar locked with
/// `--web.config.file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// The host alone, the name its certificate must carry.
    host: String,
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    /// Any path before `/api/v1/metrics` (a reverse proxy's prefix), without
    /// a trailing slash.
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme.as_str(), self.authority, self.prefix)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let with_scheme = if s.contains("://") { s.to_string() } else { format!("http://{s}") };
        let bad = |why: &str| format!("expected http[s]://HOST[:PORT][/PREFIX], found {s:?}: {why}");
        let uri: http::Uri = with_scheme.parse().map_err(|e| bad(&format!("{e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(bad("only http:// and https:// are supported")),
        };
        if uri.query().is_some() {
            return Err(bad("a query string is not expected"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        // Read the port from the text: `http::Uri` accepts `:99999` and then
        // reports no port at all, which would silently become 9464.
        let authority = uri.authority().map_or("", |a| a.as_str());
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not taken; --user and IOGATE_PASSWORD are"));
        }
        let after_host = authority.strip_prefix(host).unwrap_or("");
        let port = match after_host.strip_prefix(':') {
            None => SIDECAR_PORT,
            Some(digits) => digits
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        };
        Ok(Endpoint {
            scheme,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// A source that did not answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub source: String,
    pub reason: String,
}

/// One GET of the metrics document over a fresh HTTP/1.1 connection, in
/// TLS for `https://`.
pub async fn get_direct(
    endpoint: &Endpoint,
    access: &DirectAccess,
    timeout: Duration,
) -> Result<MetricsResponse, String> {
    let attempt = async {
        let tcp = TcpStream::connect(&endpoint.authority).await.map_err(|e| format!("connect: {e}"))?;
        match endpoint.scheme {
            Scheme::Http => get_over(TokioIo::new(tcp), endpoint, None).await,
            Scheme::Https => {
                let tls = access.tls.as_ref().ok_or("https:// without a TLS setup (a bug in kubectl-iogate)")?;
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| format!("{:?} cannot be checked against a certificate: {e}", endpoint.host))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| with_causes("TLS", &e))?;
                get_over(TokioIo::new(stream), endpoint, access.authorization.as_ref()).await
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(timeout))))
}

async fn get_over<I>(
    io: I,
    endpoint: &Endpoint,
    authorization: Option<&http::HeaderValue>,
) -> Result<MetricsResponse, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    // The connection task drives the socket; it ends with the request.
    tokio::spawn(connection);
    let mut request = http::Request::get(format!("{}{METRICS_PATH}", endpoint.prefix))
        .header(http::header::HOST, &endpoint.authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    if let Some(value) = authorization {
        request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
    }
    let response = sender.send_request(request).await.map_err(|e| with_causes("HTTP", &e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
    if !status.is_success() {
        return Err(http_error(status, &body));
    }
    parse(&body)
}

/// The error with its causes: hyper's own text ("connection error") hides
/// what rustls said.
fn with_causes(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    with_hint(text)
}

/// rustls says what failed; the usual cause of each is worth a hint.
fn with_hint(text: String) -> String {
    let hint = if text.contains("UnknownIssuer") {
        " (--ca-file names the CA that signed the sidecar's certificate)"
    } else if text.contains("NotValidForName") {
        " (the certificate does not name this host; connect by a name it carries)"
    } else if text.contains("UnknownCA") || text.contains("BadCertificate") {
        " (the sidecar does not accept this client certificate: is it signed by its client_ca_file?)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// The sidecar's errors are `{"error": "...", "status": N}`: show the
/// message; anything else (a proxy's HTML page) by its status alone.
fn http_error(status: http::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(doc) => format!("HTTP {}: {}", status.as_u16(), doc.error),
        Err(_) => format!("HTTP {status}"),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("not an iogate sidecar's {METRICS_PATH} answer: {e}"))
}

/// A sidecar pod found in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPod {
    pub namespace: String,
    pub name: String,
    /// The node it runs on: what its metrics describe.
    pub node: String,
}

/// The sidecar pods matching `selector` in `namespace`. Pods that are not
/// running come back as failures: their nodes are then missing from the
/// output, which the user should know.
pub async fn sidecar_pods(client: &Client, namespace: &str, selector: &str) -> Result<(Vec<SidecarPod>, Vec<Failure>)> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the sidecar pods ({selector} in namespace {namespace})"))?;
    if pods.items.is_empty() {
        bail!(
            "no sidecar pods match {selector} in namespace {namespace}; \
             --selector and --sidecar-namespace choose others, --endpoint URL queries a sidecar directly"
        );
    }
    let mut running = Vec::new();
    let mut failures = Vec::new();
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "(unscheduled)".into());
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
        if phase == "Running" {
            running.push(SidecarPod { namespace: namespace.to_string(), name, node });
        } else {
            failures.push(Failure {
                source: format!("{node} (pod {namespace}/{name})"),
                reason: format!("pod is {phase}"),
            });
        }
    }
    Ok((running, failures))
}

/// The metrics of one sidecar pod, through the API server's pod proxy (so
/// the plugin needs no route to the node, only `pods/proxy` permission).
pub async fn get_via_proxy(
    client: &Client,
    pod: &SidecarPod,
    port: u16,
    timeout: Duration,
) -> Result<MetricsResponse, String> {
    let path = format!("/api/v1/namespaces/{}/pods/{}:{port}/proxy{METRICS_PATH}", pod.namespace, pod.name);
    let request = http::Request::get(path).body(Vec::new()).map_err(|e| format!("request: {e}"))?;
    let text = tokio::time::timeout(timeout, client.request_text(request))
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
        .map_err(|e| format!("through the API server's pod proxy: {e}"))?;
    parse(text.as_bytes())
}

/// Splits the sources' results into answers and failures; an error when
/// none answered, naming every reason.
pub fn gather(results: Vec<(String, Result<MetricsResponse, String>)>) -> Result<(Vec<NodeReport>, Vec<Failure>)> {
    let mut nodes = Vec::new();
    let mut failures = Vec::new();
    for (source, result) in results {
        match result {
            Ok(response) => nodes.push(NodeReport { node: source, response }),
            Err(reason) => failures.push(Failure { source, reason }),
        }
    }
    if nodes.is_empty() {
        let reasons: Vec<String> = failures.iter().map(|f| format!("  {}: {}", f.source, f.reason)).collect();
        bail!("no sidecar answered:\n{}", reasons.join("\n"));
    }
    Ok((nodes, failures))
}

/// What decides a pod's workload: its controller owner and its
/// `pod-template-hash` label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    pub owner: Option<Owner>,
    pub template_hash: Option<String>,
}

/// Owners of the pods in scope, by namespace and name. Only metadata is
/// listed: the specs of a large cluster's pods are many megabytes.
pub async fn ownership(client: &Client, scope: &Scope) -> Result<HashMap<(String, String), Ownership>> {
    let api: Api<Pod> = match scope {
        Scope::AllNamespaces => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    };
    let list = api.list_metadata(&ListParams::default()).await.context("listing pods for their owners")?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let meta = p.metadata;
            let key = (meta.namespace?, meta.name?);
            let owner = meta
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.controller == Some(true))
                .map(|o| Owner { kind: o.kind, name: o.name });
            let template_hash = meta.labels.and_then(|mut l| l.remove("pod-template-hash"));
            Some((key, Ownership { owner, template_hash }))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_scheme_and_port() {
        let e: Endpoint = "10.0.0.5".parse().unwrap();
        assert_eq!(e.to_string(), "http://10.0.0.5:9464");
        let e: Endpoint = "http://node-a:8080/iogate/".parse().unwrap();
        assert_eq!((e.authority.as_str(), e.prefix.as_str()), ("node-a:8080", "/iogate"));
        let e: Endpoint = "https://node-a".parse().unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.to_string().as_str()),
            (Scheme::Https, "node-a", "https://node-a:9464")
        );
        let err = "ftp://node-a".parse::<Endpoint>().unwrap_err();
        assert!(err.ends_with("only http:// and https:// are supported"), "{err}");
        let err = "https://me:pw@node-a".parse::<Endpoint>().unwrap_err();
        assert!(err.ends_with("credentials in the URL are not taken; --user and IOGATE_PASSWORD are"), "{err}");
        assert!("http://".parse::<Endpoint>().is_err());
        let err = "http://a:99999".parse::<Endpoint>().unwrap_err();
        assert!(err.ends_with("the port is not a number from 1 to 65535"), "{err}");
        let e: Endpoint = "[::1]:9000".parse().unwrap();
        assert_eq!((e.to_string().as_str(), e.host.as_str()), ("http://[::1]:9000", "::1"));
    }

    #[test]
    fn all_sources_failing_is_an_error_naming_each() {
        let err = gather(vec![("a".into(), Err("connect: refused".into())), ("b".into(), Err("timeout".into()))])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no sidecar answered:\n  a: connect: refused\n  b: timeout");
    }

    #[test]
    fn sidecar_errors_show_their_message() {
        let body = br#"{"error": "no such path: /x", "status": 404}"#;
        assert_eq!(http_error(http::StatusCode::NOT_FOUND, body), "HTTP 404: no such path: /x");
        assert_eq!(http_error(http::StatusCode::BAD_GATEWAY, b"<html>"), "HTTP 502 Bad Gateway");
    }
}
