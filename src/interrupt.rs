//! Cooperative cancellation of long computations (Ctrl-C from Python).
//!
//! A call that may run for seconds gets a [`Cancel`] token and checks it between units of
//! work (batches, layers, packs, optimizer iterations, generated tokens); the bindings set it
//! when the Python thread that waits sees a KeyboardInterrupt. The token belongs to one call:
//! two calls in two Python threads cancel independently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{MsError, Result};

/// A cancellation token: cheap to clone and to check; `Cancel::default()` never fires.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Option<Arc<AtomicBool>>);

impl Cancel {
    /// A token that [`fire`](Self::fire) can set.
    pub fn new() -> Self {
        Cancel(Some(Arc::new(AtomicBool::new(false))))
    }

    /// Ask the computation holding this token to stop.
    pub fn fire(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
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
