//! Hugging Face safetensors: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, memory-mapped. Each tensor is converted to f32 from the dtype
//! it is stored in (F32, F16, BF16, F64) and its file pages released, so a load holds the f32
//! weights plus one tensor's worth of file at a time.
//!
//! The header is parsed here, not by the `safetensors` crate, so that every length in it is
//! checked against the file before anything is allocated or read.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde_json::Value;

use super::mapped::MappedFile;
use crate::error::{MsError, Result};

/// How a tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    /// Any other dtype (integers, 8-bit floats): listed, refused when read as a weight.
    Other,
}

impl Dtype {
    fn parse(s: &str) -> (Self, usize) {
        match s {
            "F32" => (Dtype::F32, 4),
            "F16" => (Dtype::F16, 2),
            "BF16" => (Dtype::BF16, 2),
            "F64" => (Dtype::F64, 8),
            "I64" | "U64" => (Dtype::Other, 8),
            "I32" | "U32" => (Dtype::Other, 4),
            "I16" | "U16" => (Dtype::Other, 2),
            _ => (Dtype::Other, 1),
        }
    }
}

/// A tensor's place in one of the files.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    dtype_name: String,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    len: usize,
}

/// The safetensors files of a model folder, with a directory of every tensor in them.
pub struct SafetensorsFolder {
    folder: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
}

/// The largest header accepted (the safetensors format's own limit).
const MAX_HEADER: usize = 100 << 20;

/// Which files hold the weights: `model.safetensors` if present (as transformers prefers),
/// else the shards named in `model.safetensors.index.json`, else every `*.safetensors`.
fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join("model.safetensors.index.json");
    if index.is_file() {
        // Real indexes have a line per tensor: well under a megabyte.
        let text = super::read_text(&index, 64 << 20)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            MsError::ModelFormat(format!("{}: not valid JSON: {e}", index.display()))
        })?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                MsError::ModelFormat(format!("{}: no 'weight_map' object", index.display()))
            })?;
        let mut names: Vec<&str> = Vec::new();
        for file in map.values() {
            let file = file.as_str().ok_or_else(|| {
                MsError::ModelFormat(format!(
                    "{}: weight_map values must be file names",
                    index.display()
                ))
            })?;
            if file.contains(['/', '\\']) || file == ".." {
                return Err(MsError::ModelFormat(format!(
                    "{}: shard '{file}' is not a file name inside the folder",
                    index.display()
                )));
            }
            if !names.contains(&file) {
                names.push(file);
            }
        }
        names.sort();
        let paths: Vec<PathBuf> = names.iter().map(|n| folder.join(n)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(MsError::ModelFormat(format!(
                "{}: shard {} listed in model.safetensors.index.json is missing (an interrupted \
                 download?)",
                folder.display(),
                missing.display()
            )));
        }
        return Ok(paths);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| MsError::io(format!("cannot list model folder {}", folder.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(MsError::ModelFormat(format!(
            "{}: no model.safetensors (or *.safetensors shards) in this folder; a Hugging Face \
             model folder needs config.json, *.safetensors and tokenizer.json",
            folder.display()
        )));
    }
    Ok(paths)
}

