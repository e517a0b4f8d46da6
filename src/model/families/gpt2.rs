//! GPT-2: learned absolute positions, LayerNorm with bias, an MLP of `c_fc` and `c_proj` with
//! `gelu_new`, and a head tied to the token embeddings. Its `Conv1D` layers store weights as
//! `[in, out]` (transposed at load) and `c_attn` holds q, k and v side by side (split at load).

use super::{check_fits, even_head_dim, load_blocks, norm, split_linear, Family};
use crate::error::{MsError, Result};
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::WeightReader;
use crate::model::config::{Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual};
use crate::model::parts::{Attention, Block, Embedding, Linear, Mlp, Weight};
use crate::model::Transformer;

fn hf_config(c: &HfConfig, tensors: usize) -> Result<ModelConfig> {
    c.refuse_unless("add_cross_attention", &[false.into()])?;
    let d_model = c.usize_of(&["n_embd", "hidden_size"])?;
    let n_heads = c.usize_of(&["n_head", "num_attention_heads"])?;
    let n_layers = c.layer_count(&["n_layer", "num_hidden_layers"], tensors)?;
    let d_head = even_head_dim(c, d_model, n_heads)?;
    let act_name = c.opt_str("activation_function")?.unwrap_or("gelu_new");
    let activation = Activation::from_hf(act_name).ok_or_else(|| {
        c.unsupported(
            "activation_function",
            format!("= '{act_name}' is not implemented"),
        )
    })?;
    // `scale_attn_weights`: divide scores by sqrt(d_head); `scale_attn_by_inverse_layer_idx`:
    // also by the layer's index + 1. (`reorder_and_upcast_attn` changes only the order of
    // float16 operations, not the value.)
    let base = match c.opt_bool("scale_attn_weights")? {
        Some(false) => 1.0,
        _ => 1.0 / (d_head as f64).sqrt(),
    };
    let by_layer = c.opt_bool("scale_attn_by_inverse_layer_idx")? == Some(true);
    Ok(ModelConfig {
        architecture: "gpt2".into(),
        family: Family::Gpt2,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.opt_usize("n_inner")?.unwrap_or(4 * d_model),
        vocab_size: c.usize("vocab_size")?,
        context_length: c.usize_of(&["n_positions", "n_ctx"])?,
        causal: true,
        norm: NormKind::Layer,
        norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        residual: Residual::Sequential,
        mlp: MlpKind::Plain,
        activation,
        learned_positions: true,
        ropes: Vec::new(),
        layers: (0..n_layers)
            .map(|i| LayerAttention {
                rope: None,
                window: None,
                scale: if by_layer {
                    base / (i + 1) as f64
                } else {
                    base
                },
            })
            .collect(),
        embed_scale: None,
        tie_embeddings: true,
    })
}

/// A `Conv1D` (`weight [in, out]`, `bias [out]`) as a [`Linear`] (`[out, in]`).
fn conv1d(r: &WeightReader, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let w = r.tensor(&format!("{name}.weight"), &[inp, out])?;
    let b = r.tensor(&format!("{name}.bias"), &[out])?;
    Ok(Linear::new(w.t()?.contiguous()?, Some(b)))
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let cfg = hf_config(c, r.tensor_count())?;
    check_fits(&cfg, r)?;
    if c.opt_bool("tie_word_embeddings")? == Some(false) {
        return Err(c.unsupported(
            "tie_word_embeddings",
            "= false is not implemented for GPT-2 (its head is the token embedding)",
        ));
    }
    // `GPT2LMHeadModel` checkpoints prefix the tensors with "transformer."; `GPT2Model` ones
    // (the original openai-community/gpt2) do not.
    let p = if r.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let (d, f, v, ctx) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.context_length);
    let eps = cfg.norm_eps;
    let ln = |name: &str| {
        norm(
            r,
            NormKind::Layer,
            &format!("{name}.weight"),
            Some(&format!("{name}.bias")),
            d,
            eps,
            false,
        )
    };
    let tokens: Weight = r.tensor(&format!("{p}wte.weight"), &[v, d])?.into();
    let positions = r.tensor(&format!("{p}wpe.weight"), &[ctx, d])?;
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| format!("{p}h.{i}.{part}");
        let [q, k, v]: [_; 3] = split_linear(conv1d(r, &n("attn.c_attn"), d, 3 * d)?, &[d, d, d])?
            .try_into()
            .map_err(|_| MsError::Compute("c_attn split".into()))?;
        Ok(Block {
            residual: Residual::Sequential,
            attn_norm: ln(&n("ln_1"))?,
            attn: Attention {
                q,
                k,
                v,
                o: conv1d(r, &n("attn.c_proj"), d, d)?,
                q_norm: None,
                k_norm: None,
                n_heads: cfg.n_heads,
                n_kv_heads: cfg.n_heads,
                d_head: cfg.d_head,
            },
            post_attn_norm: None,
            mlp_norm: ln(&n("ln_2"))?,
            mlp: Mlp::Plain {
                fc: conv1d(r, &n("mlp.c_fc"), d, f)?,
                proj: conv1d(r, &n("mlp.c_proj"), f, d)?,
                act: cfg.activation,
            },
            post_mlp_norm: None,
        })
    })?;
    let final_norm = ln(&format!("{p}ln_f"))?;
    // The head is the token embedding; a checkpoint may still store a copy of it.
    r.skip("lm_head.weight");
    // Old checkpoints carry the causal mask as buffers (`attn.bias`, `attn.masked_bias`).
    r.check_all_used(|n| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"))?;
    let head = tokens.clone();
    Transformer::new(
        cfg,
        Embedding {
            tokens,
            scale: None,
            positions: Some(positions),
            token_type: None,
            norm: None,
        },
        blocks,
        Some(final_norm),
        Some(head),
    )
}
