//! Architecture hyper-parameters, read from model metadata (never hard-coded): GGUF metadata
//! or a Hugging Face `config.json`.

use serde_json::Value;

use super::gguf::GgufFile;
use super::layers::Activation;
use crate::error::{MsError, Result};

/// GGUF `general.architecture` values with a forward pass in mindscope.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3"];
/// Hugging Face `config.json` `model_type` values with a forward pass in mindscope.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "qwen2", "gemma3_text", "gemma3", "bert"];

/// The architecture families: each has one forward implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama-style decoders (SmolLM2, Llama, Qwen2): RMSNorm, RoPE, GQA, SwiGLU.
    Llama,
    /// Gemma 3 decoders: Llama plus q/k norms, post-norms, scaled embeddings, GeGLU and
    /// sliding-window layers with their own RoPE base.
    Gemma3,
    /// BERT encoders: learned positions, bidirectional attention, post-LayerNorm, GELU.
    Bert,
}

impl Family {
    pub fn activation(self) -> Activation {
        match self {
            Family::Llama => Activation::Silu,
            Family::Gemma3 => Activation::GeluTanh,
            Family::Bert => Activation::GeluErf,
        }
    }

    pub fn is_decoder(self) -> bool {
        self != Family::Bert
    }
}

/// Hyper-parameters of a transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The file's own name for the architecture (`llama`, `gemma3`, `bert`, ...).
    pub architecture: String,
    pub family: Family,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    /// RoPE base of global-attention layers (unused by BERT).
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers.
    pub rope_local_theta: f64,
    /// Window of sliding-window layers, and which layers use it.
    pub sliding_window: Option<usize>,
    pub sliding_layers: Vec<bool>,
    pub norm_eps: f64,
    pub tie_embeddings: bool,
    /// Multiplier of the query-key dot products.
    pub attn_scale: f64,
}

