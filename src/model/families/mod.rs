//! One file per architecture family: how its config keys map onto a [`ModelConfig`] (refusing
//! every key whose value it does not implement), and which shared parts (`model::parts`) it
//! loads from which tensor names. The forward is shared; a family has no forward of its own.
//!
//! Adding a family: a file here with `config` (keys -> [`ModelConfig`]) and `load` (tensor
//! names -> parts), its `model_type` in [`load_hf`], and a reference test against
//! `transformers` in `tests/python/test_families.py`.

mod bert;
mod gemma3;
mod gpt2;
mod gpt_neox;
mod hf_rope;
mod llama;
mod phi3;

use std::path::Path;

use candle_core::Tensor;
use rayon::prelude::*;

use super::budget;
use super::config::{ModelConfig, NormKind};
use super::parts::{Block, Linear, Norm, Weight};
use super::Transformer;
use crate::error::{MsError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::hf_config::HfConfig;
use crate::formats::safetensors::SafetensorsFolder;
use crate::formats::weights::{WeightReader, WeightsMode};
use crate::interrupt::Cancel;

/// The architecture families mindscope runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, Qwen 2, Qwen 3 (SmolLM2 is a Llama): RMSNorm, RoPE, GQA, SwiGLU.
    Llama,
    /// Gemma 3: sandwich norms, q/k norms, scaled embeddings, GeGLU, sliding-window layers.
    Gemma3,
    /// Phi-3: Llama with fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// GPT-2: learned positions, LayerNorm with bias, Conv1D weights, fused `c_attn`.
    Gpt2,
    /// GPT-NeoX / Pythia: parallel attention and MLP, partial rotary, interleaved fused qkv.
    GptNeoX,
    /// BERT encoders: learned positions, bidirectional attention, post-LayerNorm.
    Bert,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
            Family::Gpt2 => "gpt2",
            Family::GptNeoX => "gpt_neox",
            Family::Bert => "bert",
        }
    }
}

/// Hugging Face `config.json` `model_type` values with a mapping here.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "bert",
];
/// GGUF `general.architecture` values with a mapping here.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3"];

