//! The forward pass of decoder-only transformers, one implementation for the decoder
//! families: Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU) and Gemma 3 (the same plus
//! q/k norms, norms after attention and MLP, scaled embeddings, GeGLU and sliding-window
//! layers), with a hook at every site listed in [`crate::hooks::HookKind`].
//!
//! Batches are right-padded: with a causal mask a real token never attends to the padding
//! after it, so positions stay `0..len` and no padding mask is needed; padded rows are garbage
//! that the caller never reads (captures zero them).

mod packed;

use candle_core::{Device, Tensor};

use super::config::{Family, ModelConfig};
use super::layers::{
    attend, causal_mask, linear, linear_into, residual_add, rms_norm, rope_tables, rope_to_heads,
};
use super::weights::{present, ShapedReader, TensorSource};
use crate::error::{MsError, Result};
use crate::hooks::{CapturedArray, HookContext, HookKind, HookPoint, HookRegistry, LogitsMode};
pub use packed::{Prefix, Segment};

/// Weights of one block in the `[out, in]` layout; projections multiply by the transposed
/// view (the matmul reads strides, so no transposed copy is kept in memory). Optional parts
/// exist in some families only.
struct Block {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    mlp_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    post_mlp_norm: Option<Tensor>,
}

/// Keys and values of earlier positions, per layer: `[batch, kv_head, pos, d_head]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How tensors are named (and laid out) in the file the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// llama.cpp's names (`blk.{i}.attn_q.weight`); Llama Q/K rows are permuted for
    /// llama.cpp's RoPE and Gemma norm weights already include Gemma's `1 +`.
    Gguf,
    /// Hugging Face names (`model.layers.{i}.self_attn.q_proj.weight`), unmodified.
    HuggingFace,
}

/// The parts of a block, named per layout by [`tensor_name`].
#[derive(Debug, Clone, Copy)]
enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    PostAttnNorm,
    MlpNorm,
    Gate,
    Up,
    Down,
    PostMlpNorm,
}

fn tensor_name(layout: WeightLayout, family: Family, layer: usize, part: Part) -> String {
    match layout {
        WeightLayout::Gguf => {
            let s = match part {
                Part::AttnNorm => "attn_norm.weight",
                Part::Q => "attn_q.weight",
                Part::K => "attn_k.weight",
                Part::V => "attn_v.weight",
                Part::O => "attn_output.weight",
                Part::QBias => "attn_q.bias",
                Part::KBias => "attn_k.bias",
                Part::VBias => "attn_v.bias",
                Part::QNorm => "attn_q_norm.weight",
                Part::KNorm => "attn_k_norm.weight",
                Part::PostAttnNorm => "post_attention_norm.weight",
                Part::MlpNorm => "ffn_norm.weight",
                Part::Gate => "ffn_gate.weight",
                Part::Up => "ffn_up.weight",
                Part::Down => "ffn_down.weight",
                Part::PostMlpNorm => "post_ffw_norm.weight",
            };
            format!("blk.{layer}.{s}")
        }
        WeightLayout::HuggingFace => {
            let s = match part {
                Part::AttnNorm => "input_layernorm.weight",
                Part::Q => "self_attn.q_proj.weight",
                Part::K => "self_attn.k_proj.weight",
                Part::V => "self_attn.v_proj.weight",
                Part::O => "self_attn.o_proj.weight",
                Part::QBias => "self_attn.q_proj.bias",
                Part::KBias => "self_attn.k_proj.bias",
                Part::VBias => "self_attn.v_proj.bias",
                Part::QNorm => "self_attn.q_norm.weight",
                Part::KNorm => "self_attn.k_norm.weight",
                // Llama's norm before the MLP is called "post_attention_layernorm"; Gemma 3
                // uses that name for the norm after attention.
                Part::PostAttnNorm => "post_attention_layernorm.weight",
                Part::MlpNorm if family == Family::Gemma3 => "pre_feedforward_layernorm.weight",
                Part::MlpNorm => "post_attention_layernorm.weight",
                Part::Gate => "mlp.gate_proj.weight",
                Part::Up => "mlp.up_proj.weight",
                Part::Down => "mlp.down_proj.weight",
                Part::PostMlpNorm => "post_feedforward_layernorm.weight",
            };
            format!("model.layers.{layer}.{s}")
        }
    }
}

