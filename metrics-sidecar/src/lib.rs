//! The iogate metrics sidecar: per-pod block-I/O latency, IOPS and throughput.
//!
//! Data flows one way, top to bottom:
//!
//! 1. a [`counters::CounterSource`] — [`ebpf`], the program on the block
//!    tracepoints, or [`cgroup_stats`], the cgroups' own statistics when
//!    eBPF cannot load — yields growing counters per cgroup, device and
//!    direction;
//! 2. [`frame`]: cgroup ids become containers and pods ([`host_cgroups`], from
//!    the hierarchy walk in [`cgroup_tree`], the path rules in iogate-core's
//!    `cgroup::paths` and the API names in [`pods`]), with the limits in
//!    force (read by iogate-core's `CgroupFs`, remembered for a while by
//!    [`limits_cache`]) and, on cgroup v2, the stall time of each container
//!    and pod ([`pressure`]), behind the
//!    [`attribution::Attribution`] trait;
//! 3. [`window`]: two frames make usage per pod → container → device
//!    (each request counted once across [`stacking`]);
//!    [`report`] turns it into IOEye's fields plus percentiles, judged by
//!    [`diagnosis`] (bottleneck) and [`history`] (trend, anomaly);
//! 4. [`bodies`] renders `/metrics` ([`prometheus`] text) and the full REST
//!    document once per tick, gzipped once more for clients that take it
//!    ([`encoding`]); [`http`] serves them and the rest of the REST
//!    API (its query parameters as [`query`] reads them), within the time and
//!    connection bounds of [`serve`].
//!
//! [`sampler`] runs steps 1–3 once per interval and publishes the results
//! ([`published`]); [`state`] holds what the handlers read.
//!
//! The documents are `iogate-api`'s; `kubectl-iogate` reads them from every
//! node's sidecar.

pub mod attribution;
pub mod auth;
pub mod bodies;
pub mod cgroup_stats;
pub mod cgroup_tree;
pub mod counters;
pub mod diagnosis;
pub mod ebpf;
pub mod encoding;
pub mod frame;
pub mod history;
pub mod host_cgroups;
pub mod http;
pub mod limits_cache;
pub mod plugin_guarantee;
pub mod pods;
pub mod pressure;
pub mod prometheus;
pub mod published;
pub mod query;
pub mod report;
pub mod sampler;
pub mod serve;
pub mod stacking;
pub mod state;
pub mod token_review;
pub mod web_access;
pub mod web_config;
pub mod window;
