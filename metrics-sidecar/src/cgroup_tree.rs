//! Which cgroup a [`CgroupId`] names: a walk of the hierarchy that carries
//! block I/O, indexed by directory inode.
//!
//! The kernel identifies a cgroup by its kernfs node id, and kernfs reports
//! that id as the inode number of the cgroup's directory. So one `readdir`
//! walk answers every id the eBPF program can report — for the hierarchy the
//! I/O was charged in. On cgroup v1 and hybrid hosts that is the `blkio`
//! mount, on pure v2 the unified mount: iogate-core's `CgroupFs::detect`
//! picks it, as for the limits.
//!
//! Cgroups come and go while the walk runs. A directory that vanishes between
//! being listed and being read is simply not in the result; the next scan is
//! the correction.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use crate::counters::CgroupId;

/// Every cgroup under one root, by id.
#[derive(Debug, Clone, Default)]
pub struct CgroupTree {
    /// Path relative to the scanned root: `/` for the root, `/a/b` below.
    paths: HashMap<CgroupId, String>,
}

impl CgroupTree {
    /// Walks `root` (directories only, symlinks not followed). Fails only
    /// when `root` itself cannot be read; unreadable subdirectories other
    /// than vanished ones are logged and skipped so that one odd cgroup does
    /// not blind the whole sidecar.
    pub fn scan(root: &Path) -> io::Result<CgroupTree> {
        let meta = std::fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("expected a cgroup hierarchy directory at {}, found a {:?}", root.display(), meta.file_type()),
            ));
        }
        let mut tree = CgroupTree::default();
        tree.paths.insert(CgroupId(meta.ino()), "/".to_string());
        // The root must be listable; below it, errors are per directory.
        let first = std::fs::read_dir(root)?;
        let mut pending = vec![(String::new(), first)];
        while let Some((rel, entries)) = pending.pop() {
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        skip(&rel, &e);
                        continue;
                    }
                };
                // file_type() comes from readdir and does not follow symlinks.
                match entry.file_type() {
                    Ok(t) if t.is_dir() => {}
                    Ok(_) => continue,
                    Err(e) => {
                        skip(&rel, &e);
                        continue;
                    }
                }
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    tracing::warn!(
                        "skipping cgroup with a name that is not UTF-8 under {}: {:?}",
                        dir_of(&rel),
                        entry.file_name()
                    );
                    continue;
                };
                let child = format!("{rel}/{name}");
                let list = match std::fs::read_dir(entry.path()) {
                    Ok(v) => v,
                    Err(e) => {
                        skip(&child, &e);
                        continue;
                    }
                };
                // readdir's inode number is the one stat would give (on
                // cgroupfs both are the kernfs node id), without a stat per
                // cgroup.
                tree.paths.insert(CgroupId(entry.ino()), child.clone());
                pending.push((child, list));
            }
        }
        Ok(tree)
    }

    /// The cgroup's path relative to the scanned root (`/` for the root).
    pub fn path(&self, id: CgroupId) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    pub fn contains(&self, id: CgroupId) -> bool {
        self.paths.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (CgroupId, &str)> {
        self.paths.iter().map(|(id, p)| (*id, p.as_str()))
    }
}

fn dir_of(rel: &str) -> &str {
    if rel.is_empty() {
        "/"
    } else {
        rel
    }
}

/// A cgroup removed mid-walk is normal; anything else is worth a line.
fn skip(rel: &str, e: &io::Error) {
    if e.kind() != io::ErrorKind::NotFound {
        tracing::warn!("skipping cgroup {}: {e}", dir_of(rel));
    }
}

#[cfg(test)]
mod tests {
    use iogate_core::cgroup::CgroupMode;
    use iogate_core::CgroupFs;

    use super::*;

    fn ino(p: &Path) -> CgroupId {
        CgroupId(std::fs::symlink_metadata(p).unwrap().ino())
    }

    #[test]
    fn maps_every_directory_by_inode() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("kubepods/burstable/podx/c1")).unwrap();
        std::fs::create_dir_all(root.join("system.slice")).unwrap();
        // Files are cgroup knobs, not cgroups.
        std::fs::write(root.join("kubepods/io.max"), "").unwrap();

        let tree = CgroupTree::scan(root).unwrap();
        assert_eq!(tree.len(), 6, "{:?}", tree.paths);
        assert_eq!(tree.path(ino(root)), Some("/"));
        assert_eq!(tree.path(ino(&root.join("kubepods"))), Some("/kubepods"));
        assert_eq!(tree.path(ino(&root.join("kubepods/burstable/podx/c1"))), Some("/kubepods/burstable/podx/c1"));
        assert_eq!(tree.path(ino(&root.join("system.slice"))), Some("/system.slice"));
        assert!(!tree.contains(ino(&root.join("kubepods/io.max"))));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(outside.join("deep")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        // A loop would never end if followed.
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();

        let tree = CgroupTree::scan(&root).unwrap();
        let mut paths: Vec<&str> = tree.iter().map(|(_, p)| p).collect();
        paths.sort();
        assert_eq!(paths, ["/", "/a"]);
        assert!(!tree.contains(ino(&outside)));
    }

    #[test]
    fn a_rescan_sees_cgroups_come_and_go() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("old")).unwrap();
        let old = ino(&t.path().join("old"));
        assert!(CgroupTree::scan(t.path()).unwrap().contains(old));
        std::fs::remove_dir(t.path().join("old")).unwrap();
        std::fs::create_dir(t.path().join("new")).unwrap();
        let tree = CgroupTree::scan(t.path()).unwrap();
        assert_eq!(tree.path(ino(&t.path().join("new"))), Some("/new"));
        assert_eq!(tree.len(), 2);
    }

    #[test]
    fn a_missing_root_is_an_error_and_says_where() {
        let t = tempfile::tempdir().unwrap();
        let e = CgroupTree::scan(&t.path().join("absent")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::write(t.path().join("file"), "").unwrap();
        let e = CgroupTree::scan(&t.path().join("file")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("expected a cgroup hierarchy directory at {}", t.path().join("file").display())),
            "{e}"
        );
    }

    #[test]
    fn scans_this_hosts_io_hierarchy() {
        // Every host that runs these tests has cgroups; the walk must find
        // the hierarchy's root and at least its own cgroup.
        let Ok(fs) = CgroupFs::detect(CgroupMode::Auto) else { return };
        let tree = CgroupTree::scan(&fs.mount).unwrap();
        assert_eq!(tree.path(ino(&fs.mount)), Some("/"));
    }
}
