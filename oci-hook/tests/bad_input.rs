//! Every kind of bad input ends in one clear line on stderr: fail-open by
//! default (exit 0, the container starts), fail-closed with --strict.

use std::io::Write;
use std::process::{Command, Stdio};

const FAIL_OPEN: &str = "; the container starts without iogate limits (fail-open)";
const FAIL_CLOSED: &str = "; refusing the container (strict mode)";

/// Runs the hook with `args`, `stdin` and extra env; returns (exit code, stderr).
fn hook(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iogate-oci-hook"))
        .args(args)
        .env_remove("IOGATE_STRICT")
        .env_remove("IOGATE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "expected exactly one line on stderr, found {err:?}");
    (out.status.code().unwrap(), err.trim_end().to_string())
}

fn both_ways(args: &[&str], stdin: &str, env: &[(&str, &str)], message: &str) {
    let (code, err) = hook(args, stdin, env);
    assert_eq!((code, err.as_str()), (0, format!("iogate-oci-hook: error: {message}{FAIL_OPEN}").as_str()));
    let mut strict = args.to_vec();
    strict.push("--strict");
    let (code, err) = hook(&strict, stdin, env);
    assert_eq!((code, err.as_str()), (1, format!("iogate-oci-hook: error: {message}{FAIL_CLOSED}").as_str()));
}

#[test]
fn no_stdin() {
    both_ways(
        &[],
        "",
        &[],
        "expected the OCI state JSON on standard input (the runtime passes it to hooks), found nothing",
    );
}

#[test]
fn malformed_state_json() {
    both_ways(
        &[],
        "{\"id\": ",
        &[],
        "expected the OCI state JSON on standard input, found malformed JSON: EOF while parsing a value at line 1 column 7",
    );
}

#[test]
fn missing_bundle() {
    both_ways(
        &[],
        r#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":1,"bundle":"/nonexistent/bundle"}"#,
        &[],
        "expected the container's bundle config at /nonexistent/bundle/config.json, but it cannot be read: No such file or directory (os error 2)",
    );
}

#[test]
fn malformed_bundle_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "[1,").unwrap();
    let state =
        format!(r#"{{"ociVersion":"1.0.2","id":"c1","status":"created","pid":1,"bundle":"{}"}}"#, dir.path().display());
    let (code, err) = hook(&[], &state, &[]);
    assert_eq!(code, 0);
    assert!(
        err.starts_with(&format!(
            "iogate-oci-hook: error: expected an OCI runtime config at {}/config.json, found malformed JSON:",
            dir.path().display()
        )),
        "{err}"
    );
}

#[test]
fn state_without_pid() {
    both_ways(
        &["apply", "--io-max", "7:0 riops=100"],
        r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b"}"#,
        &[],
        "expected the OCI state of container c1 to carry the init process's pid (hooks run at createRuntime or later), found None",
    );
}

#[test]
fn unknown_cgroup_layout() {
    // A pid whose /proc/<pid>/cgroup has no block-I/O line for the chosen
    // hierarchy: ask for v2 on a host where no cgroup2 carries io, or v1
    // where blkio is not mounted. Whichever this host is, one of them fails.
    let state =
        format!(r#"{{"ociVersion":"1.0.2","id":"c1","status":"created","pid":{},"bundle":"/b"}}"#, std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().display().to_string();
    std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
    let state = state.replace("/b", &bundle);
    let has_v1_blkio = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.ends_with(",blkio") || l.contains(",blkio "));
    let (want, expected) = if has_v1_blkio {
        ("v2", "a cgroup2 mount whose cgroup.controllers lists io")
    } else {
        ("v1", "a cgroup v1 mount with the blkio controller")
    };
    let (code, err) = hook(&["--strict"], &state, &[("CGROUP_VERSION", want), ("DATA_MOUNT", "/")]);
    assert_eq!(code, 1, "{err}");
    // The version the plugin passes to the injected hook is the one used.
    let (code, err2) = hook(&["apply", "--cgroup-version", want, "--io-max", "7:0 riops=1", "--strict"], &state, &[]);
    assert_eq!(code, 1, "{err2}");
    assert!(err2.contains(&format!("expected {expected}, found ")), "{err2}");
    assert!(
        err.starts_with(&format!(
            "iogate-oci-hook: error: no cgroup hierarchy with the block-I/O controller: expected {expected}, found "
        )),
        "{err}"
    );
    assert!(err.ends_with(FAIL_CLOSED), "{err}");
}

