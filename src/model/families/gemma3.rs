//! Gemma 3 decoders: Llama's block with RMSNorms around attention and MLP both ("sandwich"),
//! per-head q/k norms, embeddings scaled by sqrt(d_model), GeGLU, and sliding-window layers
//! with a RoPE base of their own. Hugging Face norms multiply by `1 + w` (added at load);
//! llama.cpp's converter stores `1 + w` already.

use super::hf_rope::hf_rope;
use super::llama::layer_types;
use super::{check_fits, linear, lm_head, load_blocks, norm, Bias, Family};
use crate::error::{MsError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::hf_config::HfConfig;
use crate::formats::weights::WeightReader;
use crate::model::config::{
    Activation, LayerAttention, MlpKind, ModelConfig, NormKind, Residual, RopeScaling, RopeSpec,
};
use crate::model::parts::{Attention, Block, Embedding, Mlp};
use crate::model::Transformer;

/// llama.cpp's and transformers' default when a file does not say: every 6th layer is global.
const DEFAULT_PATTERN: usize = 6;

/// Sliding flags from a "every `pattern`-th layer is global" pattern.
fn from_pattern(pattern: usize, n_layers: usize) -> Vec<bool> {
    (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
}

/// Layers and RoPE kinds: global layers use `ropes[0]`, sliding ones `ropes[1]`.
fn layers(sliding: &[bool], window: Option<usize>, scale: f64) -> Vec<LayerAttention> {
    sliding
        .iter()
        .map(|&s| LayerAttention {
            rope: Some(usize::from(s)),
            window: if s { window } else { None },
            scale,
        })
        .collect()
}

fn hf_config(c: &HfConfig, tensors: usize) -> Result<ModelConfig> {
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        c.refuse_unless(key, &[])?;
    }
    c.refuse_unless("use_bidirectional_attention", &[false.into()])?;
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.layer_count(&["num_hidden_layers"], tensors)?;
    let d_head = c.opt_usize("head_dim")?.unwrap_or(256);
    let act_name = c
        .opt_str("hidden_activation")?
        .unwrap_or("gelu_pytorch_tanh");
    let activation = Activation::from_hf(act_name).ok_or_else(|| {
        c.unsupported(
            "hidden_activation",
            format!("= '{act_name}' is not implemented"),
        )
    })?;
    let sliding = match c.get("layer_types") {
        Some(types) => layer_types(c, types, n_layers)?,
        None => {
            let pattern = c
                .opt_usize("sliding_window_pattern")?
                .or(c.opt_usize("_sliding_window_pattern")?)
                .unwrap_or(DEFAULT_PATTERN);
            if pattern == 0 {
                return Err(MsError::ModelFormat(format!(
                    "{}: 'sliding_window_pattern' is 0; it must be at least 1",
                    c.origin()
                )));
            }
            from_pattern(pattern, n_layers)
        }
    };
    // transformers 5 nests one RoPE dict per layer type; older configs give the global base
    // (with any scaling) at the top and the local base as `rope_local_base_freq`.
    let (global, local) = match c.opt_object("rope_parameters")? {
        Some(p) if p.contains_key("full_attention") || p.contains_key("sliding_attention") => {
            let entry = |k: &str| p.get(k).and_then(|v| v.as_object());
            let g = match entry("full_attention") {
                Some(m) => hf_rope(c, d_head, Some(("rope_parameters.full_attention", m)), 1e6)?,
                None => hf_rope(
                    c,
                    d_head,
                    Some(("rope_parameters", &Default::default())),
                    1e6,
                )?,
            };
            let l = match entry("sliding_attention") {
                Some(m) => hf_rope(
                    c,
                    d_head,
                    Some(("rope_parameters.sliding_attention", m)),
                    1e4,
                )?,
                None => RopeSpec {
                    theta: 1e4,
                    rotary_dim: d_head,
                    scaling: RopeScaling::None,
                },
            };
            (g, l)
        }
        _ => {
            let g = hf_rope(c, d_head, None, 1e6)?;
            let l = RopeSpec {
                theta: c.opt_f64("rope_local_base_freq")?.unwrap_or(1e4),
                rotary_dim: d_head,
                scaling: RopeScaling::None,
            };
            (g, l)
        }
    };
    let scale = 1.0
        / c.opt_f64("query_pre_attn_scalar")?
            .unwrap_or(d_head as f64)
            .sqrt();
    Ok(ModelConfig {
        architecture: c.model_type()?.to_string(),
        family: Family::Gemma3,
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
        ropes: vec![global, local],
        layers: layers(&sliding, c.opt_usize("sliding_window")?, scale),
        embed_scale: Some((d_model as f64).sqrt()),
        tie_embeddings: true,
    })
}

/// Tensor names of a layout: the prefix of the language model's tensors, and llama.cpp's or
/// Hugging Face's part names.
struct Names {
    gguf: bool,
    prefix: String,
}

impl Names {
    fn global(&self, part: &str) -> String {
        match (self.gguf, part) {
            (true, "embed") => "token_embd.weight".into(),
            (true, "norm") => "output_norm.weight".into(),
            (true, _) => "output.weight".into(),
            (false, "embed") => format!("{}embed_tokens.weight", self.prefix),
            (false, "norm") => format!("{}norm.weight", self.prefix),
            (false, _) => "lm_head.weight".into(),
        }
    }

    fn layer(&self, i: usize, part: &str) -> String {
        if !self.gguf {
            return format!("{}layers.{i}.{part}.weight", self.prefix);
        }
        let s = match part {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "post_attention_layernorm" => "post_attention_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => other,
        };
        format!("blk.{i}.{s}.weight")
    }
}

pub fn load_hf(c: &HfConfig, r: &WeightReader) -> Result<Transformer> {
    let cfg = hf_config(c, r.tensor_count())?;
    // Multimodal checkpoints nest the language model (two spellings over transformers
    // versions); their vision tower is not run, so its tensors are not needed.
    let prefix = ["model.language_model.", "language_model.model.", "model."]
        .into_iter()
        .find(|p| r.has(&format!("{p}embed_tokens.weight")))
        .unwrap_or("model.")
        .to_string();
    let names = Names {
        gguf: false,
        prefix,
    };
    let tie = c.opt_bool("tie_word_embeddings")?;
    load(cfg, r, &names, tie, |n| {
        n.starts_with("vision_tower.")
            || n.starts_with("multi_modal_projector.")
            || n.starts_with("model.vision_tower.")
            || n.starts_with("model.multi_modal_projector.")
    })
}

fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let key = |k: &str| format!("gemma3.{k}");
    let opt_usize = |k: &str| -> Result<Option<usize>> {
        let k = key(k);
        if g.has(&k) {
            Ok(Some(g.get_usize(&k)?))
        } else {
            Ok(None)
        }
    };
    let opt_f64 = |k: &str| -> Result<Option<f64>> {
        let k = key(k);
        if g.has(&k) {
            Ok(Some(g.get_f64(&k)?))
        } else {
            Ok(None)
        }
    };
    let d_model = g.get_usize(&key("embedding_length"))?;
    let n_heads = g.get_usize(&key("attention.head_count"))?;
    let n_layers = g.layer_count(&key("block_count"))?;
    let d_head = opt_usize("attention.key_length")?.unwrap_or(d_model / n_heads.max(1));
    let window = opt_usize("attention.sliding_window")?;
    let pattern = opt_usize("attention.sliding_window_pattern")?.unwrap_or(DEFAULT_PATTERN);
    if pattern == 0 {
        return Err(MsError::ModelFormat(format!(
            "{}: gemma3.attention.sliding_window_pattern is 0; it must be at least 1",
            g.path().display()
        )));
    }
    let sliding = match window {
        Some(_) => from_pattern(pattern, n_layers),
        None => vec![false; n_layers],
    };
    let scaling = match g.has(&key("rope.scaling.type")) {
        false => RopeScaling::None,
        true => match g.get_str(&key("rope.scaling.type"))? {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: g.get_f64(&key("rope.scaling.factor"))?,
            },
            other => {
                return Err(MsError::UnsupportedArchitecture(format!(
                    "{}: 'gemma3.rope.scaling.type' = '{other}' is not implemented (none, \
                     linear); mindscope refuses files it would silently mis-compute",
                    g.path().display()
                )))
            }
        },
    };
    let vocab_size = match opt_usize("vocab_size")? {
        Some(v) => v,
        None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    Ok(ModelConfig {
        architecture: "gemma3".into(),
        family: Family::Gemma3,
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
        activation: Activation::GeluTanh,
        learned_positions: false,
        ropes: vec![
            RopeSpec {
                theta: opt_f64("rope.freq_base")?.unwrap_or(1e6),
                rotary_dim: d_head,
                scaling,
            },
            RopeSpec {
                theta: opt_f64("rope.freq_base_swa")?.unwrap_or(1e4),
                rotary_dim: d_head,
                scaling: RopeScaling::None,
            },
        ],
        layers: layers(&sliding, window, 1.0 / (d_head as f64).sqrt()),
        embed_scale: Some((d_model as f64).sqrt()),
        tie_embeddings: true,
    })
}

