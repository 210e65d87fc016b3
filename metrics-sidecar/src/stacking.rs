//! Which block devices sit on top of which.
//!
//! A request-based stacked device passes each request down to the device
//! below: a loop device to the disk holding its backing file, a
//! request-based device-mapper target (multipath) to its slaves. Both layers
//! raise block tracepoints, and the kernel charges both to the same cgroup,
//! so a pod reading 200 IOPS from a loop device shows 200 IOPS on the loop
//! device *and* 200 on the disk below. Per-device figures keep both (each is
//! true of its device); a pod's totals count the upper layer only.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use iogate_core::device::DeviceResolver;
use iogate_core::Device;

#[derive(Debug, Clone, Default)]
pub struct Stacking {
    lower: HashMap<Device, HashSet<Device>>,
    unresolved: Vec<UnresolvedLoop>,
}

/// A loop device whose backing file this process cannot see (a container
/// whose mounts do not include it): the disk below it is unknown, so its
/// requests are counted on both layers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnresolvedLoop {
    pub device: Device,
    pub backing_file: String,
    pub reason: String,
}

impl std::fmt::Display for UnresolvedLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loop device {}: its backing file {} is not visible here ({}), so the disk below is unknown and a pod's \
             requests to it are counted on that disk too; mount the file's directory read-only at the same path",
            self.device, self.backing_file, self.reason
        )
    }
}

impl Stacking {
    /// Reads `/sys/block`-style `dir`: each device's `dev`, its loop
    /// `backing_file`, and its `slaves/`. Devices that vanish meanwhile are
    /// skipped (loop devices come and go).
    pub fn scan(dir: &Path, resolver: &DeviceResolver) -> Stacking {
        let mut lower: HashMap<Device, HashSet<Device>> = HashMap::new();
        let mut unresolved = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Stacking::default();
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(upper) = read_dev(&path) else { continue };
            let below = lower.entry(upper).or_default();
            if let Ok(backing) = std::fs::read_to_string(path.join("loop/backing_file")) {
                let file = backing.trim_end().trim_end_matches(" (deleted)");
                match resolver.resolve_mount(Path::new(file)) {
                    Ok(dev) => {
                        below.insert(dev);
                    }
                    Err(e) => unresolved.push(UnresolvedLoop {
                        device: upper,
                        backing_file: file.to_string(),
                        reason: e.to_string(),
                    }),
                }
            }
            for slave in std::fs::read_dir(path.join("slaves")).into_iter().flatten().flatten() {
                let Some(dev) = read_dev(&slave.path()) else { continue };
                below.insert(resolver.resolve_device(&dev.to_string()).unwrap_or(dev));
            }
            if below.is_empty() {
                lower.remove(&upper);
            }
        }
        unresolved.sort_by_key(|u| u.device);
        Stacking { lower, unresolved }
    }

    /// The loop devices whose lower disk is unknown here.
    pub fn unresolved(&self) -> &[UnresolvedLoop] {
        &self.unresolved
    }

    pub fn load() -> Stacking {
        Stacking::scan(&PathBuf::from("/sys/block"), &DeviceResolver::default())
    }

    /// Whether I/O on `device` passes down from one of `used` (so the
    /// same requests were already counted on the upper device).
    pub fn is_below_any(&self, device: Device, used: &[Device]) -> Option<Device> {
        used.iter().copied().find(|upper| self.lower.get(upper).is_some_and(|l| l.contains(&device)))
    }

    /// The layer of each of one cgroup's devices, given each device's
    /// request count (`(device, ops)`): `Some(upper)` for a device whose
    /// I/O passes down from `upper`, a device the cgroup used, else `None`
    /// (the top layer). The REST API's windows and the Prometheus
    /// exposition both mark layers with it.
    pub fn lower_layers(&self, devices: &[(Device, u64)]) -> Vec<Option<Device>> {
        let used: Vec<Device> = devices.iter().filter(|(_, ops)| *ops > 0).map(|(d, _)| *d).collect();
        devices.iter().map(|(d, _)| self.is_below_any(*d, &used)).collect()
    }

    #[cfg(test)]
    pub fn with(pairs: &[(Device, Device)]) -> Stacking {
        let mut lower: HashMap<Device, HashSet<Device>> = HashMap::new();
        for &(upper, below) in pairs {
            lower.entry(upper).or_default().insert(below);
        }
        Stacking { lower, unresolved: Vec::new() }
    }
}

