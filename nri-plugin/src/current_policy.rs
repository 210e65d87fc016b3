//! The policy in force, shared by the NRI handlers and the reconciler, and
//! replaced whole when containerd hands over a config or the config file
//! changes.

use std::sync::{Arc, RwLock};

use anyhow::Result;

use crate::admission::Admission;

pub struct CurrentPolicy {
    /// `Err` until a usable policy exists: a pre-registered plugin may get
    /// its config only in `Configure`, so a start-up config that does not
    /// work yet (say, the default `/data` is missing) is kept as the reason.
    admission: RwLock<Result<Arc<Admission>, String>>,
}

impl CurrentPolicy {
    pub fn new(admission: Admission) -> Self {
        CurrentPolicy { admission: RwLock::new(Ok(Arc::new(admission))) }
    }

    /// No usable policy yet; `reason` says why.
    pub fn awaiting(reason: String) -> Self {
        CurrentPolicy { admission: RwLock::new(Err(reason)) }
    }

    pub fn get(&self) -> Result<Arc<Admission>> {
        match &*self.admission.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(a) => Ok(a.clone()),
            Err(reason) => anyhow::bail!("iogate has no usable policy: {reason}"),
        }
    }

    pub fn set(&self, admission: Admission) {
        *self.admission.write().unwrap_or_else(|p| p.into_inner()) = Ok(Arc::new(admission));
    }
}
