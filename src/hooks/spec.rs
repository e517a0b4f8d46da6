//! What to capture: which hook points, at which positions, and how far to run the model.

use super::{is_glob, HookKind, HookPoint, HookRegistry, HookSet};
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
    /// Run blocks `0..stop_at_layer` only, i.e. blocks 0 to `stop_at_layer - 1`
    /// (TransformerLens semantics); no logits then.
    pub stop_at_layer: Option<usize>,
    pub logits: LogitsMode,
}

/// The blocks `stop_at_layer=stop` runs, in words.
fn blocks_run(stop: usize) -> String {
    match stop {
        0 => "no block (the embeddings only)".to_string(),
        1 => "block 0".to_string(),
        _ => format!("blocks 0 to {}", stop - 1),
    }
}

/// Whether `point` is computed when only blocks `0..stop` run: the embedding stage always
/// is, a block's hooks when the block runs, `ln_final` never.
fn computed_with_stop(point: &HookPoint, stop: usize) -> bool {
    match point.layer {
        Some(layer) => layer < stop,
        None => matches!(point.kind, HookKind::Embed | HookKind::PosEmbed),
    }
}

impl CaptureSpec {
    /// Build a spec from hook names or globs (`blocks.*.hook_resid_post`). With
    /// `stop_at_layer`, a glob keeps the hooks that are computed (blocks `0..stop_at_layer`
    /// and the embeddings), while a hook named exactly that is not computed is an error.
    pub fn new(
        registry: &HookRegistry,
        patterns: &[String],
        positions: Positions,
        stop_at_layer: Option<usize>,
        logits: LogitsMode,
    ) -> Result<Self> {
        let n_layers = registry.n_layers();
        if let Some(stop) = stop_at_layer {
            if stop > n_layers {
                return Err(MsError::invalid(format!(
                    "stop_at_layer={stop} but the model has {n_layers} layers (allowed: 0 to {n_layers})"
                )));
            }
        }
        let mut points = Vec::new();
        for p in patterns {
            let mut found = registry.resolve_pattern(p)?;
            if let Some(stop) = stop_at_layer {
                if is_glob(p) {
                    found.retain(|point| computed_with_stop(point, stop));
                    if found.is_empty() {
                        return Err(MsError::invalid(format!(
                            "the pattern '{p}' matches only hooks that are not computed with \
                             stop_at_layer={stop}, which runs {}; raise stop_at_layer or drop it",
                            blocks_run(stop)
                        )));
                    }
                } else if let Some(point) = found.iter().find(|pt| !computed_with_stop(pt, stop)) {
                    let need = match point.layer {
                        Some(l) => format!("use stop_at_layer={} or more", l + 1),
                        None => "drop stop_at_layer".to_string(),
                    };
                    return Err(MsError::invalid(format!(
                        "hook '{}' is not computed with stop_at_layer={stop}, which runs {} only; {need}",
                        point.name(),
                        blocks_run(stop),
                    )));
                }
            }
            points.extend(found);
        }
        points.sort();
        points.dedup();
        // Keep forward order so the cache iterates like the model runs.
        points.sort_by_key(|p| registry.index(*p));
        if stop_at_layer.is_some() && logits != LogitsMode::None {
            return Err(MsError::invalid(
                "logits cannot be returned with stop_at_layer: the LM head is not run",
            ));
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

    fn names(spec: &CaptureSpec) -> Vec<String> {
        spec.points.iter().map(HookPoint::name).collect()
    }

    #[test]
    fn stop_at_layer_keeps_the_computed_hooks_a_glob_matches() {
        let reg = HookRegistry::new(5, &HookKind::PER_BLOCK, true, true);
        let spec = |patterns: &[&str], stop| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            CaptureSpec::new(&reg, &patterns, Positions::Last, stop, LogitsMode::None)
        };
        let s = spec(&["blocks.*.hook_resid_post"], Some(2)).unwrap();
        assert_eq!(
            names(&s),
            ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        );
        // The embedding stage always runs; ln_final never does with stop_at_layer.
        let s = spec(&["*embed", "blocks.[0-1].hook_mlp_out"], Some(1)).unwrap();
        assert_eq!(
            names(&s),
            ["hook_embed", "hook_pos_embed", "blocks.0.hook_mlp_out"]
        );
        let s = spec(&["*"], Some(0)).unwrap();
        assert_eq!(names(&s), ["hook_embed", "hook_pos_embed"]);
        // Exact names that are not computed, or a glob with nothing computed, are errors.
        let e = spec(&["blocks.3.hook_resid_post"], Some(2)).unwrap_err();
        assert!(e
            .to_string()
            .contains("runs blocks 0 to 1 only; use stop_at_layer=4"));
        let e = spec(&["blocks.[3-4].*"], Some(2)).unwrap_err();
        assert!(e
            .to_string()
            .contains("matches only hooks that are not computed"));
        assert!(spec(&["ln_final.hook_normalized"], Some(5)).is_err());
        assert!(spec(&["ln_final.*"], Some(5)).is_err());
        // Without stop_at_layer every match is kept.
        let s = spec(&["blocks.*.hook_resid_post"], None).unwrap();
        assert_eq!(s.points.len(), 5);
    }

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
