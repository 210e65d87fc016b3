//! The IOEye `bottleneck` field: where a pod's I/O time goes.
//!
//! The rule, first match wins, over the last window:
//!
//! 1. `none` — the pod did no block I/O.
//! 2. `queue` — on some device and direction the pod runs at 90 % or more of
//!    a limit in force (IOPS or bytes/s): its requests wait in the kernel's
//!    throttle queue before they reach the device. (Throttled bios wait
//!    before they become requests, so this is seen from the limit, not from
//!    the request's queue time.)
//! 3. `unknown` — latency is unavailable (eBPF not loaded) and rule 2 did not
//!    apply.
//! 4. `none` — mean latency (queue + device) is under 1 ms.
//! 5. `queue` — mean queue time (insert → issue) exceeds mean device time
//!    (issue → complete).
//! 6. `network` — the busiest device is network-backed (nbd, rbd, drbd,
//!    aoe).
//! 7. `disk` — otherwise.

use std::collections::HashSet;

use iogate_core::{Device, Limits};

use crate::counters::IoCounters;
use crate::window::{DeviceUsage, GroupUsage};

const AT_LIMIT: f64 = 0.9;
const SLOW_NS: f64 = 1_000_000.0;
const NETWORK_DRIVERS: [&str; 4] = ["nbd", "rbd", "drbd", "aoe"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bottleneck {
    Queue,
    Disk,
    Network,
    Unknown,
    None,
}

impl Bottleneck {
    pub fn name(self) -> &'static str {
        match self {
            Bottleneck::Queue => "queue",
            Bottleneck::Disk => "disk",
            Bottleneck::Network => "network",
            Bottleneck::Unknown => "unknown",
            Bottleneck::None => "none",
        }
    }
}

/// Block-device majors whose driver sends I/O over the network, read from
/// `/proc/devices` at start-up.
#[derive(Debug, Clone, Default)]
pub struct NetworkMajors(HashSet<u32>);

impl NetworkMajors {
    /// Parses the `Block devices:` section of `/proc/devices`.
    pub fn from_proc_devices(text: &str) -> NetworkMajors {
        let block = text.split("Block devices:").nth(1).unwrap_or("");
        let majors = block
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let major = words.next()?.parse::<u32>().ok()?;
                let driver = words.next()?;
                NETWORK_DRIVERS.contains(&driver).then_some(major)
            })
            .collect();
        NetworkMajors(majors)
    }

    pub fn load() -> NetworkMajors {
        std::fs::read_to_string("/proc/devices").map(|t| NetworkMajors::from_proc_devices(&t)).unwrap_or_default()
    }

    pub fn contains(&self, device: Device) -> bool {
        self.0.contains(&device.major)
    }
}

/// Fraction of its tightest limit a device's usage reaches (0 when
/// unlimited or unknown).
pub fn limit_fraction(usage: &DeviceUsage, seconds: f64) -> f64 {
    let Some(limits) = usage.limits else {
        return 0.0;
    };
    if seconds <= 0.0 {
        return 0.0;
    }
    let Limits { read_iops, write_iops, read_bps, write_bps } = limits;
    let ratio = |used: u64, limit: Option<u64>| match limit {
        Some(l) if l > 0 => used as f64 / seconds / l as f64,
        _ => 0.0,
    };
    [
        ratio(usage.read.ops, read_iops),
        ratio(usage.write.ops, write_iops),
        ratio(usage.read.bytes, read_bps),
        ratio(usage.write.bytes, write_bps),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

pub fn diagnose(group: &GroupUsage, seconds: f64, latency_available: bool, network: &NetworkMajors) -> Bottleneck {
    let mut total = IoCounters::default();
    total.add(&group.read);
    total.add(&group.write);
    if total.ops == 0 {
        return Bottleneck::None;
    }
    let devices = || group.containers.iter().flat_map(|c| &c.devices);
    if devices().any(|d| limit_fraction(d, seconds) >= AT_LIMIT) {
        return Bottleneck::Queue;
    }
    if !latency_available {
        return Bottleneck::Unknown;
    }
    let mean_total = (total.queue_ns + total.disk_ns) as f64 / total.ops as f64;
    if mean_total < SLOW_NS {
        return Bottleneck::None;
    }
    let mean_queue = if total.queued_ops > 0 { total.queue_ns as f64 / total.queued_ops as f64 } else { 0.0 };
    let mean_disk = total.disk_ns as f64 / total.ops as f64;
    if mean_queue > mean_disk {
        return Bottleneck::Queue;
    }
    let busiest = devices().max_by_key(|d| d.read.ops + d.write.ops).map(|d| d.device);
    match busiest {
        Some(device) if network.contains(device) => Bottleneck::Network,
        _ => Bottleneck::Disk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_cgroups::CgroupOwner;
    use crate::window::{ContainerUsage, GroupKey};

    fn group(read: IoCounters, limits: Option<Limits>, device: Device) -> GroupUsage {
        let usage = DeviceUsage { device, read, write: IoCounters::default(), limits, lower_layer_of: None };
        GroupUsage {
            key: GroupKey::Pod { namespace: "ns".into(), name: "p".into() },
            pod_uid: None,
            containers: vec![ContainerUsage {
                owner: CgroupOwner::outside_pods("/x".into()),
                devices: vec![usage],
                pressure: None,
            }],
            read,
            write: IoCounters::default(),
            pressure: None,
        }
    }

    fn reads(ops: u64, queued_ops: u64, queue_ns: u64, disk_ns: u64) -> IoCounters {
        IoCounters { ops, bytes: ops * 4096, queued_ops, queue_ns, disk_ns, ..Default::default() }
    }

    const DISK: Device = Device { major: 8, minor: 0 };

    #[test]
    fn each_rule_in_order() {
        let none = NetworkMajors::default();
        assert_eq!(diagnose(&group(IoCounters::default(), None, DISK), 1.0, true, &none), Bottleneck::None);
        // 95 IOPS against a 100 IOPS limit: throttled, whatever the latency.
        let at_limit = Some(Limits { read_iops: Some(100), ..Limits::UNLIMITED });
        assert_eq!(diagnose(&group(reads(95, 0, 0, 95_000), at_limit, DISK), 1.0, true, &none), Bottleneck::Queue);
        assert_eq!(diagnose(&group(reads(95, 0, 0, 95_000), at_limit, DISK), 1.0, false, &none), Bottleneck::Queue);
        assert_eq!(diagnose(&group(reads(10, 0, 0, 0), None, DISK), 1.0, false, &none), Bottleneck::Unknown);
        // 100 µs mean: fine.
        assert_eq!(diagnose(&group(reads(10, 10, 0, 1_000_000), None, DISK), 1.0, true, &none), Bottleneck::None);
        // 5 ms queued vs 1 ms on the device.
        assert_eq!(
            diagnose(&group(reads(10, 10, 50_000_000, 10_000_000), None, DISK), 1.0, true, &none),
            Bottleneck::Queue
        );
        assert_eq!(diagnose(&group(reads(10, 10, 0, 50_000_000), None, DISK), 1.0, true, &none), Bottleneck::Disk);
        let nbd =
            NetworkMajors::from_proc_devices("Character devices:\n  1 mem\n\nBlock devices:\n  7 loop\n 43 nbd\n");
        let nbd_dev = Device::new(43, 0);
        assert_eq!(diagnose(&group(reads(10, 10, 0, 50_000_000), None, nbd_dev), 1.0, true, &nbd), Bottleneck::Network);
        assert!(!nbd.contains(Device::new(7, 0)));
        assert!(!nbd.contains(Device::new(1, 0)), "character devices are not block devices");
    }
}
