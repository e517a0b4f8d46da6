//! Reading GGUF files: metadata with typed getters and tensors dequantized to f32.
//!
//! Parsing and dequantization are candle-core's (every ggml type candle knows: F32/F16/BF16,
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants...). This module adds the error messages a user can act
//! on (not a GGUF file, truncated file, missing key or tensor) and parallel dequantization.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{MsError, Result};

/// An opened GGUF file: parsed header plus the raw bytes (tensors are dequantized on demand).
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    bytes: Vec<u8>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_parts(&[path.to_path_buf()])
    }

    /// A GGUF file stored as consecutive parts, read as their concatenation.
    pub fn open_parts(parts: &[PathBuf]) -> Result<Self> {
        let path = parts
            .first()
            .ok_or_else(|| MsError::invalid("no GGUF file given"))?;
        let mut bytes = Vec::new();
        for part in parts {
            let mut file = std::fs::File::open(part).map_err(|e| {
                MsError::io(format!("cannot open model file {}", part.display()), e)
            })?;
            file.read_to_end(&mut bytes).map_err(|e| {
                MsError::io(format!("cannot read model file {}", part.display()), e)
            })?;
        }
        if bytes.len() < 4 || &bytes[..4] != b"GGUF" {
            let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4)]).into_owned();
            return Err(MsError::ModelFormat(format!(
                "{} is not a GGUF file: it starts with {head:?}, a GGUF file starts with \"GGUF\"",
                path.display()
            )));
        }
        let content = Content::read(&mut Cursor::new(&bytes)).map_err(|e| {
            MsError::ModelFormat(format!(
                "{} is not a readable GGUF file (truncated or corrupt header): {e}",
                path.display()
            ))
        })?;
        let file = GgufFile {
            path: path.to_path_buf(),
            content,
            bytes,
        };
        file.check_complete()?;
        Ok(file)
    }

    /// A truncated download is the most common broken file: say so up front, not at the first
    /// tensor that happens to lie past the end.
    fn check_complete(&self) -> Result<()> {
        let data_start = self.content.tensor_data_offset as usize;
        for (name, info) in &self.content.tensor_infos {
            let n = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let size = n / block * info.ggml_dtype.type_size();
            let end = data_start + info.offset as usize + size;
            if end > self.bytes.len() {
                return Err(MsError::ModelFormat(format!(
                    "{} is truncated: tensor '{name}' ends at byte {end} but the file has {} bytes",
                    self.path.display(),
                    self.bytes.len()
                )));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| {
            MsError::ModelFormat(format!(
                "{}: metadata key '{key}' is missing",
                self.path.display()
            ))
        })
    }

    fn bad_type(&self, key: &str, want: &str) -> MsError {
        MsError::ModelFormat(format!(
            "{}: metadata key '{key}' is not {want}",
            self.path.display()
        ))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => return Err(self.bad_type(key, "a non-negative integer")),
        };
        Ok(n as usize)
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.value(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            _ => Err(self.bad_type(key, "a float")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.bad_type(key, "a bool")),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.bad_type(key, "a string")),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(self.bad_type(key, "an array of strings")),
                })
                .collect(),
            _ => Err(self.bad_type(key, "an array")),
        }
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(i64::from(*x)),
                    Value::U32(x) => Ok(i64::from(*x)),
                    Value::I64(x) => Ok(*x),
                    Value::U8(x) => Ok(i64::from(*x)),
                    Value::I8(x) => Ok(i64::from(*x)),
                    _ => Err(self.bad_type(key, "an array of integers")),
                })
                .collect(),
            _ => Err(self.bad_type(key, "an array")),
        }
    }

    pub fn get_f64_array(&self, key: &str) -> Result<Vec<f64>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(f64::from(*x)),
                    Value::F64(x) => Ok(*x),
                    _ => Err(self.bad_type(key, "an array of floats")),
                })
                .collect(),
            _ => Err(self.bad_type(key, "an array")),
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Dequantize several tensors to f32 in parallel, in the order asked.
    /// Shapes are row-major with ggml's dimension order reversed (`[out, in]` for a weight).
    pub fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        names
            .par_iter()
            .map(|name| {
                let info = self.content.tensor_infos.get(name).ok_or_else(|| {
                    MsError::ModelFormat(format!(
                        "{}: tensor '{name}' is missing",
                        self.path.display()
                    ))
                })?;
                let mut reader = Cursor::new(&self.bytes);
                let q = info
                    .read(&mut reader, self.content.tensor_data_offset, &Device::Cpu)
                    .map_err(|e| {
                        MsError::ModelFormat(format!(
                            "{}: cannot read tensor '{name}' ({:?}): {e}",
                            self.path.display(),
                            info.ggml_dtype
                        ))
                    })?;
                q.dequantize(&Device::Cpu).map_err(|e| {
                    MsError::ModelFormat(format!(
                        "{}: cannot dequantize tensor '{name}' of type {:?}: {e}",
                        self.path.display(),
                        info.ggml_dtype
                    ))
                })
            })
            .collect()
    }

    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        Ok(self.tensors_f32(&[name.to_string()])?.remove(0))
    }
}
