//! The forward pass every family shares: embeddings, the blocks, the final norm and the LM
//! head, with a hook at every site of [`crate::hooks::HookKind`].
//!
//! Batches are right-padded. A decoder's causal mask keeps every real token from attending to
//! the padding after it, so positions stay `0..len` and padded rows are garbage that nothing
//! reads (captures zero them); an encoder masks padded keys instead.

use candle_core::Tensor;

use super::config::{ModelConfig, Residual};
use super::parts::attention::{pick_positions, AttendWith, LayerKv};
use super::parts::packed::row_positions;
use super::parts::{
    causal_mask, padding_mask, Block, Embedding, Keys, Norm, Prefix, Rope, Segment, Weight,
};
use super::plan::{last_positions, RunPlan};
use crate::error::{MsError, Result};
use crate::hooks::{CapturedArray, HookContext, HookKind, HookPoint, HookRegistry, LogitsMode};
use crate::interrupt::Cancel;
use crate::kernels::matmul::{linear, linear_into};

/// Logits computed per LM head call: blocks of this many floats (256 rows of a 262k vocabulary,
/// about a tenth of a second on two cores).
const HEAD_BLOCK_ELEMS: usize = 64 << 20;

/// A transformer: its config and the parts its family loaded.
pub struct Transformer {
    pub cfg: ModelConfig,
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    /// One per [`ModelConfig::ropes`] entry.
    pub ropes: Vec<Rope>,
    /// Before the LM head (decoders).
    pub final_norm: Option<Norm>,
    /// `[vocab, d_model]`; the token embedding itself when tied (shared, not copied). `None`
    /// for encoders.
    pub lm_head: Option<Weight>,
    pub hooks: HookRegistry,
}

/// Keys and values of earlier positions, per layer: `[batch, kv_head, pos, d_head]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Layer `layer`'s keys and values `[batch, kv_head, len, d_head]` (views), if cached.
    pub fn layer(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        self.layers.get(layer).map_or(Ok(None), LayerKv::get)
    }
}

/// The hook kinds of one block of `cfg`: every kind, but `hook_resid_mid` where the residual
/// is parallel (there is no stream between attention and MLP).
fn block_kinds(cfg: &ModelConfig) -> Vec<HookKind> {
    HookKind::PER_BLOCK
        .into_iter()
        .filter(|&k| !(cfg.residual == Residual::Parallel && k == HookKind::ResidMid))
        .collect()
}

/// The per-forward tables of the dense path: cos/sin for each RoPE kind, a mask per window.
struct DenseTables {
    ropes: Vec<(Tensor, Tensor)>,
    masks: Vec<(Option<usize>, Tensor)>,
}

impl Transformer {
    pub fn new(
        cfg: ModelConfig,
        embed: Embedding,
        blocks: Vec<Block>,
        final_norm: Option<Norm>,
        lm_head: Option<Weight>,
    ) -> Result<Self> {
        if blocks.len() != cfg.n_layers {
            return Err(MsError::ModelFormat(format!(
                "{} blocks loaded for {} layers",
                blocks.len(),
                cfg.n_layers
            )));
        }
        let ropes = cfg.ropes.iter().map(Rope::new).collect();
        let hooks = HookRegistry::new(
            cfg.n_layers,
            &block_kinds(&cfg),
            cfg.learned_positions,
            final_norm.is_some(),
        );
        Ok(Transformer {
            cfg,
            embed,
            blocks,
            ropes,
            final_norm,
            lm_head,
            hooks,
        })
    }

    /// Bytes of the weights held in memory (a tied head counted once).
    pub fn weight_bytes(&self) -> usize {
        let head = match &self.lm_head {
            Some(h) if !self.cfg.tie_embeddings => h.nbytes(),
            _ => 0,
        };
        self.embed.nbytes()
            + self.blocks.iter().map(Block::nbytes).sum::<usize>()
            + self.final_norm.as_ref().map_or(0, Norm::nbytes)
            + head
    }

    /// Every weight matrix: the embedding, each block's projections, an untied LM head.
    pub fn matrices(&self) -> Vec<&Weight> {
        let mut out = vec![&self.embed.tokens];
        for b in &self.blocks {
            out.extend(b.attn.linears().iter().map(|l| &l.weight));
            out.extend(b.mlp.linears().iter().map(|l| &l.weight));
        }
        if let (Some(h), false) = (&self.lm_head, self.cfg.tie_embeddings) {
            out.push(h);
        }
        out
    }

