//! iogate's containerd NRI plugin: the glue between the [`nri`] crate's
//! plugin stub and iogate's policy. [`iogate_plugin`] is the plugin the
//! runtime talks to; [`admission`] turns the policy's decision for each
//! container into its adjustment; [`explain`] is the policy dry-run.

pub mod admission;
pub mod explain;
pub mod iogate_plugin;

/// The runtime's messages, as the plugin's signatures use them.
pub use nri::api;
