//! containerd's Node Resource Interface (NRI) for Rust plugins.
//!
//! containerd has no Rust NRI library, so this crate speaks the protocol
//! itself, from the socket up:
//!
//! * [`mux`] splits the one NRI socket into the two ttrpc connections NRI
//!   runs over it; `framing`, `serve` and `rpc` carry ttrpc messages on them;
//! * [`api`] holds the generated protobuf messages and ttrpc services;
//! * [`Plugin`] is what a plugin implements, and [`Subscriptions`] where it
//!   registers one handler per event it wants: the subscription sent to the
//!   runtime is computed from those registrations, so an event is subscribed
//!   exactly when something handles it;
//! * [`Stub`] registers a plugin with the runtime ([`Registration`],
//!   [`PreRegistered`]) and turns runtime requests into handler calls;
//!   [`RuntimeHandle`] calls the runtime outside of requests.
//!
//! Modules depend on each other one way: `stub` → `session` → `service` →
//! `plugin`/`events`/`runtime` → `rpc`/`serve` → `framing` → `mux`.

pub mod api;
mod error;
pub mod events;
pub mod framing;
pub mod mux;
mod plugin;
mod registration;
mod rpc;
mod runtime;
mod serve;
mod service;
mod session;
mod stop;
mod stub;
#[cfg(test)]
mod testing;

pub use error::Error;
pub use events::{EventMask, Notification};
pub use plugin::{
    CreateContainer, HandlerError, HandlerResult, Plugin, StateChange, StopContainer, Subscriptions, UpdateContainer,
    ValidateContainerAdjustment,
};
pub use registration::{PreRegistered, Registration, RegistrationError};
pub use runtime::{RuntimeError, RuntimeHandle};
pub use stop::StopHandle;
pub use stub::{Stub, DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, DEFAULT_SOCKET_PATH};

/// The README's example plugin, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
