//! Language models: loading, tokenization, batched runs with hooks, and generation.

mod ablation;
pub mod config;
pub mod decoder;
mod generate;
pub mod gguf;
mod run;
pub mod tokenizer;

use std::path::Path;

pub use ablation::{Ablation, AblationScores};
pub use config::{DecoderConfig, SUPPORTED_ARCHITECTURES};
pub use decoder::{Decoder, KvCache};
pub use generate::{Generation, SamplingParams};
pub use run::RunOutput;
pub use tokenizer::{Encoded, TextTokenizer};

use crate::error::{MsError, Result};
use crate::hooks::HookRegistry;

/// A loaded language model: weights, tokenizer and hook registry.
pub struct LanguageModel {
    pub name: String,
    pub source: String,
    pub decoder: Decoder,
    pub tokenizer: TextTokenizer,
}

impl LanguageModel {
    /// Load a model from a GGUF file.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(MsError::UnsupportedArchitecture(format!(
                "{} is a folder; loading Hugging Face folders is not supported yet \
                 (supported: GGUF files with architecture {})",
                path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        if !path.exists() {
            return Err(MsError::io(
                format!("model file {} does not exist", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let gguf = gguf::GgufFile::open(path)?;
        let cfg = DecoderConfig::from_gguf(&gguf)?;
        let tokenizer = TextTokenizer::from_gguf(&gguf)?;
        let decoder = Decoder::from_gguf(&gguf, cfg)?;
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
            decoder,
            tokenizer,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.decoder.cfg
    }

    pub fn hooks(&self) -> &HookRegistry {
        &self.decoder.hooks
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