fn global_names(layout: WeightLayout) -> [&'static str; 3] {
    match layout {
        WeightLayout::Gguf => ["token_embd.weight", "output_norm.weight", "output.weight"],
        WeightLayout::HuggingFace => [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ],
    }
}

pub struct Decoder {
    pub cfg: ModelConfig,
    embed: Tensor,
    /// Gemma multiplies token embeddings by sqrt(d_model).
    embed_scale: Option<f64>,
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

/// Per-forward tables of one attention kind (RoPE base, window): cos, sin and mask.
struct AttentionTables {
    key: (u64, Option<usize>),
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Decoder {
    /// Read the weights of a decoder of `cfg`'s family from a GGUF file or an HF folder.
    pub fn load(
        source: &dyn TensorSource,
        mut cfg: ModelConfig,
        layout: WeightLayout,
    ) -> Result<Self> {
        let family = cfg.family;
        let gemma = family == Family::Gemma3;
        let [embed_name, final_norm_name, lm_head_name] = global_names(layout);
        cfg.tie_embeddings = !source.has_tensor(lm_head_name);
        let name = |i: usize, p: Part| tensor_name(layout, family, i, p);
        let mut required = vec![Part::AttnNorm, Part::Q, Part::K, Part::V, Part::O];
        required.extend([Part::MlpNorm, Part::Gate, Part::Up, Part::Down]);
        if gemma {
            required.extend([
                Part::QNorm,
                Part::KNorm,
                Part::PostAttnNorm,
                Part::PostMlpNorm,
            ]);
        }
        let mut names: Vec<String> = vec![embed_name.into(), final_norm_name.into()];
        if !cfg.tie_embeddings {
            names.push(lm_head_name.into());
        }
        for i in 0..cfg.n_layers {
            names.extend(required.iter().map(|&p| name(i, p)));
            names.extend(present(
                source,
                [Part::QBias, Part::KBias, Part::VBias].map(|p| name(i, p)),
            ));
        }
        let mut r = ShapedReader::load(source, names)?;
        let (d, v, f) = (cfg.d_model, cfg.vocab_size, cfg.d_mlp);
        let (hq, hkv, dh) = (
            cfg.n_heads * cfg.d_head,
            cfg.n_kv_heads * cfg.d_head,
            cfg.d_head,
        );
        // Gemma's norms multiply by (1 + weight); llama.cpp's converter stores 1 + weight.
        let norm = |r: &mut ShapedReader, n: &str, size: usize| -> Result<Tensor> {
            let w = r.take(n, &[size])?;
            Ok(if gemma && layout == WeightLayout::HuggingFace {
                (w + 1.0)?
            } else {
                w
            })
        };
        let embed = r.take(embed_name, &[v, d])?;
        let final_norm = norm(&mut r, final_norm_name, d)?;
        let lm_head = if cfg.tie_embeddings {
            embed.clone()
        } else {
            r.take(lm_head_name, &[v, d])?
        };
        let permuted = layout == WeightLayout::Gguf && family == Family::Llama;
        let qk = |w: Tensor, heads: usize| -> Result<Tensor> {
            if permuted {
                unpermute_rows(&w, heads)
            } else {
                Ok(w)
            }
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |p: Part| name(i, p);
            let opt_norm = |r: &mut ShapedReader, p: Part, size: usize| -> Result<Option<Tensor>> {
                if gemma {
                    Ok(Some(norm(r, &n(p), size)?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm: norm(&mut r, &n(Part::AttnNorm), d)?,
                wq: qk(r.take(&n(Part::Q), &[hq, d])?, cfg.n_heads)?,
                wk: qk(r.take(&n(Part::K), &[hkv, d])?, cfg.n_kv_heads)?,
                wv: r.take(&n(Part::V), &[hkv, d])?,
                wo: r.take(&n(Part::O), &[d, hq])?,
                bq: r.take_opt(&n(Part::QBias), &[hq])?,
                bk: r.take_opt(&n(Part::KBias), &[hkv])?,
                bv: r.take_opt(&n(Part::VBias), &[hkv])?,
                q_norm: opt_norm(&mut r, Part::QNorm, dh)?,
                k_norm: opt_norm(&mut r, Part::KNorm, dh)?,
                post_attn_norm: opt_norm(&mut r, Part::PostAttnNorm, d)?,
                mlp_norm: norm(&mut r, &n(Part::MlpNorm), d)?,
                w_gate: r.take(&n(Part::Gate), &[f, d])?,
                w_up: r.take(&n(Part::Up), &[f, d])?,
                w_down: r.take(&n(Part::Down), &[d, f])?,
                post_mlp_norm: opt_norm(&mut r, Part::PostMlpNorm, d)?,
            });
        }
        if permuted && blocks.iter().any(|b| b.bq.is_some() || b.bk.is_some()) {
            return Err(MsError::ModelFormat(
                "Q/K biases in a permuted (llama.cpp) layout are not supported".into(),
            ));
        }
        let hooks = HookRegistry::new(cfg.n_layers, &HookKind::PER_BLOCK, true);
        Ok(Decoder {
            embed_scale: gemma.then(|| (cfg.d_model as f64).sqrt()),
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            hooks,
        })
    }

    /// The embedding matrix `[vocab, d_model]` (unscaled).
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// The mean input embedding `[d_model]`, as fed to block 0 (scaled where the family
    /// scales embeddings).
    pub fn mean_input_embedding(&self) -> Result<Tensor> {
        let m = self.embed.mean(0)?;
        Ok(match self.embed_scale {
            Some(s) => (m * s)?,
            None => m,
        })
    }

    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        rms_norm(x, weight, self.cfg.norm_eps)
    }

    /// Attention of block `layer` on `x [batch, pos, d_model]`: `[batch, pos, d_model]`, or
    /// `[batch, n, d_model]` for the `queries` positions only (keys and values still come
    /// from every position).
    fn attention(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &mut HookContext,
        tables: &AttentionTables,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        queries: Option<&[Vec<usize>]>,
    ) -> Result<Tensor> {
        let blk = &self.blocks[layer];
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let hp = |kind| HookPoint::block(layer, kind);
        let q = linear(x, &blk.wq, blk.bq.as_ref())?.reshape((b, t, h, dh))?;
        let k = linear(x, &blk.wk, blk.bk.as_ref())?.reshape((b, t, kvh, dh))?;
        let v = linear(x, &blk.wv, blk.bv.as_ref())?.reshape((b, t, kvh, dh))?;
        let q = ctx.visit(hp(HookKind::AttnQ), q)?;
        let k = ctx.visit(hp(HookKind::AttnK), k)?;
        let v = ctx.visit(hp(HookKind::AttnV), v)?;
        let (q, k) = match (&blk.q_norm, &blk.k_norm) {
            (Some(qn), Some(kn)) => (self.norm(&q, qn)?, self.norm(&k, kn)?),
            _ => (q, k),
        };
        let q = rope_to_heads(&q, &tables.cos, &tables.sin)?;
        let k = rope_to_heads(&k, &tables.cos, &tables.sin)?;
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
        let (q, mask) = match queries {
            Some(sel) => (
                pick_positions(&q, 2, sel)?,
                pick_mask_rows(&tables.mask, sel)?,
            ),
            None => (q, tables.mask.clone()),
        };
        let z = attend(layer, &q, &k, &v, &mask, cfg.attn_scale, ctx)?;
        linear(&z, &blk.wo, None)
    }

    fn mlp(&self, layer: usize, x: &Tensor, ctx: &mut HookContext) -> Result<Tensor> {
        let blk = &self.blocks[layer];
        let gate = linear(x, &blk.w_gate, None)?;
        let up = linear(x, &blk.w_up, None)?;
        let post = self.cfg.family.activation().glu(&gate, &up)?;
        let post = ctx.visit(HookPoint::block(layer, HookKind::MlpPost), post)?;
        linear(&post, &blk.w_down, None)
    }

    /// Token embeddings `[batch, pos, d_model]` of ids `[batch, pos]`.
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, self.cfg.d_model))?;
        Ok(match self.embed_scale {
            Some(s) => (x * s)?,
            None => x,
        })
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
    ) -> Result<Option<CapturedArray>> {
        let n_run = n_blocks.min(self.cfg.n_layers);
        let stops_early = n_run < self.cfg.n_layers;
        let out_rows = self.rows_read_after_blocks(ctx, n_run, lengths, logits, kv.is_some());
        let x = self.run_blocks_to(self.embed_ids(ids)?, ctx, n_run, kv, out_rows.as_deref())?;
        if stops_early {
            return Ok(None);
        }
        match (&out_rows, logits) {
            (Some(_), LogitsMode::Last) => {
                // One row per prompt: its last token.
                let (b, _, d) = x.dims3()?;
                Ok(Some(to_captured(&self.unembed(&x.reshape((b, d))?)?)?))
            }
            (Some(_), _) => Ok(None),
            (None, _) => self.logits(&x, lengths, ctx, logits),
        }
    }

