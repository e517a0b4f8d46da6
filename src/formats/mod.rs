//! The files models come in: GGUF (metadata and quantized tensors), safetensors (one file or
//! shards), Hugging Face `config.json`, and tokenizers. Nothing here knows about
//! architectures; `model::families` maps what these files say onto a model.

pub mod gguf;
pub mod hf_config;
pub mod mapped;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use crate::error::{MsError, Result};

/// Read a small text file (a config, an index, a tokenizer) whole, refusing one larger than
/// `max` bytes before reading it: a multi-GB file in place of a config must fail with a clear
/// error, not exhaust memory.
pub fn read_text(path: &Path, max: u64) -> Result<String> {
    let io = |e| MsError::io(format!("cannot read {}", path.display()), e);
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max {
        return Err(MsError::ModelFormat(format!(
            "{} has {len} bytes; a file of this kind has at most {max} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(io)
}
