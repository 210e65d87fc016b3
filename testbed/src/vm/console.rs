//! Reading the guest's console: an excerpt for a failure's message, and the
//! guest kernel's own word that it hung.

/// How long a CPU may go without scheduling before its soft-lockup report
/// counts as a hung guest rather than a slow one: TCG under a busy host
/// delays a CPU by seconds, never by a minute.
const STUCK_FOR_GOOD_SECONDS: u64 = 60;

/// The last lines of a guest console and, when the guest kernel reported
/// a hang (a soft lockup, an RCU stall, a hung task), the start of the first
/// report: its stack traces are what says where the guest was stuck, and
/// the tail alone is the stalls' later repetitions.
pub fn excerpt(text: &str) -> String {
    const TAIL: usize = 60;
    const REPORT: usize = 150;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(TAIL);
    let mut out = String::new();
    let hang = lines[..start].iter().position(|l| {
        ["soft lockup", "rcu_sched detected stalls", "rcu_preempt detected stalls", "blocked for more than"]
            .iter()
            .any(|m| l.contains(m))
    });
    if let Some(first) = hang {
        let end = (first + REPORT).min(start);
        out.push_str("--- the guest kernel's first hang report ---\n");
        out.push_str(&lines[first..end].join("\n"));
        out.push('\n');
        if end < start {
            out.push_str(&format!("[... {} lines ...]\n", start - end));
        }
    }
    out.push_str("--- last lines of the guest console ---\n");
    out.push_str(&lines[start..].join("\n"));
    out
}

/// The first line in `text` where the guest kernel says it is stuck for
/// good: a CPU that has not scheduled for a minute or more (the soft-lockup
/// watchdog repeats its report, with the time so far, while it lasts), or a
/// task blocked for two minutes (the hung-task detector).
pub fn hang_reported(text: &str) -> Option<&str> {
    text.lines().find(|line| {
        if line.contains("blocked for more than") {
            return true;
        }
        let Some(at) = line.find("soft lockup - CPU#") else { return false };
        let Some(stuck) = line[at..].split("stuck for ").nth(1) else { return false };
        let seconds: String = stuck.chars().take_while(char::is_ascii_digit).collect();
        seconds.parse::<u64>().is_ok_and(|s| s >= STUCK_FOR_GOOD_SECONDS)
    })
}

/// The guest kernel's panic line, if it panicked: the node is gone, and
/// under TCG that has been the emulator's doing (a breakpoint the kernel
/// had taken away from rewritten code still trapped, `Oops: int3`, while
/// booting), as the hangs are.
pub fn crash_reported(text: &str) -> Option<&str> {
    text.lines().find(|line| line.contains("Kernel panic - not syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hang_report_is_shown_from_its_start_with_the_tail() {
        let mut console: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
        console[10] = "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [runc:408]".into();
        console[11] = "Call Trace:".into();
        let excerpt = excerpt(&console.join("\n"));
        assert!(excerpt.contains("first hang report ---\nwatchdog: BUG: soft lockup"), "{excerpt}");
        assert!(excerpt.contains("Call Trace:\nline 12\n"), "{excerpt}");
        assert!(excerpt.contains("[... 80 lines ...]"), "{excerpt}");
        assert!(excerpt.ends_with("line 299"), "{excerpt}");
        assert!(!excerpt.contains("line 239\n"), "{excerpt}");
    }

    #[test]
    fn a_quiet_console_is_shown_as_its_tail() {
        let console: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let excerpt = excerpt(&console.join("\n"));
        assert!(!excerpt.contains("hang report"), "{excerpt}");
        assert!(excerpt.starts_with("--- last lines of the guest console ---\nline 40\n"), "{excerpt}");
    }

    #[test]
    fn a_cpu_stuck_for_a_minute_is_a_hang_and_a_slow_one_is_not() {
        let slow = "[  80.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [runc:408]\n";
        assert_eq!(hang_reported(slow), None);
        let stuck = "[ 300.2] watchdog: BUG: soft lockup - CPU#0 stuck for 224s! [systemd:1]";
        assert_eq!(hang_reported(&format!("{slow}{stuck}\n")), Some(stuck));
        let blocked = "[ 250.0] INFO: task containerd:212 blocked for more than 120 seconds.";
        assert_eq!(hang_reported(blocked), Some(blocked));
        assert_eq!(hang_reported("iogate-vm-agent: soft lockup - CPU# is a phrase\n"), None);
    }

    #[test]
    fn a_panic_is_a_crash_and_an_oops_alone_is_not() {
        let oops = "[    1.268712] Oops: int3: 0000 [#2] SMP NOPTI\n";
        assert_eq!(crash_reported(oops), None, "the kernel may survive an oops");
        let panic = "[    1.268978] Kernel panic - not syncing: Fatal exception in interrupt";
        assert_eq!(crash_reported(&format!("{oops}{panic}\n[    3.2] Shutting down cpus with NMI\n")), Some(panic));
    }
}
