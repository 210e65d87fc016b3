//! The guarantee, measured: how many containers are in which state, how
//! often limits had to be repaired and why, how often the injected hook
//! failed, and how long a container ran before its limits were read back.
//! Served as Prometheus text (OpenMetrics) by [`crate::metrics_server`].

use std::fmt::{self, Write};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use iogate_api::Guarantee;

/// Why limits had to be written into a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairCause {
    /// The injected hook reported a failure (or no report) and the cgroup
    /// lacked the limits when the container started.
    HookFailed,
    /// The cgroup lacked the limits when the container started, without
    /// a hook failure to explain it.
    MissingAtStart,
    /// First seen at Synchronize: created while the plugin was away.
    Outage,
    /// The limits in force changed after they were verified (by hand,
    /// `systemctl daemon-reload`, another agent).
    Drift,
    /// The policy now decides other limits (config file, annotations).
    PolicyChange,
}

impl RepairCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RepairCause::HookFailed => "hook_failed",
            RepairCause::MissingAtStart => "missing_at_start",
            RepairCause::Outage => "outage",
            RepairCause::Drift => "drift",
            RepairCause::PolicyChange => "policy_change",
        }
    }
}

impl fmt::Display for RepairCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Repaired,
    Failed,
}

/// The state as a label value (the type is the API crate's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StateValue(Guarantee);

impl EncodeLabelValue for StateValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.0.as_str())
    }
}

impl EncodeLabelValue for RepairCause {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            Outcome::Repaired => "repaired",
            Outcome::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: StateValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RepairLabels {
    cause: RepairCause,
    outcome: Outcome,
}

/// The plugin's metrics and their registry.
pub struct Telemetry {
    registry: Registry,
    containers: Family<StateLabel, Gauge>,
    repairs: Family<RepairLabels, Counter>,
    hook_failures: Counter,
    config_reload_failures: Counter,
    start_to_verified: Histogram,
    tick: Histogram,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let containers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "iogate_containers",
            "Running containers by where they stand against the policy (read back from their cgroups)",
            containers.clone(),
        );
        let repairs = Family::<RepairLabels, Counter>::default();
        registry.register(
            "iogate_repairs",
            "Limits written into running containers because their cgroup differed from the policy, by cause and outcome",
            repairs.clone(),
        );
        let hook_failures = Counter::default();
        registry.register(
            "iogate_hook_failures",
            "Injected OCI hooks that reported a failure (or left no report)",
            hook_failures.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "iogate_config_reload_failures",
            "Changed config files that were not applied (the previous policy stayed in force)",
            config_reload_failures.clone(),
        );
        // 1 ms to ~65 s: at start it is the read-back itself; after an
        // outage, how long the container ran before the plugin saw it.
        let start_to_verified = Histogram::new(exponential_buckets(0.001, 4.0, 9));
        registry.register(
            "iogate_start_to_verified_seconds",
            "Time from a container's start to the read-back that found its limits as the policy says",
            start_to_verified.clone(),
        );
        // 100 µs to ~1.6 s.
        let tick = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "iogate_reconcile_tick_seconds",
            "Duration of one reconciler pass over every running container",
            tick.clone(),
        );
        for state in Guarantee::ALL {
            containers.get_or_create(&StateLabel { state: StateValue(state) }).set(0);
        }
        Telemetry { registry, containers, repairs, hook_failures, config_reload_failures, start_to_verified, tick }
    }

    /// Sets the gauge from a full count of every state.
    pub fn set_states(&self, counts: &[(Guarantee, usize)]) {
        for state in Guarantee::ALL {
            let n = counts.iter().filter(|(s, _)| *s == state).map(|(_, n)| *n).sum::<usize>();
            self.containers.get_or_create(&StateLabel { state: StateValue(state) }).set(n as i64);
        }
    }

    pub fn repair(&self, cause: RepairCause, outcome: Outcome) {
        self.repairs.get_or_create(&RepairLabels { cause, outcome }).inc();
    }

    pub fn hook_failure(&self) {
        self.hook_failures.inc();
    }

    pub fn config_reload_failure(&self) {
        self.config_reload_failures.inc();
    }

    pub fn verified_after(&self, since_start: Duration) {
        self.start_to_verified.observe(since_start.as_secs_f64());
    }

    pub fn tick(&self, took: Duration) {
        self.tick.observe(took.as_secs_f64());
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

/// The content type of [`Telemetry::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_exported_even_at_zero() {
        let t = Telemetry::new();
        t.set_states(&[(Guarantee::Limited, 3), (Guarantee::UnlimitedUnexpectedly, 1)]);
        t.repair(RepairCause::Drift, Outcome::Repaired);
        t.hook_failure();
        t.verified_after(Duration::from_millis(2));
        let text = t.encode();
        assert!(text.contains("iogate_containers{state=\"limited\"} 3\n"), "{text}");
        assert!(text.contains("iogate_containers{state=\"unlimited_unexpectedly\"} 1\n"), "{text}");
        assert!(text.contains("iogate_containers{state=\"exempt\"} 0\n"), "{text}");
        assert!(text.contains("iogate_repairs_total{cause=\"drift\",outcome=\"repaired\"} 1\n"), "{text}");
        assert!(text.contains("iogate_hook_failures_total 1\n"), "{text}");
        assert!(text.contains("iogate_start_to_verified_seconds_count 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A later full count replaces the earlier one.
        t.set_states(&[(Guarantee::Limited, 1)]);
        assert!(t.encode().contains("iogate_containers{state=\"unlimited_unexpectedly\"} 0\n"));
    }
}
