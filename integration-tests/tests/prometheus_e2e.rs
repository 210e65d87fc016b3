//! The shipped Grafana dashboard evaluated on a real Prometheus server (2.x:
//! Debian 12's; 3.x: Debian sid's, both from scripts/fetch-prometheus.sh)
//! scraping the real sidecar, while a pod on real containerd runs fio on a
//! stacked data disk: a loop device over a file on the root disk, so every
//! request the pod makes is charged twice by the kernel (the loop device
//! and the disk below), and the dashboard must count it once.
//!
//! Every query of every panel and variable is evaluated through
//! `/api/v1/query` with Grafana's variables filled in as Grafana would, and
//! checked against ground truth: fio's own per-second figures over the same
//! window, the limits in the cgroup files, the sidecar's REST percentiles,
//! and the raw counters Prometheus scraped. A query that returns nothing
//! fails the test.
//!
//! Root only; takes the host lock. Prometheus is stopped by PID and its
//! directory removed by [`Prometheus`]'s `Drop`; the stack and the sidecar
//! clean up after themselves.

// The dashboard's queries are read the way deploy_checks reads them; not
// every helper of those modules is used here.
#[allow(dead_code)]
#[path = "deploy_checks/dashboard.rs"]
mod dashboard;
#[allow(dead_code)]
#[path = "deploy_checks/promql.rs"]
mod promql;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use iogate_core::device::DeviceResolver;
use iogate_metrics_sidecar::stacking::Stacking;
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::cri_client::ContainerSpec;
use iogate_testbed::fio::{read_json, within, Job, Measured, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::process::Background;
use iogate_testbed::sidecar::{http_get, Sidecar};
use iogate_testbed::stack::{Stack, StackOptions, DATA_IN_CONTAINER};
use iogate_testbed::{repo_root, require_root};
use serde_json::Value;

/// Prometheus's scrape interval and the sidecar's sampling interval.
const SCRAPE: Duration = Duration::from_secs(1);
/// What `$__rate_interval` (and `$__range`) become: ten scrapes.
const WINDOW_SECONDS: u64 = 10;
const LIMIT_IOPS: u64 = 300;
/// A bytes-per-second limit fio stays under (300 × 4 KiB ≈ 1.2 MB/s), so
/// the byte-utilization panel has a limit to divide by.
const LIMIT_BPS: u64 = 8 << 20;
const FIO_SECONDS: u32 = 40;
/// fio writes 4 KiB requests ([`Job::args`]).
const BLOCK: f64 = 4096.0;
/// Percent the per-pod rates may differ from fio's (the tolerance).
const RATE_PCT: f64 = 10.0;
/// Percent a mean-latency panel may differ from Δsum/Δcount of the raw
/// samples it reads (rate()'s extrapolation; 1.8 % and, with the shared
/// disk at 13 ms per request, 7 % seen): the tolerance.
const MEAN_PCT: f64 = 10.0;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// `application/x-www-form-urlencoded` value escaping for a query string.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A series' labels and its raw samples' values.
type RawSeries = (BTreeMap<String, String>, Vec<f64>);

/// One sample of an instant vector.
#[derive(Debug, Clone)]
struct Point {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Point {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The scrape job the shipped ServiceMonitor makes, as prometheus-operator
/// renders it: its path and honorLabels, and the target labels the
/// operator and the endpoint's relabelings put on the target.
struct ScrapeJob {
    path: String,
    honor_labels: bool,
    target_labels: BTreeMap<String, String>,
}

impl ScrapeJob {
    fn from_service_monitor(file: &Path, node: &str) -> Result<ScrapeJob> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let sm: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let endpoints = sm["spec"]["endpoints"].as_sequence().context("expected spec.endpoints")?;
        ensure!(endpoints.len() == 1, "expected one endpoint in {}, found {}", file.display(), endpoints.len());
        let e = &endpoints[0];
        let namespace = sm["metadata"]["namespace"].as_str().context("expected metadata.namespace")?;
        let service = sm["metadata"]["name"].as_str().context("expected metadata.name")?;
        // What the operator sets on every target of an endpoint of a
        // ServiceMonitor selecting a Service: the sidecar pod's own names.
        let mut target_labels: BTreeMap<String, String> = [
            ("job", service),
            ("namespace", namespace),
            ("service", service),
            ("pod", "iogate-node-agent-x7k2p"),
            ("container", "metrics-sidecar"),
            ("endpoint", e["port"].as_str().context("expected endpoints[0].port")?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for r in e["relabelings"].as_sequence().into_iter().flatten() {
            let source: Vec<&str> =
                r["sourceLabels"].as_sequence().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            let target = r["targetLabel"].as_str().context("expected relabelings[].targetLabel")?;
            let action = r["action"].as_str().unwrap_or("replace");
            ensure!(
                source == ["__meta_kubernetes_pod_node_name"] && action == "replace",
                "the test knows how to apply only the node-name relabeling, found {r:?} in {}",
                file.display()
            );
            target_labels.insert(target.to_string(), node.to_string());
        }
        Ok(ScrapeJob {
            path: e["path"].as_str().unwrap_or("/metrics").to_string(),
            honor_labels: e["honorLabels"].as_bool().unwrap_or(false),
            target_labels,
        })
    }

    fn config(&self, target: SocketAddr) -> Result<String> {
        let labels: serde_json::Map<String, Value> =
            self.target_labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        // JSON is YAML: every value quoted as it must be.
        Ok(format!(
            "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n  evaluation_interval: {s}s\n\
             scrape_configs:\n  - job_name: serviceMonitor/iogate\n    honor_labels: {}\n    metrics_path: {}\n\
             \x20   static_configs:\n      - targets: [{}]\n        labels: {}\n",
            self.honor_labels,
            serde_json::to_string(&self.path)?,
            serde_json::to_string(&target.to_string())?,
            serde_json::to_string(&labels)?,
            s = SCRAPE.as_secs(),
        ))
    }
}

/// A Prometheus server of one major version on a free loopback port, with
/// its own config and TSDB in a temp dir. Dropped: stopped by PID (the
/// [`Background`]), then the directory removed.
struct Prometheus {
    process: Background,
    addr: SocketAddr,
    version: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn binary(major: u32) -> Result<PathBuf> {
        let p = repo_root().join(format!(".cache/prometheus/{major}/usr/bin/prometheus"));
        ensure!(p.is_file(), "expected {} (scripts/fetch-prometheus.sh)", p.display());
        Ok(p)
    }

    fn start(major: u32, config: &str) -> Result<Prometheus> {
        let binary = Prometheus::binary(major)?;
        let out = Command::new(&binary).arg("--version").output().context("prometheus --version")?;
        let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
        ensure!(
            version.starts_with(&format!("prometheus, version {major}.")),
            "expected Prometheus {major}.x at {}, found {version:?}",
            binary.display()
        );
        let dir = tempfile::Builder::new().prefix("iogate-prometheus-").tempdir()?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h");
        let process = Background::spawn("prometheus", cmd, &dir.path().join("prometheus.log"))?;
        let p = Prometheus { process, addr, version, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            ensure!(Instant::now() < deadline, "{} was not ready within 60 s; its log:\n{}", p.version, p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    fn log(&self) -> String {
        self.process.output()
    }

    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("{}: GET {path} answered {status} with {body:?}", self.version))?;
        ensure!(status == 200 && v["status"] == "success", "{}: GET {path} answered {status}: {v}", self.version);
        Ok(v["data"].clone())
    }

    /// An instant query evaluated at `at` (Unix seconds).
    fn query(&self, expr: &str, at: f64) -> Result<Vec<Point>> {
        self.series_at(expr, at, "vector")?
            .into_iter()
            .map(|(labels, r)| Ok(Point { labels, value: sample_value(&r["value"])? }))
            .collect()
    }

    /// A range-vector selector evaluated at `at`: each series' raw samples.
    fn raw(&self, selector: &str, at: f64) -> Result<Vec<RawSeries>> {
        self.series_at(selector, at, "matrix")?
            .into_iter()
            .map(|(labels, r)| {
                let values = r["values"].as_array().context("values")?.iter().map(sample_value);
                Ok((labels, values.collect::<Result<Vec<f64>>>()?))
            })
            .collect()
    }

    /// An instant query's result of type `result_type`: each series'
    /// labels, with the rest of its entry.
    fn series_at(&self, expr: &str, at: f64, result_type: &str) -> Result<Vec<(BTreeMap<String, String>, Value)>> {
        let data = self.api(&format!("/api/v1/query?query={}&time={at:.3}", urlencode(expr)))?;
        ensure!(data["resultType"] == result_type, "{expr}: expected a {result_type}, found {data}");
        data["result"]
            .as_array()
            .context("result")?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .context("metric")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                Ok((labels, r.clone()))
            })
            .collect()
    }

    /// Grafana's `label_values(selector, label)` as its Prometheus data
    /// source runs it: the label values API with `match[]`, over the time
    /// range.
    fn label_values(&self, label: &str, selector: &str, start: f64, end: f64) -> Result<Vec<String>> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}&start={start:.3}&end={end:.3}",
            urlencode(selector)
        ))?;
        Ok(data.as_array().context("label values")?.iter().filter_map(|v| v.as_str().map(String::from)).collect())
    }

    /// Waits until the sidecar target has been scraped successfully.
    fn wait_for_target(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(up) = self.query("up", unix_now()) {
                if up.iter().any(|p| p.value == 1.0) {
                    return Ok(());
                }
            }
            ensure!(Instant::now() < deadline, "{}: the sidecar target was not up within {timeout:?}", self.version);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A dashboard query with Grafana's variables filled in, as Grafana does
/// with one namespace and one pod selected (a single value: no regex
/// alternation) and the rate window chosen.
fn as_grafana_would(expr: &str, namespace: &str, pod: &str) -> Result<String> {
    let window = format!("{WINDOW_SECONDS}s");
    let mut out = expr.replace("$__rate_interval", &window).replace("$__range", &window);
    for (var, value) in [("namespace", namespace), ("pod", pod)] {
        out = out.replace(&format!("${{{var}}}"), value).replace(&format!("${var}"), value);
    }
    ensure!(!out.contains('$'), "a Grafana variable the test does not know in {expr:?}");
    Ok(out)
}

/// `label_values(selector, label)` → (selector, label).
fn label_values_args(query: &str) -> Result<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("expected label_values(selector, label), found {query:?}"))?;
    let (selector, label) = inner.rsplit_once(',').with_context(|| format!("expected two arguments in {query:?}"))?;
    Ok((selector.trim(), label.trim()))
}

