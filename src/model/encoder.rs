//! The forward pass of BERT encoders (all-MiniLM-L6-v2 and kin): learned absolute positions,
//! bidirectional attention over real tokens, LayerNorm after each residual add, GELU MLP.
//!
//! The same hook names as the decoders where BERT has the site: `hook_embed` is the
//! embedding sum after its LayerNorm (block 0's input, Hugging Face's `hidden_states[0]`);
//! `hook_resid_mid` and `hook_resid_post` are after the LayerNorms that follow each residual
//! add (BERT normalizes the stream itself); there is no `ln_final`.

use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::layers::{attend, layer_norm, linear, padding_mask, residual_add};
use super::weights::{ShapedReader, TensorSource};
use crate::error::{MsError, Result};
use crate::hooks::{HookContext, HookKind, HookPoint, HookRegistry};

/// A weight matrix `[out, in]` and its bias `[out]`.
struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, Some(&self.b))
    }
}

/// LayerNorm weight and bias `[d_model]`.
struct Norm {
    w: Tensor,
    b: Tensor,
}

struct EncoderBlock {
    q: Dense,
    k: Dense,
    v: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    mlp_in: Dense,
    mlp_out: Dense,
    mlp_norm: Norm,
}

pub struct Encoder {
    pub cfg: ModelConfig,
    word: Tensor,
    position: Tensor,
    /// Embedding of token type 0 (single-sentence inputs) `[d_model]`.
    token_type: Tensor,
    embed_norm: Norm,
    blocks: Vec<EncoderBlock>,
    pub hooks: HookRegistry,
}

