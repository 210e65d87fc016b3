//! The iogate metrics sidecar: per-pod block-I/O latency, IOPS and throughput.
//!
//! Data flows one way, top to bottom:
//!
//! 1. a [`counters::CounterSource`] — the eBPF program on the block
//!    tracepoints, or the cgroups' own statistics when eBPF cannot load —
//!    yields growing counters per cgroup, device and direction;
//! 2. cgroup ids become containers and pods;
//! 3. two snapshots make rates, latencies and percentiles;
//! 4. HTTP serves them: the IOEye REST API and Prometheus.

pub mod cgroup_stats;
pub mod counters;
pub mod ebpf;
