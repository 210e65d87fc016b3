//! A stand-in for the one part of a cluster that matters to iogate's
//! DaemonSet: the kubelet turning its pod spec into CRI calls. It reads
//! `deploy/daemonset.yaml` with `k8s-openapi` and builds the sandbox and
//! container configs [`crate::cri_client`] sends to a real containerd.
//!
//! Nothing of the manifest is silently ignored: [`fields`] lists every
//! field this translates or that only the cluster acts on, and
//! [`DaemonSetPod::load`] refuses a manifest using any other.

pub mod fields;
mod translate;

pub use translate::{DaemonSetPod, NodeFiles};