/// The job's fio command in the container, with requests queued (libaio,
/// the job's iodepth) so that a slow second on the shared root disk under
/// the loop device is absorbed by the throttle queue and fio holds the
/// limit; with its one-second IOPS log, as [`Job::command`] writes it.
fn queued_fio(job: &Job) -> Vec<String> {
    let (dir, n) = (DATA_IN_CONTAINER, &job.name);
    let mut cmd = vec!["/usr/bin/fio".to_string()];
    cmd.extend(job.args(&format!("{dir}/{n}.dat"), "libaio", &format!("{dir}/{n}.json")));
    cmd.extend([format!("--write_iops_log={dir}/{n}"), "--log_avg_msec=1000".into()]);
    cmd
}

/// fio's own IOPS over `[from, to]` seconds after it started: the mean of
/// its one-second log entries inside that span.
fn fio_iops(m: &Measured, from: f64, to: f64) -> Result<f64> {
    // Entry i covers second i..i+1 of the run.
    let inside: Vec<f64> = m
        .per_second
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as f64 >= from.round() && (*i + 1) as f64 <= to.round())
        .map(|(_, v)| *v)
        .collect();
    ensure!(
        inside.len() as f64 >= (to - from) - 1.0,
        "fio's log {:?} does not cover {from:.1}..{to:.1} s",
        m.per_second
    );
    Ok(inside.iter().sum::<f64>() / inside.len() as f64)
}