    /// How many weight matrices are held in each type ("f32", "q4_k", ...), sorted by name.
    pub fn matrix_types(&self) -> Vec<(&'static str, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for w in self.matrices() {
            *counts.entry(w.type_name()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// The token embedding matrix `[vocab, d_model]` (unscaled).
    pub fn embedding(&self) -> &Weight {
        &self.embed.tokens
    }

    /// Run the model on right-padded token ids `[batch, pos]` (`lengths` are the real
    /// lengths) as `plan` says. Returns the logits when the plan asks for them (all positions
    /// go into `logits_out` when given). With a KV cache, the ids are new positions appended
    /// after the cached ones.
    pub fn forward(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        plan: &RunPlan,
        kv: Option<&mut KvCache>,
        logits_out: Option<&mut [f32]>,
    ) -> Result<Option<CapturedArray>> {
        let x = self.embed.tokens(ids)?;
        let x = self.run_blocks(x, lengths, ctx, plan, kv)?;
        if plan.n_blocks < self.cfg.n_layers {
            return Ok(None);
        }
        self.head(&x, lengths, ctx, plan, logits_out)
    }

    /// The tables of one dense forward of `t` positions after `offset` cached ones.
    fn dense_tables(&self, lengths: &[usize], t: usize, offset: usize) -> Result<DenseTables> {
        let ropes = self
            .ropes
            .iter()
            .map(|r| r.tables(offset..offset + t))
            .collect::<Result<_>>()?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for l in &self.cfg.layers {
            if masks.iter().any(|(w, _)| *w == l.window) {
                continue;
            }
            let mask = if self.cfg.causal {
                causal_mask(t, offset, l.window)?
            } else {
                padding_mask(lengths, t)?
            };
            masks.push((l.window, mask));
        }
        Ok(DenseTables { ropes, masks })
    }

    /// Blocks `0..plan.n_blocks` on token embeddings `x [batch, pos, d_model]` (the
    /// `hook_embed` site), returning the residual stream after the last block run
    /// (`[batch, n, d_model]` at the plan's tail rows, if it has them). With a KV cache, `x`
    /// holds new positions appended after the cached ones.
    pub fn run_blocks(
        &self,
        x: Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        plan: &RunPlan,
        mut kv: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let t = x.dim(1)?;
        let offset = kv.as_ref().map_or(0, |c| c.len);
        if offset + t > self.cfg.context_length {
            return Err(MsError::invalid(format!(
                "{} tokens do not fit the model's context length of {}",
                offset + t,
                self.cfg.context_length
            )));
        }
        let positions: Vec<usize> = (offset..offset + t).collect();
        let mut x = self.embed.finish(x, &positions, ctx)?;
        if let Some(cache) = kv.as_deref_mut() {
            cache
                .layers
                .resize_with(self.cfg.n_layers, LayerKv::default);
        }
        let tables = self.dense_tables(lengths, t, offset)?;
        let n_run = plan.n_blocks.min(self.cfg.n_layers);
        for (layer, block) in self.blocks.iter().enumerate().take(n_run) {
            ctx.cancel.check()?;
            let spec = &self.cfg.layers[layer];
            let mask = &tables
                .masks
                .iter()
                .find(|(w, _)| *w == spec.window)
                .expect("a mask per window")
                .1;
            let attend = AttendWith {
                layer,
                rope: spec.rope.map(|k| &tables.ropes[k]),
                scale: spec.scale,
                keys: Keys::Dense {
                    mask,
                    cache: kv.as_deref_mut().map(|c| &mut c.layers[layer]),
                },
                queries: plan.tail_rows.as_deref().filter(|_| layer + 1 == n_run),
            };
            x = block.forward(x, ctx, attend)?;
        }
        if let Some(cache) = kv {
            cache.len += t;
        }
        Ok(x)
    }

    /// All blocks on packed token embeddings `x [total, d_model]` (segment after segment),
    /// each segment continuing the first `prefix` positions of the shared sequence held by
    /// `source`. Returns the final residual stream at `keep` (row indices into `x`):
    /// `[keep, d_model]`; the last block computes its tail for those rows only. No hooks run
    /// here: this path serves scores, not captures.
    pub fn run_packed(
        &self,
        x: Tensor,
        segments: &[Segment],
        source: Prefix,
        keep: &[usize],
        cancel: &Cancel,
    ) -> Result<Tensor> {
        let (total, d) = x.dims2()?;
        if segments.iter().map(|s| s.rows).sum::<usize>() != total {
            return Err(MsError::shape(format!(
                "packed segments cover {} rows, the input has {total}",
                segments.iter().map(|s| s.rows).sum::<usize>()
            )));
        }
        let available = source.available(segments);
        if let Some(s) = segments.iter().find(|s| s.prefix > available) {
            return Err(MsError::invalid(format!(
                "a segment continues {} shared positions, only {available} are available",
                s.prefix
            )));
        }
        let end = segments
            .iter()
            .map(|s| s.prefix + s.rows)
            .max()
            .unwrap_or(0);
        if end > self.cfg.context_length {
            return Err(MsError::invalid(format!(
                "{end} tokens do not fit the model's context length of {}",
                self.cfg.context_length
            )));
        }
        let positions = row_positions(segments);
        let mut ctx = HookContext::inactive(&self.hooks, &[total]).with_cancel(cancel);
        let mut x = self
            .embed
            .finish(x.reshape((1, total, d))?, &positions, &mut ctx)?;
        let ropes: Vec<(Tensor, Tensor)> = self
            .ropes
            .iter()
            .map(|r| r.tables(positions.iter().copied()))
            .collect::<Result<_>>()?;
        let keep = [keep.to_vec()];
        let (kvh, dh) = (self.cfg.n_kv_heads, self.cfg.d_head);
        let empty = (
            Tensor::zeros(
                (1, kvh, 0, dh),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?,
            Tensor::zeros(
                (1, kvh, 0, dh),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?,
        );
        let n = self.cfg.n_layers;
        for (layer, block) in self.blocks.iter().enumerate() {
            cancel.check()?;
            let spec = &self.cfg.layers[layer];
            let cached = match source {
                Prefix::Cache(cache) => Some(cache.layer(layer)?.unwrap_or_else(|| empty.clone())),
                Prefix::FirstSegment => None,
            };
            let prefix = cached.as_ref();
            let attend = AttendWith {
                layer,
                rope: spec.rope.map(|k| &ropes[k]),
                scale: spec.scale,
                keys: Keys::Packed {
                    segments,
                    prefix,
                    window: spec.window,
                },
                queries: (layer + 1 == n).then_some(&keep[..]),
            };
            x = block.forward(x, &mut ctx, attend)?;
        }
        Ok(x.squeeze(0)?)
    }

    /// The final norm with its `ln_final.hook_normalized` hook.
    fn final_normed(&self, x: &Tensor, ctx: &mut HookContext) -> Result<Tensor> {
        let norm = self.final_norm.as_ref().ok_or_else(|| {
            MsError::invalid("this model has no final norm (an encoder has no LM head)")
        })?;
        ctx.visit(HookPoint::global(HookKind::LnFinal), norm.forward(x)?)
    }

    /// The logits the plan asks for, from the final residual stream `x`.
    fn head(
        &self,
        x: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        plan: &RunPlan,
        out: Option<&mut [f32]>,
    ) -> Result<Option<CapturedArray>> {
        let Some(lm_head) = &self.lm_head else {
            return Ok(None);
        };
        let ln_final = HookPoint::global(HookKind::LnFinal);
        match plan.logits {
            LogitsMode::All => {
                let normed = self.final_normed(x, ctx)?;
                let (b, t, _) = normed.dims3()?;
                let vocab = lm_head.rows()?;
                let mut owned = Vec::new();
                let buf = match out {
                    Some(buf) => buf,
                    None => {
                        // calloc'd fresh pages: written once, by the matmul.
                        owned = vec![0f32; b * t * vocab];
                        &mut owned
                    }
                };
                // The LM head is the largest product of a forward (seconds for a batch of a
                // big vocabulary): in blocks of rows, so that Ctrl-C is seen between them.
                let rows = normed.reshape((b * t, normed.dim(2)?))?;
                let block = (HEAD_BLOCK_ELEMS / vocab.max(1)).max(1);
                for (k, chunk) in buf.chunks_mut(block * vocab).enumerate() {
                    ctx.cancel.check()?;
                    let n = chunk.len() / vocab;
                    linear_into(&rows.narrow(0, k * block, n)?, lm_head, chunk)?;
                }
                // Padded positions computed logits of padding tokens: zero them, as captures.
                for (row, &len) in lengths.iter().enumerate().take(b) {
                    buf[(row * t + len.min(t)) * vocab..(row + 1) * t * vocab].fill(0.0);
                }
                Ok((!owned.is_empty()).then(|| CapturedArray::new(vec![b, t, vocab], owned)))
            }
            LogitsMode::Last => {
                let (b, _, d) = x.dims3()?;
                let last = if plan.tail_rows.is_some() {
                    // The last block ran at each prompt's last row only.
                    self.unembed(&x.reshape((b, d))?)?
                } else if ctx.wants(ln_final) {
                    let normed = self.final_normed(x, ctx)?;
                    let rows = pick_positions(&normed, 1, &last_positions(lengths))?;
                    linear(&rows.reshape((b, d))?, lm_head, None)?
                } else {
                    let rows = pick_positions(x, 1, &last_positions(lengths))?;
                    self.unembed(&rows.reshape((b, d))?)?
                };
                Ok(Some(to_captured(&last)?))
            }
            LogitsMode::None => {
                if ctx.wants(ln_final) {
                    self.final_normed(x, ctx)?;
                }
                Ok(None)
            }
        }
    }

    /// The final norm and unembedding of residual-stream vectors `[n, d_model]`: logits
    /// `[n, vocab]` (the logit lens).
    pub fn unembed(&self, resid: &Tensor) -> Result<Tensor> {
        let (Some(norm), Some(head)) = (&self.final_norm, &self.lm_head) else {
            return Err(MsError::invalid(
                "this model has no LM head (an encoder): nothing to unembed with",
            ));
        };
        linear(&norm.forward(resid)?, head, None)
    }
}

fn to_captured(t: &Tensor) -> Result<CapturedArray> {
    Ok(CapturedArray::new(
        t.dims().to_vec(),
        t.flatten_all()?.to_vec1()?,
    ))
}
