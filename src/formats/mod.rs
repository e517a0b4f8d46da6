//! The files models come in: GGUF (metadata and quantized tensors), safetensors (one file or
//! shards), Hugging Face `config.json`, and tokenizers. Nothing here knows about
//! architectures; `model::families` maps what these files say onto a model.

pub mod gguf;
pub mod hf_config;
pub mod mapped;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;
