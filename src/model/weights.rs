//! Where weights come from: a GGUF file or a Hugging Face folder of safetensors, behind one
//! interface, so every architecture's loader reads both the same way.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::gguf::GgufFile;
use crate::error::{MsError, Result};

/// A named collection of tensors, each handed out as f32.
pub trait TensorSource: Sync {
    /// What the tensors are read from (for error messages).
    fn origin(&self) -> String;
    fn has_tensor(&self, name: &str) -> bool;
    /// Several tensors as f32, in the order asked (missing ones are an error naming them).
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>>;
}

impl TensorSource for GgufFile {
    fn origin(&self) -> String {
        self.path().display().to_string()
    }
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        GgufFile::tensors_f32(self, names)
    }
}

/// The `*.safetensors` files of a Hugging Face folder, memory-mapped (sharded models too).
pub struct SafetensorsFolder {
    folder: PathBuf,
    files: MmapedSafetensors,
    names: HashSet<String>,
}

impl SafetensorsFolder {
    pub fn open(folder: &Path) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
            .map_err(|e| MsError::io(format!("cannot list model folder {}", folder.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(MsError::ModelFormat(format!(
                "{}: no model.safetensors (or *.safetensors shards) in this folder; a Hugging \
                 Face model folder needs config.json, *.safetensors and tokenizer.json",
                folder.display()
            )));
        }
        // Safety: the files are mapped read-only; a file changed by another process while
        // mapped is undefined behaviour for any mmap reader, as for the original library.
        let files = unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| {
            MsError::ModelFormat(format!(
                "{}: not a readable safetensors file set: {e}",
                folder.display()
            ))
        })?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(SafetensorsFolder {
            folder: folder.to_path_buf(),
            files,
            names,
        })
    }
}

impl TensorSource for SafetensorsFolder {
    fn origin(&self) -> String {
        self.folder.display().to_string()
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|name| {
                if !self.names.contains(name) {
                    return Err(MsError::ModelFormat(format!(
                        "{}: tensor '{name}' is missing",
                        self.origin()
                    )));
                }
                let view = self.files.get(name).map_err(|e| {
                    MsError::ModelFormat(format!(
                        "{}: cannot read tensor '{name}': {e}",
                        self.origin()
                    ))
                })?;
                use safetensors::Dtype as St;
                if !matches!(view.dtype(), St::F32 | St::F16 | St::BF16 | St::F64) {
                    return Err(MsError::ModelFormat(format!(
                        "{}: tensor '{name}' has dtype {:?}; weights must be F32, F16, BF16 or \
                         F64",
                        self.origin(),
                        view.dtype()
                    )));
                }
                let t = self.files.load(name, &Device::Cpu).map_err(|e| {
                    MsError::ModelFormat(format!(
                        "{}: cannot read tensor '{name}': {e}",
                        self.origin()
                    ))
                })?;
                match t.dtype() {
                    DType::F32 => Ok(t),
                    DType::F16 | DType::BF16 | DType::F64 => Ok(t.to_dtype(DType::F32)?),
                    other => Err(MsError::ModelFormat(format!(
                        "{}: tensor '{name}' has dtype {other:?}; weights must be F32, F16, \
                         BF16 or F64",
                        self.origin()
                    ))),
                }
            })
            .collect()
    }
}

/// Reads tensors by name from a source, checking each one's shape.
pub struct ShapedReader<'a> {
    source: &'a dyn TensorSource,
    loaded: HashMap<String, Tensor>,
}

impl<'a> ShapedReader<'a> {
    /// Load `names` at once (in parallel where the source can) for later `take`s.
    pub fn load(source: &'a dyn TensorSource, names: Vec<String>) -> Result<Self> {
        let tensors = source.tensors_f32(&names)?;
        Ok(ShapedReader {
            source,
            loaded: names.into_iter().zip(tensors).collect(),
        })
    }

    /// The tensor `name`, which must have shape `expect`.
    pub fn take(&mut self, name: &str, expect: &[usize]) -> Result<Tensor> {
        let t = self.loaded.remove(name).ok_or_else(|| {
            MsError::ModelFormat(format!(
                "{}: tensor '{name}' is missing",
                self.source.origin()
            ))
        })?;
        if t.dims() != expect {
            return Err(MsError::ModelFormat(format!(
                "{}: tensor '{name}' has shape {:?}, expected {expect:?}",
                self.source.origin(),
                t.dims()
            )));
        }
        Ok(t)
    }

    /// A matrix `[rows, cols]` with any number of rows (e.g. token-type embeddings).
    pub fn take_rows(&mut self, name: &str, cols: usize) -> Result<Tensor> {
        let rows = match self.loaded.get(name).map(|t| t.dims().to_vec()) {
            Some(dims) if dims.len() == 2 && dims[0] > 0 => dims[0],
            _ => 1,
        };
        self.take(name, &[rows, cols])
    }

    /// Like `take`, for a tensor that may be absent (loaded only if the source has it).
    pub fn take_opt(&mut self, name: &str, expect: &[usize]) -> Result<Option<Tensor>> {
        if self.loaded.contains_key(name) {
            Ok(Some(self.take(name, expect)?))
        } else {
            Ok(None)
        }
    }
}

/// The names among `candidates` that the source has (for optional tensors such as biases).
pub fn present(
    source: &dyn TensorSource,
    candidates: impl IntoIterator<Item = String>,
) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|n| source.has_tensor(n))
        .collect()
}
