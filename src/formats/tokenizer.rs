//! Tokenizers built from model metadata with the Hugging Face `tokenizers` crate.
//!
//! GGUF `gpt2` tokenizers (SmolLM2, Qwen2, ...) become a byte-level BPE: vocab and merges from
//! `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, the pre-tokenizer of the original
//! `tokenizer.json` (individual digits, then byte-level splitting without a prefix space), a
//! byte-level decoder, and every `token_type == 3` (control) token as a special token, so that
//! `<|im_start|>` in a prompt is one token.
//!
//! GGUF `llama` tokenizers (SentencePiece BPE: Gemma, Llama 2, ...) become a BPE whose merges
//! are derived from the piece scores (SentencePiece merges the adjacent pair whose merged piece
//! scores highest), with byte fallback, spaces written as `▁`, control tokens as special tokens
//! and user-defined pieces (runs of spaces or newlines, ...) matched whole, as SentencePiece does.
//!
//! Hugging Face folders bring their own `tokenizer.json`, used as is (its post-processor adds
//! `[CLS]`/`[SEP]` or BOS), with padding and truncation switched off: a batch is padded by the
//! model runner, and a too-long prompt is an error rather than silently cut.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::DecoderWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufFile;
use super::hf_config::HfConfig;
use crate::error::{MsError, Result};

/// The largest `tokenizer.json` read (Gemma 3's, among the largest vocabularies, has 33 MB).
const MAX_TOKENIZER: u64 = 256 << 20;

const NORMAL_TOKEN: i64 = 1;
const CONTROL_TOKEN: i64 = 3;
const USER_DEFINED_TOKEN: i64 = 4;

/// A tokenizer plus the special-token facts a model needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    /// Whether `tokenizer.json`'s post-processor adds the special tokens (HF folders).
    post_process: bool,
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
            "llama" => sentencepiece_bpe(gguf)?,
            other => {
                return Err(MsError::UnsupportedArchitecture(format!(
                    "{}: tokenizer model '{other}' is not supported; supported: gpt2, llama",
                    gguf.path().display()
                )))
            }
        };
        let id = |k: &str| -> Result<Option<u32>> {
            if !gguf.has(k) {
                return Ok(None);
            }
            // Checked, not cast: 2**32 + 1 must not become token 1.
            let n = gguf.get_usize(k)?;
            u32::try_from(n).map(Some).map_err(|_| {
                MsError::ModelFormat(format!(
                    "{}: '{k}' is {n}, which is not a token id (ids are below 2**32)",
                    gguf.path().display()
                ))
            })
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
            post_process: false,
        })
    }

    /// A Hugging Face `tokenizer.json`; special-token ids come from the model's `config.json`
    /// where it has them, else from the tokenizer's own special tokens.
    pub fn from_file(path: &Path, config: &HfConfig) -> Result<Self> {
        // Parsed as JSON first: the tokenizers crate panics (rather than returning an error)
        // on some syntax errors inside a decoder, but never on a well-formed JSON value.
        let json: serde_json::Value = serde_json::from_str(&super::read_text(path, MAX_TOKENIZER)?)
            .map_err(|e| {
                MsError::ModelFormat(format!("{}: not valid JSON: {e}", path.display()))
            })?;
        let mut inner: Tokenizer = serde_json::from_value(json).map_err(|e| {
            MsError::ModelFormat(format!(
                "{}: not a readable tokenizer.json: {e}",
                path.display()
            ))
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err("cannot switch truncation off", e))?;
        let id = |key: &str, fallbacks: &[&str]| -> Result<Option<u32>> {
            Ok(config
                .token_id(key)?
                .or_else(|| fallbacks.iter().find_map(|t| inner.token_to_id(t))))
        };
        Ok(TextTokenizer {
            bos_id: id("bos_token_id", &["<bos>", "<s>", "[CLS]"])?,
            eos_id: id("eos_token_id", &["<eos>", "</s>", "[SEP]"])?,
            pad_id: id("pad_token_id", &["<pad>", "[PAD]"])?,
            add_bos: false,
            post_process: true,
            inner,
        })
    }

    /// Encode one text (special-token strings in it become their special tokens; BOS is
    /// prepended when the model's metadata asks for it).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_char_offsets(text, self.post_process)
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

    /// The tokenizer as a Hugging Face `tokenizer.json` document.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| tok_err("cannot serialize", e))
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
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(tok_err(
            "tokens and token types differ in length",
            format!("{} / {}", tokens.len(), types.len()),
        ));
    }
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

/// A SentencePiece BPE vocabulary from GGUF metadata (see the module docs).
fn sentencepiece_bpe(gguf: &GgufFile) -> Result<Tokenizer> {
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let scores = gguf.get_f64_array("tokenizer.ggml.scores")?;
    let types = gguf.get_i64_array("tokenizer.ggml.token_type")?;
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(tok_err(
            "tokens, scores and token types differ in length",
            format!("{} / {} / {}", tokens.len(), scores.len(), types.len()),
        ));
    }
    let normal: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == NORMAL_TOKEN)
        .map(|(i, t)| (*t, i as u32))
        .collect();
    // Every way of building a normal piece from two normal pieces is a merge, ranked by the
    // merged piece's score (highest first; ties by id, i.e. vocabulary order).
    let mut ranked: Vec<(f64, u32, &str, &str)> = Vec::new();
    for (&piece, &id) in &normal {
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if normal.contains_key(left) && normal.contains_key(right) {
                ranked.push((scores[id as usize], id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = ranked
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if gguf.has("tokenizer.ggml.unknown_token_id") {
        let unk = gguf.get_usize("tokenizer.ggml.unknown_token_id")?;
        if let Some(t) = tokens.get(unk) {
            builder = builder.unk_token(t.to_string()).fuse_unk(true);
        }
    }
    let bpe = builder
        .build()
        .map_err(|e| tok_err("cannot build SentencePiece BPE", e))?;
    let mut tk = Tokenizer::new(bpe);
    let space_prefix = gguf.has("tokenizer.ggml.add_space_prefix")
        && gguf.get_bool("tokenizer.ggml.add_space_prefix")?;
    let replace = Replace::new(" ", "\u{2581}").map_err(|e| tok_err("normalizer", e))?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace));
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| tok_err("normalizer", e))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(|e| tok_err("decoder", e))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == kind)
            .map(|(i, _)| AddedToken::from(tokens[i].to_string(), special).normalized(false))
            .collect()
    };
    tk.add_special_tokens(added(CONTROL_TOKEN, true))
        .map_err(|e| tok_err("cannot add special tokens", e))?;
    tk.add_tokens(added(USER_DEFINED_TOKEN, false))
        .map_err(|e| tok_err("cannot add user-defined tokens", e))?;
    Ok(tk)
}
