//! What the stub's public calls fail with.

use std::error::Error as StdError;
use std::io;

use crate::mux::MuxError;

/// Why a connection to the runtime could not be served to its end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("multiplexing the NRI connection")]
    Multiplex(#[source] MuxError),
    #[error("serving the plugin service")]
    Serve(#[source] io::Error),
    #[error("registering plugin {plugin} with the runtime: {reason}")]
    Register { plugin: String, reason: String },
    #[error("NRI connection failed")]
    Connection(#[source] MuxError),
}

/// An error with its sources, `outer: inner: innermost`, as anyhow's `{:#}`
/// prints it: what the runtime shows a user must be the whole story, and
/// handler errors of any type (anyhow's included) carry their story in
/// `source()`.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_lists_every_source() {
        let err = Error::Connection(MuxError::Truncated);
        assert_eq!(chain(&err), "NRI connection failed: the trunk connection ended in the middle of a frame");
        let handler: Box<dyn StdError + Send + Sync> =
            anyhow::anyhow!("no block device backs /data").context("cannot enforce io.max").into();
        assert_eq!(chain(handler.as_ref()), "cannot enforce io.max: no block device backs /data");
    }
}
