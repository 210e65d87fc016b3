//! The four throttle knobs the kernel offers per device, and a set of them.

use std::fmt;

/// One throttle knob. The names match cgroup v2 `io.max` keys, which is also
/// the text format iogate uses wherever limits are written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Knob {
    ReadIops,
    WriteIops,
    ReadBps,
    WriteBps,
}

impl Knob {
    pub const ALL: [Knob; 4] = [Knob::ReadIops, Knob::WriteIops, Knob::ReadBps, Knob::WriteBps];

    /// The key in cgroup v2 `io.max` (`riops=500`).
    pub fn io_max_key(self) -> &'static str {
        match self {
            Knob::ReadIops => "riops",
            Knob::WriteIops => "wiops",
            Knob::ReadBps => "rbps",
            Knob::WriteBps => "wbps",
        }
    }

    /// The name used in annotations and in the config file (`read-iops`).
    pub fn name(self) -> &'static str {
        match self {
            Knob::ReadIops => "read-iops",
            Knob::WriteIops => "write-iops",
            Knob::ReadBps => "read-bps",
            Knob::WriteBps => "write-bps",
        }
    }

    pub fn from_name(name: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn from_io_max_key(key: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.io_max_key() == key)
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Limits for one device; `None` means unlimited for that knob. Serialized
/// as `{"read_bps": null, "read_iops": 500, ...}` (the sidecar's API; fields
/// in alphabetical order, as all of its documents: see `iogate-api`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub read_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_bps: Option<u64>,
    pub write_iops: Option<u64>,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits { read_iops: None, write_iops: None, read_bps: None, write_bps: None };

    pub fn get(&self, knob: Knob) -> Option<u64> {
        match knob {
            Knob::ReadIops => self.read_iops,
            Knob::WriteIops => self.write_iops,
            Knob::ReadBps => self.read_bps,
            Knob::WriteBps => self.write_bps,
        }
    }

    pub fn set(&mut self, knob: Knob, value: Option<u64>) {
        match knob {
            Knob::ReadIops => self.read_iops = value,
            Knob::WriteIops => self.write_iops = value,
            Knob::ReadBps => self.read_bps = value,
            Knob::WriteBps => self.write_bps = value,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        Knob::ALL.iter().all(|k| self.get(*k).is_none())
    }

    /// Knobs that carry a limit, in `io.max` order.
    pub fn iter(&self) -> impl Iterator<Item = (Knob, u64)> + '_ {
        Knob::ALL.into_iter().filter_map(|k| self.get(k).map(|v| (k, v)))
    }
}

/// The knobs one table of the config names, each `Some(value)` (`None`
/// inside: `"max"`); a knob it does not name is `None` and leaves what lies
/// under it. A ceiling is the defaults with such tables laid over them, so a
/// table lifts only the knobs it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialLimits {
    knobs: [Option<Option<u64>>; 4],
}

impl PartialLimits {
    /// What the table says for `knob`: `None` if it does not name it.
    pub fn get(&self, knob: Knob) -> Option<Option<u64>> {
        self.knobs[knob as usize]
    }

    pub fn set(&mut self, knob: Knob, value: Option<u64>) {
        self.knobs[knob as usize] = Some(value);
    }

    /// `base` with the named knobs replaced.
    pub fn over(&self, mut base: Limits) -> Limits {
        for knob in Knob::ALL {
            if let Some(v) = self.get(knob) {
                base.set(knob, v);
            }
        }
        base
    }
}

/// `riops=500 wiops=500 rbps=max wbps=max`: the `io.max` body, all four keys.
impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for knob in Knob::ALL {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            match self.get(knob) {
                Some(v) => write!(f, "{}={}", knob.io_max_key(), v)?,
                None => write!(f, "{}=max", knob.io_max_key())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_io_max_body() {
        let l = Limits { read_iops: Some(500), write_bps: Some(10 << 20), ..Limits::UNLIMITED };
        assert_eq!(l.to_string(), "riops=500 wiops=max rbps=max wbps=10485760");
    }

    #[test]
    fn names_round_trip() {
        for k in Knob::ALL {
            assert_eq!(Knob::from_name(k.name()), Some(k));
            assert_eq!(Knob::from_io_max_key(k.io_max_key()), Some(k));
        }
        assert_eq!(Knob::from_name("read-ios"), None);
    }

    #[test]
    fn a_partial_table_replaces_only_what_it_names() {
        let base = Limits { read_iops: Some(500), write_iops: Some(500), ..Limits::UNLIMITED };
        let mut table = PartialLimits::default();
        assert_eq!(table.over(base), base);
        table.set(Knob::ReadIops, Some(5000));
        table.set(Knob::WriteBps, None);
        assert_eq!(table.get(Knob::ReadIops), Some(Some(5000)));
        assert_eq!(table.get(Knob::WriteBps), Some(None), "named as max");
        assert_eq!(table.get(Knob::WriteIops), None, "not named");
        assert_eq!(table.over(base), Limits { read_iops: Some(5000), write_iops: Some(500), ..Limits::UNLIMITED });
    }
}
