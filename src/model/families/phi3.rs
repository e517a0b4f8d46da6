//! Phi-3: a Llama block whose q/k/v projections are one `qkv_proj` and whose gate and up
//! projections are one `gate_up_proj`; both are split at load, so the forward and the hooks
//! are Llama's. A sliding window, when the config has one, applies to every layer.

use super::hf_rope::hf_rope;
use super::{check_fits, linear, lm_head, load_blocks, norm, split_linear, Bias, Family};
use crate::error::Result;
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::WeightReader;
use crate::model::config::{Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual};
use crate::model::parts::{Attention, Block, Embedding, Mlp};
use crate::model::Transformer;

fn hf_config(c: &HfConfig, tensors: usize) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.layer_count(&["num_hidden_layers"], tensors)?;
    let d_head = c.opt_usize("head_dim")?.unwrap_or(d_model / n_heads.max(1));
    let act_name = c.opt_str("hidden_act")?.unwrap_or("silu");
    let activation = Activation::from_hf(act_name)
        .ok_or_else(|| c.unsupported("hidden_act", format!("= '{act_name}' is not implemented")))?;
    let window = c.opt_usize("sliding_window")?;
    let scale = 1.0 / (d_head as f64).sqrt();
    Ok(ModelConfig {
        architecture: "phi3".into(),
        family: Family::Phi3,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        d_head,
        d_mlp: c.usize("intermediate_size")?,
        vocab_size: c.usize("vocab_size")?,
        context_length: c.usize("max_position_embeddings")?,
        causal: true,
        norm: NormKind::Rms,
        norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        residual: Residual::Sequential,
        mlp: MlpKind::Gated,
        activation,
        learned_positions: false,
        ropes: vec![hf_rope(c, d_head, None, 10_000.0)?],
        layers: vec![
            LayerAttention {
                rope: Some(0),
                window,
                scale,
            };
            n_layers
        ],
        embed_scale: None,
        tie_embeddings: false,
    })
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let mut cfg = hf_config(c, r.tensor_count())?;
    check_fits(&cfg, r)?;
    let (d, f, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let eps = cfg.norm_eps;
    let rms = |name: &str| norm(r, NormKind::Rms, name, None, d, eps, false);
    let embed = r.matrix("model.embed_tokens.weight", &[v, d])?;
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| format!("model.layers.{i}.{part}");
        let proj = |part: &str, out: usize, inp: usize| {
            linear(r, &n(&format!("{part}.weight")), "", Bias::None, out, inp)
        };
        let qkv = proj("self_attn.qkv_proj", (h + 2 * kvh) * dh, d)?;
        let [q, k, v]: [_; 3] = split_linear(qkv, &[h * dh, kvh * dh, kvh * dh])?
            .try_into()
            .map_err(|_| crate::MsError::Compute("qkv split".into()))?;
        // Phi-3's MLP: `gate, up = gate_up_proj(x).chunk(2)`.
        let [gate, up]: [_; 2] = split_linear(proj("mlp.gate_up_proj", 2 * f, d)?, &[f, f])?
            .try_into()
            .map_err(|_| crate::MsError::Compute("gate/up split".into()))?;
        Ok(Block {
            residual: Residual::Sequential,
            attn_norm: rms(&n("input_layernorm.weight"))?,
            attn: Attention {
                q,
                k,
                v,
                o: proj("self_attn.o_proj", d, h * dh)?,
                q_norm: None,
                k_norm: None,
                n_heads: h,
                n_kv_heads: kvh,
                d_head: dh,
            },
            post_attn_norm: None,
            mlp_norm: rms(&n("post_attention_layernorm.weight"))?,
            mlp: Mlp::Gated {
                gate,
                up,
                down: proj("mlp.down_proj", d, f)?,
                act: cfg.activation,
            },
            post_mlp_norm: None,
        })
    })?;
    let final_norm = rms("model.norm.weight")?;
    let (head, tied) = lm_head(
        r,
        "lm_head.weight",
        &embed,
        c.opt_bool("tie_word_embeddings")?,
    )?;
    cfg.tie_embeddings = tied;
    r.check_all_used(|_| false)?;
    Transformer::new(
        cfg,
        Embedding {
            tokens: embed,
            scale: None,
            positions: None,
            token_type: None,
            norm: None,
        },
        blocks,
        Some(final_norm),
        Some(head),
    )
}
