//! A Hugging Face `config.json`, read with typed getters whose errors name the file and key.
//!
//! A key that is present but of the wrong type is an error, never read as absent: a config
//! that says `"rotary_pct": "0.25"` must not silently run with full rotary.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{MsError, Result};

/// The largest `config.json` read (real ones have a few KB).
const MAX_CONFIG: u64 = 16 << 20;

/// A parsed `config.json` (the language model's part of it, for multimodal folders).
pub struct HfConfig {
    origin: String,
    root: Map<String, Value>,
    /// `text_config` when the file nests the language model (multimodal Gemma 3), else root.
    text: Option<Map<String, Value>>,
}

impl HfConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = super::read_text(path, MAX_CONFIG)?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| MsError::ModelFormat(format!("{origin}: not valid JSON: {e}")))?;
        let Value::Object(root) = json else {
            return Err(MsError::ModelFormat(format!(
                "{origin}: a config must be a JSON object"
            )));
        };
        let text = match root.get("text_config") {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        Ok(HfConfig {
            origin: origin.to_string(),
            root,
            text,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn map(&self) -> &Map<String, Value> {
        self.text.as_ref().unwrap_or(&self.root)
    }

    /// The raw value of a key, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map().get(key).filter(|v| !v.is_null())
    }

    /// `model_type` of the file (of its root, for nested multimodal configs).
    pub fn model_type(&self) -> Result<&str> {
        self.root
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                MsError::ModelFormat(format!("{}: 'model_type' is missing", self.origin))
            })
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> MsError {
        MsError::ModelFormat(format!("{}: '{key}' is {v}, expected {want}", self.origin))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| MsError::ModelFormat(format!("{}: '{key}' is missing", self.origin)))
    }

    /// The first of several spellings that is present (`n_embd` / `hidden_size`).
    pub fn usize_of(&self, keys: &[&str]) -> Result<usize> {
        for k in keys {
            if let Some(v) = self.opt_usize(k)? {
                return Ok(v);
            }
        }
        Err(MsError::ModelFormat(format!(
            "{}: '{}' is missing",
            self.origin,
            keys.join("' / '")
        )))
    }

    /// The layer count (the first of `keys` present), checked before anything is allocated per
    /// layer: each layer has tensors of its own, so the weights cannot hold more layers than
    /// they have tensors (a config saying 10**12 layers must be refused, not allocated).
    pub fn layer_count(&self, keys: &[&str], tensors: usize) -> Result<usize> {
        let n = self.usize_of(keys)?;
        if n == 0 || n > tensors {
            return Err(MsError::ModelFormat(format!(
                "{}: '{}' is {n}; it must be between 1 and the number of tensors in the \
                 weights ({tensors}), since every layer has tensors of its own",
                self.origin,
                keys.iter()
                    .find(|k| self.get(k).is_some())
                    .unwrap_or(&keys[0])
            )));
        }
        Ok(n)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a finite number", v)),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    pub fn opt_object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an object", v)),
        }
    }

    /// A token id (`bos_token_id`, ...): an integer, or the first of a list of them; `None`
    /// when absent, null, an empty list or negative (old configs write `-1` for "none").
    /// Anything else that is not a 32-bit id is an error: silently falling back to another
    /// token would pad or stop with the wrong one.
    pub fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(first) => first,
            },
            Some(v) => v,
        };
        if v.as_i64().is_some_and(|n| n < 0) {
            return Ok(None);
        }
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "a token id (an integer below 2**32)", v))
    }

    /// A config key whose value mindscope does not implement: refuse, naming the key, rather
    /// than compute something else.
    pub fn unsupported(&self, key: &str, why: impl std::fmt::Display) -> MsError {
        MsError::UnsupportedArchitecture(format!(
            "{}: '{key}' {why}; mindscope refuses configs it would silently mis-compute",
            self.origin
        ))
    }

    /// Refuse `key` when it is set to anything but one of the `allowed` values (absent and
    /// null are always allowed).
    pub fn refuse_unless(&self, key: &str, allowed: &[Value]) -> Result<()> {
        match self.get(key) {
            Some(v) if !allowed.contains(v) => Err(self.unsupported(
                key,
                format!(
                    "= {v} is not implemented (supported: {})",
                    allowed
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}
