//! Block devices the limits apply to, and how a mount point becomes one.
//!
//! The kernel throttles at the request queue of the device a bio is submitted
//! to. A limit on a partition (`8:1`) is accepted by the cgroup files and then
//! never matches anything, because I/O is accounted to the whole disk (`8:0`).
//! So every path the admin names is resolved to its whole disk here, once, at
//! start-up — and a path that does not exist stops start-up with a clear error
//! instead of leaving containers unthrottled.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::limits::{Knob, Limits};
use crate::quantity;

/// A block device by number, as the cgroup files name it (`MAJ:MIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

impl Device {
    pub fn new(major: u32, minor: u32) -> Self {
        Device { major, minor }
    }

    fn from_dev_t(dev: u64) -> Self {
        // glibc's gnu_dev_major/minor encoding.
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
        Device::new(major as u32, minor as u32)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    #[error("expected a device number MAJ:MIN (e.g. 8:0), found {0:?}")]
    BadNumber(String),
    #[error("data mount {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("device {spec}: {reason}")]
    Device { spec: String, reason: String },
    #[error(
        "no devices to throttle: expected at least one data mount or device (DATA_MOUNT, IOGATE_DEVICES, or [devices] in the config), found none"
    )]
    NoDevices,
    #[error(
        "expected an io.max line \"MAJ:MIN key=value...\" with keys riops, wiops, rbps, wbps, found {line:?}: {reason}"
    )]
    BadIoMax { line: String, reason: String },
}

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceError::BadNumber(s.to_string());
        let (maj, min) = s.trim().split_once(':').ok_or_else(bad)?;
        let num = |t: &str| -> Result<u32, DeviceError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        Ok(Device::new(num(maj)?, num(min)?))
    }
}

/// Limits on one device: exactly one line of cgroup v2 `io.max`, and the text
/// form iogate passes around (`7:0 riops=500 wiops=500 rbps=max wbps=max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    pub device: Device,
    pub limits: Limits,
}

impl fmt::Display for DeviceLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.limits)
    }
}

impl FromStr for DeviceLimits {
    type Err = DeviceError;

    /// Keys that are absent stay unlimited, as in the kernel's `io.max`.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| DeviceError::BadIoMax { line: line.to_string(), reason };
        let mut words = line.split_whitespace();
        let device: Device = words
            .next()
            .ok_or_else(|| bad("the line is empty".into()))?
            .parse()
            .map_err(|e: DeviceError| bad(e.to_string()))?;
        let mut limits = Limits::UNLIMITED;
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| bad(format!("{word:?} is not key=value")))?;
            let knob = Knob::from_io_max_key(key).ok_or_else(|| bad(format!("unknown key {key:?}")))?;
            let q = quantity::parse(value).map_err(|e| bad(format!("{key}: {e}")))?;
            limits.set(knob, q.as_option());
        }
        Ok(DeviceLimits { device, limits })
    }
}

/// Where to look up block devices; a different root lets tests build a fake
/// `/sys/dev/block` with partitions.
#[derive(Debug, Clone)]
pub struct DeviceResolver {
    sys_dev_block: PathBuf,
}

impl Default for DeviceResolver {
    fn default() -> Self {
        DeviceResolver { sys_dev_block: PathBuf::from("/sys/dev/block") }
    }
}

impl DeviceResolver {
    pub fn with_sys_dev_block(dir: impl Into<PathBuf>) -> Self {
        DeviceResolver { sys_dev_block: dir.into() }
    }

    /// The whole disk holding the filesystem that `path` is on.
    pub fn resolve_mount(&self, path: &Path) -> Result<Device, DeviceError> {
        let meta = std::fs::metadata(path).map_err(|e| DeviceError::Mount {
            path: path.to_path_buf(),
            reason: format!("expected an existing directory on a block device, but it cannot be read: {e}"),
        })?;
        let dev = Device::from_dev_t(meta.dev());
        self.whole_disk(dev).map_err(|reason| DeviceError::Mount {
            path: path.to_path_buf(),
            reason: format!("its filesystem is on device {dev}, {reason}"),
        })
    }

    /// A device given as `MAJ:MIN` or as a device node path (`/dev/sdb`),
    /// resolved to its whole disk.
    pub fn resolve_device(&self, spec: &str) -> Result<Device, DeviceError> {
        let dev = if spec.starts_with('/') {
            let meta = std::fs::metadata(spec).map_err(|e| DeviceError::Device {
                spec: spec.to_string(),
                reason: format!("expected a block device node, but it cannot be read: {e}"),
            })?;
            if !meta.file_type().is_block_device() {
                return Err(DeviceError::Device {
                    spec: spec.to_string(),
                    reason: "expected a block device node, found another kind of file".into(),
                });
            }
            Device::from_dev_t(meta.rdev())
        } else {
            spec.parse()?
        };
        self.whole_disk(dev)
            .map_err(|reason| DeviceError::Device { spec: spec.to_string(), reason: format!("device {dev} {reason}") })
    }

    /// Every mount's and device's whole disk, each once, sorted. An empty
    /// set is an error: a node agent that throttles nothing must not start
    /// as if it did.
    pub fn resolve_all(&self, mounts: &[PathBuf], devices: &[String]) -> Result<Vec<Device>, DeviceError> {
        let mut out = Vec::with_capacity(mounts.len() + devices.len());
        for m in mounts {
            out.push(self.resolve_mount(m)?);
        }
        for d in devices {
            out.push(self.resolve_device(d)?);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(DeviceError::NoDevices);
        }
        Ok(out)
    }

