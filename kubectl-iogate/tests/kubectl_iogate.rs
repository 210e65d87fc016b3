//! `kubectl iogate top --endpoint …` end to end, without a cluster: two
//! stand-in sidecars on local ports serve canned `/api/v1/metrics` answers
//! (one node on eBPF, one on the cgroup-stats fallback) with the sidecar's
//! JSON error for every other path, and the real binary is run against them
//! and against a port where nothing listens.

use std::net::SocketAddr;
use std::process::{Command, Output};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kubectl_iogate::cli;
use serde_json::json;

const NODE_A: &str = include_str!("data/node-a.json");
const NODE_B: &str = include_str!("data/node-b.json");

/// A stand-in sidecar answering `body` at `/api/v1/metrics`; returns its URL.
async fn sidecar(body: &'static str) -> String {
    let app = Router::new()
        .route("/api/v1/metrics", get(move || async move { ([("content-type", "application/json")], body) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "no such path", "status": 404}))) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A local port with nothing listening: bound, then released.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Runs the built plugin off the async threads (the sidecars run on them).
async fn plugin(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_kubectl-iogate")).args(args).output())
        .await
        .unwrap()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_path_merges_two_sidecars_and_renders_the_table() {
    let (a, b) = (sidecar(NODE_A).await, sidecar(NODE_B).await);
    let argv = ["top", "--endpoint", &a, "--endpoint", &b, "--limit", "3"].map(String::from);
    let cli::Command::Top(args) = cli::parse(argv).unwrap() else { panic!("not top") };
    let out = kubectl_iogate::top(&args).await.unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(
        out.notes,
        [
            format!("note: latency unavailable on {b} (source: cgroup-stats, eBPF not loaded): P99 shows n/a"),
            "note: ! limits not what the policy says (unlimited_unexpectedly): the NRI plugin's log has a WARN naming the expected and the found".to_string(),
            "note: * workload inferred from the pod name (owner not known from the API)".to_string(),
        ]
    );
    // Latency order; --limit 3 drops the degraded node's pod, which has none.
    let want = "\
NAMESPACE   WORKLOAD      POD                    CONTAINER   R IOPS   W IOPS   R MB/s   W MB/s   P99 R ms   P99 W ms   LIMIT           LIMIT WAIT   BOTTLENECK
db          sts/pg*       pg-0                   exporter         0       20      0.0      1.0       1.80       5.20   ! -                     0%   disk
db          sts/pg*       pg-0                   postgres        40      200      0.3      8.4       1.80       5.20   10Mi wbps 80%           0%   disk
shop        deploy/web*   web-7d9f8b6c5d-x2kq9   app            145        3      0.6      0.0       0.33       0.21   150 riops 97%          87%   queue
";
    assert_eq!(out.table, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_shows_the_answering_sidecars_and_warns_about_the_others() {
    let (a, b, closed) = (sidecar(NODE_A).await, sidecar(NODE_B).await, closed_port());
    let wrong_path = format!("{a}/not-here");
    let out = plugin(&[
        "top",
        "--endpoint",
        &a,
        "--endpoint",
        &closed,
        "--endpoint",
        &wrong_path,
        "--endpoint",
        &b,
        "--sort=iops",
        "--tree",
        "-n",
        "db",
    ])
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[0].starts_with(&format!("warning: {closed}: connect: ")), "{stderr}");
    assert_eq!(warnings[1], format!("warning: {wrong_path}: HTTP 404: no such path"));
    assert!(stderr.contains(&format!("latency unavailable on {b}")), "{stderr}");
    let want = "\
NAME             R IOPS   W IOPS   R MB/s   W MB/s   P99 R ms   P99 W ms   LIMIT           LIMIT WAIT   BOTTLENECK
db
  sts/pg*
    pg-0                                                 1.80       5.20                           0%   disk
      postgres       40      200      0.3      8.4                         10Mi wbps 80%
      exporter        0       20      0.0      1.0                         ! -
";
    assert_eq!(stdout, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fails_with_every_reason_when_no_sidecar_answers() {
    let (closed, also_closed) = (closed_port(), closed_port());
    let out = plugin(&["top", "--endpoint", &closed, "--endpoint", &also_closed, "--timeout", "2"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.starts_with("error: no sidecar answered:\n"), "{stderr}");
    assert!(stderr.contains(&format!("  {closed}: connect: ")) && stderr.contains(&format!("  {also_closed}: ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rejects_bad_usage_with_status_2() {
    let out = plugin(&["top", "--sort", "speed"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: --sort: expected latency, iops or throughput, found \"speed\"\n"), "{stderr}");
    assert!(stderr.contains("usage: kubectl iogate top"));
    let help = plugin(&["top", "--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).starts_with("usage: kubectl iogate top [options]"));
}