    /// The rows of each prompt that anything reads after the last block run (`n_run` blocks),
    /// when that is not every row: the captured positions of a run without logits, or the
    /// last tokens when only their logits are wanted. That block's attention output and MLP
    /// then run at those rows alone (one block of 30 in SmolLM2: 3 % of a probing capture).
    fn rows_read_after_blocks(
        &self,
        ctx: &HookContext,
        n_run: usize,
        lengths: &[usize],
        logits: LogitsMode,
        kv_cached: bool,
    ) -> Option<Vec<Vec<usize>>> {
        let last = n_run.checked_sub(1)?;
        if kv_cached || !ctx.tail_unhooked(last) {
            return None;
        }
        let stops_early = n_run < self.cfg.n_layers;
        if !stops_early && ctx.wants(HookPoint::global(HookKind::LnFinal)) {
            return None;
        }
        if stops_early || logits == LogitsMode::None {
            return ctx.capture_rows().map(<[_]>::to_vec);
        }
        let post_captured = ctx.captures(HookPoint::block(last, HookKind::ResidPost));
        (logits == LogitsMode::Last && !post_captured).then(|| last_positions(lengths))
    }

    /// All blocks, then the logits at every position `[batch, pos, vocab]` written into `out`
    /// (a slice of a larger batch's buffer, so that chunks need no copy into it).
    pub fn forward_logits_into(
        &self,
        ids: &Tensor,
        ctx: &mut HookContext,
        out: &mut [f32],
    ) -> Result<()> {
        let x = self.run_blocks(self.embed_ids(ids)?, ctx, self.cfg.n_layers, None)?;
        self.all_logits_into(&x, ctx, out)
    }

