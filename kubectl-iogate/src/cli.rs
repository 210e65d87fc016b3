//! `kubectl iogate` command line. Hand-parsed, like the sidecar's own, to
//! add no argument-parsing crate; `--flag value` and `--flag=value` both
//! work, as they do for kubectl.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::access::AccessOptions;
use crate::fetch::{Endpoint, Scheme, SIDECAR_PORT};
use crate::rows::SortKey;

pub const USAGE: &str = "\
usage: kubectl iogate top [options]

Per-container block I/O from the iogate metrics sidecars, busiest first.

  --sort KEY              latency (worse of read/write p99; default), iops or throughput
  -n, --namespace NS      only pods in NS (default: the kubeconfig context's namespace;
                          with --endpoint, all namespaces)
  -A, --all-namespaces    pods in every namespace
  --limit N               show the first N rows (default 20)
  --tree                  group as namespace > workload > pod > container
  --endpoint URL          query this sidecar directly, http[s]://HOST[:PORT][/PREFIX]
                          (port 9464 by default); repeatable; no cluster needed
  --ca-file FILE          for https:// endpoints: trust these CAs (PEM), not the system's
  --cert FILE --key FILE  for https:// endpoints: the client certificate to show (PEM)
  --user NAME             for https:// endpoints: basic auth as NAME, with the password
                          from the environment variable IOGATE_PASSWORD
  --token-file FILE       for https:// endpoints: send the bearer token in FILE (a sidecar
                          started with --kube-auth checks it against RBAC)
  -l, --selector SEL      sidecar pods' labels (default app.kubernetes.io/name=iogate)
  --sidecar-namespace NS  sidecar pods' namespace (default iogate-system)
  --port PORT             sidecar pods' HTTP port (default 9464)
  --timeout SECONDS       per sidecar (default 5)
  -h, --help              this text

Without --endpoint the sidecars are reached through the API server's pod proxy
(needs get on pods/proxy in the sidecar namespace, list on pods).
P99 and BOTTLENECK are the pod's: the sidecar measures latency per pod.
LIMIT is the io.max knob the container is closest to, with its usage.
LIMIT WAIT is the share of the pod's I/O time spent held back by its own limit
(n/a where the node's kernel does not let the sidecar time the throttle).
Exit status: 0 shown, 1 no sidecar answered (or no cluster), 2 usage error.";

const DEFAULT_LIMIT: usize = 20;
const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=iogate";
const DEFAULT_SIDECAR_NAMESPACE: &str = "iogate-system";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A mistake in the command line: reported with exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Top(Box<TopArgs>),
    Help,
}

/// Which namespaces, before a cluster is asked what "current" means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceChoice {
    /// The kubeconfig context's namespace; every namespace with `--endpoint`.
    Current,
    All,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopArgs {
    pub sort: SortKey,
    pub namespaces: NamespaceChoice,
    pub limit: usize,
    pub tree: bool,
    pub endpoints: Vec<Endpoint>,
    /// How the `https://` endpoints are reached.
    pub access: AccessOptions,
    pub selector: String,
    pub sidecar_namespace: String,
    pub port: u16,
    pub timeout: Duration,
}

