//! Llama and the decoders laid out like it: Mistral (sliding window), Qwen 2 (q/k/v biases),
//! Qwen 3 (per-head q/k RMSNorm, head_dim of its own), SmolLM2 (a Llama). RMSNorm, RoPE,
//! grouped-query attention, SwiGLU. From Hugging Face folders and llama.cpp GGUF files.

use super::hf_rope::hf_rope;
use super::{check_fits, linear, lm_head, load_blocks, norm, Bias, Family};
use crate::error::{MsError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::{check_finite, WeightReader};
use crate::model::config::{
    Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual, RopeScaling, RopeSpec,
};
use crate::model::parts::{Attention, Block, Embedding, Linear, Mlp, Norm, Weight};
use crate::model::Transformer;

/// Tensor names of one layout (Hugging Face or llama.cpp).
struct Names {
    embed: &'static str,
    final_norm: &'static str,
    lm_head: &'static str,
    /// `(layer, part)` -> name; parts are Hugging Face's (`self_attn.q_proj`, ...).
    layer: fn(usize, &str) -> String,
    /// llama.cpp permutes Q/K rows per head for its RoPE layout; undone at load.
    permuted_qk: bool,
}

const HF: Names = Names {
    embed: "model.embed_tokens.weight",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i, part| format!("model.layers.{i}.{part}"),
    permuted_qk: false,
};

const GGUF: Names = Names {
    embed: "token_embd.weight",
    final_norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i, part| {
        let s = match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.bias" => "attn_output.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "mlp.gate_proj.bias" => "ffn_gate.bias",
            "mlp.up_proj.bias" => "ffn_up.bias",
            "mlp.down_proj.bias" => "ffn_down.bias",
            other => other,
        };
        format!("blk.{i}.{s}")
    },
    permuted_qk: true,
};

/// The config of a Hugging Face `llama` / `mistral` / `qwen2` / `qwen3` folder.
fn hf_config(c: &HfConfig, tensors: usize) -> Result<(ModelConfig, Option<bool>, Biases)> {
    let model_type = c.model_type()?.to_string();
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.layer_count(&["num_hidden_layers"], tensors)?;
    let d_head = c.opt_usize("head_dim")?.unwrap_or(d_model / n_heads.max(1));
    let act_name = c.opt_str("hidden_act")?.unwrap_or("silu");
    let activation = Activation::from_hf(act_name)
        .ok_or_else(|| c.unsupported("hidden_act", format!("= '{act_name}' is not implemented")))?;
    let rope = hf_rope(c, d_head, None, 10_000.0)?;
    let window = c.opt_usize("sliding_window")?;
    let sliding: Vec<bool> = match model_type.as_str() {
        // Mistral slides every layer when it has a window.
        "mistral" => vec![window.is_some(); n_layers],
        "qwen2" | "qwen3" => match c.get("layer_types") {
            Some(types) => layer_types(c, types, n_layers)?,
            None if c.opt_bool("use_sliding_window")? == Some(true) => {
                let from = c.opt_usize("max_window_layers")?.unwrap_or(n_layers);
                (0..n_layers).map(|i| i >= from).collect()
            }
            None => vec![false; n_layers],
        },
        // Llama configs have no window; a stray key must not change anything silently.
        _ => {
            c.refuse_unless("sliding_window", &[])?;
            vec![false; n_layers]
        }
    };
    if sliding.iter().any(|&s| s) && window.is_none() {
        return Err(c.unsupported(
            "sliding_window",
            "is missing while some layers are sliding_attention",
        ));
    }
    let scale = 1.0 / (d_head as f64).sqrt();
    let cfg = ModelConfig {
        architecture: model_type,
        family: Family::Llama,
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
        norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        residual: Residual::Sequential,
        mlp: MlpKind::Gated,
        activation,
        learned_positions: false,
        ropes: vec![rope],
        layers: sliding
            .iter()
            .map(|&s| LayerAttention {
                rope: Some(0),
                window: if s { window } else { None },
                scale,
            })
            .collect(),
        embed_scale: None,
        tie_embeddings: false,
    };
    let tie = c.opt_bool("tie_word_embeddings")?;
    // Which projections have biases, as transformers builds each model type (a bias in the
    // file that the model type does not have is an unused tensor, and refused).
    let flag = |k: &str| -> Result<Bias> {
        Ok(match c.opt_bool(k)? {
            Some(true) => Bias::Required,
            _ => Bias::None,
        })
    };
    let biases = match cfg.architecture.as_str() {
        "qwen2" => Biases {
            qkv: Bias::Required,
            o: Bias::None,
            mlp: Bias::None,
        },
        "mistral" => Biases {
            qkv: Bias::None,
            o: Bias::None,
            mlp: Bias::None,
        },
        "qwen3" => Biases {
            qkv: flag("attention_bias")?,
            o: flag("attention_bias")?,
            mlp: Bias::None,
        },
        _ => Biases {
            qkv: flag("attention_bias")?,
            o: flag("attention_bias")?,
            mlp: flag("mlp_bias")?,
        },
    };
    Ok((cfg, tie, biases))
}