    /// The final norm (with its `ln_final.hook_normalized` hook) and the LM head at every
    /// position of `x [batch, pos, d_model]`, into `out` (`[batch, pos, vocab]` floats).
    fn all_logits_into(&self, x: &Tensor, ctx: &mut HookContext, out: &mut [f32]) -> Result<()> {
        let normed = self.norm(x, &self.final_norm)?;
        let normed = ctx.visit(HookPoint::global(HookKind::LnFinal), normed)?;
        linear_into(&normed, &self.lm_head, out)
    }

    /// Blocks `0..n_blocks` on input embeddings `x [batch, pos, d_model]` (the `hook_embed`
    /// site), returning the residual stream after the last block run. With a KV cache, `x`
    /// holds new positions appended after the cached ones.
    pub fn run_blocks(
        &self,
        x: Tensor,
        ctx: &mut HookContext,
        n_blocks: usize,
        kv: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run_blocks_to(x, ctx, n_blocks, kv, None)
    }

    /// [`run_blocks`](Self::run_blocks); with `out_rows`, the last block runs past its
    /// q/k/v at those positions only and returns `[batch, n, d_model]` (see
    /// [`rows_read_after_blocks`](Self::rows_read_after_blocks)).
    fn run_blocks_to(
        &self,
        x: Tensor,
        ctx: &mut HookContext,
        n_blocks: usize,
        mut kv: Option<&mut KvCache>,
        out_rows: Option<&[Vec<usize>]>,
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
        if let Some(cache) = kv.as_deref_mut() {
            cache.layers.resize_with(self.cfg.n_layers, || None);
        }
        let mut tables: Vec<AttentionTables> = Vec::new();
        let n_run = n_blocks.min(self.cfg.n_layers);
        for layer in 0..n_run {
            let (theta, window) = self.cfg.layer_attention(layer);
            let key = (theta.to_bits(), window);
            let k = match tables.iter().position(|tb| tb.key == key) {
                Some(k) => k,
                None => {
                    let (cos, sin) = rope_tables(theta, self.cfg.d_head, offset, t)?;
                    let mask = causal_mask(t, offset, window)?;
                    tables.push(AttentionTables {
                        key,
                        cos,
                        sin,
                        mask,
                    });
                    tables.len() - 1
                }
            };
            let slot = kv.as_deref_mut().map(|c| &mut c.layers[layer]);
            let rows = out_rows.filter(|_| layer + 1 == n_run);
            x = self.block(layer, x, ctx, &tables[k], slot, rows)?;
        }
        if let Some(cache) = kv {
            cache.len += t;
        }
        Ok(x)
    }