/// When fio ran, in Unix seconds: (start, end). Its log counts from its
/// own start, which on a loaded machine comes well after the container's
/// (fio pages itself in first): it is when fio wrote its summary
/// (`timestamp_ms`) less how long the job ran (`job_runtime`, ms).
fn fio_span(job: &Job, host_dir: &Path) -> Result<(f64, f64)> {
    let json = read_json(&host_dir.join(format!("{}.json", job.name)))?;
    let ended_ms = json["timestamp_ms"].as_f64().context("fio JSON: timestamp_ms")?;
    let runtime_ms = json["jobs"][0]["job_runtime"].as_f64().context("fio JSON: jobs[0].job_runtime")?;
    Ok(((ended_ms - runtime_ms) / 1000.0, ended_ms / 1000.0))
}

/// Δsum and Δcount of a histogram family over the window, from the raw
/// samples Prometheus scraped, every series matching `selector` added up.
/// A `[time, "value"]` pair's value.
fn sample_value(pair: &Value) -> Result<f64> {
    Ok(pair[1].as_str().context("value")?.parse::<f64>()?)
}

fn raw_deltas(p: &Prometheus, family: &str, selector: &str, at: f64) -> Result<(f64, f64)> {
    let delta = |suffix: &str| -> Result<f64> {
        let series = p.raw(&format!("{family}_{suffix}{{{selector}}}[{WINDOW_SECONDS}s]"), at)?;
        ensure!(!series.is_empty(), "no {family}_{suffix} series for {selector}");
        Ok(series.iter().map(|(_, v)| v.last().copied().unwrap_or(0.0) - v.first().copied().unwrap_or(0.0)).sum())
    };
    Ok((delta("sum")?, delta("count")?))
}

/// Mean over the window from the raw scraped counters: Δsum / Δcount.
fn raw_mean(p: &Prometheus, family: &str, selector: &str, at: f64) -> Result<f64> {
    let (sum, count) = raw_deltas(p, family, selector, at)?;
    ensure!(count > 0.0, "no {family} requests in the window");
    Ok(sum / count)
}

/// One panel target's result, checked. `None`: no check knows this query
/// (a failure: every query must be checked).
struct Truth<'a> {
    prometheus: &'a Prometheus,
    at: f64,
    /// The pod's series selector (namespace, pod, cgroup="").
    pod_selector: String,
    fio_read: f64,
    fio_write: f64,
    loop_device: String,
    lower_device: String,
    reader: String,
    writer: String,
    /// The limits in the containers' cgroup files on the loop device:
    /// (container, direction, unit) → value.
    limits: BTreeMap<(String, String, String), f64>,
    /// The sidecar's REST answer for the pod at the end of the window.
    rest: Value,
    /// Whether this host measures blk-throttle's wait and the stall time,
    /// as the scraped sidecar says: the panels of what it does not measure
    /// must be empty, never zeros.
    throttle_wait_measured: bool,
    stall_measured: bool,
    report: Vec<String>,
}