impl Default for TopArgs {
    fn default() -> Self {
        TopArgs {
            sort: SortKey::Latency,
            namespaces: NamespaceChoice::Current,
            limit: DEFAULT_LIMIT,
            tree: false,
            endpoints: Vec::new(),
            access: AccessOptions::default(),
            selector: DEFAULT_SELECTOR.to_string(),
            sidecar_namespace: DEFAULT_SIDECAR_NAMESPACE.to_string(),
            port: SIDECAR_PORT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut argv = argv.into_iter();
    match argv.next().as_deref() {
        Some("top") => parse_top(argv),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some(other) => Err(UsageError(format!("unknown command {other:?}; expected top"))),
        None => Err(UsageError("expected a command: top".into())),
    }
}

fn parse_top(mut argv: impl Iterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = TopArgs::default();
    let mut namespace_flag: Option<&'static str> = None;
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = argv.next() {
        // `--flag=value` is split here so each flag is handled once below.
        let (flag, mut inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value =
            || inline.take().or_else(|| argv.next()).ok_or_else(|| UsageError(format!("{flag} expects a value")));
        match flag.as_str() {
            "--sort" => args.sort = value()?.parse().map_err(|e| UsageError(format!("--sort: {e}")))?,
            "-n" | "--namespace" => {
                let ns = value()?;
                if ns.is_empty() {
                    return Err(UsageError(format!("{flag}: expected a namespace name, found \"\"")));
                }
                set_namespaces(&mut args, &mut namespace_flag, "--namespace", NamespaceChoice::Named(ns))?;
            }
            "-A" | "--all-namespaces" => {
                set_namespaces(&mut args, &mut namespace_flag, "--all-namespaces", NamespaceChoice::All)?
            }
            "--limit" => {
                let v = value()?;
                args.limit = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| UsageError(format!("--limit: expected a whole number from 1, found {v:?}")))?;
            }
            "--tree" => args.tree = true,
            "--endpoint" => {
                let endpoint: Endpoint = value()?.parse().map_err(|e| UsageError(format!("--endpoint: {e}")))?;
                // The same sidecar twice would only repeat its pods.
                if !args.endpoints.contains(&endpoint) {
                    args.endpoints.push(endpoint);
                }
            }
            "--ca-file" => args.access.ca_file = Some(file(&flag, value()?)?),
            "--cert" => cert = Some(file(&flag, value()?)?),
            "--key" => key = Some(file(&flag, value()?)?),
            "--user" => {
                let user = value()?;
                if user.is_empty() {
                    return Err(UsageError("--user: expected a user name, found \"\"".into()));
                }
                args.access.user = Some(user);
            }
            "--token-file" => args.access.token_file = Some(file(&flag, value()?)?),
            "-l" | "--selector" => args.selector = value()?,
            "--sidecar-namespace" => args.sidecar_namespace = value()?,
            "--port" => {
                let v = value()?;
                args.port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| UsageError(format!("--port: expected a port from 1 to 65535, found {v:?}")))?;
            }
            "--timeout" => {
                let v = value()?;
                let secs =
                    v.parse::<f64>().ok().filter(|s| (0.1..=600.0).contains(s)).ok_or_else(|| {
                        UsageError(format!("--timeout: expected seconds from 0.1 to 600, found {v:?}"))
                    })?;
                args.timeout = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => return Ok(Command::Help),
            _ if inline.is_some() => return Err(UsageError(format!("unknown option {flag}"))),
            other => return Err(UsageError(format!("unknown option {other:?}; see --help"))),
        }
        if let Some(v) = inline {
            return Err(UsageError(format!("{flag} takes no value, found {v:?}")));
        }
    }
    args.access.client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(UsageError("--cert and --key go together: the client certificate and its private key".into())),
    };
    if args.access.any() && !args.endpoints.iter().any(|e| e.scheme == Scheme::Https) {
        return Err(UsageError(
            "--ca-file, --cert, --key, --user and --token-file are for https:// endpoints, and no --endpoint is https://"
                .into(),
        ));
    }
    if args.access.user.is_some() && args.access.token_file.is_some() {
        return Err(UsageError("--user and --token-file exclude each other: a request carries one of them".into()));
    }
    Ok(Command::Top(Box::new(args)))
}

fn file(flag: &str, value: String) -> Result<PathBuf, UsageError> {
    if value.is_empty() {
        return Err(UsageError(format!("{flag}: expected a file, found \"\"")));
    }
    Ok(PathBuf::from(value))
}

/// `-n` and `-A` say different things; kubectl rejects both together too.
fn set_namespaces(
    args: &mut TopArgs,
    seen: &mut Option<&'static str>,
    flag: &'static str,
    choice: NamespaceChoice,
) -> Result<(), UsageError> {
    if let Some(previous) = seen.filter(|p| *p != flag) {
        return Err(UsageError(format!("{previous} and {flag} exclude each other")));
    }
    *seen = Some(flag);
    args.namespaces = choice;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(args: &[&str]) -> Result<TopArgs, UsageError> {
        match parse(std::iter::once("top").chain(args.iter().copied()).map(String::from))? {
            Command::Top(t) => Ok(*t),
            Command::Help => panic!("help"),
        }
    }

    fn error(args: &[&str]) -> String {
        top(args).unwrap_err().0
    }

    #[test]
    fn defaults_and_every_flag() {
        assert_eq!(top(&[]).unwrap(), TopArgs::default());
        let t = top(&[
            "--sort=iops",
            "-n",
            "shop",
            "--limit",
            "5",
            "--tree",
            "--endpoint",
            "10.0.0.5",
            "--endpoint=http://10.0.0.6:9000",
            "--endpoint",
            "10.0.0.5:9464",
            "-l",
            "app=x",
            "--sidecar-namespace",
            "kube-system",
            "--port",
            "9000",
            "--timeout",
            "0.5",
        ])
        .unwrap();
        assert_eq!((t.sort, t.limit, t.tree, t.port), (SortKey::Iops, 5, true, 9000));
        assert_eq!(t.namespaces, NamespaceChoice::Named("shop".into()));
        let endpoints: Vec<String> = t.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(endpoints, ["http://10.0.0.5:9464", "http://10.0.0.6:9000"], "the repeat is dropped");
        assert_eq!((t.selector.as_str(), t.sidecar_namespace.as_str()), ("app=x", "kube-system"));
        assert_eq!(t.timeout, Duration::from_millis(500));
        assert_eq!(top(&["-A"]).unwrap().namespaces, NamespaceChoice::All);
        let t = top(&["--endpoint=https://n", "--ca-file", "ca.pem", "--key=k.pem", "--cert", "c.pem", "--user", "p"])
            .unwrap();
        let expected = AccessOptions {
            ca_file: Some("ca.pem".into()),
            client_cert: Some(("c.pem".into(), "k.pem".into())),
            user: Some("p".into()),
            token_file: None,
        };
        assert_eq!(t.access, expected);
        let t = top(&["--endpoint=https://n", "--token-file", "/run/token"]).unwrap();
        assert_eq!(t.access.token_file, Some("/run/token".into()));
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        assert_eq!(error(&["--sort", "speed"]), r#"--sort: expected latency, iops or throughput, found "speed""#);
        assert_eq!(error(&["--sort"]), "--sort expects a value");
        assert_eq!(error(&["--limit", "0"]), r#"--limit: expected a whole number from 1, found "0""#);
        assert_eq!(error(&["--limit=ten"]), r#"--limit: expected a whole number from 1, found "ten""#);
        assert_eq!(error(&["-n", "a", "-A"]), "--namespace and --all-namespaces exclude each other");
        assert_eq!(error(&["--tree=yes"]), r#"--tree takes no value, found "yes""#);
        assert_eq!(error(&["--colour"]), r#"unknown option "--colour"; see --help"#);
        assert!(error(&["--endpoint", "ftp://x"]).starts_with("--endpoint: expected http[s]://HOST[:PORT][/PREFIX]"));
        assert_eq!(
            error(&["--endpoint", "https://x", "--cert", "c.pem"]),
            "--cert and --key go together: the client certificate and its private key"
        );
        assert_eq!(
            error(&["--endpoint", "http://x", "--user", "prometheus"]),
            "--ca-file, --cert, --key, --user and --token-file are for https:// endpoints, and no --endpoint is https://"
        );
        assert_eq!(
            error(&["--endpoint", "https://x", "--user", "p", "--token-file", "t"]),
            "--user and --token-file exclude each other: a request carries one of them"
        );
        assert_eq!(error(&["--endpoint", "https://x", "--user="]), r#"--user: expected a user name, found """#);
        assert_eq!(parse(["list".to_string()]).unwrap_err().0, r#"unknown command "list"; expected top"#);
        assert_eq!(parse(Vec::<String>::new()).unwrap_err().0, "expected a command: top");
        assert_eq!(parse(["top".to_string(), "-h".to_string()]), Ok(Command::Help));
    }
}
