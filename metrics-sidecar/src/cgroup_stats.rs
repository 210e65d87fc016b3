//! The fallback counter source when eBPF cannot load: the block cgroup
//! controller's own per-cgroup statistics. Operations and bytes only; the
//! kernel keeps no per-cgroup latency there.
//!
//! - cgroup v1 (blkio): `blkio.throttle.io_serviced` and
//!   `blkio.throttle.io_service_bytes`, lines `MAJ:MIN Read N`,
//!   `MAJ:MIN Write N` (plus Sync/Async/Discard/Total, which overlap Read and
//!   Write and are not added), and a final `Total N`;
//! - cgroup v2: `io.stat`, lines `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`.
//!
//! Both count I/O against the request queue, i.e. whole disks. If a file
//! ever names a device twice, that is reported as an error rather than
//! summed, so nothing is counted twice.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use iogate_core::{CgroupFs, CgroupVersion, Device};
use thiserror::Error;

use crate::counters::{CgroupId, CounterSource, Direction, IoCounters, IoKey, Snapshot, SourceKind};

const V1_OPS: &str = "blkio.throttle.io_serviced";
const V1_BYTES: &str = "blkio.throttle.io_service_bytes";
const V2_STAT: &str = "io.stat";

#[derive(Debug, Error)]
pub enum CgroupStatError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} line {line_no}: expected {expected}, found {line:?}")]
    Malformed { path: PathBuf, line_no: usize, line: String, expected: &'static str },
    #[error("{path} line {line_no}: {device} {what} appears a second time; expected one line per device")]
    Duplicate { path: PathBuf, line_no: usize, device: Device, what: &'static str },
}

impl CgroupStatError {
    /// Line `index` (0-based) of `path` is not in the `expected` form.
    fn malformed(path: &Path, index: usize, line: &str, expected: &'static str) -> CgroupStatError {
        CgroupStatError::Malformed { path: path.to_path_buf(), line_no: index + 1, line: line.to_string(), expected }
    }
}

/// Per-cgroup ops and bytes from the cgroup statistics files.
#[derive(Debug, Clone)]
pub struct CgroupStatSource {
    root: PathBuf,
    version: CgroupVersion,
}

impl CgroupStatSource {
    /// Reads the hierarchy mounted at `root`: v1 `blkio.throttle.*` files
    /// or v2 `io.stat`, as `version` says.
    pub fn new(root: impl Into<PathBuf>, version: CgroupVersion) -> CgroupStatSource {
        CgroupStatSource { root: root.into(), version }
    }

    /// Reads the hierarchy that carries block I/O, as iogate-core found it
    /// (the same one the cgroup tree walks and the limits are read from).
    pub fn of(fs: &CgroupFs) -> CgroupStatSource {
        CgroupStatSource::new(&fs.mount, fs.version)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Every cgroup's counters, keyed by the cgroup directory's inode.
    pub fn read_all(&self) -> Result<HashMap<IoKey, IoCounters>, CgroupStatError> {
        let mut out = HashMap::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let meta = match std::fs::metadata(&dir) {
                Ok(m) => m,
                // Removed while we walked: a cgroup that is gone has nothing to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupStatError::Read { path: dir, source }),
            };
            let cgroup = CgroupId(meta.ino());
            let per_device = match self.version {
                CgroupVersion::V1 => read_v1(&dir)?,
                CgroupVersion::V2 => read_v2(&dir)?,
            };
            for ((device, direction), counters) in per_device {
                out.insert(IoKey { cgroup, device, direction }, counters);
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupStatError::Read { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupStatError::Read { path: dir.clone(), source })?;
                // file_type does not follow symlinks: cgroupfs has none, and a
                // fake tree in a test must not loop.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
        Ok(out)
    }
}

impl CounterSource for CgroupStatSource {
    fn kind(&self) -> SourceKind {
        SourceKind::CgroupStats
    }

    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let taken_at = Instant::now();
        let counters = self.read_all()?;
        Ok(Snapshot { taken_at, source: SourceKind::CgroupStats, counters })
    }
}

type PerDevice = HashMap<(Device, Direction), IoCounters>;

/// `None` when the file does not exist (the cgroup vanished, or, on v2,
/// the io controller is not enabled for it).
fn read_optional(path: &Path) -> Result<Option<String>, CgroupStatError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupStatError::Read { path: path.to_path_buf(), source }),
    }
}

