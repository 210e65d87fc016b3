//! The plugin's own small HTTP endpoint: `GET /metrics` (the guarantee's
//! telemetry, [`crate::telemetry`]) and `GET /healthz`, on a local port.

use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::Router;

use crate::telemetry::{Telemetry, CONTENT_TYPE};

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], telemetry.encode()) }))
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves until the listener fails.
pub async fn serve(listener: std::net::TcpListener, telemetry: Arc<Telemetry>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(telemetry)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_telemetry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let telemetry = Arc::new(Telemetry::new());
        telemetry.hook_failure();
        tokio::spawn(serve(listener, telemetry));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("content-type: application/openmetrics-text"), "{body}");
        assert!(body.contains("iogate_hook_failures_total 1\n"), "{body}");
    }
}
