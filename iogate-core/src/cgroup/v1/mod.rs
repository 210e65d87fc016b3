//! cgroup v1: one hierarchy per controller, one file per knob.

pub mod blkio;