fn read_dev(dir: &Path) -> Option<Device> {
    std::fs::read_to_string(dir.join("dev")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaves_of_a_mapper_device_are_below_it() {
        let sys = tempfile::tempdir().unwrap();
        let mk = |rel: &str, dev: &str| {
            let d = sys.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        };
        mk("block/dm-0", "253:0");
        mk("block/sda", "8:0");
        mk("block/sdb", "8:16");
        mk("block/dm-0/slaves/sda", "8:0");
        mk("block/dm-0/slaves/sdb", "8:16");
        // A resolver with no /sys/dev/block: devices stay as they are.
        let resolver = DeviceResolver::with_sys_dev_block(sys.path().join("nothing"));
        let s = Stacking::scan(&sys.path().join("block"), &resolver);
        let dm = Device::new(253, 0);
        assert_eq!(s.is_below_any(Device::new(8, 0), &[dm, Device::new(8, 0)]), Some(dm));
        assert_eq!(s.is_below_any(Device::new(8, 16), &[Device::new(8, 16)]), None, "only when the upper was used");
        assert_eq!(s.is_below_any(dm, &[dm]), None);
    }

    #[test]
    fn only_a_device_below_a_used_one_is_a_lower_layer() {
        let (lo, disk, other) = (Device::new(7, 0), Device::new(8, 0), Device::new(8, 16));
        let s = Stacking::with(&[(lo, disk)]);
        assert_eq!(s.lower_layers(&[(lo, 5), (disk, 5), (other, 3)]), vec![None, Some(lo), None]);
        assert_eq!(s.lower_layers(&[(lo, 0), (disk, 5)]), vec![None, None], "the loop device was not used");
    }

    #[test]
    fn a_loop_device_sits_on_the_disk_of_its_backing_file() {
        let sys = tempfile::tempdir().unwrap();
        let lo = sys.path().join("block/loop9");
        std::fs::create_dir_all(lo.join("loop")).unwrap();
        std::fs::write(lo.join("dev"), "7:9\n").unwrap();
        // The backing file is this crate's source tree: whatever disk that
        // is (a temp dir may be on tmpfs, a checkout is on a disk).
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(lo.join("loop/backing_file"), format!("{}\n", src.display())).unwrap();
        let resolver = DeviceResolver::default();
        let disk = resolver
            .resolve_mount(src)
            .unwrap_or_else(|e| panic!("expected the checkout {} to be on a block device: {e}", src.display()));
        let s = Stacking::scan(&sys.path().join("block"), &resolver);
        assert_eq!(s.is_below_any(disk, &[Device::new(7, 9)]), Some(Device::new(7, 9)));
        assert!(s.unresolved().is_empty());
    }

    #[test]
    fn a_loop_device_whose_backing_file_is_out_of_sight_is_named() {
        let sys = tempfile::tempdir().unwrap();
        let lo = sys.path().join("block/loop3");
        std::fs::create_dir_all(lo.join("loop")).unwrap();
        std::fs::write(lo.join("dev"), "7:3\n").unwrap();
        let hidden = sys.path().join("not-mounted-here/disk.img");
        std::fs::write(lo.join("loop/backing_file"), format!("{}\n", hidden.display())).unwrap();
        let s = Stacking::scan(&sys.path().join("block"), &DeviceResolver::default());
        let [u] = s.unresolved() else { panic!("expected one unresolved loop device, found {:?}", s.unresolved()) };
        assert_eq!((u.device, u.backing_file.as_str()), (Device::new(7, 3), hidden.to_str().unwrap()));
        let said = u.to_string();
        assert!(said.contains("loop device 7:3") && said.contains("counted on that disk too"), "{said}");
    }
}
