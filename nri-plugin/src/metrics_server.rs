//! The plugin's own small HTTP endpoint, on a pod-local port: `GET /metrics`
//! (the guarantee's telemetry, [`crate::telemetry`]), `GET /api/v1/guarantee`
//! (each container's state, which the sidecar in the same pod passes on to
//! `kubectl iogate top`) and `GET /healthz`.

use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::{Json, Router};
use iogate_api::GuaranteeResponse;

use crate::telemetry::{Telemetry, CONTENT_TYPE};

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Sources {
    pub telemetry: Arc<Telemetry>,
    pub guarantee: Arc<dyn Fn() -> GuaranteeResponse + Send + Sync>,
}

pub fn router(sources: Sources) -> Router {
    let Sources { telemetry, guarantee } = sources;
    Router::new()
        .route("/metrics", get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], telemetry.encode()) }))
        .route("/api/v1/guarantee", get(move || async move { Json(guarantee()) }))
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves until the listener fails.
pub async fn serve(listener: std::net::TcpListener, sources: Sources) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(sources)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use iogate_api::{ContainerGuarantee, Guarantee};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
    }

    #[tokio::test]
    async fn serves_the_telemetry_and_each_containers_state() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let telemetry = Arc::new(Telemetry::new());
        telemetry.hook_failure();
        let guarantee = Arc::new(|| GuaranteeResponse {
            containers: vec![ContainerGuarantee {
                container_id: "c1".into(),
                namespace: "shop".into(),
                pod: "db-0".into(),
                container: "db".into(),
                state: Some(Guarantee::UnlimitedUnexpectedly),
            }],
        });
        tokio::spawn(serve(listener, Sources { telemetry, guarantee }));

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("content-type: application/openmetrics-text"), "{metrics}");
        assert!(metrics.contains("iogate_hook_failures_total 1\n"), "{metrics}");

        let answer = get(addr, "/api/v1/guarantee").await;
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let doc: GuaranteeResponse = serde_json::from_str(body).unwrap();
        assert_eq!(doc.containers[0].state, Some(Guarantee::UnlimitedUnexpectedly));
        assert_eq!(doc.containers[0].container_id, "c1");
    }
}