impl Truth<'_> {
    fn fio(&self, direction: &str) -> f64 {
        if direction == "read" {
            self.fio_read
        } else {
            self.fio_write
        }
    }

    fn container_of(&self, direction: &str) -> &str {
        if direction == "read" {
            &self.reader
        } else {
            &self.writer
        }
    }

    fn one_per_direction<'p>(&self, points: &'p [Point], what: &str) -> Result<Vec<(&'p str, f64)>> {
        let mut out: Vec<(&str, f64)> = points.iter().map(|p| (p.label("direction"), p.value)).collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        let dirs: Vec<&str> = out.iter().map(|(d, _)| *d).collect();
        ensure!(
            dirs == ["read", "write"],
            "{what}: expected one read and one write series for the pod, found {points:?}"
        );
        Ok(out)
    }

    /// A panel of something this host may not measure: empty where it does
    /// not, and where it does, samples within `range`.
    fn measured_here(
        &mut self,
        title: &str,
        ref_id: &str,
        points: &[Point],
        measured: bool,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<()> {
        if !measured {
            ensure!(points.is_empty(), "{title} {ref_id}: not measured here, expected no series, found {points:?}");
            self.report.push(format!("{title} {ref_id}: empty, as this host does not measure it"));
            return Ok(());
        }
        ensure!(!points.is_empty(), "{title} {ref_id}: measured here, but the query returned nothing");
        for p in points {
            ensure!(range.contains(&p.value), "{title} {ref_id}: expected a value in {range:?}, found {p:?}");
        }
        self.report.push(format!("{title} {ref_id}: {:?}", points.iter().map(|p| p.value).collect::<Vec<_>>()));
        Ok(())
    }

    fn check(&mut self, title: &str, ref_id: &str, points: &[Point]) -> Result<bool> {
        match title {
            "Throttle wait per held bio (own limit)" => {
                // Held at 300 IOPS at depth 8: some ms per bio, at most seconds.
                self.measured_here(title, ref_id, points, self.throttle_wait_measured, 1e-6..=10.0)?;
                return Ok(true);
            }
            "I/O stall time (PSI, cgroup v2)" => {
                // A share of the time.
                self.measured_here(title, ref_id, points, self.stall_measured, 0.0..=1.05)?;
                return Ok(true);
            }
            _ => {}
        }
        ensure!(!points.is_empty(), "{title} {ref_id}: the query returned nothing");
        match (title, ref_id) {
            ("IOPS per pod", "A") => {
                for (dir, v) in self.one_per_direction(points, title)? {
                    let fio = self.fio(dir);
                    self.report.push(format!("{title} {dir}: {v:.1} vs fio {fio:.1}"));
                    ensure!(within(v, fio, RATE_PCT), "{title} {dir}: {v:.1} vs fio {fio:.1} (each request once?)");
                }
            }
            ("Throughput per pod", "A") => {
                for (dir, v) in self.one_per_direction(points, title)? {
                    let fio = self.fio(dir) * BLOCK;
                    self.report.push(format!("{title} {dir}: {v:.0} B/s vs fio {fio:.0} B/s"));
                    ensure!(within(v, fio, RATE_PCT), "{title} {dir}: {v:.0} vs fio {fio:.0} B/s");
                }
            }
            ("Latency percentiles", "A" | "B" | "C") => {
                let q = match ref_id {
                    "A" => "p50",
                    "B" => "p95",
                    _ => "p99",
                };
                for (dir, v) in self.one_per_direction(points, title)? {
                    let rest = self.rest[format!("{dir}_latency_{q}_ns")]
                        .as_f64()
                        .with_context(|| format!("REST {dir}_latency_{q}_ns in {}", self.rest))?
                        / 1e9;
                    self.report.push(format!("{title} {dir} {q}: {:.3} ms vs REST {:.3} ms", v * 1e3, rest * 1e3));
                    // The exposition's buckets are 4× wide (powers of 4 of
                    // 16 µs); histogram_quantile interpolates inside one, so
                    // it and the sidecar's finer percentile agree within one
                    // bucket's width.
                    ensure!(
                        v.is_finite() && v > 0.0 && (v / rest).log(4.0).abs() <= 1.0,
                        "{title} {dir} {q}: {v} s vs REST {rest} s, more than one 4× bucket apart"
                    );
                }
            }
            ("Queue vs device latency (mean)", "A" | "B") => {
                let family =
                    if ref_id == "A" { "iogate_io_queue_latency_seconds" } else { "iogate_io_device_latency_seconds" };
                ensure!(points.len() == 1, "{title} {ref_id}: expected one series for the pod, found {points:?}");
                let v = points[0].value;
                if ref_id == "A" && raw_deltas(self.prometheus, family, &self.pod_selector, self.at)?.1 == 0.0 {
                    // A loop device has no I/O scheduler: its requests are
                    // issued straight to the driver, none is ever queued, so
                    // the top layer has no queue time to average (0/0). The
                    // disk below has a scheduler; the panel showed its queue
                    // time as the pod's before the layers were told apart.
                    let sched_file = format!("/sys/dev/block/{}/queue/scheduler", self.loop_device);
                    let sched = std::fs::read_to_string(&sched_file).unwrap_or_default();
                    ensure!(
                        v.is_nan() && sched.contains("[none]"),
                        "{title} A: no request queued on the loop device (scheduler {sched:?}), expected NaN, found {v}"
                    );
                    self.report.push(format!("{title} A: NaN, as it must be: {sched_file} is {:?}", sched.trim()));
                    return Ok(true);
                }
                let truth = raw_mean(self.prometheus, family, &self.pod_selector, self.at)?;
                self.report.push(format!(
                    "{title} {ref_id}: {:.1} µs vs scraped counters {:.1} µs",
                    v * 1e6,
                    truth * 1e6
                ));
                // The same samples; rate() extrapolates each series to the
                // window's edges (per series, so not exactly alike across
                // the summed read and write series), the raw Δ does not.
                ensure!(within(v, truth, MEAN_PCT), "{title} {ref_id}: {v} vs {truth} from the scraped {family}");
            }
            ("IOPS limit vs usage", "A") => {
                // fio's containers show the loop device only (the disk below
                // is the lower layer); the pod's sandbox may have read its
                // image from the root disk directly, a top layer of its own.
                for p in points.iter().filter(|p| p.label("device") != self.loop_device) {
                    ensure!(
                        p.label("container") != self.reader && p.label("container") != self.writer,
                        "{title} A: fio's containers on a device other than the loop device: {p:?}"
                    );
                }
                for dir in ["read", "write"] {
                    let c = self.container_of(dir).to_string();
                    let p = points
                        .iter()
                        .find(|p| p.label("container") == c && p.label("direction") == dir)
                        .with_context(|| format!("{title} A: expected {c} {dir} in {points:?}"))?;
                    let fio = self.fio(dir);
                    self.report.push(format!("{title} used {c} {dir}: {:.1} vs fio {fio:.1}", p.value));
                    ensure!(within(p.value, fio, RATE_PCT), "{title} {c} {dir}: {} vs fio {fio}", p.value);
                }
            }
            ("IOPS limit vs usage", "B") => self.check_limits(title, points, "iops")?,
            ("Limit utilization", "A" | "B") => {
                let (unit, per_request) = if ref_id == "A" { ("iops", 1.0) } else { ("bytes_per_second", BLOCK) };
                for dir in ["read", "write"] {
                    let c = self.container_of(dir).to_string();
                    let p = points
                        .iter()
                        .find(|p| {
                            p.label("container") == c
                                && p.label("direction") == dir
                                && p.label("device") == self.loop_device
                        })
                        .with_context(|| format!("{title} {ref_id}: expected {c} {dir} in {points:?}"))?;
                    let limit = self.limits[&(c.clone(), dir.to_string(), unit.to_string())];
                    let fio = self.fio(dir) * per_request / limit;
                    self.report.push(format!("{title} {unit} {c} {dir}: {:.3} vs fio {fio:.3}", p.value));
                    ensure!(within(p.value, fio, RATE_PCT), "{title} {unit} {c} {dir}: {} vs fio/limit {fio}", p.value);
                }
            }
            ("Top 10 slow pods", "A") => {
                ensure!(points.len() == 1, "{title}: expected the one pod, found {points:?}");
                let truth = raw_mean(self.prometheus, "iogate_io_latency_seconds", &self.pod_selector, self.at)?;
                let v = points[0].value;
                self.report.push(format!("{title}: {:.3} ms vs scraped counters {:.3} ms", v * 1e3, truth * 1e3));
                ensure!(within(v, truth, MEAN_PCT), "{title}: {v} vs {truth}");
                let rest = self.rest["read_latency_ns"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(self.rest["write_latency_ns"].as_f64().unwrap_or(0.0))
                    / 1e9;
                ensure!(rest > 0.0 && (v / rest).log(4.0).abs() <= 1.0, "{title}: {v} s vs REST mean {rest} s");
            }
            ("Sidecar: eBPF loaded", "A") => {
                ensure!(points.len() == 1 && points[0].value == 1.0, "{title}: expected 1, found {points:?}");
            }
            ("Sidecar: throttle wait measured", "A") => {
                let want = f64::from(u8::from(self.throttle_wait_measured));
                ensure!(points.len() == 1 && points[0].value == want, "{title}: expected {want}, found {points:?}");
            }
            ("Sidecar: stall time measured", "A") => {
                let want = f64::from(u8::from(self.stall_measured));
                ensure!(points.len() == 1 && points[0].value == want, "{title}: expected {want}, found {points:?}");
            }
            ("Sidecar: pods synced", "A") => {
                // No Kubernetes here (--no-kubernetes): the sidecar never
                // lists pods, and says so with 0.
                ensure!(points.len() == 1 && points[0].value == 0.0, "{title}: expected 0, found {points:?}");
            }
            ("Lower-layer I/O per device (counted above)", "A") => {
                for p in points {
                    ensure!(
                        p.label("device") == self.lower_device && p.label("lower_layer_of") == self.loop_device,
                        "{title}: expected the disk {} under the loop device {}, found {p:?}",
                        self.lower_device,
                        self.loop_device
                    );
                    ensure!(p.value > 0.0, "{title}: {p:?}");
                    let dir = p.label("direction");
                    self.report.push(format!(
                        "{title} {dir} on {}: {:.1} (fio {:.1})",
                        self.lower_device,
                        p.value,
                        self.fio(dir)
                    ));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every limit series equals the limit in the container's cgroup file
    /// on the loop device; the reader's read and the writer's write limits
    /// are there (a limit is exported next to a series with I/O).
    fn check_limits(&mut self, title: &str, points: &[Point], unit: &str) -> Result<()> {
        for p in points {
            ensure!(p.label("device") == self.loop_device, "{title}: a limit on another device: {p:?}");
            let key = (p.label("container").to_string(), p.label("direction").to_string(), unit.to_string());
            let want = self.limits.get(&key).with_context(|| format!("{title}: no limit in force for {p:?}"))?;
            ensure!(p.value == *want, "{title}: {key:?} limit {} vs {want} in the cgroup files", p.value);
        }
        for dir in ["read", "write"] {
            let c = self.container_of(dir);
            ensure!(
                points.iter().any(|p| p.label("container") == c && p.label("direction") == dir),
                "{title}: expected the {unit} limit of {c} {dir} in {points:?}"
            );
        }
        self.report.push(format!("{title} limit: {} series, each equal to the cgroup files", points.len()));
        Ok(())
    }
}

/// The whole check, for one Prometheus major version.
fn dashboard_counts_each_request_once(major: u32) -> Result<()> {
    require_root();
    Prometheus::binary(major)?;
    let lock = HostLock::acquire()?;
    let policy = format!(
        "[defaults]\nread-iops = {LIMIT_IOPS}\nwrite-iops = {LIMIT_IOPS}\nread-bps = {LIMIT_BPS}\nwrite-bps = {LIMIT_BPS}\n"
    );
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, &policy))?;

    // The data disk is stacked: its loop device sits on the disk holding
    // its backing file, as the sidecar reads it from /sys/block.
    let loop_device = stack.device;
    let backing = std::fs::read_to_string(format!("/sys/dev/block/{loop_device}/loop/backing_file"))
        .with_context(|| format!("expected {loop_device} to be a loop device"))?;
    let lower_device = DeviceResolver::default().resolve_mount(Path::new(backing.trim()))?;
    ensure!(
        Stacking::load().lower_layers(&[(loop_device, 1), (lower_device, 1)]) == [None, Some(loop_device)],
        "expected {lower_device} (under {}) below the loop device {loop_device} in /sys/block",
        backing.trim()
    );

    let sidecar = Sidecar::start(SCRAPE, &["--source", "ebpf"])?;
    // A second sidecar whose REST window is the dashboard's rate window, so
    // the REST percentiles are of the same requests as the panels'.
    let windowed = Sidecar::start(Duration::from_secs(WINDOW_SECONDS), &["--source", "ebpf"])?;
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string();
    let job = ScrapeJob::from_service_monitor(&repo_root().join("deploy/servicemonitor.yaml"), &node)?;
    ensure!(job.honor_labels, "the ServiceMonitor must keep the sidecar's labels (honorLabels: true)");
    let prometheus = Prometheus::start(major, &job.config(sidecar.addr())?)?;
    prometheus.wait_for_target(Duration::from_secs(30)).with_context(|| prometheus.log())?;
    eprintln!("{} scraping the sidecar at {}", prometheus.version, sidecar.addr());

    // One pod, two containers: a reader and a writer, each at the limits.
    let spec = stack.pod_spec("shop", "web-0", &[]);
    let data = stack.data_dir("web-0")?;
    let mut reader = Job::new("reader", Rw::RandRead, FIO_SECONDS);
    let mut writer = Job::new("writer", Rw::RandWrite, FIO_SECONDS);
    reader.iodepth = 8;
    writer.iodepth = 8;
    reader.prepare(&data)?;
    writer.prepare(&data)?;
    // The window is placed after the later container's start; fio's own
    // start is read from its summary afterwards (fio_window_iops).
    let run = stack.run(&spec, "reader", queued_fio(&reader), &data)?;
    let image = stack.image.reference.clone();
    let writer_spec = ContainerSpec {
        name: "writer".into(),
        image,
        command: queued_fio(&writer),
        mounts: vec![(data.clone(), DATA_IN_CONTAINER.to_string())],
        ..Default::default()
    };
    let writer_id = stack
        .cri()
        .create_container(&run.pod, &writer_spec)
        .map_err(|s| anyhow::anyhow!("CreateContainer writer: {}", s.message()))?;
    stack.cri().start_container(&writer_id)?;
    let writer_started = unix_now();
    let writer_pid = stack.cri().container_pid(&writer_id)?;

    let mut limits = BTreeMap::new();
    for (container, pid) in [(&run.container_id, run.pid), (&writer_id, writer_pid)] {
        let l = stack.limits_on(pid, loop_device)?;
        let in_force = [
            ("read", "iops", l.read_iops),
            ("write", "iops", l.write_iops),
            ("read", "bytes_per_second", l.read_bps),
            ("write", "bytes_per_second", l.write_bps),
        ];
        for (dir, unit, v) in in_force {
            let v = v.with_context(|| format!("expected a {dir} {unit} limit on {container}, found {l:?}"))?;
            limits.insert((container.to_string(), dir.to_string(), unit.to_string()), v as f64);
        }
    }

    // The windows: every WINDOW_SECONDS window the windowed sidecar
    // publishes while fio runs, with its REST answer (which covers exactly
    // that window) and when it was seen. Prometheus keeps every sample, so
    // the dashboard is evaluated afterwards at the end of the first window
    // in which fio held its limits: on this shared machine the root disk
    // under the loop device sometimes stalls for seconds, and then the
    // disk, not the limit, sets fio's rate, which moves within the second.
    let rest_path = format!("/api/v1/metrics/pod/{}", spec.uid);
    let stamp = |v: &Value| v["pod_metrics"]["timestamp"].as_str().unwrap_or("").to_string();
    let mut windows: Vec<(f64, Value)> = Vec::new();
    let mut last = String::new();
    let until = writer_started + FIO_SECONDS as f64 + 2.0;
    while unix_now() < until {
        let (status, v) = windowed.json(&rest_path)?;
        if status == 200 && stamp(&v) != last {
            last = stamp(&v);
            windows.push((unix_now(), v));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = stack.cri().wait_exit(&run.container_id, Duration::from_secs(60))?;
    ensure!(code == 0, "reader fio failed: {}", stack.cri().logs(&run.pod, "reader"));
    let code = stack.cri().wait_exit(&writer_id, Duration::from_secs(60))?;
    ensure!(code == 0, "writer fio failed: {}", stack.cri().logs(&run.pod, "writer"));
    let (reader_span, writer_span) = (fio_span(&reader, &data)?, fio_span(&writer, &data)?);
    let mut chosen = None;
    let mut seen = Vec::new();
    for (end, rest) in windows {
        let start = end - WINDOW_SECONDS as f64;
        // Inside both runs, a second clear of each edge.
        let inside = |(from, to): (f64, f64)| start >= from + 1.0 && end <= to - 1.0;
        if !inside(reader_span) || !inside(writer_span) {
            continue;
        }
        let window_seconds = rest["pod_metrics"]["window_seconds"].as_f64().context("window_seconds")?;
        ensure!(
            (window_seconds - WINDOW_SECONDS as f64).abs() < 0.5,
            "expected a {WINDOW_SECONDS} s REST window, found {window_seconds}"
        );
        let fio_read = fio_iops(&Measured::read(&reader, &data)?, start - reader_span.0, end - reader_span.0)?;
        let fio_write = fio_iops(&Measured::read(&writer, &data)?, start - writer_span.0, end - writer_span.0)?;
        seen.push(format!(
            "{:.0}..{:.0} s: read {fio_read:.1}, write {fio_write:.1}",
            start - reader_span.0,
            end - reader_span.0
        ));
        let held = |iops: f64| iops >= 0.9 * LIMIT_IOPS as f64;
        if held(fio_read) && held(fio_write) {
            chosen = Some((end, rest, fio_read, fio_write));
            break;
        }
    }
    let (end, rest, fio_read, fio_write) = chosen.with_context(|| {
        format!(
            "fio held its {LIMIT_IOPS} IOPS limits (within 10 %) in no full window: the shared root disk was \
             the bottleneck, so the run measures nothing about the limits (fio's windows: {seen:?})"
        )
    })?;
    eprintln!("window ending {end:.1} (fio's windows: {seen:?})");

    let dash = dashboard::load(&repo_root().join("deploy/dashboards/iogate.json"))?;
    let start = end - WINDOW_SECONDS as f64;

    // The variables, as Grafana fills them. No Kubernetes API here: the
    // sidecar names the pod by its UID and knows no namespace, so its
    // series carry namespace="", which Prometheus stores as no label at all
    // — and honorLabels keeps the target's own namespace (the sidecar's)
    // from filling it in. The namespace variable therefore must be empty,
    // and Grafana offers only "All" (the variable's allValue).
    let mut namespace = None;
    let mut pods = Vec::new();
    let mut variable_queries = 0;
    for v in dashboard::variables(&dash)?.into_iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("");
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).context("variable query")?;
        let all = v["allValue"].as_str().with_context(|| format!("variable {name}: expected an allValue"))?;
        let (selector, label) = label_values_args(query)?;
        let selector = as_grafana_would(selector, namespace.as_deref().unwrap_or(all), all)?;
        let values = prometheus.label_values(label, &selector, start, end)?;
        eprintln!("variable {name}: label_values({selector}, {label}) = {values:?}");
        match name {
            "namespace" => {
                ensure!(
                    values.is_empty(),
                    "variable namespace: expected none (no Kubernetes: the pod has no namespace, and the \
                     target's {:?} must not be put on its series), found {values:?}",
                    job.target_labels["namespace"]
                );
                namespace = Some(all.to_string());
            }
            "pod" => {
                ensure!(!values.is_empty(), "variable pod: label_values({selector}, {label}) returned nothing");
                pods = values;
            }
            other => bail!("a query variable the test does not know: {other:?}"),
        }
        variable_queries += 1;
    }
    ensure!(variable_queries == 2, "expected the namespace and pod variables");
    ensure!(pods.contains(&spec.uid), "variable pod: expected the pod's UID {} in {pods:?}", spec.uid);
    let namespace = namespace.context("the namespace variable")?;
    let pod_series = prometheus.query(&format!("iogate_io_requests_total{{pod={:?}}}", spec.uid), end)?;
    ensure!(
        !pod_series.is_empty()
            && pod_series.iter().all(|p| !p.labels.contains_key("namespace") && p.label("container") != "metrics-sidecar"),
        "expected the pod's series with its own labels (no namespace, its containers), not the target's: {pod_series:?}"
    );

    let pod_selector = format!("namespace=\"\", pod={:?}, cgroup=\"\"", spec.uid);
    // The lower layer is there and marked, in its own family.
    let lower = prometheus.query(&format!("iogate_io_lower_layer_requests_total{{{pod_selector}}}"), end)?;
    ensure!(
        !lower.is_empty()
            && lower.iter().all(|p| p.label("device") == lower_device.to_string()
                && p.label("lower_layer_of") == loop_device.to_string()),
        "expected the pod's lower-layer series on {lower_device}, marked lower_layer_of={loop_device}, found {lower:?}"
    );
    let top = prometheus.query(&format!("iogate_io_requests_total{{{pod_selector}}}"), end)?;
    let fio_containers = [run.container_id.as_str(), writer_id.as_str()];
    let fio_top: Vec<&Point> = top.iter().filter(|p| fio_containers.contains(&p.label("container"))).collect();
    ensure!(
        top.iter().all(|p| !p.labels.contains_key("lower_layer_of"))
            && fio_top.len() >= 2
            && fio_top.iter().all(|p| p.label("device") == loop_device.to_string()),
        "expected fio's containers' top-layer series on {loop_device} only, found {top:?}"
    );

    // What the host measures, from the sidecar's own gauges (checked
    // against /readyz's reasons in metrics_sidecar_e2e).
    let gauge = |name: &str| -> Result<bool> {
        let points = prometheus.query(name, end)?;
        ensure!(points.len() == 1, "expected one {name} series, found {points:?}");
        Ok(points[0].value == 1.0)
    };
    let (throttle_wait_measured, stall_measured) =
        (gauge("iogate_sidecar_throttle_wait_measured")?, gauge("iogate_sidecar_io_pressure_measured")?);
    let mut truth = Truth {
        prometheus: &prometheus,
        at: end,
        pod_selector,
        fio_read,
        fio_write,
        loop_device: loop_device.to_string(),
        lower_device: lower_device.to_string(),
        // No Kubernetes: containers are named by their ids.
        reader: run.container_id.clone(),
        writer: writer_id.clone(),
        limits,
        rest: rest["pod_metrics"].clone(),
        throttle_wait_measured,
        stall_measured,
        report: Vec::new(),
    };
    let mut checked = 0;
    for panel in dashboard::panels(&dash)? {
        let title = panel["title"].as_str().unwrap_or("");
        for t in panel["targets"].as_array().into_iter().flatten() {
            let ref_id = t["refId"].as_str().unwrap_or("");
            let expr = as_grafana_would(t["expr"].as_str().context("expr")?, &namespace, &spec.uid)?;
            let points = prometheus.query(&expr, end)?;
            eprintln!("{title} {ref_id}: {expr}\n  = {points:?}");
            let known =
                truth.check(title, ref_id, &points).with_context(|| format!("{}: {expr}", prometheus.version))?;
            ensure!(known, "{title} {ref_id}: no check for this query ({expr}); every dashboard query must be checked");
            checked += 1;
        }
    }
    ensure!(checked >= 21, "expected every panel query checked, only {checked}");
    eprintln!(
        "{}: {checked} dashboard queries and 2 variables checked:\n  {}",
        prometheus.version,
        truth.report.join("\n  ")
    );
    drop(prometheus);
    drop(sidecar);
    drop(windowed);
    stack.finish()
}

#[test]
fn prometheus_2_dashboard_counts_each_request_once() -> Result<()> {
    dashboard_counts_each_request_once(2)
}

#[test]
fn prometheus_3_dashboard_counts_each_request_once() -> Result<()> {
    dashboard_counts_each_request_once(3)
}