    /// Block `layer` on the residual stream `x [batch, pos, d_model]`; with `rows`, from the
    /// attention output on at those positions only (`[batch, n, d_model]` out).
    fn block(
        &self,
        layer: usize,
        x: Tensor,
        ctx: &mut HookContext,
        tables: &AttentionTables,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        rows: Option<&[Vec<usize>]>,
    ) -> Result<Tensor> {
        let hp = |kind| HookPoint::block(layer, kind);
        let blk = &self.blocks[layer];
        let x = ctx.visit(hp(HookKind::ResidPre), x)?;
        let normed = self.norm(&x, &blk.attn_norm)?;
        let mut attn = self.attention(layer, &normed, ctx, tables, kv, rows)?;
        let x = match rows {
            Some(sel) => pick_positions(&x, 1, sel)?,
            None => x,
        };
        if let Some(w) = &blk.post_attn_norm {
            attn = self.norm(&attn, w)?;
        }
        let attn = ctx.visit(hp(HookKind::AttnOut), attn)?;
        let mid = ctx.visit(hp(HookKind::ResidMid), residual_add(&x, &attn)?)?;
        let normed = self.norm(&mid, &blk.mlp_norm)?;
        let mut mlp = self.mlp(layer, &normed, ctx)?;
        if let Some(w) = &blk.post_mlp_norm {
            mlp = self.norm(&mlp, w)?;
        }
        let mlp = ctx.visit(hp(HookKind::MlpOut), mlp)?;
        let post = residual_add(&mid, &mlp)?;
        match rows {
            Some(_) => ctx.visit_selected(hp(HookKind::ResidPost), post),
            None => ctx.visit(hp(HookKind::ResidPost), post),
        }
    }

