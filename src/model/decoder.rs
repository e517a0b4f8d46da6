//! The forward pass of decoder-only transformers (Llama family: RMSNorm, RoPE, grouped-query
//! attention, SwiGLU MLP), with a hook at every site listed in [`crate::hooks::HookKind`].
//!
//! Batches are right-padded: with a causal mask a real token never attends to the padding
//! after it, so positions stay `0..len` and no padding mask is needed; padded rows are garbage
//! that the caller never reads (captures zero them).

use candle_core::{Device, Tensor, D};

use super::config::DecoderConfig;
use super::gguf::GgufFile;
use crate::error::{MsError, Result};
use crate::hooks::{HookContext, HookKind, HookPoint, HookRegistry, LogitsMode};

/// Weights of one block in the file's `[out, in]` layout; projections multiply by the
/// transposed view (the matmul reads strides, so no transposed copy is kept in memory).
struct Block {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// Keys and values of earlier positions, per layer: `[batch, kv_head, pos, d_head]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// The first `len` cached positions, repeated for a batch of `batch` sequences that share
    /// them (e.g. ablated variants of one prompt that agree up to `len`).
    pub fn shared_prefix(&self, len: usize, batch: usize) -> Result<KvCache> {
        if len > self.len {
            return Err(MsError::invalid(format!(
                "a prefix of {len} positions is longer than the {} cached",
                self.len
            )));
        }
        let repeat = |t: &Tensor| -> Result<Tensor> {
            let t = t.narrow(2, 0, len)?;
            Ok(Tensor::cat(&vec![&t; batch], 0)?)
        };
        let layers = self
            .layers
            .iter()
            .map(|slot| match slot {
                Some((k, v)) if len > 0 => Ok(Some((repeat(k)?, repeat(v)?))),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Row counts up to which `linear` multiplies weights-first (see there).
/// Measured on SmolLM2 (2 threads): weights-first wins 2.4x at 16 rows, 1.1x at 128,
/// ties at 256.
const SMALL_BATCH_ROWS: usize = 192;

pub struct Decoder {
    pub cfg: DecoderConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// `[vocab, d_model]`; the embedding itself when tied (shared, not copied).
    lm_head: Tensor,
    pub hooks: HookRegistry,
}

/// llama.cpp's converter permutes Q/K rows per head for its interleaved RoPE; undo it so the
/// weights (and `hook_q` / `hook_k`) are in the Hugging Face layout used with rotate-half RoPE.
fn unpermute_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / n_heads / 2;
    Ok(w.reshape((n_heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

impl Decoder {
    pub fn from_gguf(gguf: &GgufFile, cfg: DecoderConfig) -> Result<Self> {
        let per_block = [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ];
        let mut names: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
        if !cfg.tie_embeddings {
            names.push("output.weight".into());
        }
        for i in 0..cfg.n_layers {
            names.extend(per_block.iter().map(|n| format!("blk.{i}.{n}.weight")));
        }
        let mut tensors = gguf.tensors_f32(&names)?.into_iter();
        let mut next = |expect: &[usize], name: &str| -> Result<Tensor> {
            let t = tensors
                .next()
                .ok_or_else(|| MsError::ModelFormat(format!("tensor '{name}' is missing")))?;
            if t.dims() != expect {
                return Err(MsError::ModelFormat(format!(
                    "{}: tensor '{name}' has shape {:?}, expected {expect:?}",
                    gguf.path().display(),
                    t.dims()
                )));
            }
            Ok(t)
        };
        let (d, v, f) = (cfg.d_model, cfg.vocab_size, cfg.d_mlp);
        let (hq, hkv) = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head);
        let embed = next(&[v, d], "token_embd.weight")?;
        let final_norm = next(&[d], "output_norm.weight")?;
        let lm_head = if cfg.tie_embeddings {
            embed.clone()
        } else {
            next(&[v, d], "output.weight")?
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: next(&[d], &n("attn_norm"))?,
                wq: unpermute_rows(&next(&[hq, d], &n("attn_q"))?, cfg.n_heads)?,
                wk: unpermute_rows(&next(&[hkv, d], &n("attn_k"))?, cfg.n_kv_heads)?,
                wv: next(&[hkv, d], &n("attn_v"))?,
                wo: next(&[d, hq], &n("attn_output"))?,
                mlp_norm: next(&[d], &n("ffn_norm"))?,
                w_gate: next(&[f, d], &n("ffn_gate"))?,
                w_up: next(&[f, d], &n("ffn_up"))?,
                w_down: next(&[d, f], &n("ffn_down"))?,
            });
        }
        let hooks = HookRegistry::new(cfg.n_layers, &HookKind::PER_BLOCK);
        Ok(Decoder {
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            hooks,
        })
    }

    /// The embedding matrix `[vocab, d_model]`.
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.cfg.norm_eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
    }

    /// cos and sin tables `[t, d_head]` for positions `offset..offset + t` (rotate-half layout).
    ///
    /// Computed in f32 exactly as Hugging Face does (`1 / base^(2i/d)`, times the position,
    /// then cos/sin): the residual stream of these models carries "massive activations" in
    /// the thousands, which amplify even 1e-6 differences in the angles.
    fn rope_tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let dh = self.cfg.d_head;
        let half = dh / 2;
        let base = self.cfg.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dh as f32))
            .collect();
        let mut cos = Vec::with_capacity(t * dh);
        let mut sin = Vec::with_capacity(t * dh);
        for p in offset..offset + t {
            for _ in 0..2 {
                cos.extend(inv_freq.iter().map(|f| (f * p as f32).cos()));
                sin.extend(inv_freq.iter().map(|f| (f * p as f32).sin()));
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, dh), &Device::Cpu)?,
            Tensor::from_vec(sin, (t, dh), &Device::Cpu)?,
        ))
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [batch, head, pos, d_head]`.
    fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
    }

    /// Additive causal mask `[t, offset + t]`.
    fn causal_mask(t: usize, offset: usize) -> Result<Tensor> {
        let total = offset + t;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j <= offset + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Ok(Tensor::from_vec(mask, (t, total), &Device::Cpu)?)
    }

    fn softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        Ok(e.broadcast_div(&sum)?)
    }

    /// `x [..., in] @ w^T` for a weight `w [out, in]`.
    fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, dims[dims.len() - 1]))?;
        // With few rows, gemm's cost is packing the whole weight matrix; multiplying the other
        // way round (W x^T) streams the weights once instead.
        let out = if rows <= SMALL_BATCH_ROWS {
            w.matmul(&x2.t()?)?.t()?.contiguous()?
        } else {
            x2.matmul(&w.t()?)?
        };
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(w.dim(0)?);
        Ok(out.reshape(shape)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &mut HookContext,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let blk = &self.blocks[layer];
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let hp = |kind| HookPoint::block(layer, kind);
        let q = Self::linear(x, &blk.wq)?.reshape((b, t, h, dh))?;
        let k = Self::linear(x, &blk.wk)?.reshape((b, t, kvh, dh))?;
        let v = Self::linear(x, &blk.wv)?.reshape((b, t, kvh, dh))?;
        let q = ctx.visit(hp(HookKind::AttnQ), q)?;
        let k = ctx.visit(hp(HookKind::AttnK), k)?;
        let v = ctx.visit(hp(HookKind::AttnV), v)?;
        let q = Self::apply_rope(&q.transpose(1, 2)?.contiguous()?, &rope.0, &rope.1)?;
        let k = Self::apply_rope(&k.transpose(1, 2)?.contiguous()?, &rope.0, &rope.1)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match kv {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let tk = k.dim(2)?;
        let group = h / kvh;
        // Grouped-query attention without copying K/V: fold each KV head's query heads into
        // the row axis, so one batched matmul serves the whole group.
        let q = q.reshape((b, kvh, group * t, dh))?;
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, h, t, tk))?
            .broadcast_add(mask)?;
        let pattern = Self::softmax_last(&scores)?;
        let pattern = ctx.visit(hp(HookKind::AttnPattern), pattern)?;
        let z = pattern
            .reshape((b, kvh, group * t, tk))?
            .matmul(&v)?
            .reshape((b, h, t, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h * dh))?;
        Self::linear(&z, &blk.wo)
    }

    fn mlp(&self, layer: usize, x: &Tensor, ctx: &mut HookContext) -> Result<Tensor> {
        let blk = &self.blocks[layer];
        let gate = Self::linear(x, &blk.w_gate)?.silu()?;
        let up = Self::linear(x, &blk.w_up)?;
        let post = ctx.visit(HookPoint::block(layer, HookKind::MlpPost), (gate * up)?)?;
        Self::linear(&post, &blk.w_down)
    }

    /// Token embeddings `[batch, pos, d_model]` of ids `[batch, pos]`.
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.d_model))?)
    }

    /// Run the model on right-padded token ids `[batch, pos]` (`lengths` are the real lengths).
    ///
    /// Runs blocks `0..n_blocks`; returns logits per `logits` when all blocks ran. With a KV
    /// cache, the ids are new positions appended after the cached ones.
    pub fn forward(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        n_blocks: usize,
        logits: LogitsMode,
        kv: Option<&mut KvCache>,
    ) -> Result<Option<Tensor>> {
        let x = self.run_blocks(self.embed_ids(ids)?, ctx, n_blocks, kv)?;
        if n_blocks < self.cfg.n_layers {
            return Ok(None);
        }
        self.logits(&x, lengths, ctx, logits)
    }

    /// Blocks `0..n_blocks` on input embeddings `x [batch, pos, d_model]` (the `hook_embed`
    /// site), returning the residual stream after the last block run. With a KV cache, `x`
    /// holds new positions appended after the cached ones.
    pub fn run_blocks(
        &self,
        x: Tensor,
        ctx: &mut HookContext,
        n_blocks: usize,
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
        let mut x = ctx.visit(HookPoint::global(HookKind::Embed), x)?;
        let rope = self.rope_tables(offset, t)?;
        let mask = Self::causal_mask(t, offset)?;
        if let Some(cache) = kv.as_deref_mut() {
            cache.layers.resize_with(self.cfg.n_layers, || None);
        }
        for layer in 0..n_blocks.min(self.cfg.n_layers) {
            let hp = |kind| HookPoint::block(layer, kind);
            let blk = &self.blocks[layer];
            x = ctx.visit(hp(HookKind::ResidPre), x)?;
            let normed = self.rms_norm(&x, &blk.attn_norm)?;
            let slot = kv.as_deref_mut().map(|c| &mut c.layers[layer]);
            let attn = self.attention(layer, &normed, ctx, &rope, &mask, slot)?;
            let attn = ctx.visit(hp(HookKind::AttnOut), attn)?;
            let mid = ctx.visit(hp(HookKind::ResidMid), (x + attn)?)?;
            let normed = self.rms_norm(&mid, &blk.mlp_norm)?;
            let mlp = self.mlp(layer, &normed, ctx)?;
            let mlp = ctx.visit(hp(HookKind::MlpOut), mlp)?;
            x = ctx.visit(hp(HookKind::ResidPost), (mid + mlp)?)?;
        }
        if let Some(cache) = kv {
            cache.len += t;
        }
        Ok(x)
    }

    /// Logits from the final residual stream `x [batch, pos, d_model]`, with the
    /// `ln_final.hook_normalized` hook.
    fn logits(
        &self,
        x: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        logits: LogitsMode,
    ) -> Result<Option<Tensor>> {
        let ln_final = HookPoint::global(HookKind::LnFinal);
        if ctx.wants(ln_final) || logits == LogitsMode::All {
            let normed = self.rms_norm(x, &self.final_norm)?;
            let normed = ctx.visit(ln_final, normed)?;
            return match logits {
                LogitsMode::None => Ok(None),
                LogitsMode::All => Ok(Some(Self::linear(&normed, &self.lm_head)?)),
                LogitsMode::Last => {
                    let last = last_rows(&normed, lengths)?;
                    Ok(Some(last.matmul(&self.lm_head.t()?)?))
                }
            };
        }
        match logits {
            LogitsMode::Last => {
                // Only the last real row of each prompt goes through the norm and LM head.
                Ok(Some(self.unembed(&last_rows(x, lengths)?)?))
            }
            _ => Ok(None),
        }
    }

    /// Apply the final norm and unembedding to residual-stream vectors `[n, d_model]`
    /// (the logit lens).
    pub fn unembed(&self, resid: &Tensor) -> Result<Tensor> {
        let normed = self.rms_norm(resid, &self.final_norm)?;
        Ok(normed.matmul(&self.lm_head.t()?)?)
    }
}

/// Rows `x[b, lengths[b] - 1]` of `[batch, pos, d]`, as `[batch, d]`.
fn last_rows(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let idx: Vec<u32> = lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| (i * t + l - 1) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, b, &Device::Cpu)?;
    Ok(x.reshape((b * t, d))?.index_select(&idx, 0)?)
}
