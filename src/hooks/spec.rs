//! What to capture: which hook points, at which positions, and how far to run the model.

use super::{HookPoint, HookRegistry, HookSet};
use crate::error::{MsError, Result};

/// Token positions to keep, resolved per prompt against its real (unpadded) length.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// Every position: arrays keep the `pos` axis, padded positions are zero.
    All,
    /// The last real token of each prompt: the `pos` axis is dropped.
    Last,
    /// The same indices for every prompt (negative counts from each prompt's end): `pos` axis of
    /// length `indices.len()`.
    Indices(Vec<i64>),
    /// One index per prompt (negative counts from its end): the `pos` axis is dropped.
    PerPrompt(Vec<i64>),
}

impl Positions {
    /// Per prompt, the absolute positions to keep; `None` for [`Positions::All`].
    pub fn resolve(&self, lengths: &[usize]) -> Result<Option<Vec<Vec<usize>>>> {
        let one = |index: i64, prompt: usize, len: usize| -> Result<usize> {
            let abs = if index < 0 { len as i64 + index } else { index };
            if abs < 0 || abs >= len as i64 {
                return Err(MsError::invalid(format!(
                    "position {index} is out of range for prompt {prompt}, which has {len} tokens \
                     (allowed: {} to {})",
                    -(len as i64),
                    len as i64 - 1
                )));
            }
            Ok(abs as usize)
        };
        match self {
            Positions::All => Ok(None),
            Positions::Last => Ok(Some(lengths.iter().map(|&l| vec![l - 1]).collect())),
            Positions::Indices(ix) => {
                if ix.is_empty() {
                    return Err(MsError::invalid("positions: the list of indices is empty"));
                }
                let mut out = Vec::with_capacity(lengths.len());
                for (p, &len) in lengths.iter().enumerate() {
                    out.push(
                        ix.iter()
                            .map(|&i| one(i, p, len))
                            .collect::<Result<Vec<_>>>()?,
                    );
                }
                Ok(Some(out))
            }
            Positions::PerPrompt(ix) => {
                if ix.len() != lengths.len() {
                    return Err(MsError::shape(format!(
                        "positions: got {} per-prompt indices for {} prompts",
                        ix.len(),
                        lengths.len()
                    )));
                }
                let mut out = Vec::with_capacity(lengths.len());
                for (p, (&len, &i)) in lengths.iter().zip(ix).enumerate() {
                    out.push(vec![one(i, p, len)?]);
                }
                Ok(Some(out))
            }
        }
    }

    /// Whether the `pos` axis stays in captured arrays.
    pub fn keeps_pos_axis(&self) -> bool {
        matches!(self, Positions::All | Positions::Indices(_))
    }
}

/// Which logits the caller wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// No logits: the final norm and LM head are skipped (unless a hook needs the norm).
    None,
    /// `[batch, vocab]` at each prompt's last real token.
    Last,
    /// `[batch, pos, vocab]`.
    All,
}

/// A resolved capture request.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    pub points: Vec<HookPoint>,
    pub set: HookSet,
    pub positions: Positions,
    /// Run blocks `0..stop_at_layer` only (TransformerLens semantics); no logits then.
    pub stop_at_layer: Option<usize>,
    pub logits: LogitsMode,
}

impl CaptureSpec {
    /// Build a spec from hook names or globs (`blocks.*.hook_resid_post`).
    pub fn new(
        registry: &HookRegistry,
        patterns: &[String],
        positions: Positions,
        stop_at_layer: Option<usize>,
        logits: LogitsMode,
    ) -> Result<Self> {
        let mut points = Vec::new();
        for p in patterns {
            points.extend(registry.resolve_pattern(p)?);
        }
        points.sort();
        points.dedup();
        // Keep forward order so the cache iterates like the model runs.
        points.sort_by_key(|p| registry.index(*p));
        let n_layers = registry.n_layers();
        if let Some(stop) = stop_at_layer {
            if stop > n_layers {
                return Err(MsError::invalid(format!(
                    "stop_at_layer={stop} but the model has {n_layers} layers (allowed: 0 to {n_layers})"
                )));
            }
            if let Some(p) = points
                .iter()
                .find(|p| p.layer.is_none_or(|l| l >= stop) && p.name() != "hook_embed")
            {
                return Err(MsError::invalid(format!(
                    "hook '{}' is not computed with stop_at_layer={stop}",
                    p.name()
                )));
            }
            if logits != LogitsMode::None {
                return Err(MsError::invalid(
                    "logits cannot be returned with stop_at_layer: the LM head is not run",
                ));
            }
        }
        let mut set = registry.empty_set();
        for p in &points {
            if let Some(i) = registry.index(*p) {
                set.insert(i);
            }
        }
        Ok(CaptureSpec {
            points,
            set,
            positions,
            stop_at_layer,
            logits,
        })
    }

    /// Capture nothing; return the requested logits.
    pub fn logits_only(registry: &HookRegistry, logits: LogitsMode) -> Self {
        CaptureSpec {
            points: Vec::new(),
            set: registry.empty_set(),
            positions: Positions::Last,
            stop_at_layer: None,
            logits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resolve_against_real_lengths() {
        let lens = [5, 3];
        assert_eq!(
            Positions::Last.resolve(&lens).unwrap(),
            Some(vec![vec![4], vec![2]])
        );
        assert_eq!(
            Positions::Indices(vec![0, -1]).resolve(&lens).unwrap(),
            Some(vec![vec![0, 4], vec![0, 2]])
        );
        assert!(Positions::Indices(vec![4]).resolve(&lens).is_err());
        assert!(Positions::PerPrompt(vec![1]).resolve(&lens).is_err());
        assert_eq!(
            Positions::PerPrompt(vec![1, -3]).resolve(&lens).unwrap(),
            Some(vec![vec![1], vec![0]])
        );
    }
}
