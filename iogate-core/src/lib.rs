//! The policy every iogate entry point shares.
//!
//! The NRI plugin, the OCI hook and the metrics sidecar must agree exactly on
//! which container gets which block-I/O limits, so all of that lives here and
//! nowhere else:
//!
//! * [`config`]: the admin's defaults, ceilings and exclusions (TOML file and
//!   the environment variables operators of `iops-limit-service` know);
//! * [`device`]: which whole disks the limits apply to (a mount point resolves
//!   to its disk, a partition to its parent disk);
//! * [`annotations`]: what a pod asks for;
//! * [`exclusion`]: which containers are left alone (whole names only,
//!   unless the compatibility switch brings back substring keywords);
//! * [`policy`]: the decision for one container — excluded, exempt, or these
//!   limits on these devices, with every clamp and warning explained;
//! * [`cgroup`]: the block-I/O cgroup files, read and written in one place
//!   (v1 `blkio.throttle.*`, v2 `io.max`, `io.stat`, `io.pressure`), the
//!   systemd driver's names, and what a cgroup's path says about its pod;
//! * [`explanation`]: a decision as the JSON document `explain` prints.
//!
//! Data flows one way: `Config` + resolved `Device`s make a [`policy::Policy`];
//! a [`policy::ContainerInfo`] goes in, a [`policy::Decision`] comes out; the
//! caller turns the decision into a spec adjustment or cgroup writes.

pub mod annotations;
pub mod cgroup;
pub mod config;
pub mod device;
pub mod exclusion;
pub mod explanation;
pub mod limits;
pub mod policy;
pub mod quantity;

pub use cgroup::{CgroupFs, CgroupPath, CgroupVersion};
pub use config::Config;
pub use device::{Device, DeviceLimits};
pub use limits::{Knob, Limits};
pub use policy::{ContainerInfo, Decision, Policy};
