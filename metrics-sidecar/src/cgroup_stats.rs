//! The fallback counter source when eBPF cannot load: the block cgroup
//! controller's own per-cgroup statistics (v1 `blkio.throttle.io_serviced`
//! and `io_service_bytes`, v2 `io.stat`, read by iogate-core's cgroup
//! module). Operations and bytes only; the kernel keeps no per-cgroup
//! latency there.
//!
//! Both count I/O against the request queue, i.e. whole disks. If a file
//! ever names a device twice, that is reported as an error rather than
//! summed, so nothing is counted twice.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use iogate_core::cgroup::{CgroupError, CgroupPath};
use iogate_core::{CgroupFs, CgroupVersion};

use crate::counters::{CgroupId, CounterSource, Direction, IoCounters, IoKey, Snapshot, SourceKind};

/// Per-cgroup ops and bytes from the cgroup statistics files.
#[derive(Debug, Clone)]
pub struct CgroupStatSource {
    fs: CgroupFs,
}

impl CgroupStatSource {
    /// Reads the hierarchy mounted at `root`: v1 `blkio.throttle.*` files
    /// or v2 `io.stat`, as `version` says.
    pub fn new(root: impl Into<PathBuf>, version: CgroupVersion) -> CgroupStatSource {
        CgroupStatSource { fs: CgroupFs::new(version, root) }
    }

    /// Reads the hierarchy that carries block I/O, as iogate-core found it
    /// (the same one the cgroup tree walks and the limits are read from).
    pub fn of(fs: &CgroupFs) -> CgroupStatSource {
        CgroupStatSource::new(&fs.mount, fs.version)
    }

    pub fn root(&self) -> &Path {
        &self.fs.mount
    }

    pub fn version(&self) -> CgroupVersion {
        self.fs.version
    }

    /// Every cgroup's counters, keyed by the cgroup directory's inode.
    pub fn read_all(&self) -> Result<HashMap<IoKey, IoCounters>, CgroupError> {
        let mut out = HashMap::new();
        let mut pending = vec![self.fs.mount.clone()];
        while let Some(dir) = pending.pop() {
            let meta = match std::fs::metadata(&dir) {
                Ok(m) => m,
                // Removed while we walked: a cgroup that is gone has nothing to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: dir, source }),
            };
            let cgroup = CgroupId(meta.ino());
            let cg = CgroupPath::new(&dir);
            for stat in self.fs.read_io_stats(&cg)? {
                for direction in Direction::BOTH {
                    let counters =
                        IoCounters { ops: stat.ios(direction), bytes: stat.bytes(direction), ..Default::default() };
                    out.insert(IoKey { cgroup, device: stat.device, direction }, counters);
                }
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::Read { path: dir.clone(), source })?;
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

#[cfg(test)]
mod tests {
    use iogate_core::cgroup::v1::blkio::{IO_SERVICED as V1_OPS, IO_SERVICE_BYTES as V1_BYTES};
    use iogate_core::cgroup::v2::io::IO_STAT as V2_STAT;
    use iogate_core::Device;

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
