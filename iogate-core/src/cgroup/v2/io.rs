//! The v2 `io` controller's files.
//!
//! * `io.max`: the limits, one line per device with all four knobs,
//!   `MAJ:MIN rbps=N wbps=N riops=N wiops=N` (`max` for none); a write sets
//!   one device's line, and only the keys it names. Absent unless the io
//!   controller is enabled in the parent's `cgroup.subtree_control`.
//! * `io.stat`: counters since the cgroup was made, one line per device,
//!   `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N ...` (iocost
//!   and iolatency add keys of their own).
//! * `io.pressure`: pressure stall information, how much of the time some
//!   (or all) of the cgroup's tasks waited on I/O:
//!   `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.

use std::path::Path;

use crate::cgroup::files::{read_optional, write_file, CgroupError};
use crate::cgroup::stat::IoStat;
use crate::device::{Device, DeviceLimits};

pub const IO_MAX: &str = "io.max";
pub const IO_STAT: &str = "io.stat";
pub const IO_PRESSURE: &str = "io.pressure";

/// Every device's line of the cgroup's `io.max` (devices without a line
/// are unlimited).
pub fn read_io_max(dir: &Path) -> Result<Vec<DeviceLimits>, CgroupError> {
    let path = dir.join(IO_MAX);
    match read_optional(&path)? {
        Some(text) => parse_io_max(&path, &text),
        None => Err(CgroupError::NoIoMax { path }),
    }
}

/// Sets all four knobs of one device.
pub fn write_io_max(dir: &Path, limits: &DeviceLimits) -> Result<(), CgroupError> {
    write_file(&dir.join(IO_MAX), &limits.to_string())
}

pub fn parse_io_max(path: &Path, text: &str) -> Result<Vec<DeviceLimits>, CgroupError> {
    const EXPECTED: &str = "\"MAJ:MIN rbps=N wbps=N riops=N wiops=N\"";
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| line.parse().map_err(|_| CgroupError::malformed(path, i, line, EXPECTED)))
        .collect()
}

/// The cgroup's `io.stat`; empty when the file is missing (the cgroup
/// vanished, or the io controller is not enabled for it).
pub fn read_stats(dir: &Path) -> Result<Vec<IoStat>, CgroupError> {
    let path = dir.join(IO_STAT);
    match read_optional(&path)? {
        Some(text) => parse_io_stat(&path, &text),
        None => Ok(Vec::new()),
    }
}

/// `io.stat`'s requests and bytes per device. Keys other than rbytes,
/// wbytes, rios and wios (discards, iocost and iolatency extras) are not
/// counted; a device named twice is an error rather than a sum.
pub fn parse_io_stat(path: &Path, text: &str) -> Result<Vec<IoStat>, CgroupError> {
    const EXPECTED: &str = "\"MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...\"";
    let mut out: Vec<IoStat> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let malformed = || CgroupError::malformed(path, i, line, EXPECTED);
        let mut words = line.split_whitespace();
        let Some(dev) = words.next() else { continue };
        let device: Device = dev.parse().map_err(|_| malformed())?;
        if out.iter().any(|s| s.device == device) {
            return Err(CgroupError::Duplicate { path: path.to_path_buf(), line_no: i + 1, device, what: "line" });
        }
        let mut stat = IoStat::new(device);
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(malformed)?;
            let slot = match key {
                "rbytes" => &mut stat.read_bytes,
                "rios" => &mut stat.read_ios,
                "wbytes" => &mut stat.write_bytes,
                "wios" => &mut stat.write_ios,
                _ => continue,
            };
            *slot = value.parse().map_err(|_| malformed())?;
        }
        out.push(stat);
    }
    Ok(out)
}

/// One line of a pressure file: the share of time (percent) stalled over
/// the last 10, 60 and 300 seconds, and the total stall time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// `io.pressure`: `some` (at least one task stalled on I/O) and `full`
/// (all non-idle tasks stalled at once).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IoPressure {
    pub some: Pressure,
    pub full: Pressure,
}

/// The cgroup's `io.pressure`; `None` when the file is missing (a kernel
/// without PSI, or booted with `psi=0`).
pub fn read_io_pressure(dir: &Path) -> Result<Option<IoPressure>, CgroupError> {
    let path = dir.join(IO_PRESSURE);
    read_optional(&path)?.map(|text| parse_io_pressure(&path, &text)).transpose()
}