fn read_v1(dir: &Path) -> Result<PerDevice, CgroupStatError> {
    let mut out = PerDevice::new();
    let ops_path = dir.join(V1_OPS);
    let bytes_path = dir.join(V1_BYTES);
    let (Some(ops), Some(bytes)) = (read_optional(&ops_path)?, read_optional(&bytes_path)?) else {
        return Ok(out);
    };
    for (device, direction, n) in parse_v1(&ops_path, &ops)? {
        out.entry((device, direction)).or_default().ops = n;
    }
    for (device, direction, n) in parse_v1(&bytes_path, &bytes)? {
        out.entry((device, direction)).or_default().bytes = n;
    }
    Ok(out)
}

/// The Read and Write lines of a v1 `blkio.throttle.*` file.
pub fn parse_v1(path: &Path, text: &str) -> Result<Vec<(Device, Direction, u64)>, CgroupStatError> {
    const EXPECTED: &str = "\"MAJ:MIN OPERATION COUNT\" or \"Total COUNT\"";
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let malformed = || CgroupStatError::malformed(path, i, line, EXPECTED);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            [] => {}
            ["Total", n] => {
                n.parse::<u64>().map_err(|_| malformed())?;
            }
            [dev, op, n] => {
                let device: Device = dev.parse().map_err(|_| malformed())?;
                let n: u64 = n.parse().map_err(|_| malformed())?;
                let direction = match op {
                    "Read" => Direction::Read,
                    "Write" => Direction::Write,
                    // Other operations overlap Read and Write (Sync, Async,
                    // Total) or move no data we count (Discard).
                    _ => continue,
                };
                if out.iter().any(|&(d, dir, _)| d == device && dir == direction) {
                    return Err(CgroupStatError::Duplicate {
                        path: path.to_path_buf(),
                        line_no: i + 1,
                        device,
                        what: direction.name(),
                    });
                }
                out.push((device, direction, n));
            }
            _ => return Err(malformed()),
        }
    }
    Ok(out)
}

fn read_v2(dir: &Path) -> Result<PerDevice, CgroupStatError> {
    let path = dir.join(V2_STAT);
    match read_optional(&path)? {
        Some(text) => parse_v2(&path, &text),
        None => Ok(PerDevice::new()),
    }
}

