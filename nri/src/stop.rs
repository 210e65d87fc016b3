//! Stopping a running stub from another thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::mux::MuxCloser;

/// Stops a running [`Stub`](crate::Stub): interrupts the reconnect pause and
/// closes the current connection.
#[derive(Clone, Default)]
pub struct StopHandle(Arc<StopState>);

#[derive(Default)]
struct StopState {
    inner: Mutex<StopInner>,
    wake: Condvar,
}

#[derive(Default)]
struct StopInner {
    stopped: bool,
    session: Option<MuxCloser>,
}

impl StopHandle {
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        if let Some(session) = inner.session.take() {
            session.close();
        }
        self.0.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Records the live connection so `stop` can close it; `false` (and the
    /// connection closed) when already stopped.
    pub(crate) fn enter_session(&self, closer: MuxCloser) -> bool {
        let mut inner = self.lock();
        if inner.stopped {
            closer.close();
            return false;
        }
        inner.session = Some(closer);
        true
    }

    pub(crate) fn leave_session(&self) {
        self.lock().session = None;
    }

    /// Waits `pause` unless stopped first; returns whether stopped.
    pub(crate) fn sleep(&self, pause: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .0
            .wake
            .wait_timeout_while(inner, pause, |inner| !inner.stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.stopped
    }

    fn lock(&self) -> MutexGuard<'_, StopInner> {
        self.0.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
