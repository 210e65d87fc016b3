//! The metrics sidecar as a test runs it: the real binary on a free
//! loopback port, queried over plain HTTP, stopped by PID when dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::Background;
use crate::workspace_binary;

pub struct Sidecar {
    process: Background,
    addr: SocketAddr,
    pub interval: Duration,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts `iogate-metrics-sidecar --interval <interval> --no-kubernetes`
    /// plus `extra` (and `--no-plugin` unless `extra` names the plugin with
    /// `--plugin`: a test's plugin listens on a port of its own), and waits
    /// until `/readyz` answers 200.
    pub fn start(interval: Duration, extra: &[&str]) -> Result<Sidecar> {
        let sidecar = Sidecar::spawn(interval, extra)?;
        sidecar.wait_ready(Duration::from_secs(30))?;
        Ok(sidecar)
    }

    /// As [`Sidecar::start`], without waiting: a sidecar serving TLS
    /// (`--web.config.file`) does not answer the plain-HTTP readiness
    /// check, so its caller waits its own way.
    pub fn spawn(interval: Duration, extra: &[&str]) -> Result<Sidecar> {
        Sidecar::spawn_with(interval, extra, None)
    }

    /// As [`Sidecar::start`], with the Kubernetes API that `kubeconfig`
    /// names instead of `--no-kubernetes`.
    pub fn start_with_api(interval: Duration, extra: &[&str], kubeconfig: &std::path::Path) -> Result<Sidecar> {
        let sidecar = Sidecar::spawn_with_api(interval, extra, kubeconfig)?;
        sidecar.wait_ready(Duration::from_secs(30))?;
        Ok(sidecar)
    }

    /// As [`Sidecar::start_with_api`], without waiting (see [`Sidecar::spawn`]).
    pub fn spawn_with_api(interval: Duration, extra: &[&str], kubeconfig: &std::path::Path) -> Result<Sidecar> {
        Sidecar::spawn_with(interval, extra, Some(kubeconfig))
    }

    fn spawn_with(interval: Duration, extra: &[&str], kubeconfig: Option<&std::path::Path>) -> Result<Sidecar> {
        let dir = tempfile::tempdir()?;
        // Port 0 picks a free port; the sidecar binds it right after.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = Command::new(workspace_binary("iogate-metrics-sidecar")?);
        cmd.arg("--listen").arg(addr.to_string());
        cmd.arg("--interval").arg(interval.as_secs_f64().to_string());
        match kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path).env_remove("KUBERNETES_SERVICE_HOST"),
            None => cmd.arg("--no-kubernetes"),
        };
        cmd.args(extra);
        if !extra.contains(&"--plugin") {
            cmd.arg("--no-plugin");
        }
        let process = Background::spawn("iogate-metrics-sidecar", cmd, &dir.path().join("sidecar.log"))?;
        Ok(Sidecar { process, addr, interval, _dir: dir })
    }

    /// Where it serves HTTP (a Prometheus server scrapes it there), or HTTPS.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sidecar's process id, to read its `/proc` accounting.
    pub fn pid(&self) -> Result<u32> {
        self.process.pid().context("the sidecar is not running")
    }

    pub fn log(&self) -> String {
        self.process.output()
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the sidecar was not ready within {timeout:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lets `n` sampling windows pass, so what happened before is published.
    pub fn wait_windows(&self, n: u32) {
        std::thread::sleep(self.interval * n + Duration::from_millis(300));
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path).with_context(|| "querying the sidecar".to_string())
    }

    pub fn json(&self, path: &str) -> Result<(u16, Value)> {
        let (status, body) = self.get(path)?;
        let v = serde_json::from_str(&body).with_context(|| format!("GET {path}: expected JSON, found {body:?}"))?;
        Ok((status, v))
    }

    pub fn metrics(&self) -> Result<Vec<Sample>> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {body}");
        }
        parse_exposition(&body)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.process.stop();
    }
}

/// `GET path` from a server on this machine → (status, body). HTTP/1.0,
/// one connection per request, as a probe or a scraper would.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let response = http_get_with(addr, path, &[])?;
    let body = String::from_utf8(response.body).with_context(|| format!("GET {path}: response is not UTF-8"))?;
    Ok((response.status, body))
}

/// What [`http_get_with`] read.
pub struct RawResponse {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// [`http_get`] with extra request headers (`("Accept-Encoding", "gzip")`),
/// the body left as bytes.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<RawResponse> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading the response to GET {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path}: expected an HTTP response, found {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: expected a status line, found {head:?}"))?;
    Ok(RawResponse { status, head, body })
}

/// One line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a text exposition (the tests need values, not
/// a validator: `promtool check metrics` validates).
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = || format!("expected `name{{labels}} value`, found {line:?}");
        let (series, value) = line.rsplit_once(' ').with_context(bad)?;
        let value: f64 = value.parse().with_context(bad)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').with_context(bad)?).with_context(bad)?),
            None => (series, BTreeMap::new()),
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").context("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().context("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().context("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// Sum of a metric's samples whose labels all match `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes() {
        let text = "# HELP x y\nx_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 42\nup 1\n";
        let s = parse_exposition(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["b"], "q\"uo\\te");
        assert_eq!(sum(&s, "x_total", &[("a", "1")]), 42.0);
        assert_eq!(sum(&s, "x_total", &[("a", "2")]), 0.0);
        assert!(parse_exposition("broken{a=\"1\" 3").is_err());
    }
}