#[test]
fn unparsable_annotation_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{
            "io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app",
            "io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop",
            "iogate.io/read-iops":"fast"}}"#,
    )
    .unwrap();
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"c1","status":"created","pid":{},"bundle":"{}"}}"#,
        std::process::id(),
        dir.path().display()
    );
    let (code, err) = hook(&["--strict"], &state, &[("DATA_MOUNT", "/")]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!("iogate-oci-hook: error: iogate refuses pod shop/web-0 container app: annotation iogate.io/read-iops=\"fast\": expected a whole number with an optional suffix (k, M, G, T, Ki, Mi, Gi, Ti) or \"max\", found \"fast\"{FAIL_CLOSED}")
    );
}

#[test]
fn bad_arguments() {
    both_ways(&["apply"], "", &[], "apply expects at least one --io-max 'MAJ:MIN key=value...', found none");
}

#[test]
fn refuses_to_throttle_the_root_cgroup() {
    // A process of our own, moved into the root of the host's block-I/O
    // hierarchy, stands in for a container that was never given a cgroup.
    let (procs, version) = if std::path::Path::new("/sys/fs/cgroup/blkio/cgroup.procs").exists() {
        ("/sys/fs/cgroup/blkio/cgroup.procs", "v1")
    } else {
        ("/sys/fs/cgroup/cgroup.procs", "v2")
    };
    let mut sleeper = Command::new("sleep").arg("60").spawn().expect("spawning sleep");
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = sleeper.id();
    let _reap = Reap(&mut sleeper);
    std::fs::write(procs, pid.to_string())
        .unwrap_or_else(|e| panic!("moving pid {pid} into {procs} (this test needs root): {e}"));
    let state = format!(r#"{{"ociVersion":"1.0.2","id":"c1","status":"created","pid":{pid},"bundle":"/b"}}"#);
    let (code, err) = hook(&["apply", "--io-max", "7:0 riops=1", "--strict"], &state, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!("iogate-oci-hook: error: process {pid} is in the root {version} cgroup: expected a container's own cgroup; refusing to throttle the whole host{FAIL_CLOSED}")
    );
}

/// A bundle of a containerd CRI container, with extra annotations.
fn cri_bundle(extra: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"annotations":{{
            "io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app",
            "io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"{extra}}}}}"#
        ),
    )
    .unwrap();
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"c1","status":"created","pid":{},"bundle":"{}"}}"#,
        std::process::id(),
        dir.path().display()
    );
    (dir, state)
}

/// The plugin refuses to start without devices; the hook's decide mode
/// must not report success for a container it throttled nowhere.
#[test]
fn no_devices_is_an_error() {
    let (_dir, state) = cri_bundle("");
    both_ways(
        &[],
        &state,
        &[("DATA_MOUNT", "")],
        "no devices to throttle: expected at least one data mount or device (DATA_MOUNT, IOGATE_DEVICES, or [devices] in the config), found none",
    );
}

/// `IOGATE_STRICT` reads as it does for the plugin: `TRUE` is strict.
#[test]
fn strict_from_the_environment_in_any_case() {
    let (code, err) = hook(&["apply"], "", &[("IOGATE_STRICT", "TRUE")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.ends_with(FAIL_CLOSED), "{err}");
    let (code, err) = hook(&["apply"], "", &[("IOGATE_STRICT", "false")]);
    assert_eq!(code, 0, "{err}");
}

/// A strictness that does not parse asked for something: fail closed, and
/// say why.
#[test]
fn malformed_strict_environment_fails_closed() {
    let (_dir, state) = cri_bundle("");
    let (code, err) = hook(&[], &state, &[("IOGATE_STRICT", "ture"), ("DATA_MOUNT", "/")]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!("iogate-oci-hook: error: environment variable IOGATE_STRICT=\"ture\": expected true or false, found \"ture\"{FAIL_CLOSED}")
    );
}

/// CRI-O's pod annotations JSON that does not parse is a refusal in strict
/// mode, not silently no annotations.
#[test]
fn unparsable_cri_o_annotations_in_strict_mode() {
    let (_dir, state) = cri_bundle(r#","io.kubernetes.cri-o.Annotations":"{\"iogate.io/read-iops\":""#);
    let (code, err) = hook(&["--strict"], &state, &[("DATA_MOUNT", "/")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(
            "iogate-oci-hook: error: iogate refuses pod shop/web-0 container app: annotation io.kubernetes.cri-o.Annotations=\"{\\\"iogate.io/read-iops\\\":\": expected a JSON object of string values (the pod's annotations), found EOF"
        ),
        "{err}"
    );
    assert!(err.ends_with(FAIL_CLOSED), "{err}");
}
