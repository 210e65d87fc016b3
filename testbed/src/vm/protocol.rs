//! What the host test and the guest agent say to each other: one JSON
//! object per line on the guest's second serial port (the first is the
//! console).

use serde::{Deserialize, Serialize};

use crate::scenarios::Scenario;

/// The agent's first line, once the node is ready for checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// `uname -r` of the guest.
    pub kernel: String,
    /// Seconds since the guest kernel started, when the agent was ready.
    pub uptime_seconds: f64,
    /// The cgroup2 root's `cgroup.controllers`.
    pub controllers: String,
    /// `systemctl --version`, first line.
    pub systemd: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAgent {
    Run {
        id: u64,
        scenario: Scenario,
    },
    /// A shell command, for diagnosis (`journalctl`, `dmesg` after a failed
    /// check); answered with [`FromAgent::Output`].
    Exec {
        id: u64,
        command: String,
    },
    PowerOff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromAgent {
    Hello(Hello),
    /// A line or step of the check in progress, as it is taken.
    Progress {
        id: u64,
        line: String,
    },
    Done {
        id: u64,
        outcome: Outcome,
    },
    Output {
        id: u64,
        status: i32,
        output: String,
    },
    /// The agent cannot go on (the node could not be prepared).
    Fatal {
        message: String,
    },
}

/// How one check went (what it measured came before, as progress).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// `None`: passed. Otherwise the failure, as the panic said it.
    pub failure: Option<String>,
    pub seconds: f64,
}