/// The directory of one file: name -> entry, every range inside the file. The header is read
/// with plain reads before the file is mapped, so a multi-GB file that is not safetensors is
/// refused without mapping it, even under an address-space limit smaller than the file.
fn parse_header(path: &Path, index: usize) -> Result<Vec<(String, Entry)>> {
    let bad = |why: String| {
        MsError::ModelFormat(format!(
            "{} is not a readable safetensors file: {why}",
            path.display()
        ))
    };
    let io = |e| MsError::io(format!("cannot read model file {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let file_len = usize::try_from(file_len).map_err(|_| {
        bad(format!(
            "it has {file_len} bytes, more than can be addressed"
        ))
    })?;
    if file_len < 8 {
        return Err(bad(format!("it has {file_len} bytes")));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(io)?;
    let n = u64::from_le_bytes(len_bytes);
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_HEADER && n <= file_len - 8)
        .ok_or_else(|| {
            bad(format!(
                "its header claims {n} bytes, the file has {file_len} (truncated?); a header \
                 has at most {MAX_HEADER} bytes"
            ))
        })?;
    let mut text = vec![0u8; n];
    file.read_exact(&mut text).map_err(io)?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut out = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype_name = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tensor '{name}' has no dtype")))?;
        let (dtype, size) = Dtype::parse(dtype_name);
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid shape")))?;
        let offsets: Vec<usize> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .filter(|o: &Vec<usize>| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid data_offsets")))?;
        let (s, e) = (offsets[0], offsets[1]);
        let want = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor '{name}' has shape {shape:?}")))?;
        if s > e || e > data_len || e - s != want {
            return Err(bad(format!(
                "tensor '{name}' ({dtype_name} {shape:?}) has data_offsets [{s}, {e}] in a data \
                 section of {data_len} bytes (needs {want} bytes; truncated?)"
            )));
        }
        out.push((
            name,
            Entry {
                file: index,
                dtype,
                dtype_name: dtype_name.to_string(),
                shape,
                start: data_start + s,
                len: e - s,
            },
        ));
    }
    check_disjoint(&out).map_err(bad)?;
    Ok(out)
}

/// The safetensors format gives every tensor bytes of its own; two ranges that overlap mean a
/// corrupt header (offsets shifted or copied), whose tensors would read each other's bytes.
fn check_disjoint(entries: &[(String, Entry)]) -> std::result::Result<(), String> {
    let mut ranges: Vec<(usize, usize, &str)> = entries
        .iter()
        .map(|(name, e)| (e.start, e.start + e.len, name.as_str()))
        .filter(|(s, e, _)| e > s)
        .collect();
    ranges.sort_unstable();
    match ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        Some(w) => Err(format!(
            "the bytes of tensors '{}' and '{}' overlap (data_offsets must not overlap)",
            w[0].2, w[1].2
        )),
        None => Ok(()),
    }
}

/// Little-endian elements of `bytes` as f32 (any alignment).
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::Other => Vec::new(),
    }
}

impl SafetensorsFolder {
    pub fn open(folder: &Path) -> Result<Self> {
        let paths = weight_files(folder)?;
        let headers = paths
            .iter()
            .enumerate()
            .map(|(i, p)| parse_header(p, i))
            .collect::<Result<Vec<_>>>()?;
        let files = paths
            .iter()
            .map(|p| MappedFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        let mut tensors = HashMap::new();
        for (file, header) in files.iter().zip(headers) {
            for (name, entry) in header {
                if let Some(prev) = tensors.insert(name.clone(), entry) {
                    return Err(MsError::ModelFormat(format!(
                        "{}: tensor '{name}' is in both {} and {}",
                        folder.display(),
                        files[prev.file].path.display(),
                        file.path.display()
                    )));
                }
            }
        }
        Ok(SafetensorsFolder {
            folder: folder.to_path_buf(),
            files,
            tensors,
        })
    }

    pub fn origin(&self) -> String {
        self.folder.display().to_string()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|e| e.shape.clone())
    }

    /// Several tensors as f32, in parallel, in the order asked.
    pub fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        names.par_iter().map(|name| self.tensor_f32(name)).collect()
    }

    fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| {
            MsError::ModelFormat(format!("{}: tensor '{name}' is missing", self.origin()))
        })?;
        if e.dtype == Dtype::Other {
            return Err(MsError::ModelFormat(format!(
                "{}: tensor '{name}' is stored as {}; weights must be F32, F16, BF16 or F64 \
                 (quantized safetensors such as GPTQ/AWQ are not supported)",
                self.origin(),
                e.dtype_name
            )));
        }
        let file = &self.files[e.file];
        // The header was checked against the file's length before mapping; a file that
        // shrank since is an error here, not a slice panic.
        let bytes = file.bytes().get(e.start..e.start + e.len).ok_or_else(|| {
            MsError::ModelFormat(format!(
                "{}: tensor '{name}' lies beyond the end of {} (the file changed while loading?)",
                self.origin(),
                file.path.display()
            ))
        })?;
        let data = to_f32(e.dtype, bytes);
        file.release(e.start, e.len);
        Ok(Tensor::from_vec(data, e.shape.as_slice(), &Device::Cpu)?)
    }
}
