//! GPT-NeoX (Pythia): attention and MLP in parallel off the same residual stream
//! (`use_parallel_residual`), RoPE on part of each head (`rotary_pct`), LayerNorm with bias,
//! biased projections, GELU, an untied head (`embed_out`). `query_key_value` interleaves q, k
//! and v per head (`[head, 3, d_head]` rows); it is split at load into per-head q, k, v.

use candle_core::Tensor;

use super::hf_rope::hf_rope;
use super::{check_fits, even_head_dim, linear, lm_head, load_blocks, norm, Bias, Family};
use crate::error::Result;
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::WeightReader;
use crate::model::config::{Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual};
use crate::model::parts::{Attention, Block, Embedding, Linear, Mlp};
use crate::model::Transformer;

fn hf_config(c: &HfConfig, tensors: usize) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.layer_count(&["num_hidden_layers"], tensors)?;
    let d_head = even_head_dim(c, d_model, n_heads)?;
    let act_name = c.opt_str("hidden_act")?.unwrap_or("gelu");
    let activation = Activation::from_hf(act_name)
        .ok_or_else(|| c.unsupported("hidden_act", format!("= '{act_name}' is not implemented")))?;
    // GPTNeoXConfig's defaults for the legacy spelling: rotary_pct 0.25, rotary_emb_base 1e4.
    let rope = if c.get("rope_parameters").is_none() && c.get("rotary_pct").is_none() {
        let mut r = hf_rope(c, d_head, None, 10_000.0)?;
        r.rotary_dim = (d_head as f64 * 0.25) as usize;
        r
    } else {
        hf_rope(c, d_head, None, 10_000.0)?
    };
    let parallel = c.opt_bool("use_parallel_residual")?.unwrap_or(true);
    let scale = 1.0 / (d_head as f64).sqrt();
    Ok(ModelConfig {
        architecture: "gpt_neox".into(),
        family: Family::GptNeoX,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.usize("intermediate_size")?,
        vocab_size: c.usize("vocab_size")?,
        context_length: c.usize("max_position_embeddings")?,
        causal: true,
        norm: NormKind::Layer,
        norm_eps: c.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        residual: if parallel {
            Residual::Parallel
        } else {
            Residual::Sequential
        },
        mlp: MlpKind::Plain,
        activation,
        learned_positions: false,
        ropes: vec![rope],
        layers: vec![
            LayerAttention {
                rope: Some(0),
                window: None,
                scale,
            };
            n_layers
        ],
        embed_scale: None,
        tie_embeddings: false,
    })
}

/// Rows `[head, 3, d_head]` of the fused projection, taken apart into q, k and v.
fn split_interleaved(fused: &Linear, heads: usize, d_head: usize) -> Result<[Linear; 3]> {
    let take = |t: &Tensor, part: usize| -> Result<Tensor> {
        let dims = t.dims().to_vec();
        let rest: usize = dims[1..].iter().product();
        let per_head = t.reshape((heads, 3, d_head, rest))?;
        let mut shape = dims.clone();
        shape[0] = heads * d_head;
        Ok(per_head.narrow(1, part, 1)?.contiguous()?.reshape(shape)?)
    };
    let one = |part: usize| -> Result<Linear> {
        let bias = match &fused.bias {
            Some(b) => Some(take(&b.reshape((3 * heads * d_head, 1))?, part)?.flatten_all()?),
            None => None,
        };
        // Weight rows (head, part, i) for every head and i, in order.
        let order: Vec<usize> = (0..heads)
            .flat_map(|h| (0..d_head).map(move |i| (h * 3 + part) * d_head + i))
            .collect();
        Ok(Linear::new(fused.weight.gather_rows(&order)?, bias))
    };
    Ok([one(0)?, one(1)?, one(2)?])
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let mut cfg = hf_config(c, r.tensor_count())?;
    check_fits(&cfg, r)?;
    let (d, f, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let (h, dh) = (cfg.n_heads, cfg.d_head);
    let eps = cfg.norm_eps;
    let bias = match c.opt_bool("attention_bias")? {
        Some(false) => Bias::None,
        _ => Bias::Required,
    };
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
    let embed = r.matrix("gpt_neox.embed_in.weight", &[v, d])?;
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| format!("gpt_neox.layers.{i}.{part}");
        let proj = |part: &str, bias: Bias, out: usize, inp: usize| {
            linear(
                r,
                &n(&format!("{part}.weight")),
                &n(&format!("{part}.bias")),
                bias,
                out,
                inp,
            )
        };
        let [q, k, v] =
            split_interleaved(&proj("attention.query_key_value", bias, 3 * d, d)?, h, dh)?;
        Ok(Block {
            residual: cfg.residual,
            attn_norm: ln(&n("input_layernorm"))?,
            attn: Attention {
                q,
                k,
                v,
                o: proj("attention.dense", bias, d, d)?,
                q_norm: None,
                k_norm: None,
                n_heads: h,
                n_kv_heads: h,
                d_head: dh,
            },
            post_attn_norm: None,
            mlp_norm: ln(&n("post_attention_layernorm"))?,
            mlp: Mlp::Plain {
                fc: proj("mlp.dense_h_to_4h", Bias::Required, f, d)?,
                proj: proj("mlp.dense_4h_to_h", Bias::Required, d, f)?,
                act: cfg.activation,
            },
            post_mlp_norm: None,
        })
    })?;
    let final_norm = ln("gpt_neox.final_layer_norm")?;
    let (head, tied) = lm_head(
        r,
        "embed_out.weight",
        &embed,
        c.opt_bool("tie_word_embeddings")?,
    )?;
    cfg.tie_embeddings = tied;
    // Old checkpoints carry the causal mask and RoPE frequencies as buffers.
    r.check_all_used(|n| {
        n.ends_with(".attention.bias")
            || n.ends_with(".attention.masked_bias")
            || n.ends_with(".rotary_emb.inv_freq")
    })?;
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
