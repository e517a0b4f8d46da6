//! Interventions: change an activation in place during the forward pass.

use std::sync::Arc;

use super::{CapturedArray, HookPoint, Positions};
use crate::error::Result;

/// A user function called with the hook name and the full activation (`[batch, pos, ...]`,
/// padded positions included) that may modify it in place.
pub type HookFn = Arc<dyn Fn(&str, &mut CapturedArray) -> Result<()> + Send + Sync>;

/// What to do at a hook point.
#[derive(Clone)]
pub enum Action {
    /// Set the activation to zero.
    Zero,
    /// Replace with given values: the full activation shape, or the shape the same
    /// `positions` would capture (e.g. `[batch, d_model]` for `Last`). Patching from another
    /// prompt's cache is a replace with the cached array.
    Replace(CapturedArray),
    /// Add `scale * vector` (steering); `vector` has the trailing shape (e.g. `[d_model]`).
    Add { vector: Vec<f32>, scale: f32 },
    /// Replace with a mean vector (trailing shape), or, if `None`, with the mean over this
    /// batch's real tokens at this hook.
    Mean(Option<Vec<f32>>),
    /// A user function.
    Custom(HookFn),
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Zero => write!(f, "Zero"),
            Action::Replace(a) => write!(f, "Replace({:?})", a.shape),
            Action::Add { vector, scale } => write!(f, "Add(len={}, scale={scale})", vector.len()),
            Action::Mean(v) => write!(f, "Mean({:?})", v.as_ref().map(Vec::len)),
            Action::Custom(_) => write!(f, "Custom"),
        }
    }
}

/// An action at a hook point, optionally restricted to some positions (all positions if `None`).
#[derive(Debug, Clone)]
pub struct Intervention {
    pub point: HookPoint,
    pub action: Action,
    pub positions: Option<Positions>,
}
