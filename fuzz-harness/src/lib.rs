//! The fuzz targets' bodies, one function per target, each taking the
//! fuzzer's bytes. `fuzz/fuzz_targets/<name>.rs` calls [`run`] under
//! libFuzzer (nightly, `cargo fuzz`); `tests/corpus_replay.rs` calls it on
//! stable with every file of `fuzz/corpus/<name>/` and `fuzz/crashes/<name>/`,
//! so the corpus is replayed by `cargo test`.
//!
//! A target fails by panicking: on input the code under test mishandles
//! (a panic inside it), or when a property it promises does not hold (the
//! asserts here). Errors that the code returns are fine: bad input must get
//! a clear error, and does.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use iogate_core::annotations::{self, ProblemKind, PREFIX};
use iogate_core::cgroup::mountinfo;
use iogate_core::cgroup::paths::{ContainerId, PodCgroup, PodUid};
use iogate_core::cgroup::v1::blkio;
use iogate_core::cgroup::v2::io;
use iogate_core::cgroup::CgroupMode;
use iogate_core::quantity::{self, Quantity};
use iogate_core::{CgroupFs, Config, ContainerInfo, Decision, Device, DeviceLimits, Knob, Policy};
use nri::framing::MessageReader;
use nri::mux::{ConnId, Mux, MAX_READ_PAYLOAD};

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[&str] = &[
    "quantity",
    "annotations",
    "config_toml",
    "cgroup_files",
    "mountinfo",
    "cgroup_paths",
    "nri_mux",
    "nri_messages",
    "oci_hook_input",
    "sidecar_query",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    ignore_sigpipe();
    match name {
        "quantity" => quantity_grammar(data),
        "annotations" => annotations(data),
        "config_toml" => config_toml(data),
        "cgroup_files" => cgroup_files(data),
        "mountinfo" => mountinfo_text(data),
        "cgroup_paths" => cgroup_paths(data),
        "nri_mux" => nri_mux(data),
        "nri_messages" => nri_messages(data),
        "oci_hook_input" => oci_hook_input(data),
        "sidecar_query" => sidecar_query(data),
        other => panic!("unknown fuzz target {other:?}; expected one of {TARGETS:?}"),
    }
}

/// The NRI targets write into sockets whose peer may have shut down; under
/// libFuzzer's own `main` Rust's runtime has not set SIGPIPE to be ignored,
/// so a write there would kill the fuzzer instead of returning EPIPE.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to
    // race with; it is done once, before any socket is written.
    ONCE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The grammar is exactly `max | digit+ suffix?`, and a value reads back.
pub fn quantity_grammar(data: &[u8]) {
    let t = text(data);
    match quantity::parse(&t) {
        Ok(Quantity::Unlimited) => assert_eq!(t, "max"),
        Ok(Quantity::Value(n)) => {
            assert!(n > 0, "{t:?} parsed to zero");
            let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{t:?} is not canonical");
            assert_eq!(quantity::parse(&n.to_string()), Ok(Quantity::Value(n)));
        }
        Err(_) => {}
    }
}

/// Line 1: the container; line 2: its siblings, comma-separated; then
/// `key=value` lines (keys without a `/` get the `iogate.io/` prefix).
/// Whatever the annotations ask, no knob is above the namespace's ceiling.
pub fn annotations(data: &[u8]) {
    let t = text(data);
    let mut lines = t.split('\n');
    let container = lines.next().unwrap_or_default().to_string();
    let siblings: Vec<String> = lines.next().unwrap_or_default().split(',').map(String::from).collect();
    let mut ann = HashMap::new();
    for line in lines {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let key = if k.contains('/') { k.to_string() } else { format!("{PREFIX}{k}") };
        ann.insert(key, v.to_string());
    }
    let o = annotations::parse(&ann, &container, &siblings);
    for (_, r) in &o.knobs {
        let name = &r.source.key[PREFIX.len()..];
        assert!(
            !name.contains('.') || name.ends_with(&format!(".{container}")),
            "{} applied to {container}",
            r.source.key
        );
    }
    for p in &o.problems {
        if p.kind == ProblemKind::UnknownContainer {
            let target = p.source.key.rsplit_once('.').map(|(_, t)| t).unwrap_or_default();
            assert!(target != container && !siblings.iter().any(|s| s == target), "{p}");
        }
    }
    for strict in [false, true] {
        let mut config = Config { strict, ..Config::default() };
        config.ceilings.default.set(Knob::ReadIops, Some(1000));
        let policy = Policy::new(config, vec![Device::new(7, 0)]);
        let info = ContainerInfo { siblings: &siblings, ..ContainerInfo::new("shop", "p", &container, "", &ann) };
        if let Ok(Decision::Enforce(e)) = policy.decide(&info) {
            let ceiling = policy.config.ceiling_for("shop");
            for knob in Knob::ALL {
                if let Some(c) = ceiling.get(knob) {
                    assert!(e.limits.get(knob).is_some_and(|v| v <= c), "{knob} above the ceiling: {:?}", e.limits);
                }
            }
        }
    }
}

