//! Where weights come from: a GGUF file or a Hugging Face folder of safetensors, behind one
//! interface, so every family's loader reads both the same way.

use std::collections::HashSet;
use std::sync::Mutex;

use candle_core::Tensor;

use super::gguf::GgufFile;
use super::safetensors::SafetensorsFolder;
use crate::error::{MsError, Result};
use crate::interrupt::Cancel;
use crate::kernels::quantized::QMatrix;
use crate::model::parts::Weight;

/// How a model holds its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsMode {
    /// Every tensor converted to float32 (exact against a float32 reference).
    Float32,
    /// Matrices stored in a quantized block type stay in it (GGUF); the rest is float32.
    Quantized,
}

/// A named collection of tensors, each handed out as f32.
pub trait TensorSource: Sync {
    /// What the tensors are read from (for error messages).
    fn origin(&self) -> String;
    fn has_tensor(&self, name: &str) -> bool;
    /// The stored shape of a tensor (row-major), without reading it.
    fn dims(&self, name: &str) -> Option<Vec<usize>>;
    /// Every tensor's name.
    fn names(&self) -> Vec<String>;
    /// Several tensors as f32, in the order asked (missing ones are an error naming them).
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>>;
    /// Bytes of a matrix stored in a block type that can be multiplied quantized (`None`
    /// for float tensors, and for sources without quantized tensors).
    fn quantized_len(&self, _name: &str) -> Option<usize> {
        None
    }
    /// Such a matrix, in its stored blocks.
    fn quantized(&self, name: &str) -> Result<QMatrix> {
        Err(MsError::ModelFormat(format!(
            "{}: tensor '{name}' is not stored quantized",
            self.origin()
        )))
    }
}

impl TensorSource for GgufFile {
    fn origin(&self) -> String {
        self.path().display().to_string()
    }
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor_infos().get(name).map(|t| t.dims.clone())
    }
    fn names(&self) -> Vec<String> {
        self.tensor_infos().keys().cloned().collect()
    }
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        GgufFile::tensors_f32(self, names)
    }
    fn quantized_len(&self, name: &str) -> Option<usize> {
        let info = self.tensor_infos().get(name)?;
        let multipliable = crate::kernels::quantized::SUPPORTED.contains(&info.dtype);
        (multipliable && info.dims.len() == 2).then_some(info.len)
    }
    fn quantized(&self, name: &str) -> Result<QMatrix> {
        GgufFile::tensor_quantized(self, name)
    }
}

impl TensorSource for SafetensorsFolder {
    fn origin(&self) -> String {
        SafetensorsFolder::origin(self)
    }
    fn has_tensor(&self, name: &str) -> bool {
        SafetensorsFolder::has_tensor(self, name)
    }
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        SafetensorsFolder::dims(self, name)
    }
    fn names(&self) -> Vec<String> {
        SafetensorsFolder::names(self)
    }
    fn tensors_f32(&self, names: &[String]) -> Result<Vec<Tensor>> {
        SafetensorsFolder::tensors_f32(self, names)
    }
}

/// Refuse a weight with a NaN or an infinity: the model would load, then answer every prompt
/// with NaN activations. Counting (not `any`, whose early exit keeps the loop scalar) lets the
/// compiler vectorize the pass: about 0.2 ns a weight, little next to the conversion that
/// produced the tensor. The index is only searched for once a chunk has a bad value.
pub fn check_finite(t: &Tensor, name: &str, origin: &str) -> Result<()> {
    let first_bad = |v: &[f32]| -> Option<usize> {
        let all_finite = v
            .chunks(4096)
            .all(|c| c.iter().filter(|x| !x.is_finite()).count() == 0);
        (!all_finite).then(|| v.iter().position(|x| !x.is_finite()).unwrap_or(0))
    };
    let bad = match crate::kernels::fused::with_f32(t, first_bad) {
        Some(found) => found,
        None => first_bad(&t.flatten_all()?.to_vec1::<f32>()?),
    };
    match bad {
        None => Ok(()),
        Some(i) => {
            let value = t.flatten_all()?.get(i)?.to_scalar::<f32>()?;
            Err(MsError::ModelFormat(format!(
                "{origin}: tensor '{name}' contains {value} (element {i} of shape {:?}); weights \
                 must be finite numbers (a corrupted or badly converted checkpoint?)",
                t.dims()
            )))
        }
    }
}

/// Reads tensors by name, checking each one's shape and remembering which were read, so that a
/// loader can refuse a file with tensors it would silently ignore.
pub struct WeightReader<'a> {
    source: &'a dyn TensorSource,
    mode: WeightsMode,
    used: Mutex<HashSet<String>>,
    /// Checked before each tensor is read; its progress counts the tensors read.
    cancel: Cancel,
}

impl<'a> WeightReader<'a> {
    pub fn new(source: &'a dyn TensorSource) -> Self {
        WeightReader {
            source,
            mode: WeightsMode::Float32,
            used: Mutex::new(HashSet::new()),
            cancel: Cancel::default(),
        }
    }

    /// The same reader, stopping at the next tensor once `cancel` fires and counting the
    /// tensors read out of the file's total through its progress.
    pub fn with_cancel(mut self, cancel: &Cancel) -> Self {
        cancel.progress().start(self.tensor_count() as u64);
        self.cancel = cancel.clone();
        self
    }