/// A v2 `io.stat` file. Keys other than rbytes, wbytes, rios and wios
/// (discards, iocost and iolatency extras) are not counted.
pub fn parse_v2(path: &Path, text: &str) -> Result<PerDevice, CgroupStatError> {
    const EXPECTED: &str = "\"MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...\"";
    let mut out = PerDevice::new();
    for (i, line) in text.lines().enumerate() {
        let malformed = || CgroupStatError::malformed(path, i, line, EXPECTED);
        let mut words = line.split_whitespace();
        let Some(dev) = words.next() else { continue };
        let device: Device = dev.parse().map_err(|_| malformed())?;
        if out.keys().any(|&(d, _)| d == device) {
            return Err(CgroupStatError::Duplicate { path: path.to_path_buf(), line_no: i + 1, device, what: "line" });
        }
        let mut read = IoCounters::default();
        let mut write = IoCounters::default();
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(malformed)?;
            let slot = match key {
                "rbytes" => &mut read.bytes,
                "rios" => &mut read.ops,
                "wbytes" => &mut write.bytes,
                "wios" => &mut write.ops,
                _ => continue,
            };
            *slot = value.parse().map_err(|_| malformed())?;
        }
        out.insert((device, Direction::Read), read);
        out.insert((device, Direction::Write), write);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_OPS_TEXT: &str = "7:0 Read 120\n7:0 Write 30\n7:0 Sync 150\n7:0 Async 0\n7:0 Discard 0\n7:0 Total 150\n\
                               8:0 Read 5\n8:0 Write 0\n8:0 Sync 5\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 5\nTotal 155\n";
    const V1_BYTES_TEXT: &str = "7:0 Read 491520\n7:0 Write 122880\n7:0 Sync 614400\n7:0 Async 0\n7:0 Discard 0\n\
                                 7:0 Total 614400\nTotal 614400\n";

    fn write_v1(dir: &Path, ops: &str, bytes: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(V1_OPS), ops).unwrap();
        std::fs::write(dir.join(V1_BYTES), bytes).unwrap();
    }

    fn ino(p: &Path) -> CgroupId {
        CgroupId(std::fs::metadata(p).unwrap().ino())
    }

    fn key(cgroup: CgroupId, major: u32, minor: u32, direction: Direction) -> IoKey {
        IoKey { cgroup, device: Device::new(major, minor), direction }
    }

    #[test]
    fn v1_reads_read_and_write_lines_only() {
        let parsed = parse_v1(Path::new("f"), V1_OPS_TEXT).unwrap();
        assert_eq!(
            parsed,
            vec![
                (Device::new(7, 0), Direction::Read, 120),
                (Device::new(7, 0), Direction::Write, 30),
                (Device::new(8, 0), Direction::Read, 5),
                (Device::new(8, 0), Direction::Write, 0),
            ]
        );
        assert!(parse_v1(Path::new("f"), "Total 0\n").unwrap().is_empty());
    }

    #[test]
    fn v1_malformed_lines_name_file_and_line() {
        for bad in ["7:0 Read", "7:0 Read x", "sda Read 1", "Total", "Total many", "7:0 Read 1 2"] {
            let text = format!("7:0 Write 1\n{bad}\n");
            let e = parse_v1(Path::new("/cg/blkio.throttle.io_serviced"), &text).unwrap_err().to_string();
            assert!(e.starts_with("/cg/blkio.throttle.io_serviced line 2: expected"), "{bad}: {e}");
            assert!(e.contains(&format!("found {bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn a_device_twice_is_an_error_not_a_sum() {
        let e = parse_v1(Path::new("f"), "7:0 Read 1\n7:0 Read 2\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 7:0 read appears a second time"), "{e}");
        let e = parse_v2(Path::new("g"), "7:0 rios=1\n7:0 rios=2\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 7:0 line appears a second time"), "{e}");
    }

    #[test]
    fn v2_reads_bytes_and_ios_and_ignores_extras() {
        let text = "8:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0 cost.vrate=100.00\n\
                    7:0 rbytes=0 wbytes=0 rios=0 wios=0\n";
        let m = parse_v2(Path::new("io.stat"), text).unwrap();
        let r = m[&(Device::new(8, 16), Direction::Read)];
        let w = m[&(Device::new(8, 16), Direction::Write)];
        assert_eq!((r.ops, r.bytes, w.ops, w.bytes), (1, 4096, 2, 8192));
        assert_eq!(m.len(), 4);
        for bad in ["8:16 rios", "8:16 rios=x", "x:y rios=1"] {
            let e = parse_v2(Path::new("/cg/io.stat"), bad).unwrap_err().to_string();
            assert!(e.starts_with("/cg/io.stat line 1: expected \"MAJ:MIN rbytes=N"), "{bad}: {e}");
        }
    }

    #[test]
    fn walks_a_v1_tree_keyed_by_inode() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write_v1(root, V1_OPS_TEXT, V1_BYTES_TEXT);
        let pod = root.join("kubepods/pod1");
        write_v1(&pod, "7:0 Read 7\n7:0 Write 0\nTotal 7\n", "7:0 Read 28672\n7:0 Write 0\nTotal 28672\n");
        // A directory of the hierarchy without the files (vanished meanwhile) reports nothing.
        std::fs::create_dir_all(root.join("kubepods/empty")).unwrap();
        let all = CgroupStatSource::new(root, CgroupVersion::V1).read_all().unwrap();
        let at_root = all[&key(ino(root), 7, 0, Direction::Read)];
        assert_eq!((at_root.ops, at_root.bytes), (120, 491520));
        let in_pod = all[&key(ino(&pod), 7, 0, Direction::Read)];
        assert_eq!((in_pod.ops, in_pod.bytes), (7, 28672));
        assert_eq!(in_pod.queued_ops + in_pod.disk_ns + in_pod.total_hist.count(), 0);
        // root: 7:0 r/w, 8:0 r/w (bytes absent for 8:0: zero); pod: 7:0 r/w.
        assert_eq!(all.len(), 6);
        assert_eq!(all[&key(ino(root), 8, 0, Direction::Read)].bytes, 0);
    }

    #[test]
    fn walks_a_v2_tree_and_reports_bad_files() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("a");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join(V2_STAT), "259:0 rbytes=10 wbytes=20 rios=1 wios=2\n").unwrap();
        let mut src = CgroupStatSource::new(t.path(), CgroupVersion::V2);
        let snap = src.snapshot().unwrap();
        assert_eq!(snap.source, SourceKind::CgroupStats);
        assert_eq!(snap.counters[&key(ino(&cg), 259, 0, Direction::Write)].bytes, 20);
        std::fs::write(cg.join(V2_STAT), "259:0 rbytes=ten\n").unwrap();
        let e = format!("{:#}", src.snapshot().unwrap_err());
        assert!(e.contains("a/io.stat line 1: expected"), "{e}");
    }
}
