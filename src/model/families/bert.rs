//! BERT encoders (all-MiniLM-L6-v2 and kin): learned absolute positions, the token-type-0
//! embedding and a LayerNorm before the first block, bidirectional attention over the real
//! tokens, LayerNorm after each residual add (post-norm), a GELU MLP, and no LM head.

use super::{check_fits, even_head_dim, linear, load_blocks, norm, Bias, Family};
use crate::error::Result;
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::WeightReader;
use crate::model::config::{Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual};
use crate::model::parts::{Attention, Block, Embedding, Mlp};
use crate::model::Transformer;

fn hf_config(c: &HfConfig, tensors: usize) -> Result<ModelConfig> {
    c.refuse_unless("is_decoder", &[false.into()])?;
    c.refuse_unless("add_cross_attention", &[false.into()])?;
    c.refuse_unless("position_embedding_type", &["absolute".into()])?;
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.layer_count(&["num_hidden_layers"], tensors)?;
    let d_head = even_head_dim(c, d_model, n_heads)?;
    let act_name = c.opt_str("hidden_act")?.unwrap_or("gelu");
    let activation = Activation::from_hf(act_name)
        .ok_or_else(|| c.unsupported("hidden_act", format!("= '{act_name}' is not implemented")))?;
    Ok(ModelConfig {
        architecture: "bert".into(),
        family: Family::Bert,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.usize("intermediate_size")?,
        vocab_size: c.usize("vocab_size")?,
        context_length: c.usize("max_position_embeddings")?,
        causal: false,
        norm: NormKind::Layer,
        norm_eps: c.opt_f64("layer_norm_eps")?.unwrap_or(1e-12),
        residual: Residual::PostNorm,
        mlp: MlpKind::Plain,
        activation,
        learned_positions: true,
        ropes: Vec::new(),
        layers: vec![
            LayerAttention {
                rope: None,
                window: None,
                scale: 1.0 / (d_head as f64).sqrt(),
            };
            n_layers
        ],
        embed_scale: None,
        tie_embeddings: false,
    })
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let cfg = hf_config(c, r.tensor_count())?;
    check_fits(&cfg, r)?;
    // Checkpoints saved from BertForX carry a "bert." prefix.
    let p = if r.has("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let (d, f, v, h, dh) = (
        cfg.d_model,
        cfg.d_mlp,
        cfg.vocab_size,
        cfg.n_heads,
        cfg.d_head,
    );
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
    let emb = |s: &str| format!("{p}embeddings.{s}");
    let tokens = r.tensor(&emb("word_embeddings.weight"), &[v, d])?;
    let positions = r.tensor(&emb("position_embeddings.weight"), &[cfg.context_length, d])?;
    // Single-sentence inputs: every token has type 0.
    let token_type = r.rows(&emb("token_type_embeddings.weight"), d)?.get(0)?;
    let embed_norm = ln(&emb("LayerNorm"))?;
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| format!("{p}encoder.layer.{i}.{part}");
        let dense = |part: &str, out: usize, inp: usize| {
            linear(
                r,
                &n(&format!("{part}.weight")),
                &n(&format!("{part}.bias")),
                Bias::Required,
                out,
                inp,
            )
        };
        Ok(Block {
            residual: Residual::PostNorm,
            attn_norm: ln(&n("attention.output.LayerNorm"))?,
            attn: Attention {
                q: dense("attention.self.query", d, d)?,
                k: dense("attention.self.key", d, d)?,
                v: dense("attention.self.value", d, d)?,
                o: dense("attention.output.dense", d, d)?,
                q_norm: None,
                k_norm: None,
                n_heads: h,
                n_kv_heads: h,
                d_head: dh,
            },
            post_attn_norm: None,
            mlp_norm: ln(&n("output.LayerNorm"))?,
            mlp: Mlp::Plain {
                fc: dense("intermediate.dense", f, d)?,
                proj: dense("output.dense", d, f)?,
                act: cfg.activation,
            },
            post_mlp_norm: None,
        })
    })?;
    // The pooler and pre-training heads are not part of the encoder's hidden states.
    r.check_all_used(|n| {
        n.contains("pooler.") || n.starts_with("cls.") || n.ends_with("position_ids")
    })?;
    Transformer::new(
        cfg,
        Embedding {
            tokens: tokens.into(),
            scale: None,
            positions: Some(positions),
            token_type: Some(token_type),
            norm: Some(embed_norm),
        },
        blocks,
        None,
        None,
    )
}
