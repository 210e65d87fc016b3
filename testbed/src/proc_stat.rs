//! A process's `/proc/PID/stat`: its state and CPU time, for the VM
//! harness's account of a silent guest and for the benchmarks.

use anyhow::{Context, Result};

/// The fields of a `/proc/…/stat` line after the command name, which may
/// itself hold spaces and parentheses: `[0]` is the state (field 3 of
/// proc(5)), `[11]` and `[12]` utime and stime (fields 14 and 15).
pub fn fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// CPU time (user + system) process `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let fields = fields(&text).with_context(|| format!("expected `pid (comm) …` in {path}"))?;
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("expected a number as field {} in {path}", i + 3))
    };
    Ok((field(11)? + field(12)?) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 300 0 0";
        let f = fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!((f[11], f[12]), ("700", "300"));
    }

    #[test]
    fn this_process_has_used_cpu_time() {
        let spent = cpu_seconds(std::process::id()).unwrap();
        assert!(spent >= 0.0, "{spent}");
        assert!(cpu_seconds(u32::MAX).unwrap_err().to_string().contains("/proc/4294967295/stat"));
    }
}
