//! The HTTP surface: IOEye's REST paths, Prometheus, and probes.
//!
//! | path | what |
//! |---|---|
//! | `GET /api/v1/metrics` | every pod (and plain cgroup) of the last window |
//! | `GET /api/v1/metrics/pod/{pod}[?namespace=ns]` | one pod, with bottleneck, anomaly, trend |
//! | `GET /api/v1/metrics/topslow[?limit=n]` | the `n` (default 5) slowest pods |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz`, `GET /api/v1/health` | the sampler is ticking |
//! | `GET /readyz` | a first window exists; says which source is in use |
//!
//! `/metrics` and `/api/v1/metrics` are gzipped for clients that accept it
//! ([`crate::encoding`]).
//!
//! The documents are [`iogate_api`]'s. Errors are JSON
//! `{"error": "...", "status": N}` with that status.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use iogate_api::{ErrorResponse, HealthResponse, PodResponse, ReadyResponse, TopSlowResponse};

use crate::bodies::{pods, slowest, Body};
use crate::encoding::Encoding;
use crate::prometheus;
use crate::query::{self, QueryError};
use crate::report::{rfc3339, Assessed};
use crate::state::SidecarState;

pub fn router(shared: Arc<SidecarState>) -> Router {
    Router::new()
        .route("/api/v1/metrics", get(all_metrics))
        .route("/api/v1/metrics/pod/{pod}", get(pod_metrics))
        .route("/api/v1/metrics/topslow", get(top_slow))
        .route("/metrics", get(prometheus_text))
        .route("/healthz", get(health))
        .route("/api/v1/health", get(health))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorResponse { error: message.into(), status: status.as_u16() })).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {}; expected /api/v1/metrics, /api/v1/metrics/pod/{{pod}}, /api/v1/metrics/topslow, /metrics, /healthz or /readyz",
            uri.path()
        ),
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported")
}

fn bad_query(e: QueryError) -> Response {
    error(StatusCode::BAD_REQUEST, e.to_string())
}

/// A shared body, in the encoding the request accepts.
async fn shared_body(shared: &SidecarState, body: Body, content_type: &'static str, request: &HeaderMap) -> Response {
    let encoding = Encoding::negotiate(request.get(header::ACCEPT_ENCODING));
    let bytes = shared.body(body, encoding).await;
    let mut response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
    let headers = response.headers_mut();
    // Caches must not hand a gzipped body to a client that did not ask.
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = encoding.content_encoding() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    response
}

async fn all_metrics(State(shared): State<Arc<SidecarState>>, uri: Uri, request: HeaderMap) -> Response {
    if let Err(e) = query::all_metrics(&uri) {
        return bad_query(e);
    }
    shared_body(&shared, Body::AllMetrics, "application/json", &request).await
}

async fn pod_metrics(State(shared): State<Arc<SidecarState>>, Path(pod): Path<String>, uri: Uri) -> Response {
    let namespace = match query::pod_metrics(&uri) {
        Ok(namespace) => namespace,
        Err(e) => return bad_query(e),
    };
    let namespace = namespace.as_deref();
    let published = shared.read();
    let matches: Vec<&Assessed> = pods(&published.assessed)
        .into_iter()
        .filter(|a| a.metrics.pod_name == pod && namespace.is_none_or(|ns| a.metrics.namespace == ns))
        .collect();
    let found = match matches.as_slice() {
        [] => {
            let scope = namespace.map(|ns| format!(" in namespace {ns}")).unwrap_or_default();
            return error(
                StatusCode::NOT_FOUND,
                format!("no block I/O recorded for pod {pod}{scope} in the last window (pods appear once they do I/O)"),
            );
        }
        [one] => *one,
        several => {
            let namespaces: Vec<&str> = several.iter().map(|a| a.metrics.namespace.as_str()).collect();
            return error(
                StatusCode::CONFLICT,
                format!("pod {pod} exists in namespaces {}; add ?namespace=", namespaces.join(", ")),
            );
        }
    };
    Json(PodResponse {
        timestamp: rfc3339(SystemTime::now()),
        pod_metrics: &found.metrics,
        bottleneck: found.bottleneck.name().to_string(),
        anomaly: found.anomaly,
        trend: found.trend.clone(),
    })
    .into_response()
}

