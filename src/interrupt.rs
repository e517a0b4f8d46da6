//! Cooperative cancellation of long computations (Ctrl-C from Python).
//!
//! A call that may run for seconds gets a [`Cancel`] token and checks it between units of
//! work (batches, layers, packs, optimizer iterations, generated tokens); the bindings set it
//! when the Python thread that waits sees a KeyboardInterrupt. The token belongs to one call:
//! two calls in two Python threads cancel independently.
//!
//! The token also carries the call's [`Progress`] handle: the places that check for a stop
//! between batches are the places that count batches done, so progress needs no parameter
//! of its own through the core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{MsError, Result};
use crate::progress::Progress;

/// A cancellation token: cheap to clone and to check; `Cancel::default()` never fires and
/// reports progress nowhere.
#[derive(Clone, Default, Debug)]
pub struct Cancel {
    flag: Option<Arc<AtomicBool>>,
    progress: Progress,
}

impl Cancel {
    /// A token that [`fire`](Self::fire) can set.
    pub fn new() -> Self {
        Cancel {
            flag: Some(Arc::new(AtomicBool::new(false))),
            progress: Progress::default(),
        }
    }

    /// The same token, counting the call's work through `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The call's progress handle (silent unless the caller gave one).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Ask the computation holding this token to stop.
    pub fn fire(&self) {
        if let Some(flag) = &self.flag {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_fired(&self) -> bool {
        self.flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// `Err(MsError::Interrupted)` once fired: call between units of work and return with `?`.
    #[inline]
    pub fn check(&self) -> Result<()> {
        if self.is_fired() {
            Err(MsError::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fired_token_stops_every_clone() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(d.check().is_ok());
        c.fire();
        assert!(matches!(d.check(), Err(MsError::Interrupted)));
        assert!(Cancel::default().check().is_ok());
    }
}