    /// Logits from the final residual stream `x [batch, pos, d_model]`, with the
    /// `ln_final.hook_normalized` hook: `[batch, pos, vocab]` or `[batch, vocab]` (last).
    fn logits(
        &self,
        x: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        logits: LogitsMode,
    ) -> Result<Option<CapturedArray>> {
        let ln_final = HookPoint::global(HookKind::LnFinal);
        let vocab = self.lm_head.dim(0)?;
        if logits == LogitsMode::All {
            let (b, t, _) = x.dims3()?;
            // Zeroed by calloc as fresh pages: no pass over the buffer before the matmul's.
            let mut data = vec![0f32; b * t * vocab];
            self.all_logits_into(x, ctx, &mut data)?;
            return Ok(Some(CapturedArray::new(vec![b, t, vocab], data)));
        }
        if ctx.wants(ln_final) {
            let normed = self.norm(x, &self.final_norm)?;
            let normed = ctx.visit(ln_final, normed)?;
            return match logits {
                // (All was returned above.)
                LogitsMode::None | LogitsMode::All => Ok(None),
                LogitsMode::Last => {
                    let last = last_rows(&normed, lengths)?;
                    Ok(Some(to_captured(&linear(&last, &self.lm_head, None)?)?))
                }
            };
        }
        match logits {
            LogitsMode::Last => {
                // Only the last real row of each prompt goes through the norm and LM head.
                Ok(Some(to_captured(&self.unembed(&last_rows(x, lengths)?)?)?))
            }
            _ => Ok(None),
        }
    }

    /// Apply the final norm and unembedding to residual-stream vectors `[n, d_model]`
    /// (the logit lens).
    pub fn unembed(&self, resid: &Tensor) -> Result<Tensor> {
        let normed = self.norm(resid, &self.final_norm)?;
        linear(&normed, &self.lm_head, None)
    }
}

/// `x [batch, ..., pos, ...]` at positions `sel[b]` of each prompt (`pos_axis` is the
/// position axis): the same shape with `pos` replaced by the number of positions selected.
fn pick_positions(x: &Tensor, pos_axis: usize, sel: &[Vec<usize>]) -> Result<Tensor> {
    let dims = x.dims();
    let (b, t) = (dims[0], dims[pos_axis]);
    let pre: usize = dims[1..pos_axis].iter().product();
    let post: usize = dims[pos_axis + 1..].iter().product();
    let n = sel.first().map_or(0, Vec::len);
    let idx: Vec<u32> = sel
        .iter()
        .enumerate()
        .flat_map(|(bi, ps)| {
            (0..pre).flat_map(move |p| ps.iter().map(move |&pos| ((bi * pre + p) * t + pos) as u32))
        })
        .collect();
    let idx = Tensor::from_vec(idx, b * pre * n, &Device::Cpu)?;
    let mut shape = dims.to_vec();
    shape[pos_axis] = n;
    Ok(x.reshape((b * pre * t, post))?
        .index_select(&idx, 0)?
        .reshape(shape)?)
}

/// Rows of a mask `[q_pos, k_pos]` shared by the batch at each prompt's selected query
/// positions: `[batch, 1, n, k_pos]`.
fn pick_mask_rows(mask: &Tensor, sel: &[Vec<usize>]) -> Result<Tensor> {
    let tk = mask.dim(1)?;
    let n = sel.first().map_or(0, Vec::len);
    let idx: Vec<u32> = sel.iter().flatten().map(|&p| p as u32).collect();
    let idx = Tensor::from_vec(idx, sel.len() * n, &Device::Cpu)?;
    Ok(mask.index_select(&idx, 0)?.reshape((sel.len(), 1, n, tk))?)
}

fn to_captured(t: &Tensor) -> Result<CapturedArray> {
    Ok(CapturedArray::new(
        t.dims().to_vec(),
        t.flatten_all()?.to_vec1()?,
    ))
}

/// Rows `x[b, lengths[b] - 1]` of `[batch, pos, d]`, as `[batch, d]`.
fn last_rows(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    Ok(pick_positions(x, 1, &last_positions(lengths))?.reshape((b, d))?)
}

/// Each prompt's last real position, as a one-position selection per prompt.
fn last_positions(lengths: &[usize]) -> Vec<Vec<usize>> {
    lengths.iter().map(|&l| vec![l.saturating_sub(1)]).collect()
}
