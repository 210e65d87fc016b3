//! iogate's containerd NRI plugin: the glue between the [`nri`] crate's
//! plugin stub and iogate's policy. [`iogate_plugin`] is the plugin the
//! runtime talks to; [`admission`] turns the policy's decision for each
//! container into its adjustment; [`explain`] is the policy dry-run;
//! [`reconciler`] keeps the limits of running containers what the policy
//! says (read back at start, repaired when they drift, changed when the
//! policy or a pod's annotations change); [`agent`] puts the parts together
//! with the policy file's and the annotations' watches and the metrics
//! endpoint ([`telemetry`]).

pub mod admission;
pub mod agent;
pub mod current_policy;
pub mod expectation;
pub mod explain;
pub mod file_watch;
pub mod hook_reports;
pub mod inventory;
pub mod iogate_plugin;
pub mod metrics_server;
pub mod pod_annotations;
pub mod reconciler;
pub mod telemetry;

/// The runtime's messages, as the plugin's signatures use them.
pub use nri::api;