    /// The same reader, keeping quantized matrices as stored when `mode` says so.
    pub fn with_mode(mut self, mode: WeightsMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn mode(&self) -> WeightsMode {
        self.mode
    }

    /// Whether the file has any matrix that this mode keeps quantized.
    pub fn has_quantized(&self) -> bool {
        self.source
            .names()
            .iter()
            .any(|n| self.source.quantized_len(n).is_some())
    }

    pub fn origin(&self) -> String {
        self.source.origin()
    }

    pub fn has(&self, name: &str) -> bool {
        self.source.has_tensor(name)
    }

    /// Bytes of every tensor of the file once loaded in this mode: float32, or as stored for
    /// the matrices kept quantized (what loading will hold; saturating, so a crafted shape
    /// cannot overflow it).
    pub fn loaded_bytes(&self) -> usize {
        self.source
            .names()
            .iter()
            .filter_map(|n| match (self.mode, self.source.quantized_len(n)) {
                (WeightsMode::Quantized, Some(len)) => Some(len),
                _ => self.source.dims(n).map(|dims| {
                    dims.iter()
                        .try_fold(std::mem::size_of::<f32>(), |a, &d| a.checked_mul(d))
                        .unwrap_or(usize::MAX)
                }),
            })
            .fold(0, usize::saturating_add)
    }

    /// How many tensors the file has.
    pub fn tensor_count(&self) -> usize {
        self.source.names().len()
    }

    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.source.dims(name)
    }

    fn missing(&self, name: &str) -> MsError {
        MsError::ModelFormat(format!("{}: tensor '{name}' is missing", self.origin()))
    }

    /// The tensor `name` as f32, which must have shape `expect` (checked before reading).
    pub fn tensor(&self, name: &str, expect: &[usize]) -> Result<Tensor> {
        self.before_reading(name, expect)?;
        let t = self
            .source
            .tensors_f32(&[name.to_string()])?
            .pop()
            .ok_or_else(|| self.missing(name))?;
        check_finite(&t, name, &self.origin())?;
        self.read(name);
        Ok(t)
    }

    /// Stop here if cancelled; refuse a missing tensor or one of another shape.
    fn before_reading(&self, name: &str, expect: &[usize]) -> Result<()> {
        self.cancel.check()?;
        let dims = self.dims(name).ok_or_else(|| self.missing(name))?;
        if dims != expect {
            return Err(MsError::ModelFormat(format!(
                "{}: tensor '{name}' has shape {dims:?}, expected {expect:?}",
                self.origin()
            )));
        }
        Ok(())
    }

    /// Count `name` as read (for `check_all_used` and the progress).
    fn read(&self, name: &str) {
        self.used
            .lock()
            .expect("no panics while held")
            .insert(name.to_string());
        self.cancel.progress().advance(1);
    }

    /// A weight matrix `expect = [out, in]`: kept in its stored block type in quantized mode
    /// (when it has one that can be multiplied), float32 otherwise.
    pub fn matrix(&self, name: &str, expect: &[usize]) -> Result<Weight> {
        if self.mode == WeightsMode::Float32 || self.source.quantized_len(name).is_none() {
            return Ok(self.tensor(name, expect)?.into());
        }
        self.before_reading(name, expect)?;
        let q = self.source.quantized(name)?;
        if let Some(row) = q.first_non_finite_row() {
            return Err(MsError::ModelFormat(format!(
                "{}: tensor '{name}' has a NaN or infinite value in row {row} of shape \
                 {expect:?}; weights must be finite numbers (a corrupted or badly converted \
                 checkpoint?)",
                self.origin()
            )));
        }
        self.read(name);
        Ok(q.into())
    }

    /// Like [`tensor`](Self::tensor), for a tensor that may be absent.
    pub fn optional(&self, name: &str, expect: &[usize]) -> Result<Option<Tensor>> {
        if self.has(name) {
            Ok(Some(self.tensor(name, expect)?))
        } else {
            Ok(None)
        }
    }

    /// A matrix `[rows, cols]` with any number of rows (e.g. token-type embeddings).
    pub fn rows(&self, name: &str, cols: usize) -> Result<Tensor> {
        let rows = match self.dims(name) {
            Some(d) if d.len() == 2 && d[0] > 0 => d[0],
            _ => 1,
        };
        self.tensor(name, &[rows, cols])
    }

    /// Mark a tensor as accounted for without reading it (e.g. a tied LM head's copy).
    pub fn skip(&self, name: &str) {
        self.used
            .lock()
            .expect("no panics while held")
            .insert(name.to_string());
    }

    /// Refuse the file if it has tensors no loader read, other than those `ignorable` names
    /// (buffers a checkpoint may carry, heads mindscope does not run): a weight the forward
    /// would skip means the forward computes something other than the model.
    pub fn check_all_used(&self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.used.lock().expect("no panics while held");
        let mut unused: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !ignorable(n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let n = unused.len();
        unused.truncate(5);
        Err(MsError::UnsupportedArchitecture(format!(
            "{}: {n} tensor(s) that this family's forward does not use, e.g. {}; mindscope \
             refuses to run a model without all of its weights",
            self.origin(),
            unused.join(", ")
        )))
    }
}