pub fn load_gguf(g: &GgufFile, r: &WeightReader) -> Result<Transformer> {
    let cfg = gguf_config(g)?;
    let names = Names {
        gguf: true,
        prefix: String::new(),
    };
    load(cfg, r, &names, None, |_| false)
}

fn load(
    mut cfg: ModelConfig,
    r: &WeightReader,
    names: &Names,
    tie: Option<bool>,
    ignorable: impl Fn(&str) -> bool,
) -> Result<Transformer> {
    check_fits(&cfg, r)?;
    let (d, f, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let eps = cfg.norm_eps;
    let plus_one = !names.gguf;
    let rms = |name: &str, size: usize| norm(r, NormKind::Rms, name, None, size, eps, plus_one);
    let embed = r.matrix(&names.global("embed"), &[v, d])?;
    let blocks = load_blocks(cfg.n_layers, |i| {
        let n = |part: &str| names.layer(i, part);
        let proj =
            |part: &str, out: usize, inp: usize| linear(r, &n(part), "", Bias::None, out, inp);
        Ok(Block {
            residual: Residual::Sequential,
            attn_norm: rms(&n("input_layernorm"), d)?,
            attn: Attention {
                q: proj("self_attn.q_proj", h * dh, d)?,
                k: proj("self_attn.k_proj", kvh * dh, d)?,
                v: proj("self_attn.v_proj", kvh * dh, d)?,
                o: proj("self_attn.o_proj", d, h * dh)?,
                q_norm: Some(rms(&n("self_attn.q_norm"), dh)?),
                k_norm: Some(rms(&n("self_attn.k_norm"), dh)?),
                n_heads: h,
                n_kv_heads: kvh,
                d_head: dh,
            },
            post_attn_norm: Some(rms(&n("post_attention_layernorm"), d)?),
            mlp_norm: rms(&n("pre_feedforward_layernorm"), d)?,
            mlp: Mlp::Gated {
                gate: proj("mlp.gate_proj", f, d)?,
                up: proj("mlp.up_proj", f, d)?,
                down: proj("mlp.down_proj", d, f)?,
                act: cfg.activation,
            },
            post_mlp_norm: Some(rms(&n("post_feedforward_layernorm"), d)?),
        })
    })?;
    let final_norm = rms(&names.global("norm"), d)?;
    let (head, tied) = lm_head(r, &names.global("head"), &embed, tie.or(Some(true)))?;
    cfg.tie_embeddings = tied;
    r.check_all_used(ignorable)?;
    let scale = cfg.embed_scale;
    Transformer::new(
        cfg,
        Embedding {
            tokens: embed,
            scale,
            positions: None,
            token_type: None,
            norm: None,
        },
        blocks,
        Some(final_norm),
        Some(head),
    )
}
