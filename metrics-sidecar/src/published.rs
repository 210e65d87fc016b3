//! What one sampler tick publishes: the leaf both the state the handlers
//! read and the bodies rendered from it depend on.

use std::sync::Arc;
use std::time::Instant;

use crate::frame::Frame;
use crate::report::Assessed;

/// The latest results, replaced whole at every tick.
#[derive(Debug, Default)]
pub struct Published {
    /// Cumulative counters (for `/metrics`).
    pub frame: Option<Arc<Frame>>,
    /// The last window's judged metrics (for the REST API); empty until two
    /// frames exist.
    pub assessed: Vec<Assessed>,
    pub window_seconds: f64,
    pub at: Option<Instant>,
    /// Loop devices whose lower disk is unknown here, said in `/readyz`.
    pub stacking_unresolved: Vec<String>,
}
