//! NRI's protobuf messages and ttrpc services, generated at build time from
//! `proto/nri.proto` (see `build.rs`).
//!
//! Messages are plain structs with public fields (`api::ContainerAdjustment`,
//! `api::LinuxResources`, ...); nested messages are `protobuf::MessageField`s
//! and enums are `protobuf::EnumOrUnknown`s. The ttrpc side consists of
//! `PluginClient`/`RuntimeClient` (callers), the `Plugin`/`Runtime` traits
//! (servers; not to be confused with [`crate::Plugin`]) and
//! `create_plugin`/`create_runtime`, which turn a trait object into the
//! method table a `ttrpc::Server` serves.

/// The NRI release whose `pkg/api/api.proto` our proto follows. Sent to the
/// runtime at registration, which only logs it.
pub const NRI_VERSION: &str = "v0.12.2";

// The generated files name each other as `super::nri`, so both must be
// siblings under this module.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_mut,
    unused_results
)]
mod nri {
    include!(concat!(env!("OUT_DIR"), "/nri.rs"));
}

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unsafe_code,
    unused_imports,
    unused_results
)]
mod nri_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri_ttrpc.rs"));
}

pub use nri::*;
pub use nri_ttrpc::*;