/// A config parses or is an error; a parsed one decides for a plain pod
/// within its ceiling.
pub fn config_toml(data: &[u8]) {
    let t = text(data);
    let Ok(config) = Config::from_toml(&t, Path::new("fuzz.toml"), |_| None) else { return };
    let namespaces: Vec<String> = config.ceilings.namespaces.keys().cloned().chain(["shop".into()]).collect();
    assert_eq!(config.effective_ceilings().len(), namespaces.len());
    let policy = Policy::new(config, vec![Device::new(7, 0)]);
    let ann = HashMap::new();
    for ns in &namespaces {
        if let Ok(Decision::Enforce(e)) = policy.decide(&ContainerInfo::new(ns, "p", "c", "", &ann)) {
            let ceiling = policy.config.ceiling_for(ns);
            for knob in Knob::ALL {
                if let Some(c) = ceiling.get(knob) {
                    assert!(e.limits.get(knob).is_some_and(|v| v <= c));
                }
            }
        }
    }
}

/// The first byte picks the file format; an `io.max` line that parses
/// prints as a line that parses to the same limits.
pub fn cgroup_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let t = text(rest);
    let path = Path::new("/sys/fs/cgroup/fuzz");
    match which % 6 {
        0 => {
            if let Ok(lines) = io::parse_io_max(path, &t) {
                for l in lines {
                    assert_eq!(l.to_string().parse::<DeviceLimits>().as_ref(), Ok(&l));
                }
            }
        }
        1 => drop(blkio::parse_throttle(path, &t)),
        2 => drop(blkio::parse_service_counts(path, &t)),
        3 => drop(io::parse_io_stat(path, &t)),
        4 => drop(io::parse_io_pressure(path, &t)),
        _ => {
            if let Ok(l) = t.parse::<DeviceLimits>() {
                assert_eq!(l.to_string().parse::<DeviceLimits>(), Ok(l));
            }
        }
    }
}

/// `/proc/self/mountinfo`: every line read or skipped, and the cgroup
/// hierarchy found from it in each mode (controllers from the last line).
pub fn mountinfo_text(data: &[u8]) {
    let t = text(data);
    for m in mountinfo::mounts(&t) {
        assert!(!m.fstype.contains(' '));
    }
    let controllers = t.lines().last().unwrap_or_default().to_string();
    for mode in [CgroupMode::Auto, "v1".parse().unwrap(), "v2".parse().unwrap()] {
        drop(CgroupFs::from_mountinfo(&t, mode, |_| controllers.clone()));
    }
}

/// A cgroup path's pod UID and container id, which read back as themselves.
pub fn cgroup_paths(data: &[u8]) {
    let t = text(data);
    if let Some(pc) = PodCgroup::parse(&t) {
        assert_eq!(pc.pod_uid.as_str().parse::<PodUid>().as_ref(), Ok(&pc.pod_uid));
        if let Some(id) = &pc.container_id {
            assert_eq!(id.as_str().parse::<ContainerId>().as_ref(), Ok(id));
        }
    }
    drop(t.parse::<PodUid>());
    drop(t.parse::<ContainerId>());
}

/// The frames of `data` the way the multiplexer must read them: each
/// connection's bytes, and whether the trunk ended cleanly.
fn expected_streams(data: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let (mut plugin, mut runtime, mut at) = (Vec::new(), Vec::new(), 0);
    while at < data.len() {
        if data.len() - at < 8 {
            return (plugin, runtime, false);
        }
        let conn = u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
        let size = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 8;
        if size > MAX_READ_PAYLOAD || data.len() - at < size {
            return (plugin, runtime, false);
        }
        match ConnId(conn) {
            ConnId::PLUGIN_SERVICE => plugin.extend_from_slice(&data[at..at + size]),
            ConnId::RUNTIME_SERVICE => runtime.extend_from_slice(&data[at..at + size]),
            _ => {}
        }
        at += size;
    }
    (plugin, runtime, true)
}

