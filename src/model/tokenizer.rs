//! Tokenizers built from model metadata with the Hugging Face `tokenizers` crate.
//!
//! GGUF `gpt2` tokenizers (SmolLM2, Qwen2, ...) become a byte-level BPE: vocab and merges from
//! `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, the pre-tokenizer of the original
//! `tokenizer.json` (individual digits, then byte-level splitting without a prefix space), a
//! byte-level decoder, and every `token_type == 3` (control) token as a special token, so that
//! `<|im_start|>` in a prompt is one token.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufFile;
use crate::error::{MsError, Result};

const CONTROL_TOKEN: i64 = 3;

/// A tokenizer plus the special-token facts a model needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
}

/// Token ids of one text and each token's character span (start, end) in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> MsError {
    MsError::ModelFormat(format!("tokenizer: {what}: {e}"))
}

impl TextTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let kind = gguf.get_str("tokenizer.ggml.model")?;
        let inner = match kind {
            "gpt2" => byte_level_bpe(gguf)?,
            other => {
                return Err(MsError::UnsupportedArchitecture(format!(
                    "{}: tokenizer model '{other}' is not supported yet; supported: gpt2",
                    gguf.path().display()
                )))
            }
        };
        let id = |k: &str| -> Result<Option<u32>> {
            if gguf.has(k) {
                Ok(Some(gguf.get_usize(k)? as u32))
            } else {
                Ok(None)
            }
        };
        Ok(TextTokenizer {
            inner,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: if gguf.has("tokenizer.ggml.add_bos_token") {
                gguf.get_bool("tokenizer.ggml.add_bos_token")?
            } else {
                false
            },
        })
    }

    /// Encode one text (special-token strings in it become their special tokens; BOS is
    /// prepended when the model's metadata asks for it).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| MsError::invalid(format!("cannot tokenize {text:?}: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let mut offsets = enc.get_offsets().to_vec();
        if self.add_bos {
            if let Some(bos) = self.bos_id {
                ids.insert(0, bos);
                offsets.insert(0, (0, 0));
            }
        }
        Ok(Encoded { ids, offsets })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, false)
            .map_err(|e| MsError::invalid(format!("cannot decode {ids:?}: {e}")))
    }

    /// The vocabulary string of each id (e.g. "Ġcapital").
    pub fn id_to_token(&self, id: u32) -> Result<String> {
        self.inner
            .id_to_token(id)
            .ok_or_else(|| self.out_of_range(id))
    }

    /// The text each id stands for on its own ("Ġcapital" -> " capital").
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.decode(&[id])
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn out_of_range(&self, id: u32) -> MsError {
        MsError::invalid(format!(
            "token id {id} is out of range (vocabulary size {})",
            self.vocab_size()
        ))
    }

    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            Some(&bad) => Err(self.out_of_range(bad)),
            None => Ok(()),
        }
    }
}

fn byte_level_bpe(gguf: &GgufFile) -> Result<Tokenizer> {
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
    let types = if gguf.has("tokenizer.ggml.token_type") {
        gguf.get_i64_array("tokenizer.ggml.token_type")?
    } else {
        Vec::new()
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err("merge without a space", m))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tok_err("cannot build BPE", e))?;
    let mut tk = Tokenizer::new(bpe);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == CONTROL_TOKEN)
        .map(|(i, _)| AddedToken::from(tokens[i].to_string(), true))
        .collect();
    tk.add_special_tokens(specials)
        .map_err(|e| tok_err("cannot add special tokens", e))?;
    Ok(tk)
}