/// Refuse, before converting anything, weights whose float32 copies cannot fit in the memory
/// available now (the process would otherwise be killed half-way through the load).
fn check_weights_fit(r: &WeightReader) -> Result<()> {
    let need = r.loaded_bytes();
    let hint = match (r.mode(), r.has_quantized()) {
        (WeightsMode::Float32, true) => {
            "; load it with weights=\"quantized\" to keep the GGUF's quantized blocks as stored"
        }
        _ => ", so this model needs a machine with more memory",
    };
    let how = match r.mode() {
        WeightsMode::Float32 => "as float32",
        WeightsMode::Quantized => "as loaded (quantized matrices as stored, the rest float32)",
    };
    match budget::available_memory() {
        Some(available) if need > available => Err(MsError::Resource(format!(
            "{}: the weights take {:.1} GiB {how}, but only {:.1} GiB of memory is \
             available{hint}",
            r.origin(),
            need as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// The mode to load in: the one asked for, else quantized when the file has quantized
/// matrices. Quantized is refused for a file that has none (it would silently be float32).
fn resolve_mode(r: &WeightReader, asked: Option<WeightsMode>) -> Result<WeightsMode> {
    let has = r.has_quantized();
    match asked {
        Some(WeightsMode::Quantized) if !has => Err(MsError::invalid(format!(
            "{}: weights=\"quantized\" keeps a GGUF file's quantized matrices as stored, but \
             this model has none (its weights are stored as floats); use weights=\"float32\"",
            r.origin()
        ))),
        Some(mode) => Ok(mode),
        None if has => Ok(WeightsMode::Quantized),
        None => Ok(WeightsMode::Float32),
    }
}

/// The model in a Hugging Face folder (`config.json`, safetensors, `tokenizer.json`).
pub fn load_hf(
    folder: &Path,
    config: &HfConfig,
    mode: Option<WeightsMode>,
    cancel: &Cancel,
) -> Result<Transformer> {
    let model_type = config.model_type()?;
    let weights = SafetensorsFolder::open(folder)?;
    let r = WeightReader::new(&weights).with_cancel(cancel);
    let mode = resolve_mode(&r, mode)?;
    let r = r.with_mode(mode);
    check_weights_fit(&r)?;
    let net = match model_type {
        "llama" | "mistral" | "qwen2" | "qwen3" => llama::load_hf(config, &r),
        "gemma3" | "gemma3_text" => gemma3::load_hf(config, &r),
        "phi3" => phi3::load_hf(config, &r),
        "gpt2" => gpt2::load_hf(config, &r),
        "gpt_neox" => gpt_neox::load_hf(config, &r),
        "bert" => bert::load_hf(config, &r),
        other => Err(MsError::UnsupportedArchitecture(format!(
            "{}: model_type '{other}' is not supported; supported: {}",
            config.origin(),
            SUPPORTED_MODEL_TYPES.join(", ")
        ))),
    }?;
    cancel.progress().finish(); // tensors skipped (a tied head's copy) count as done
    Ok(net)
}

/// The model in a GGUF file.
pub fn load_gguf(
    gguf: &GgufFile,
    mode: Option<WeightsMode>,
    cancel: &Cancel,
) -> Result<Transformer> {
    let arch = gguf.get_str("general.architecture")?;
    // llama.cpp's split files ("-00001-of-00003.gguf") are separate GGUFs, not byte parts.
    if gguf.has("split.count") && gguf.get_usize("split.count")? > 1 {
        return Err(MsError::UnsupportedArchitecture(format!(
            "{}: this is one of {} llama.cpp split files (split.count); merge them first with \
             `llama-gguf-split --merge`",
            gguf.path().display(),
            gguf.get_usize("split.count")?
        )));
    }
    let key_len = format!("{arch}.attention.key_length");
    let value_len = format!("{arch}.attention.value_length");
    if gguf.has(&key_len)
        && gguf.has(&value_len)
        && gguf.get_usize(&key_len)? != gguf.get_usize(&value_len)?
    {
        return Err(MsError::UnsupportedArchitecture(format!(
            "{}: '{value_len}' differs from '{key_len}'; heads with values of another width are \
             not implemented",
            gguf.path().display()
        )));
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if gguf.has(&format!("{arch}.{key}")) {
            return Err(MsError::UnsupportedArchitecture(format!(
                "{}: '{arch}.{key}' (logit soft-capping) is not implemented",
                gguf.path().display()
            )));
        }
    }
    let r = WeightReader::new(gguf).with_cancel(cancel);
    let mode = resolve_mode(&r, mode)?;
    let r = r.with_mode(mode);
    check_weights_fit(&r)?;
    let net = match arch {
        "llama" => llama::load_gguf(gguf, &r),
        "gemma3" => gemma3::load_gguf(gguf, &r),
        other => Err(MsError::UnsupportedArchitecture(format!(
            "{}: architecture '{other}' is not supported; supported GGUF architectures: {}",
            gguf.path().display(),
            SUPPORTED_ARCHITECTURES.join(", ")
        ))),
    }?;
    cancel.progress().finish();
    Ok(net)
}

/// The head size of a family whose heads split the hidden size evenly (GPT-2, GPT-NeoX, BERT:
/// fused projections of `d_model` rows are cut into heads). A remainder would load, then fail
/// in the first forward, so it is refused here.
fn even_head_dim(c: &HfConfig, d_model: usize, n_heads: usize) -> Result<usize> {
    if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
        return Err(MsError::ModelFormat(format!(
            "{}: {n_heads} attention heads do not divide the hidden size {d_model}; the head \
             count must be a divisor of the hidden size",
            c.origin()
        )));
    }
    Ok(d_model / n_heads)
}

/// Check the config against the file before anything is allocated per layer: a layer needs
/// tensors of its own, so a file cannot describe more layers than it has tensors.
fn check_fits(cfg: &ModelConfig, r: &WeightReader) -> Result<()> {
    cfg.validate(&r.origin())?;
    let n = r.tensor_count();
    if cfg.n_layers > n {
        return Err(MsError::ModelFormat(format!(
            "{}: the config says {} layers, but the file has only {n} tensors",
            r.origin(),
            cfg.n_layers
        )));
    }
    Ok(())
}

/// A norm's weight (and bias, for LayerNorms that have one) `[d]`. `plus_one`: the file
/// stores `w - 1` (Hugging Face Gemma), the forward multiplies by `w`.
fn norm(
    r: &WeightReader,
    kind: NormKind,
    weight: &str,
    bias: Option<&str>,
    d: usize,
    eps: f64,
    plus_one: bool,
) -> Result<Norm> {
    let w = r.tensor(weight, &[d])?;
    let bias = match bias {
        Some(b) => Some(r.tensor(b, &[d])?),
        None => None,
    };
    Ok(Norm {
        kind,
        weight: if plus_one { (w + 1.0)? } else { w },
        bias,
        eps,
    })
}

/// Whether a layer's biases are required, optional (loaded if present) or absent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bias {
    Required,
    IfPresent,
    None,
}

/// A linear layer from a weight `[out, in]` and its bias `[out]` (per `bias`).
fn linear(
    r: &WeightReader,
    weight: &str,
    bias_name: &str,
    bias: Bias,
    out: usize,
    inp: usize,
) -> Result<Linear> {
    let w = r.matrix(weight, &[out, inp])?;
    let b = match bias {
        Bias::Required => Some(r.tensor(bias_name, &[out])?),
        Bias::IfPresent => r.optional(bias_name, &[out])?,
        Bias::None => None,
    };
    Ok(Linear::new(w, b))
}

/// Split `t` along axis 0 into consecutive pieces of the given sizes (fused projections:
/// `qkv_proj` -> q, k, v), each contiguous.
fn split_rows(t: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &n in sizes {
        out.push(t.narrow(0, at, n)?.contiguous()?);
        at += n;
    }
    Ok(out)
}

/// Split a fused projection into [`Linear`]s by output rows (bias split the same way).
fn split_linear(fused: Linear, sizes: &[usize]) -> Result<Vec<Linear>> {
    let mut weights = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &n in sizes {
        weights.push(fused.weight.row_range(at, n)?);
        at += n;
    }
    let biases = match &fused.bias {
        Some(b) => split_rows(b, sizes)?.into_iter().map(Some).collect(),
        None => vec![None; sizes.len()],
    };
    Ok(weights
        .into_iter()
        .zip(biases)
        .map(|(w, b)| Linear::new(w, b))
        .collect())
}

/// Load the blocks `0..n` in parallel (each reads and converts its own tensors).
fn load_blocks(n: usize, load: impl Fn(usize) -> Result<Block> + Sync) -> Result<Vec<Block>> {
    (0..n).into_par_iter().map(&load).collect()
}

/// The LM head: its own weight, or the token embedding when tied. `tie` is what the config
/// says (`None`: the family's default when the file has no head).
fn lm_head(
    r: &WeightReader,
    name: &str,
    embedding: &Weight,
    tie: Option<bool>,
) -> Result<(Weight, bool)> {
    let (v, d) = embedding.dims2()?;
    if r.has(name) && tie != Some(true) {
        return Ok((r.matrix(name, &[v, d])?, false));
    }
    if tie == Some(false) {
        return Err(MsError::ModelFormat(format!(
            "{}: tensor '{name}' is missing, and the config says the LM head is not tied to \
             the embeddings (tie_word_embeddings = false)",
            r.origin()
        )));
    }
    // Tied: a checkpoint may still carry a copy of the embedding under the head's name.
    r.skip(name);
    Ok((embedding.clone(), true))
}