/// Raw trunk bytes from the runtime's side: each connection reads a prefix
/// of its frames' payloads (all of it unless the multiplexer failed), and
/// the multiplexer ends cleanly exactly when the trunk was well framed.
pub fn nri_mux(data: &[u8]) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let (mux, [mut plugin, mut runtime]) = Mux::start(ours, [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE]).unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = theirs.write_all(&input);
        // Closing the runtime's end ends the trunk after the last frame.
    });
    let (want_plugin, want_runtime, clean) = expected_streams(data);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = runtime.read_to_end(&mut got);
        got
    });
    let mut got_plugin = Vec::new();
    let _ = plugin.read_to_end(&mut got_plugin);
    let got_runtime = reader.join().unwrap();
    writer.join().unwrap();
    let ended = mux.wait();
    assert!(want_plugin.starts_with(&got_plugin), "the plugin connection read bytes no frame carried");
    assert!(want_runtime.starts_with(&got_runtime), "the runtime connection read bytes no frame carried");
    match ended {
        Ok(()) => {
            assert!(clean, "a truncated or oversized frame ended the multiplexer cleanly");
            assert_eq!((got_plugin.len(), got_runtime.len()), (want_plugin.len(), want_runtime.len()));
        }
        Err(e) => assert!(!clean || e.to_string().contains("queue"), "a well-framed trunk failed: {e}"),
    }
}

/// `data` is the plugin connection's byte stream (framed here in 4 KiB
/// frames): ttrpc messages are read off it until it ends or is malformed,
/// each exactly as long as its header says, within the deadline.
pub fn nri_messages(data: &[u8]) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let (_mux, [conn]) = Mux::start(ours, [ConnId::PLUGIN_SERVICE]).unwrap();
    let mut framed = Vec::with_capacity(data.len() + 8 * (data.len() / 4096 + 1));
    for chunk in data.chunks(4096) {
        framed.extend_from_slice(&ConnId::PLUGIN_SERVICE.0.to_be_bytes());
        framed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        framed.extend_from_slice(chunk);
    }
    let writer = std::thread::spawn(move || {
        let _ = theirs.write_all(&framed);
    });
    let mut reader = MessageReader::new(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut consumed = 0usize;
    while let Ok((header, body)) = reader.read(Some(deadline)) {
        assert_eq!(header.length as usize, body.len());
        consumed += 10 + body.len();
        assert!(consumed <= data.len());
        let _ = <ttrpc::proto::Request as ttrpc::proto::Codec>::decode(&body);
    }
    writer.join().unwrap();
}

/// What a runtime hands the hook: the OCI state, a NUL, the bundle's
/// `config.json`; read, and decided on as the hook's decide mode does.
pub fn oci_hook_input(data: &[u8]) {
    use iogate_oci_hook::{annotated, input};
    let (state, spec) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(state) = input::read_state(state) else { return };
    let _ = input::pid_of(&state);
    let Ok(spec) = input::parse_spec(&text(spec), Path::new("config.json")) else { return };
    let annotations = spec.annotations().clone().unwrap_or_default();
    let who = annotated::from_annotations(state.id(), &annotations);
    let info = who.info();
    for strict in [false, true] {
        let config = Config { strict, ..Config::default() };
        let _ = Policy::new(config, vec![Device::new(7, 0)]).decide(&info);
    }
}

/// The sidecar's query string, on each endpoint; a URI hyper would refuse
/// never reaches them.
pub fn sidecar_query(data: &[u8]) {
    use iogate_metrics_sidecar::query;
    let t = text(data);
    let Ok(uri) = format!("/api/v1/metrics?{t}").parse::<http::Uri>() else { return };
    let _ = query::all_metrics(&uri);
    if let Ok(Some(ns)) = query::pod_metrics(&uri) {
        assert!(!ns.is_empty());
    }
    if let Ok(n) = query::top_slow(&uri) {
        assert!((1..=query::MAX_TOP).contains(&n));
    }
}
