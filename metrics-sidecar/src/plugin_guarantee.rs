//! The NRI plugin's word on each container's limits, passed on in the REST
//! API's `guarantee` field. The sidecar measures what is in force; only the
//! plugin knows what the policy wanted, so it asks the plugin in the same
//! pod (`GET /api/v1/guarantee` on its pod-local port) once per interval.
//!
//! A field is `null` whenever the plugin's answer is missing or old: a
//! stale "limited" would hide exactly the container an operator looks for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use iogate_api::{Guarantee, GuaranteeResponse};
use tokio::net::TcpStream;

use crate::report::Assessed;

pub const GUARANTEE_PATH: &str = "/api/v1/guarantee";

/// The latest answer: container ID → state; `None` when the last request
/// failed.
#[derive(Debug, Default)]
pub struct GuaranteeBoard {
    states: RwLock<Option<HashMap<String, Guarantee>>>,
}

impl GuaranteeBoard {
    pub fn set(&self, answer: Option<GuaranteeResponse>) {
        let states = answer.map(|doc| {
            doc.containers.into_iter().filter_map(|c| c.state.map(|state| (c.container_id, state))).collect()
        });
        *self.states.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = states;
    }

    /// Fills each container's `guarantee` from the latest answer.
    pub fn annotate(&self, assessed: &mut [Assessed]) {
        let states = self.states.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for container in assessed.iter_mut().flat_map(|a| a.metrics.containers.iter_mut()) {
            container.guarantee = match (&*states, &container.container_id) {
                (Some(states), Some(id)) => states.get(id).copied(),
                _ => None,
            };
        }
    }
}

/// One GET of the plugin's guarantee document.
pub async fn fetch(plugin: SocketAddr, timeout: Duration) -> Result<GuaranteeResponse, String> {
    let attempt = async {
        let stream = TcpStream::connect(plugin).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
        // The connection task drives the socket; it ends with the request.
        tokio::spawn(connection);
        let request = hyper::Request::get(GUARANTEE_PATH)
            .header(hyper::header::HOST, plugin.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("expected the guarantee document (JSON), found: {e}"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(timeout))))
}

/// Asks the plugin every `interval`, for ever. Logs when the plugin stops
/// or starts answering, not at every failure.
pub async fn poll(plugin: SocketAddr, interval: Duration, board: &GuaranteeBoard) {
    let mut answering: Option<bool> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let timeout = interval.clamp(Duration::from_millis(100), Duration::from_secs(2));
        match fetch(plugin, timeout).await {
            Ok(doc) => {
                if answering != Some(true) {
                    tracing::info!(%plugin, containers = doc.containers.len(), "the NRI plugin answers: each container's guarantee is passed on");
                }
                answering = Some(true);
                board.set(Some(doc));
            }
            Err(e) => {
                if answering != Some(false) {
                    tracing::warn!(%plugin, "no guarantee from the NRI plugin ({e}): the containers' guarantee fields are null until it answers");
                }
                answering = Some(false);
                board.set(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use iogate_api::{ContainerGuarantee, ContainerMetrics, PodMetrics};

    use super::*;
    use crate::diagnosis::Bottleneck;
    use crate::window::GroupKey;

    fn assessed(ids: &[Option<&str>]) -> Vec<Assessed> {
        let containers = ids
            .iter()
            .map(|id| ContainerMetrics {
                cgroup: String::new(),
                container: Some("c".into()),
                container_id: id.map(String::from),
                devices: Vec::new(),
                guarantee: Some(Guarantee::Limited),
                io_pressure_some_seconds: None,
                io_pressure_full_seconds: None,
            })
            .collect();
        let metrics: PodMetrics = serde_json::from_value(serde_json::json!({
            "pod_name": "p", "namespace": "ns", "read_iops": 0, "write_iops": 0,
            "read_throughput_bps": 0, "write_throughput_bps": 0
        }))
        .unwrap();
        vec![Assessed {
            key: GroupKey::Cgroup("/x".into()),
            metrics: PodMetrics { containers, ..metrics },
            bottleneck: Bottleneck::None,
            anomaly: false,
            trend: None,
        }]
    }

    fn answer(states: &[(&str, Option<Guarantee>)]) -> GuaranteeResponse {
        GuaranteeResponse {
            containers: states
                .iter()
                .map(|(id, state)| ContainerGuarantee {
                    container_id: id.to_string(),
                    namespace: "ns".into(),
                    pod: "p".into(),
                    container: "c".into(),
                    state: *state,
                })
                .collect(),
        }
    }

    fn fields(a: &[Assessed]) -> Vec<Option<Guarantee>> {
        a[0].metrics.containers.iter().map(|c| c.guarantee).collect()
    }

    #[test]
    fn each_container_gets_the_plugins_state_by_id_and_null_otherwise() {
        let board = GuaranteeBoard::default();
        board.set(Some(answer(&[("a", Some(Guarantee::UnlimitedUnexpectedly)), ("b", None)])));
        let mut a = assessed(&[Some("a"), Some("b"), Some("c"), None]);
        board.annotate(&mut a);
        assert_eq!(fields(&a), [Some(Guarantee::UnlimitedUnexpectedly), None, None, None]);
    }

    #[test]
    fn a_plugin_that_stops_answering_leaves_no_stale_state() {
        let board = GuaranteeBoard::default();
        board.set(Some(answer(&[("a", Some(Guarantee::Limited))])));
        board.set(None);
        let mut a = assessed(&[Some("a")]);
        board.annotate(&mut a);
        assert_eq!(fields(&a), [None]);
    }

    #[tokio::test]
    async fn fetch_says_what_it_found_when_the_answer_is_not_the_document() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
        });
        let e = fetch(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.starts_with("expected the guarantee document (JSON), found: "), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(fetch(closed, Duration::from_secs(5)).await.unwrap_err().starts_with("connect: "));
    }
}