impl ModelConfig {
    /// Read the config of a GGUF file, failing clearly on an architecture we cannot run.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let family = match arch.as_str() {
            "llama" => Family::Llama,
            "gemma3" => Family::Gemma3,
            _ => {
                return Err(MsError::UnsupportedArchitecture(format!(
                    "{}: architecture '{arch}' is not supported; supported GGUF architectures: {}",
                    gguf.path().display(),
                    SUPPORTED_ARCHITECTURES.join(", ")
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            let k = key(k);
            if gguf.has(&k) {
                Ok(Some(gguf.get_usize(&k)?))
            } else {
                Ok(None)
            }
        };
        let opt_f64 = |k: &str| -> Result<Option<f64>> {
            let k = key(k);
            if gguf.has(&k) {
                Ok(Some(gguf.get_f64(&k)?))
            } else {
                Ok(None)
            }
        };
        let d_model = gguf.get_usize(&key("embedding_length"))?;
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let n_layers = gguf.get_usize(&key("block_count"))?;
        let d_head = opt_usize("attention.key_length")?.unwrap_or(d_model / n_heads.max(1));
        let vocab_size = match opt_usize("vocab_size")? {
            Some(v) => v,
            None => gguf.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_theta = opt_f64("rope.freq_base")?.unwrap_or(10_000.0);
        let sliding_window = opt_usize("attention.sliding_window")?;
        // llama.cpp's Gemma 3 convention when the file does not say: every 6th layer is
        // global, the others slide, and sliding layers use RoPE base 10,000.
        let (sliding_layers, rope_local_theta) = match family {
            Family::Gemma3 if sliding_window.is_some() => {
                let pattern = opt_usize("attention.sliding_window_pattern")?.unwrap_or(6);
                (
                    (0..n_layers).map(|i| (i + 1) % pattern != 0).collect(),
                    opt_f64("rope.freq_base_swa")?.unwrap_or(10_000.0),
                )
            }
            _ => (vec![false; n_layers], rope_theta),
        };
        let cfg = ModelConfig {
            family,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
            d_head,
            d_mlp: gguf.get_usize(&key("feed_forward_length"))?,
            vocab_size,
            context_length: gguf.get_usize(&key("context_length"))?,
            rope_theta,
            rope_local_theta,
            sliding_window,
            sliding_layers,
            norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: !gguf.has_tensor("output.weight"),
            attn_scale: 1.0 / (d_head as f64).sqrt(),
            architecture: arch,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a Hugging Face `config.json` (already parsed); `origin` names it in errors.
    pub fn from_hf_config(json: &Value, origin: &str) -> Result<Self> {
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| MsError::ModelFormat(format!("{origin}: 'model_type' is missing")))?;
        let family = match model_type {
            "llama" | "qwen2" => Family::Llama,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            "bert" => Family::Bert,
            other => {
                return Err(MsError::UnsupportedArchitecture(format!(
                    "{origin}: model_type '{other}' is not supported; supported: {}",
                    SUPPORTED_MODEL_TYPES.join(", ")
                )))
            }
        };
        // Multimodal Gemma 3 folders nest the language model's settings.
        let json = json.get("text_config").unwrap_or(json);
        let field = |k: &str| json.get(k).filter(|v| !v.is_null());
        let usize_of = |k: &str| -> Result<usize> {
            field(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    MsError::ModelFormat(format!(
                        "{origin}: '{k}' is missing or not a non-negative integer"
                    ))
                })
        };
        let opt_usize = |k: &str| field(k).and_then(Value::as_u64).map(|v| v as usize);
        let opt_f64 = |k: &str| field(k).and_then(Value::as_f64);
        let d_model = usize_of("hidden_size")?;
        let n_heads = usize_of("num_attention_heads")?;
        let n_layers = usize_of("num_hidden_layers")?;
        let d_head = opt_usize("head_dim").unwrap_or(d_model / n_heads.max(1));
        let rope_of = |kind: &str| {
            field("rope_parameters")
                .and_then(|r| r.get(kind).or(Some(r)))
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
        };
        let rope_theta = opt_f64("rope_theta")
            .or_else(|| rope_of("full_attention"))
            .unwrap_or(10_000.0);
        let rope_local_theta = opt_f64("rope_local_base_freq")
            .or_else(|| rope_of("sliding_attention"))
            .unwrap_or(10_000.0);
        let sliding_window = if family == Family::Gemma3 {
            opt_usize("sliding_window")
        } else {
            None
        };
        let sliding_layers: Vec<bool> = match (family, field("layer_types")) {
            (Family::Gemma3, Some(Value::Array(types))) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            (Family::Gemma3, _) => {
                let pattern = opt_usize("sliding_window_pattern")
                    .or(opt_usize("_sliding_window_pattern"))
                    .unwrap_or(6);
                (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
            }
            _ => vec![false; n_layers],
        };
        let norm_eps = match family {
            Family::Bert => opt_f64("layer_norm_eps").unwrap_or(1e-12),
            _ => opt_f64("rms_norm_eps").unwrap_or(1e-6),
        };
        let attn_scale = match (family, opt_f64("query_pre_attn_scalar")) {
            (Family::Gemma3, Some(s)) => 1.0 / s.sqrt(),
            _ => 1.0 / (d_head as f64).sqrt(),
        };
        let cfg = ModelConfig {
            architecture: model_type.to_string(),
            family,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: opt_usize("num_key_value_heads").unwrap_or(n_heads),
            d_head,
            d_mlp: usize_of("intermediate_size")?,
            vocab_size: usize_of("vocab_size")?,
            context_length: usize_of("max_position_embeddings")?,
            rope_theta,
            rope_local_theta,
            sliding_window,
            sliding_layers,
            norm_eps,
            tie_embeddings: field("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(family == Family::Gemma3),
            attn_scale,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// RoPE base and attention window of one layer.
    pub fn layer_attention(&self, layer: usize) -> (f64, Option<usize>) {
        if self.sliding_layers.get(layer).copied().unwrap_or(false) {
            (self.rope_local_theta, self.sliding_window)
        } else {
            (self.rope_theta, None)
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(MsError::ModelFormat(format!("invalid model config: {why}")));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.family.is_decoder() && !self.d_head.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} is odd (RoPE needs pairs)",
                self.d_head
            ));
        }
        if self.sliding_layers.len() != self.n_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.sliding_layers.len(),
                self.n_layers
            ));
        }
        Ok(())
    }
}