/// Which projections carry biases.
#[derive(Clone, Copy)]
struct Biases {
    qkv: Bias,
    o: Bias,
    mlp: Bias,
}

/// `layer_types` (`"full_attention"` / `"sliding_attention"` per layer) as sliding flags.
pub(super) fn layer_types(
    c: &HfConfig,
    types: &serde_json::Value,
    n_layers: usize,
) -> Result<Vec<bool>> {
    let list = types
        .as_array()
        .ok_or_else(|| c.unsupported("layer_types", "is not a list"))?;
    if list.len() != n_layers {
        return Err(MsError::ModelFormat(format!(
            "{}: 'layer_types' has {} entries for {n_layers} layers",
            c.origin(),
            list.len()
        )));
    }
    list.iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(c.unsupported(
                "layer_types",
                format!(
                    "contains {t}, which is not implemented (full_attention, sliding_attention)"
                ),
            )),
        })
        .collect()
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let (cfg, tie, biases) = hf_config(c, r.tensor_count())?;
    load(cfg, r, &HF, tie, biases)
}

/// The config of a llama.cpp `llama` GGUF.
fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let key = |k: &str| format!("llama.{k}");
    let opt_usize = |k: &str| -> Result<Option<usize>> {
        let k = key(k);
        if g.has(&k) {
            Ok(Some(g.get_usize(&k)?))
        } else {
            Ok(None)
        }
    };
    let unsupported = |k: &str, why: String| {
        MsError::UnsupportedArchitecture(format!(
            "{}: '{k}' {why}; mindscope refuses files it would silently mis-compute",
            g.path().display()
        ))
    };
    if opt_usize("expert_count")?.is_some_and(|n| n > 0) {
        return Err(unsupported(
            "llama.expert_count",
            "> 0 (a mixture of experts) is not implemented".into(),
        ));
    }
    let d_model = g.get_usize(&key("embedding_length"))?;
    let n_heads = g.get_usize(&key("attention.head_count"))?;
    let n_layers = g.layer_count(&key("block_count"))?;
    let d_head = opt_usize("attention.key_length")?.unwrap_or(d_model / n_heads.max(1));
    let theta = if g.has(&key("rope.freq_base")) {
        g.get_f64(&key("rope.freq_base"))?
    } else {
        10_000.0
    };
    let scaling = match g.has(&key("rope.scaling.type")) {
        false => RopeScaling::None,
        true => match g.get_str(&key("rope.scaling.type"))? {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: g.get_f64(&key("rope.scaling.factor"))?,
            },
            other => {
                return Err(unsupported(
                    "llama.rope.scaling.type",
                    format!("= '{other}' is not implemented (none, linear)"),
                ))
            }
        },
    };
    // Llama 3.1+ GGUFs carry their frequency scaling as a tensor of per-frequency factors.
    let scaling = match g.has_tensor("rope_freqs.weight") {
        true if scaling != RopeScaling::None => {
            return Err(unsupported(
                "rope_freqs.weight",
                "together with llama.rope.scaling.type is not implemented".into(),
            ))
        }
        true => {
            let t = g.tensor_f32("rope_freqs.weight")?;
            check_finite(&t, "rope_freqs.weight", &g.path().display().to_string())?;
            RopeScaling::Factors(t.flatten_all()?.to_vec1::<f32>()?)
        }
        false => scaling,
    };
    let rotary_dim = opt_usize("rope.dimension_count")?.unwrap_or(d_head);
    if let RopeScaling::Factors(f) = &scaling {
        if f.len() != rotary_dim / 2 {
            return Err(MsError::ModelFormat(format!(
                "{}: rope_freqs.weight has {} factors for {} rotary dimensions",
                g.path().display(),
                f.len(),
                rotary_dim
            )));
        }
    }
    let vocab_size = match opt_usize("vocab_size")? {
        Some(v) => v,
        None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let scale = 1.0 / (d_head as f64).sqrt();
    Ok(ModelConfig {
        architecture: "llama".into(),
        family: Family::Llama,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
        d_head,
        d_mlp: g.get_usize(&key("feed_forward_length"))?,
        vocab_size,
        context_length: g.get_usize(&key("context_length"))?,
        causal: true,
        norm: NormKind::Rms,
        norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        residual: Residual::Sequential,
        mlp: MlpKind::Gated,
        activation: Activation::Silu,
        learned_positions: false,
        ropes: vec![RopeSpec {
            theta,
            rotary_dim,
            scaling,
        }],
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

pub fn load_gguf(g: &GgufFile, r: &WeightReader) -> Result<Transformer> {
    let cfg = gguf_config(g)?;
    r.skip("rope_freqs.weight");
    let biases = Biases {
        qkv: Bias::IfPresent,
        o: Bias::IfPresent,
        mlp: Bias::IfPresent,
    };
    load(cfg, r, &GGUF, None, biases)
}

/// llama.cpp's converter permutes Q/K rows per head for its interleaved RoPE; undo it so the
/// weights (and `hook_q` / `hook_k`) are in the Hugging Face layout used with rotate-half RoPE.
/// Rows are permuted as stored (quantized blocks never cross rows).
fn unpermute_rows(w: &Weight, n_heads: usize) -> Result<Weight> {
    let out = w.rows()?;
    let half = out / n_heads / 2;
    // Row (head, pair, i) of the result is row (head, i, pair) of the file's layout.
    let order: Vec<usize> = (0..n_heads)
        .flat_map(|h| (0..2).flat_map(move |p| (0..half).map(move |i| (h * half + i) * 2 + p)))
        .collect();
    w.gather_rows(&order)
}

fn load(
    mut cfg: ModelConfig,
    r: &WeightReader,
    names: &Names,
    tie: Option<bool>,
    biases: Biases,
) -> Result<Transformer> {
    check_fits(&cfg, r)?;
    let (d, f, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let eps = cfg.norm_eps;
    let embed = r.matrix(names.embed, &[v, d])?;
    let rms = |name: &str, size: usize| norm(r, NormKind::Rms, name, None, size, eps, false);
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| (names.layer)(i, part);
        let proj = |part: &str, bias: Bias, out: usize, inp: usize| -> Result<Linear> {
            linear(
                r,
                &n(&format!("{part}.weight")),
                &n(&format!("{part}.bias")),
                bias,
                out,
                inp,
            )
        };
        let mut q = proj("self_attn.q_proj", biases.qkv, h * dh, d)?;
        let mut k = proj("self_attn.k_proj", biases.qkv, kvh * dh, d)?;
        if names.permuted_qk {
            if q.bias.is_some() || k.bias.is_some() {
                return Err(MsError::ModelFormat(format!(
                    "{}: Q/K biases in llama.cpp's permuted layout are not supported",
                    r.origin()
                )));
            }
            q.weight = unpermute_rows(&q.weight, h)?;
            k.weight = unpermute_rows(&k.weight, kvh)?;
        }
        let qk_norm = |part: &str| -> Result<Option<Norm>> {
            let name = n(&format!("self_attn.{part}.weight"));
            match r.has(&name) {
                true => Ok(Some(rms(&name, dh)?)),
                false => Ok(None),
            }
        };
        Ok(Block {
            residual: Residual::Sequential,
            attn_norm: rms(&n("input_layernorm.weight"), d)?,
            attn: Attention {
                q,
                k,
                v: proj("self_attn.v_proj", biases.qkv, kvh * dh, d)?,
                o: proj("self_attn.o_proj", biases.o, d, h * dh)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                n_heads: h,
                n_kv_heads: kvh,
                d_head: dh,
            },
            post_attn_norm: None,
            mlp_norm: rms(&n("post_attention_layernorm.weight"), d)?,
            mlp: Mlp::Gated {
                gate: proj("mlp.gate_proj", biases.mlp, f, d)?,
                up: proj("mlp.up_proj", biases.mlp, f, d)?,
                down: proj("mlp.down_proj", biases.mlp, d, f)?,
                act: cfg.activation,
            },
            post_mlp_norm: None,
        })
    })?;
    let final_norm = rms(names.final_norm, d)?;
    let (head, tied) = lm_head(r, names.lm_head, &embed, tie)?;
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
