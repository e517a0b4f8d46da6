//! What one forward computes, decided once before it starts: how many blocks run, whether
//! the last of them needs its attention output and MLP at every position or only at the rows
//! read afterwards, and which logits come out. The forward reads the plan; the hook context
//! only visits.

use super::Transformer;
use crate::hooks::{CaptureSpec, HookContext, HookKind, HookPoint, LogitsMode};

#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// Blocks `0..n_blocks` run (logits only when that is all of them).
    pub n_blocks: usize,
    pub logits: LogitsMode,
    /// When only some rows of each prompt are read after the last block run (a capture at
    /// chosen positions without logits, or last-token logits): those rows. That block then
    /// computes q, k and v at every position and everything after at these rows only.
    pub tail_rows: Option<Vec<Vec<usize>>>,
}

/// The sites of a block from the attention pattern on: if any is hooked, the block's tail
/// must run at every position.
const TAIL: [HookKind; 6] = [
    HookKind::AttnPattern,
    HookKind::AttnZ,
    HookKind::AttnOut,
    HookKind::ResidMid,
    HookKind::MlpPost,
    HookKind::MlpOut,
];

impl RunPlan {
    /// Blocks a run needs: all of them when logits are wanted (or `stop_at_layer` says how
    /// many), otherwise up to the last block that is captured (later blocks, and interventions
    /// in them, cannot change what is returned).
    pub fn blocks_needed(n_layers: usize, spec: &CaptureSpec) -> usize {
        if let Some(stop) = spec.stop_at_layer {
            return stop;
        }
        if spec.logits != LogitsMode::None {
            return n_layers;
        }
        let mut need = 0;
        for p in &spec.points {
            match (p.layer, p.kind) {
                (Some(l), _) => need = need.max(l + 1),
                (None, HookKind::Embed | HookKind::PosEmbed) => {}
                (None, _) => need = n_layers,
            }
        }
        need.min(n_layers)
    }

    /// The plan of one forward over prompts of `lengths` with the hooks of `ctx`.
    pub fn new(
        model: &Transformer,
        ctx: &HookContext,
        lengths: &[usize],
        n_blocks: usize,
        logits: LogitsMode,
        kv_cached: bool,
    ) -> Self {
        let n_blocks = n_blocks.min(model.cfg.n_layers);
        let logits = if model.lm_head.is_some() && n_blocks == model.cfg.n_layers {
            logits
        } else {
            LogitsMode::None
        };
        let tail_rows = rows_after_last_block(model, ctx, lengths, n_blocks, logits, kv_cached);
        RunPlan {
            n_blocks,
            logits,
            tail_rows,
        }
    }

    /// All blocks, no hooks read after them but the ones in `ctx`: plain inference.
    pub fn full(model: &Transformer, logits: LogitsMode) -> Self {
        RunPlan {
            n_blocks: model.cfg.n_layers,
            logits,
            tail_rows: None,
        }
    }
}

/// Each prompt's last real position, as a one-position selection per prompt.
pub fn last_positions(lengths: &[usize]) -> Vec<Vec<usize>> {
    lengths.iter().map(|&l| vec![l.saturating_sub(1)]).collect()
}

/// The rows of each prompt read after the last block run, when that is not every row.
fn rows_after_last_block(
    model: &Transformer,
    ctx: &HookContext,
    lengths: &[usize],
    n_run: usize,
    logits: LogitsMode,
    kv_cached: bool,
) -> Option<Vec<Vec<usize>>> {
    let last = n_run.checked_sub(1)?;
    let tail_hooked = TAIL.iter().any(|&k| ctx.wants(HookPoint::block(last, k)));
    if kv_cached || tail_hooked || ctx.intervenes(HookPoint::block(last, HookKind::ResidPost)) {
        return None;
    }
    let stops_early = n_run < model.cfg.n_layers;
    if !stops_early && ctx.wants(HookPoint::global(HookKind::LnFinal)) {
        return None;
    }
    if stops_early || logits == LogitsMode::None {
        return ctx.capture_positions().map(<[_]>::to_vec);
    }
    let post_captured = ctx.captures(HookPoint::block(last, HookKind::ResidPost));
    (logits == LogitsMode::Last && !post_captured).then(|| last_positions(lengths))
}