    /// Maps a partition to its parent disk; keeps a whole disk (or a
    /// device-mapper/loop/md device, which throttles like one) as it is.
    fn whole_disk(&self, dev: Device) -> Result<Device, String> {
        let node = self.sys_dev_block.join(dev.to_string());
        let real = std::fs::canonicalize(&node).map_err(|_| {
            format!(
                "which is not a block device ({} does not exist; network, overlay and btrfs subvolume filesystems cannot be throttled by device)",
                node.display()
            )
        })?;
        if !real.join("partition").exists() {
            return Ok(dev);
        }
        let parent = real
            .parent()
            .ok_or_else(|| format!("a partition whose parent disk could not be found from {}", real.display()))?;
        let text = std::fs::read_to_string(parent.join("dev"))
            .map_err(|e| format!("a partition whose parent disk {} has no readable dev file: {e}", parent.display()))?;
        text.trim().parse().map_err(|e: DeviceError| format!("a partition whose parent disk has a bad dev file: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_parse_and_print() {
        assert_eq!("8:16".parse::<Device>().unwrap(), Device::new(8, 16));
        assert_eq!(Device::new(259, 3).to_string(), "259:3");
        for bad in ["8", "8:", ":1", "a:b", "8:1:2", "-1:0"] {
            let err = bad.parse::<Device>().unwrap_err().to_string();
            assert!(err.contains("expected a device number MAJ:MIN"), "{bad}: {err}");
        }
    }

    #[test]
    fn io_max_lines_round_trip() {
        let l: DeviceLimits = "7:0 riops=500 wbps=10Mi".parse().unwrap();
        assert_eq!(l.device, Device::new(7, 0));
        assert_eq!(l.limits.read_iops, Some(500));
        assert_eq!(l.limits.write_bps, Some(10 << 20));
        assert_eq!(l.limits.write_iops, None);
        assert_eq!(l.to_string(), "7:0 riops=500 wiops=max rbps=max wbps=10485760");
        assert_eq!(l.to_string().parse::<DeviceLimits>().unwrap(), l);
    }

    #[test]
    fn io_max_errors_say_what_is_wrong() {
        let e = "7:0 riops".parse::<DeviceLimits>().unwrap_err().to_string();
        assert!(e.contains("\"riops\" is not key=value"), "{e}");
        let e = "7:0 iops=5".parse::<DeviceLimits>().unwrap_err().to_string();
        assert!(e.contains("unknown key \"iops\""), "{e}");
        let e = "sda riops=5".parse::<DeviceLimits>().unwrap_err().to_string();
        assert!(e.contains("MAJ:MIN"), "{e}");
    }

    fn fake_sys() -> tempfile::TempDir {
        // /sys/dev/block/8:0 -> devices/sda, 8:1 -> devices/sda/sda1 (a partition)
        let t = tempfile::tempdir().unwrap();
        let sda = t.path().join("devices/sda");
        std::fs::create_dir_all(sda.join("sda1")).unwrap();
        std::fs::write(sda.join("dev"), "8:0\n").unwrap();
        std::fs::write(sda.join("sda1/dev"), "8:1\n").unwrap();
        std::fs::write(sda.join("sda1/partition"), "1\n").unwrap();
        let block = t.path().join("dev/block");
        std::fs::create_dir_all(&block).unwrap();
        std::os::unix::fs::symlink(&sda, block.join("8:0")).unwrap();
        std::os::unix::fs::symlink(sda.join("sda1"), block.join("8:1")).unwrap();
        t
    }

    #[test]
    fn partition_resolves_to_parent_disk() {
        let t = fake_sys();
        let r = DeviceResolver::with_sys_dev_block(t.path().join("dev/block"));
        assert_eq!(r.resolve_device("8:1").unwrap(), Device::new(8, 0));
        assert_eq!(r.resolve_device("8:0").unwrap(), Device::new(8, 0));
        let e = r.resolve_device("9:9").unwrap_err().to_string();
        assert!(e.contains("not a block device"), "{e}");
    }

    #[test]
    fn an_empty_device_set_is_an_error() {
        let t = fake_sys();
        let r = DeviceResolver::with_sys_dev_block(t.path().join("dev/block"));
        assert_eq!(r.resolve_all(&[], &[]), Err(DeviceError::NoDevices));
        assert!(DeviceError::NoDevices.to_string().starts_with("no devices to throttle"));
        assert_eq!(r.resolve_all(&[], &["8:1".into(), "8:0".into()]).unwrap(), [Device::new(8, 0)]);
    }

    #[test]
    fn missing_mount_is_a_clear_error() {
        let e = DeviceResolver::default().resolve_mount(Path::new("/definitely/not/here")).unwrap_err().to_string();
        assert!(e.starts_with("data mount /definitely/not/here: expected an existing directory"), "{e}");
    }

    #[test]
    fn mount_on_a_virtual_filesystem_is_refused() {
        // /proc is on an anonymous device, which no throttle can apply to.
        let e = DeviceResolver::default().resolve_mount(Path::new("/proc")).unwrap_err().to_string();
        assert!(e.contains("is not a block device"), "{e}");
    }
}
