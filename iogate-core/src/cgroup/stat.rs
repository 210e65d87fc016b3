//! What a cgroup's block controller counts: requests and bytes per device
//! and direction.

use std::fmt;

use crate::device::Device;

/// Read or write. Other operations (flush, discard) move no data and are
/// not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Read, Direction::Write];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Requests and bytes of one cgroup on one device since the cgroup was
/// made, as its block controller counts them (against the request queue,
/// i.e. whole disks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoStat {
    pub device: Device,
    pub read_ios: u64,
    pub read_bytes: u64,
    pub write_ios: u64,
    pub write_bytes: u64,
}

impl IoStat {
    /// Nothing counted yet.
    pub fn new(device: Device) -> IoStat {
        IoStat { device, read_ios: 0, read_bytes: 0, write_ios: 0, write_bytes: 0 }
    }

    pub fn ios(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Read => self.read_ios,
            Direction::Write => self.write_ios,
        }
    }

    pub fn bytes(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Read => self.read_bytes,
            Direction::Write => self.write_bytes,
        }
    }

    pub(crate) fn ios_mut(&mut self, direction: Direction) -> &mut u64 {
        match direction {
            Direction::Read => &mut self.read_ios,
            Direction::Write => &mut self.write_ios,
        }
    }

    pub(crate) fn bytes_mut(&mut self, direction: Direction) -> &mut u64 {
        match direction {
            Direction::Read => &mut self.read_bytes,
            Direction::Write => &mut self.write_bytes,
        }
    }
}
