//! The v1 `blkio` controller's throttling files.
//!
//! * Limits: one file per knob (`blkio.throttle.read_iops_device`, ...), one
//!   `MAJ:MIN value` line per device with a limit; writing `MAJ:MIN 0`
//!   removes the device's limit.
//! * Statistics: `blkio.throttle.io_serviced` (requests) and
//!   `blkio.throttle.io_service_bytes` (bytes), lines `MAJ:MIN Read N`,
//!   `MAJ:MIN Write N` (plus Sync/Async/Discard/Total, which overlap Read and
//!   Write and are not counted), and a final `Total N`. The kernel (6.x)
//!   keeps them only for devices on which some cgroup has a throttle limit.

use std::path::Path;

use crate::cgroup::files::{read_file, read_optional, write_file, CgroupError};
use crate::cgroup::stat::{Direction, IoStat};
use crate::device::Device;
use crate::limits::{Knob, Limits};

/// Requests per device and direction.
pub const IO_SERVICED: &str = "blkio.throttle.io_serviced";
/// Bytes per device and direction.
pub const IO_SERVICE_BYTES: &str = "blkio.throttle.io_service_bytes";

/// The file that holds `knob`.
pub fn throttle_file(knob: Knob) -> &'static str {
    match knob {
        Knob::ReadIops => "blkio.throttle.read_iops_device",
        Knob::WriteIops => "blkio.throttle.write_iops_device",
        Knob::ReadBps => "blkio.throttle.read_bps_device",
        Knob::WriteBps => "blkio.throttle.write_bps_device",
    }
}

/// The limits on `device` in the cgroup at `dir` (knobs without a line are
/// unlimited).
pub fn read_limits(dir: &Path, device: Device) -> Result<Limits, CgroupError> {
    let mut limits = Limits::UNLIMITED;
    for knob in Knob::ALL {
        let path = dir.join(throttle_file(knob));
        let lines = parse_throttle(&path, &read_file(&path)?)?;
        limits.set(knob, lines.into_iter().find(|(d, _)| *d == device).map(|(_, v)| v));
    }
    Ok(limits)
}

/// Sets one knob of one device (`None` removes its limit).
pub fn write_limit(dir: &Path, device: Device, knob: Knob, value: Option<u64>) -> Result<(), CgroupError> {
    // 0 is v1's way of removing a device's limit.
    write_file(&dir.join(throttle_file(knob)), &format!("{device} {}", value.unwrap_or(0)))
}

/// The lines of a throttle file.
pub fn parse_throttle(path: &Path, text: &str) -> Result<Vec<(Device, u64)>, CgroupError> {
    const EXPECTED: &str = "\"MAJ:MIN value\"";
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = || CgroupError::malformed(path, i, line, EXPECTED);
            let (d, v) = line.split_once(' ').ok_or_else(bad)?;
            Ok((d.parse().map_err(|_| bad())?, v.trim().parse().map_err(|_| bad())?))
        })
        .collect()
}

/// The cgroup's requests and bytes per device; empty when the files are
/// missing (the cgroup vanished, or the kernel has no throttling).
pub fn read_stats(dir: &Path) -> Result<Vec<IoStat>, CgroupError> {
    let ops_path = dir.join(IO_SERVICED);
    let bytes_path = dir.join(IO_SERVICE_BYTES);
    let (Some(ops), Some(bytes)) = (read_optional(&ops_path)?, read_optional(&bytes_path)?) else {
        return Ok(Vec::new());
    };
    let mut stats: Vec<IoStat> = Vec::new();
    for (device, direction, n) in parse_service_counts(&ops_path, &ops)? {
        *stat_of(&mut stats, device).ios_mut(direction) = n;
    }
    for (device, direction, n) in parse_service_counts(&bytes_path, &bytes)? {
        *stat_of(&mut stats, device).bytes_mut(direction) = n;
    }
    Ok(stats)
}

/// The entry of `device`, added if new; devices stay in the file's order.
fn stat_of(stats: &mut Vec<IoStat>, device: Device) -> &mut IoStat {
    let at = match stats.iter().position(|s| s.device == device) {
        Some(i) => i,
        None => {
            stats.push(IoStat::new(device));
            stats.len() - 1
        }
    };
    &mut stats[at]
}

