//! The OCI hook's inputs, as a library so that they can be tested and
//! fuzzed apart from the binary: the command line ([`cli`]), the OCI state
//! and bundle config the runtime hands a hook ([`input`]), and the container
//! its annotations describe ([`annotated`]).

pub mod annotated;
pub mod cli;
pub mod input;
