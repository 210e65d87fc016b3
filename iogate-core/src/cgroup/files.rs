//! Reading and writing cgroup files, and what that fails with: errors name
//! the file, and for a line in the wrong form, its number, what was
//! expected and what was found.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cgroup::version::CgroupVersion;
use crate::device::Device;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the block-I/O controller: expected {expected}, found {found}")]
    NoIoController { expected: &'static str, found: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error(
        "process {pid} has no {version} block-I/O cgroup in {path}: expected a line for {expected}, found {found:?}"
    )]
    NoCgroupForPid { pid: u32, version: CgroupVersion, path: PathBuf, expected: &'static str, found: String },
    #[error(
        "process {pid}'s cgroup {cgroup} is outside the {version} hierarchy mounted at {mount} (mount root {root})"
    )]
    OutsideMount { pid: u32, version: CgroupVersion, cgroup: String, mount: PathBuf, root: String },
    #[error("{path} line {line_no}: expected {expected}, found {line:?}")]
    Malformed { path: PathBuf, line_no: usize, line: String, expected: &'static str },
    #[error("{path} line {line_no}: {device} {what} appears a second time; expected one line per device")]
    Duplicate { path: PathBuf, line_no: usize, device: Device, what: &'static str },
    #[error("{path}: expected {expected}, found fewer")]
    Incomplete { path: PathBuf, expected: &'static str },
    #[error(
        "{path} does not exist: on cgroup v2 the io controller must be enabled in the parent's cgroup.subtree_control"
    )]
    NoIoMax { path: PathBuf },
    #[error("process {pid} is in the root {version} cgroup: expected a container's own cgroup; refusing to throttle the whole host")]
    RootCgroup { pid: u32, version: CgroupVersion },
}

impl CgroupError {
    /// Line `index` (0-based) of `path` is not in the `expected` form.
    pub(crate) fn malformed(path: &Path, index: usize, line: &str, expected: &'static str) -> CgroupError {
        CgroupError::Malformed { path: path.to_path_buf(), line_no: index + 1, line: line.to_string(), expected }
    }
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

/// `None` when the file does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_path_buf(), source }),
    }
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}