impl Encoder {
    pub fn load(source: &dyn TensorSource, cfg: ModelConfig) -> Result<Self> {
        // Checkpoints saved from BertForX carry a "bert." prefix.
        let prefix = if source.has_tensor("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let emb = |s: &str| format!("{prefix}embeddings.{s}");
        let layer = |i: usize, s: &str| format!("{prefix}encoder.layer.{i}.{s}");
        let dense_parts = [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ];
        let norm_parts = ["attention.output.LayerNorm", "output.LayerNorm"];
        let mut names: Vec<String> = [
            "word_embeddings.weight",
            "position_embeddings.weight",
            "token_type_embeddings.weight",
            "LayerNorm.weight",
            "LayerNorm.bias",
        ]
        .iter()
        .map(|s| emb(s))
        .collect();
        for i in 0..cfg.n_layers {
            for p in dense_parts.iter().chain(&norm_parts) {
                names.push(layer(i, &format!("{p}.weight")));
                names.push(layer(i, &format!("{p}.bias")));
            }
        }
        let mut r = ShapedReader::load(source, names)?;
        let (d, f, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
        let hd = cfg.n_heads * cfg.d_head;
        if hd != d {
            return Err(MsError::ModelFormat(format!(
                "{}: {} heads x {} dims != hidden size {d}",
                source.origin(),
                cfg.n_heads,
                cfg.d_head
            )));
        }
        let dense = |r: &mut ShapedReader, name: String, out: usize, inp: usize| -> Result<Dense> {
            Ok(Dense {
                w: r.take(&format!("{name}.weight"), &[out, inp])?,
                b: r.take(&format!("{name}.bias"), &[out])?,
            })
        };
        let norm = |r: &mut ShapedReader, name: String| -> Result<Norm> {
            Ok(Norm {
                w: r.take(&format!("{name}.weight"), &[d])?,
                b: r.take(&format!("{name}.bias"), &[d])?,
            })
        };
        let word = r.take(&emb("word_embeddings.weight"), &[v, d])?;
        let position = r.take(&emb("position_embeddings.weight"), &[cfg.context_length, d])?;
        let type_name = emb("token_type_embeddings.weight");
        let token_type = r.take_rows(&type_name, d)?.get(0)?;
        let embed_norm = norm(&mut r, emb("LayerNorm"))?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = |s: &str| layer(i, s);
            blocks.push(EncoderBlock {
                q: dense(&mut r, l("attention.self.query"), hd, d)?,
                k: dense(&mut r, l("attention.self.key"), hd, d)?,
                v: dense(&mut r, l("attention.self.value"), hd, d)?,
                attn_out: dense(&mut r, l("attention.output.dense"), d, hd)?,
                attn_norm: norm(&mut r, l("attention.output.LayerNorm"))?,
                mlp_in: dense(&mut r, l("intermediate.dense"), f, d)?,
                mlp_out: dense(&mut r, l("output.dense"), d, f)?,
                mlp_norm: norm(&mut r, l("output.LayerNorm"))?,
            });
        }
        let hooks = HookRegistry::new(cfg.n_layers, &HookKind::PER_BLOCK, false);
        Ok(Encoder {
            cfg,
            word,
            position,
            token_type,
            embed_norm,
            blocks,
            hooks,
        })
    }

    fn layer_norm(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        layer_norm(x, &n.w, &n.b, self.cfg.norm_eps)
    }

    /// The word embedding matrix `[vocab, d_model]`.
    pub fn embedding(&self) -> &Tensor {
        &self.word
    }

    /// Run blocks `0..n_blocks` on right-padded ids `[batch, pos]` with real `lengths`;
    /// returns the hidden states after the last block run `[batch, pos, d_model]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        ctx: &mut HookContext,
        n_blocks: usize,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.context_length {
            return Err(MsError::invalid(format!(
                "{t} tokens do not fit the model's {} positions",
                self.cfg.context_length
            )));
        }
        let d = self.cfg.d_model;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let x = words
            .broadcast_add(&self.position.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = ctx.visit(
            HookPoint::global(HookKind::Embed),
            self.layer_norm(&x, &self.embed_norm)?,
        )?;
        let mask = padding_mask(lengths, t)?;
        let (h, dh) = (self.cfg.n_heads, self.cfg.d_head);
        for (layer, blk) in self.blocks.iter().enumerate().take(n_blocks) {
            let hp = |kind| HookPoint::block(layer, kind);
            x = ctx.visit(hp(HookKind::ResidPre), x)?;
            let heads =
                |dense: &Dense| -> Result<Tensor> { Ok(dense.apply(&x)?.reshape((b, t, h, dh))?) };
            let q = ctx.visit(hp(HookKind::AttnQ), heads(&blk.q)?)?;
            let k = ctx.visit(hp(HookKind::AttnK), heads(&blk.k)?)?;
            let v = ctx.visit(hp(HookKind::AttnV), heads(&blk.v)?)?;
            let [q, k, v] = [q, k, v].map(|a| a.transpose(1, 2).and_then(|a| a.contiguous()));
            let z = attend(layer, &q?, &k?, &v?, &mask, self.cfg.attn_scale, ctx)?;
            let attn = ctx.visit(hp(HookKind::AttnOut), blk.attn_out.apply(&z)?)?;
            let mid = self.layer_norm(&residual_add(&x, &attn)?, &blk.attn_norm)?;
            let mid = ctx.visit(hp(HookKind::ResidMid), mid)?;
            let act = self
                .cfg
                .family
                .activation()
                .apply(&blk.mlp_in.apply(&mid)?)?;
            let post = ctx.visit(hp(HookKind::MlpPost), act)?;
            let mlp = ctx.visit(hp(HookKind::MlpOut), blk.mlp_out.apply(&post)?)?;
            x = ctx.visit(
                hp(HookKind::ResidPost),
                self.layer_norm(&residual_add(&mid, &mlp)?, &blk.mlp_norm)?,
            )?;
        }
        Ok(x)
    }
}

/// Sentence embeddings as sentence-transformers computes them: the mean of the final hidden
/// states over each row's real tokens, L2-normalised. `hidden [batch, pos, d]` -> `[batch, d]`.
pub fn mean_pool_normalized(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, _) = hidden.dims3()?;
    let weights: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |j| if j < len { 1.0 / len as f32 } else { 0.0 }))
        .collect();
    let w = Tensor::from_vec(weights, (b, t, 1), &Device::Cpu)?;
    let mean = hidden.broadcast_mul(&w)?.sum(1)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}
