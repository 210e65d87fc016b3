//! cgroup v2: one unified hierarchy, one file per kind of setting.

pub mod io;