/// The Read and Write lines of `blkio.throttle.io_serviced` or
/// `io_service_bytes`. A device named twice for a direction is an error,
/// not a sum, so nothing is counted twice.
pub fn parse_service_counts(path: &Path, text: &str) -> Result<Vec<(Device, Direction, u64)>, CgroupError> {
    const EXPECTED: &str = "\"MAJ:MIN OPERATION COUNT\" or \"Total COUNT\"";
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let malformed = || CgroupError::malformed(path, i, line, EXPECTED);
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
                    return Err(CgroupError::Duplicate {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: &str = "7:0 Read 120\n7:0 Write 30\n7:0 Sync 150\n7:0 Async 0\n7:0 Discard 0\n7:0 Total 150\n\
                       8:0 Read 5\n8:0 Write 0\n8:0 Sync 5\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 5\nTotal 155\n";
    const BYTES: &str = "7:0 Read 491520\n7:0 Write 122880\n7:0 Sync 614400\n7:0 Async 0\n7:0 Discard 0\n\
                         7:0 Total 614400\nTotal 614400\n";

    #[test]
    fn service_counts_are_the_read_and_write_lines_only() {
        let parsed = parse_service_counts(Path::new("f"), OPS).unwrap();
        assert_eq!(
            parsed,
            vec![
                (Device::new(7, 0), Direction::Read, 120),
                (Device::new(7, 0), Direction::Write, 30),
                (Device::new(8, 0), Direction::Read, 5),
                (Device::new(8, 0), Direction::Write, 0),
            ]
        );
        assert!(parse_service_counts(Path::new("f"), "Total 0\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        for bad in ["7:0 Read", "7:0 Read x", "sda Read 1", "Total", "Total many", "7:0 Read 1 2"] {
            let text = format!("7:0 Write 1\n{bad}\n");
            let e = parse_service_counts(Path::new("/cg/blkio.throttle.io_serviced"), &text).unwrap_err().to_string();
            assert!(e.starts_with("/cg/blkio.throttle.io_serviced line 2: expected"), "{bad}: {e}");
            assert!(e.contains(&format!("found {bad:?}")), "{bad}: {e}");
        }
        let e = parse_throttle(Path::new("/cg/blkio.throttle.read_iops_device"), "8:0 500\n8:0 lots\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/cg/blkio.throttle.read_iops_device line 2: expected \"MAJ:MIN value\", found \"8:0 lots\""
        );
    }

    #[test]
    fn a_device_twice_is_an_error_not_a_sum() {
        let e = parse_service_counts(Path::new("f"), "7:0 Read 1\n7:0 Read 2\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 7:0 read appears a second time"), "{e}");
    }

    #[test]
    fn stats_join_requests_and_bytes_per_device() {
        let t = tempfile::tempdir().unwrap();
        assert!(read_stats(t.path()).unwrap().is_empty(), "no files: nothing to report");
        std::fs::write(t.path().join(IO_SERVICED), OPS).unwrap();
        std::fs::write(t.path().join(IO_SERVICE_BYTES), BYTES).unwrap();
        let stats = read_stats(t.path()).unwrap();
        assert_eq!(
            stats,
            [
                IoStat {
                    device: Device::new(7, 0),
                    read_ios: 120,
                    read_bytes: 491520,
                    write_ios: 30,
                    write_bytes: 122880
                },
                // No byte counts for 8:0: zero.
                IoStat { read_ios: 5, ..IoStat::new(Device::new(8, 0)) },
            ]
        );
    }

    #[test]
    fn limits_are_read_per_device_and_removed_with_zero() {
        let t = tempfile::tempdir().unwrap();
        for knob in Knob::ALL {
            std::fs::write(t.path().join(throttle_file(knob)), "").unwrap();
        }
        std::fs::write(t.path().join(throttle_file(Knob::ReadIops)), "8:0 500\n259:0 900\n").unwrap();
        let l = read_limits(t.path(), Device::new(8, 0)).unwrap();
        assert_eq!(l, Limits { read_iops: Some(500), ..Limits::UNLIMITED });
        assert_eq!(read_limits(t.path(), Device::new(7, 0)).unwrap(), Limits::UNLIMITED);
        write_limit(t.path(), Device::new(8, 0), Knob::WriteBps, None).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join(throttle_file(Knob::WriteBps))).unwrap(), "8:0 0");
    }
}
