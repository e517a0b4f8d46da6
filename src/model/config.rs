//! Architecture hyper-parameters, read from model metadata (never hard-coded).

use super::gguf::GgufFile;
use crate::error::{MsError, Result};

/// Architectures with a forward pass in mindscope.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
    pub tie_embeddings: bool,
}

impl DecoderConfig {
    /// Read the config of a GGUF file, failing clearly on an architecture we cannot run.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(MsError::UnsupportedArchitecture(format!(
                "{}: architecture '{arch}' is not supported yet; supported: {}",
                gguf.path().display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let d_model = gguf.get_usize(&key("embedding_length"))?;
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = if gguf.has(&key("attention.head_count_kv")) {
            gguf.get_usize(&key("attention.head_count_kv"))?
        } else {
            n_heads
        };
        let d_head = if gguf.has(&key("attention.key_length")) {
            gguf.get_usize(&key("attention.key_length"))?
        } else {
            d_model / n_heads.max(1)
        };
        let vocab_size = if gguf.has(&key("vocab_size")) {
            gguf.get_usize(&key("vocab_size"))?
        } else {
            gguf.get_str_array("tokenizer.ggml.tokens")?.len()
        };
        let cfg = DecoderConfig {
            n_layers: gguf.get_usize(&key("block_count"))?,
            d_model,
            n_heads,
            n_kv_heads,
            d_head,
            d_mlp: gguf.get_usize(&key("feed_forward_length"))?,
            vocab_size,
            context_length: gguf.get_usize(&key("context_length"))?,
            rope_theta: if gguf.has(&key("rope.freq_base")) {
                gguf.get_f64(&key("rope.freq_base"))?
            } else {
                10_000.0
            },
            norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: !gguf.has_tensor("output.weight"),
            architecture: arch,
        };
        cfg.validate()?;
        Ok(cfg)
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
        if !self.d_head.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} is odd (RoPE needs pairs)",
                self.d_head
            ));
        }
        Ok(())
    }
}
