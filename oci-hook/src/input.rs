//! What the runtime hands a hook: the OCI state on standard input, and the
//! bundle's `config.json` it points to.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Spec, State};

/// Reads the OCI state JSON the runtime writes to a hook's standard input.
pub fn read_state(mut stdin: impl Read) -> Result<State> {
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .context("expected the OCI state JSON on standard input, but it could not be read")?;
    if text.trim().is_empty() {
        bail!("expected the OCI state JSON on standard input (the runtime passes it to hooks), found nothing");
    }
    let state: State = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("expected the OCI state JSON on standard input, found malformed JSON: {e}"))?;
    Ok(state)
}

/// The container's init PID: hooks run before the user process, but after
/// the runtime created (and placed in its cgroup) the init process.
pub fn pid_of(state: &State) -> Result<u32> {
    match state.pid() {
        Some(pid) if *pid > 0 => Ok(*pid as u32),
        other => bail!(
            "expected the OCI state of container {} to carry the init process's pid (hooks run at createRuntime or later), found {:?}",
            state.id(),
            other
        ),
    }
}

/// Loads `<bundle>/config.json`.
pub fn read_spec(state: &State) -> Result<Spec> {
    let path: PathBuf = state.bundle().join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("expected the container's bundle config at {}, but it cannot be read", path.display())
    })?;
    parse_spec(&text, &path)
}

/// Parses a bundle's `config.json` (read from `path`, named in errors).
pub fn parse_spec(text: &str, path: &Path) -> Result<Spec> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("expected an OCI runtime config at {}, found malformed JSON: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_malformed_state_are_clear() {
        let e = read_state(&b""[..]).unwrap_err().to_string();
        assert_eq!(e, "expected the OCI state JSON on standard input (the runtime passes it to hooks), found nothing");
        let e = read_state(&b"{not json"[..]).unwrap_err().to_string();
        assert!(e.starts_with("expected the OCI state JSON on standard input, found malformed JSON: "), "{e}");
    }

    #[test]
    fn state_with_pid_and_bundle() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/nonexistent/b"}"#[..],
        )
        .unwrap();
        assert_eq!(pid_of(&s).unwrap(), 42);
        let e = read_spec(&s).unwrap_err().to_string();
        assert_eq!(e, "expected the container's bundle config at /nonexistent/b/config.json, but it cannot be read");
        let s = read_state(&br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b"}"#[..]).unwrap();
        assert!(pid_of(&s).unwrap_err().to_string().contains("to carry the init process's pid"));
    }
}