pub fn parse_io_pressure(path: &Path, text: &str) -> Result<IoPressure, CgroupError> {
    const EXPECTED: &str = "\"some|full avg10=N avg60=N avg300=N total=N\"";
    let (mut some, mut full) = (None, None);
    for (i, line) in text.lines().enumerate() {
        let malformed = || CgroupError::malformed(path, i, line, EXPECTED);
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            None => continue,
            Some("some") => &mut some,
            Some("full") => &mut full,
            Some(_) => return Err(malformed()),
        };
        let mut p = Pressure::default();
        let mut seen = 0;
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(malformed)?;
            match key {
                "avg10" => p.avg10 = value.parse().map_err(|_| malformed())?,
                "avg60" => p.avg60 = value.parse().map_err(|_| malformed())?,
                "avg300" => p.avg300 = value.parse().map_err(|_| malformed())?,
                "total" => p.total_us = value.parse().map_err(|_| malformed())?,
                _ => return Err(malformed()),
            }
            seen += 1;
        }
        if seen != 4 {
            return Err(malformed());
        }
        *slot = Some(p);
    }
    match (some, full) {
        (Some(some), Some(full)) => Ok(IoPressure { some, full }),
        _ => Err(CgroupError::Incomplete { path: path.to_path_buf(), expected: "a some and a full line" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn io_stat_reads_bytes_and_ios_and_ignores_extras() {
        let text = "8:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0 cost.vrate=100.00\n\
                    7:0 rbytes=0 wbytes=0 rios=0 wios=0\n";
        let m = parse_io_stat(Path::new("io.stat"), text).unwrap();
        assert_eq!(
            m[0],
            IoStat { device: Device::new(8, 16), read_ios: 1, read_bytes: 4096, write_ios: 2, write_bytes: 8192 }
        );
        assert_eq!(m.len(), 2);
        for bad in ["8:16 rios", "8:16 rios=x", "x:y rios=1"] {
            let e = parse_io_stat(Path::new("/cg/io.stat"), bad).unwrap_err().to_string();
            assert!(e.starts_with("/cg/io.stat line 1: expected \"MAJ:MIN rbytes=N"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_device_twice_is_an_error_not_a_sum() {
        let e = parse_io_stat(Path::new("g"), "7:0 rios=1\n7:0 rios=2\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 7:0 line appears a second time"), "{e}");
    }

    #[test]
    fn io_max_lines_and_a_missing_file() {
        let t = tempfile::tempdir().unwrap();
        let e = read_io_max(t.path()).unwrap_err().to_string();
        assert!(e.contains("io controller must be enabled"), "{e}");
        std::fs::write(t.path().join(IO_MAX), "8:0 rbps=max wbps=2097152 riops=max wiops=300\n").unwrap();
        let lines = read_io_max(t.path()).unwrap();
        assert_eq!(lines[0].limits, Limits { write_bps: Some(2_097_152), write_iops: Some(300), ..Limits::UNLIMITED });
        let e = parse_io_max(Path::new("/cg/io.max"), "8:0 garbage\n").unwrap_err().to_string();
        assert_eq!(e, "/cg/io.max line 1: expected \"MAJ:MIN rbps=N wbps=N riops=N wiops=N\", found \"8:0 garbage\"");
    }

    #[test]
    fn io_pressure_some_and_full() {
        let text =
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";
        let p = parse_io_pressure(Path::new("io.pressure"), text).unwrap();
        assert_eq!(p.some, Pressure { avg10: 1.5, avg60: 0.25, avg300: 0.0, total_us: 123_456 });
        assert_eq!(p.full.total_us, 42);
        for bad in
            ["some avg10=1.50", "partial avg10=0 avg60=0 avg300=0 total=0", "some avg10=x avg60=0 avg300=0 total=0"]
        {
            let e = parse_io_pressure(Path::new("/cg/io.pressure"), bad).unwrap_err().to_string();
            assert!(e.starts_with("/cg/io.pressure line 1: expected \"some|full avg10=N"), "{bad}: {e}");
        }
        let e = parse_io_pressure(Path::new("/cg/io.pressure"), "some avg10=0 avg60=0 avg300=0 total=0\n").unwrap_err();
        assert_eq!(e.to_string(), "/cg/io.pressure: expected a some and a full line, found fewer");
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_io_pressure(t.path()).unwrap(), None);
    }
}
