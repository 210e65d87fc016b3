//! What the host saw while the guest was silent: whether qemu kept running
//! (a guest busy in a loop of its own) or sat blocked (a host that froze
//! it), and how loaded the host was. A hung check's error carries it, so a
//! hang can be told apart from the emulator starved by its host.

use std::path::PathBuf;
use std::time::Instant;

use crate::proc_stat;

/// qemu's CPU time at one moment.
#[derive(Debug, Clone, Copy)]
pub struct QemuSample {
    at: Instant,
    cpu_seconds: f64,
}

impl QemuSample {
    pub fn take(pid: u32) -> Option<QemuSample> {
        Some(QemuSample { at: Instant::now(), cpu_seconds: proc_stat::cpu_seconds(pid).ok()? })
    }
}

/// One paragraph: qemu's CPU use since `since`, its threads' states, and
/// the host's load and pressure now.
pub fn describe(pid: u32, since: Option<QemuSample>) -> String {
    let mut out = String::from("--- the host meanwhile ---\n");
    match (since, QemuSample::take(pid)) {
        (Some(then), Some(now)) => {
            let wall = now.at.duration_since(then.at).as_secs_f64();
            let cpu = now.cpu_seconds - then.cpu_seconds;
            out.push_str(&format!(
                "qemu (pid {pid}) used {cpu:.1} s of CPU in {wall:.1} s ({:.0}% of one core)\n",
                cpu / wall.max(0.001) * 100.0
            ));
        }
        _ => out.push_str(&format!("qemu (pid {pid}): no CPU figures (is it still running?)\n")),
    }
    out.push_str(&thread_states(pid));
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        out.push_str(&format!("host load average: {}\n", load.trim()));
    }
    for resource in ["cpu", "io", "memory"] {
        if let Ok(p) = std::fs::read_to_string(format!("/proc/pressure/{resource}")) {
            out.push_str(&format!("host {resource} pressure: {}\n", p.trim().replace('\n', "; ")));
        }
    }
    out
}

/// `qemu threads: 3 R, 6 S, 1 D (in folio_wait_bit)`: D is a thread the
/// host has blocked in the kernel.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return String::new() };
    let mut counts: std::collections::BTreeMap<char, usize> = Default::default();
    let mut blocked_in = Vec::new();
    for task in tasks.flatten() {
        let dir: PathBuf = task.path();
        let Some(state) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| proc_stat::fields(&s).and_then(|f| f.first().and_then(|s| s.chars().next())))
        else {
            continue;
        };
        *counts.entry(state).or_default() += 1;
        if state == 'D' {
            blocked_in.push(std::fs::read_to_string(dir.join("wchan")).unwrap_or_default());
        }
    }
    let states: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let blocked = if blocked_in.is_empty() { String::new() } else { format!(" (D in {})", blocked_in.join(", ")) };
    format!("qemu threads: {}{blocked}\n", states.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_figures_and_thread_states() {
        let me = std::process::id();
        let then = QemuSample::take(me).expect("this process's /proc/self/stat");
        let text = describe(me, Some(then));
        assert!(text.contains(&format!("qemu (pid {me}) used ")), "{text}");
        assert!(text.contains("qemu threads: "), "{text}");
    }
}
