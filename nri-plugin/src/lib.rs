//! iogate's containerd NRI plugin.
//!
//! containerd has no Rust NRI library, so this crate speaks the protocol
//! itself: [`mux`] splits the one NRI socket into the two ttrpc connections
//! NRI runs over it, [`api`] holds the generated protobuf messages and ttrpc
//! services, and [`stub`] registers a [`stub::Plugin`] with the runtime and
//! turns runtime requests into calls on it. [`iogate_plugin`] is iogate's
//! implementation of that surface; [`limiter`] turns policy decisions into
//! container adjustments.

pub mod api;
pub mod events;
mod framing;
mod identity;
pub mod iogate_plugin;
pub mod limiter;
pub mod mux;
mod rpc;
mod runtime;
mod serve;
mod service;
mod session;
pub mod stub;
#[cfg(test)]
mod testing;

pub use events::EventMask;
pub use stub::{Identity, Plugin, PreRegistered, RuntimeHandle, StopHandle, Stub};
