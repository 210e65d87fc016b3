//! Limits that stay in force after the things that rewrite cgroups on a
//! real node: `systemctl daemon-reload` (systemd re-applies its units'
//! cgroup attributes; moby#41233 is the same for device rules) and a
//! containerd restart.

use std::process::Command;

use iogate_core::Limits;

use super::notes::Notes;
use super::policy::{limits, sleeper};
use crate::stack::Stack;

pub fn limits_survive_reload_and_restart(stack: &mut Stack, notes: &mut Notes) {
    let version = stack.containerd.as_ref().map(|c| c.version()).expect("containerd runs");
    let driver = stack.driver;
    let spec = stack.pod_spec("shop", "steady", &[("iogate.io/write-iops", "70")]);
    let data = stack.data_dir("steady").unwrap();
    let run = stack.run(&spec, "app", sleeper(), &data).unwrap();
    let want: Limits = limits(100, 70);
    let cgroup = stack.cgroup_of(run.pid).unwrap();
    assert_eq!(stack.limits_of(run.pid).unwrap(), want, "{version}, {driver}: limits at start ({cgroup})");

    let st = Command::new("systemctl").arg("daemon-reload").status().expect("running systemctl daemon-reload");
    assert!(st.success(), "systemctl daemon-reload failed: {st}");
    let after_reload = stack.limits_of(run.pid).unwrap();
    notes.note(format!("{version}, {driver}: after systemctl daemon-reload the cgroup {cgroup} has {after_reload}"));
    assert_eq!(after_reload, want, "{version}, {driver}: limits after systemctl daemon-reload");

    stack.restart_containerd().unwrap();
    let after_restart = stack.limits_of(run.pid).unwrap();
    notes.note(format!("{version}, {driver}: after a containerd restart the cgroup has {after_restart}"));
    assert_eq!(after_restart, want, "{version}, {driver}: limits after a containerd restart");
}
