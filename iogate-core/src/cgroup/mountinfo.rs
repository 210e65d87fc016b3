//! `/proc/<pid>/mountinfo`: which cgroup hierarchies are mounted where.
//!
//! One line per mount (see proc(5)):
//! `36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,blkio`:
//! mount id, parent id, device, the mount's root within its filesystem, the
//! mount point, options, optional fields, `-`, filesystem type, source, and
//! the filesystem's own (super block) options.

use std::path::PathBuf;

/// The fields of one mount that cgroup detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The directory of the filesystem the mount shows: for a cgroup
    /// hierarchy, the cgroup at the mount point (`/` unless mounted from
    /// inside a cgroup namespace).
    pub root: &'a str,
    pub mount_point: PathBuf,
    pub fstype: &'a str,
    /// For cgroup v1, the controllers of the hierarchy are among these.
    pub super_options: &'a str,
}

/// The mounts of a mountinfo text; lines that do not have the fields are
/// skipped (the kernel writes none).
pub fn mounts(text: &str) -> impl Iterator<Item = Mount<'_>> {
    text.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            return None;
        }
        Some(Mount { root: l[3], mount_point: unescape(l[4]), fstype: r[0], super_options: r[2] })
    })
}

/// mountinfo escapes spaces and friends as octal (`\040`). An escape is one
/// byte, so at most `\377`; a backslash followed by anything else (`\612`,
/// which the kernel never writes) is kept as it is.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |j: usize, max: u8| b.get(j).is_some_and(|c| (b'0'..=max).contains(c));
        if b[i] == b'\\' && octal(i + 1, b'3') && octal(i + 2, b'7') && octal(i + 3, b'7') {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::*;

    #[test]
    fn cgroup_mounts_and_their_fields() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
38 31 0:35 /kubepods/pod1 /sys/fs/cgroup/blkio rw,relatime shared:9 - cgroup cgroup rw,blkio
not a mount line
";
        let all: Vec<Mount> = mounts(text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1],
            Mount {
                root: "/kubepods/pod1",
                mount_point: PathBuf::from("/sys/fs/cgroup/blkio"),
                fstype: "cgroup",
                super_options: "rw,blkio"
            }
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), Path::new("/a b"));
        assert_eq!(unescape("/plain"), Path::new("/plain"));
        assert_eq!(unescape("/a\\377"), Path::new(std::ffi::OsStr::from_bytes(b"/a\xff")));
        assert_eq!(unescape("/a\\04"), Path::new("/a\\04"));
    }

    /// Found by the mountinfo fuzz target: `\612` overflowed a byte.
    #[test]
    fn an_escape_above_a_byte_is_kept_literally() {
        assert_eq!(unescape("/mnt/a\\612b"), Path::new("/mnt/a\\612b"));
        let line = "40 25 0:40 / /mnt/a\\612b rw - ext4 /dev/sda1 rw";
        assert_eq!(mounts(line).next().unwrap().mount_point, Path::new("/mnt/a\\612b"));
    }
}