async fn top_slow(State(shared): State<Arc<SidecarState>>, uri: Uri) -> Response {
    let limit = match query::top_slow(&uri) {
        Ok(n) => n,
        Err(e) => return bad_query(e),
    };
    if !shared.source.has_latency() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "latency is unavailable: {}; the slowest pods cannot be ranked (IOPS and throughput are at /api/v1/metrics)",
                shared.ebpf_error.as_deref().unwrap_or("the eBPF program is not loaded")
            ),
        );
    }
    let published = shared.read();
    let pods = pods(&published.assessed);
    let top: Vec<_> = slowest(&pods, limit).into_iter().map(|a| &a.metrics).collect();
    Json(TopSlowResponse { timestamp: rfc3339(SystemTime::now()), top_slow_pods: top }).into_response()
}

async fn prometheus_text(State(shared): State<Arc<SidecarState>>, request: HeaderMap) -> Response {
    shared_body(&shared, Body::Prometheus, prometheus::CONTENT_TYPE, &request).await
}

async fn health(State(shared): State<Arc<SidecarState>>) -> Response {
    let timestamp = rfc3339(SystemTime::now());
    if shared.healthy(Instant::now()) {
        Json(HealthResponse { error: None, status: "healthy".into(), timestamp }).into_response()
    } else {
        let body = HealthResponse {
            error: Some("the sampler has not ticked recently".into()),
            status: "unhealthy".into(),
            timestamp,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn ready(State(shared): State<Arc<SidecarState>>) -> Response {
    let ready = shared.read().window_seconds > 0.0;
    let degraded = shared.ebpf_error.as_ref().map(|why| {
        format!("eBPF unavailable ({why}); serving IOPS and throughput from cgroup statistics, latency unavailable")
    });
    let body = ReadyResponse {
        ready,
        source: shared.source.name().to_string(),
        latency_available: shared.source.has_latency(),
        degraded,
        pods: shared.pods(),
        throttle_wait_available: shared.throttle_wait_error.is_none(),
        throttle_wait_unavailable: shared.throttle_wait_error.clone(),
        io_pressure_available: shared.io_pressure_error.is_none(),
        io_pressure_unavailable: shared.io_pressure_error.clone(),
        stacking_unresolved: shared.read().stacking_unresolved.clone(),
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use iogate_core::{Device, Limits};
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::*;
    use crate::counters::{CgroupId, CounterSource, Direction, IoCounters, IoKey, Snapshot, SourceKind};
    use crate::diagnosis::NetworkMajors;
    use crate::frame::testing::Table;
    use crate::sampler::Sampler;
    use crate::state::PodsStatus;

    /// Replays a fixed list of snapshots.
    struct Replay(Vec<Snapshot>, SourceKind);

    impl CounterSource for Replay {
        fn kind(&self) -> SourceKind {
            self.1
        }
        fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
            Ok(self.0.remove(0))
        }
    }

    fn snapshot(at: Instant, source: SourceKind, scale: u64) -> Snapshot {
        let dev = Device::new(7, 0);
        let reads = |ops: u64, lat: u64| {
            let mut c = IoCounters {
                ops,
                bytes: ops * 4096,
                queued_ops: ops,
                queue_ns: ops * lat / 10,
                disk_ns: ops * lat * 9 / 10,
                ..Default::default()
            };
            for _ in 0..ops {
                c.total_hist.record(lat);
            }
            c
        };
        let key = |id| IoKey { cgroup: CgroupId(id), device: dev, direction: Direction::Read };
        Snapshot {
            taken_at: at,
            source,
            counters: HashMap::from([
                (key(1), reads(100 * scale, 200_000)),
                (key(2), reads(50 * scale, 5_000_000)),
                (key(3), reads(10 * scale, 1_000_000)),
                (key(4), reads(20 * scale, 100_000)),
            ]),
        }
    }

    async fn app(source: SourceKind) -> Router {
        let mut table = Table::default()
            .pod(1, "shop", "web-0", "app")
            .pod(2, "db", "pg-0", "postgres")
            .pod(3, "staging", "pg-0", "postgres")
            .cgroup(4, "/system.slice/backup.service")
            .limit(1, Device::new(7, 0), Limits { read_iops: Some(500), ..Limits::UNLIMITED });
        let t0 = Instant::now();
        let replay = Replay(vec![snapshot(t0, source, 1), snapshot(t0 + Duration::from_secs(1), source, 2)], source);
        let ebpf_error = (source == SourceKind::CgroupStats).then(|| "no BTF".to_string());
        let pods = PodsStatus { mode: "none".into(), synced: false, detail: "no cluster".into() };
        let shared = Arc::new(SidecarState::new(Duration::from_secs(1), source, ebpf_error, pods));
        let mut sampler = Sampler::new(Box::new(replay), NetworkMajors::default());
        for _ in 0..2 {
            shared.publish(sampler.tick(&mut table).unwrap());
        }
        router(shared)
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
        let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Scrapers that accept gzip (Prometheus does) get the same body
    /// gzipped; others get it plain; either way caches are told it varies.
    #[tokio::test]
    async fn shared_bodies_are_gzipped_for_clients_that_accept_it() {
        use std::io::Read;
        let app = app(SourceKind::Ebpf).await;
        for uri in ["/metrics", "/api/v1/metrics"] {
            let (status, plain) = get(&app, uri).await;
            assert_eq!(status, StatusCode::OK);
            let request = Request::get(uri).header(header::ACCEPT_ENCODING, "gzip").body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip", "{uri}");
            assert_eq!(response.headers()[header::VARY], "accept-encoding", "{uri}");
            let packed = response.into_body().collect().await.unwrap().to_bytes();
            let mut unpacked = String::new();
            flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut unpacked).unwrap();
            assert_eq!(unpacked, plain, "{uri}: gzip must carry the plain body");

            let request = Request::get(uri).header(header::ACCEPT_ENCODING, "gzip;q=0").body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert!(response.headers().get(header::CONTENT_ENCODING).is_none(), "{uri}: gzip refused, sent anyway");
            assert_eq!(response.headers()[header::VARY], "accept-encoding", "{uri}");
        }
    }

    async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value) {
        let (status, body) = get(app, uri).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}")))
    }

    #[tokio::test]
    async fn all_metrics_has_ioeye_shape() {
        let app = app(SourceKind::Ebpf).await;
        let (status, v) = get_json(&app, "/api/v1/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let web = &v["pod_metrics"]["web-0"];
        assert_eq!(web["read_iops"], 100);
        assert_eq!(web["read_throughput_bps"], 409_600);
        assert_eq!(web["read_latency_ns"], 200_000);
        assert_eq!(web["namespace"], "shop");
        assert_eq!(web["containers"][0]["devices"][0]["limits"]["read_iops"], 500);
        // Same name in two namespaces: both kept, qualified.
        assert_eq!(v["pod_metrics"]["db/pg-0"]["read_iops"], 50);
        assert_eq!(v["pod_metrics"]["staging/pg-0"]["read_iops"], 10);
        assert_eq!(v["bottlenecks"]["db/pg-0"], "disk");
        assert_eq!(v["anomalies"]["web-0"], false);
        assert_eq!(v["top_slow_pods"][0]["pod_name"], "pg-0");
        assert_eq!(v["top_slow_pods"][0]["namespace"], "db");
        assert_eq!(v["cgroup_metrics"]["/system.slice/backup.service"]["read_iops"], 20);
        assert_eq!(v["cgroup_bottlenecks"]["/system.slice/backup.service"], "none");
        assert!(v["pod_metrics"].get("/system.slice/backup.service").is_none());
    }

    #[tokio::test]
    async fn one_pod_and_its_errors() {
        let app = app(SourceKind::Ebpf).await;
        let (status, v) = get_json(&app, "/api/v1/metrics/pod/web-0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["pod_metrics"]["pod_name"], "web-0");
        assert_eq!(v["bottleneck"], "none");
        assert_eq!(v["anomaly"], false);
        assert!(v.get("trend").is_some());

        let (status, v) = get_json(&app, "/api/v1/metrics/pod/pg-0").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(v["error"], "pod pg-0 exists in namespaces db, staging; add ?namespace=");
        let (status, v) = get_json(&app, "/api/v1/metrics/pod/pg-0?namespace=staging").await;
        assert_eq!((status, &v["pod_metrics"]["read_iops"]), (StatusCode::OK, &json!(10)));

        let (status, v) = get_json(&app, "/api/v1/metrics/pod/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["status"], 404);
        let (status, v) = get_json(&app, "/api/v1/metrics/pod/web-0?namspace=shop").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "unknown query parameter(s) namspace; expected namespace");
    }

    #[tokio::test]
    async fn topslow_ranks_by_latency_and_checks_its_limit() {
        let app = app(SourceKind::Ebpf).await;
        let (_, v) = get_json(&app, "/api/v1/metrics/topslow?limit=2").await;
        let names: Vec<&str> =
            v["top_slow_pods"].as_array().unwrap().iter().map(|p| p["namespace"].as_str().unwrap()).collect();
        assert_eq!(names, ["db", "staging"]);
        for bad in ["0", "x", "1001", "-1"] {
            let (status, v) = get_json(&app, &format!("/api/v1/metrics/topslow?limit={bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(v["error"].as_str().unwrap().starts_with("limit: expected a whole number from 1 to 1000"));
        }
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_json_errors() {
        let app = app(SourceKind::Ebpf).await;
        let (status, v) = get_json(&app, "/api/v2/metrics").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(v["error"].as_str().unwrap().starts_with("no such path: /api/v2/metrics"));
        let response =
            app.clone().oneshot(Request::post("/api/v1/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn the_fallback_says_so_and_never_reports_zero_latency() {
        let app = app(SourceKind::CgroupStats).await;
        let (status, v) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["source"], "cgroup-stats");
        assert_eq!(
            v["degraded"],
            "eBPF unavailable (no BTF); serving IOPS and throughput from cgroup statistics, latency unavailable"
        );
        let (_, v) = get_json(&app, "/api/v1/metrics").await;
        assert_eq!(v["pod_metrics"]["web-0"]["read_iops"], 100);
        assert!(v["pod_metrics"]["web-0"]["read_latency_ns"].is_null());
        assert_eq!(v["latency_available"], false);
        let (status, v) = get_json(&app, "/api/v1/metrics/topslow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v["error"].as_str().unwrap().starts_with("latency is unavailable: no BTF"));
        let (_, text) = get(&app, "/metrics").await;
        assert!(text.contains("iogate_sidecar_ebpf_loaded 0") && !text.contains("latency_seconds"));
    }

    #[tokio::test]
    async fn probes() {
        let app = app(SourceKind::Ebpf).await;
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&app, "/api/v1/health").await.0, StatusCode::OK);
        let pods = PodsStatus { mode: "none".into(), synced: false, detail: String::new() };
        let idle = router(Arc::new(SidecarState::new(Duration::from_secs(1), SourceKind::Ebpf, None, pods)));
        assert_eq!(get(&idle, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE, "no window yet");
        assert_eq!(get(&idle, "/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE, "never ticked");
    }
}
