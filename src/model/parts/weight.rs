//! A weight matrix `[out, in]` as the model holds it: float32, or quantized blocks as the GGUF
//! file stores them ([`QMatrix`]). Products and lookups go through here, so the rest of the
//! model does not care which; code that needs the numbers themselves (the backward pass, the
//! embedding matrix handed to Python) asks for [`Weight::dense`], a float32 copy when
//! quantized.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{MsError, Result};
use crate::kernels::quantized::{type_name, QMatrix};

#[derive(Clone)]
pub enum Weight {
    Dense(Tensor),
    /// Shared: a tied LM head is the embedding itself.
    Quantized(Arc<QMatrix>),
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Self {
        Weight::Dense(t)
    }
}

impl From<QMatrix> for Weight {
    fn from(q: QMatrix) -> Self {
        Weight::Quantized(Arc::new(q))
    }
}

impl Weight {
    /// `[out, in]`.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Weight::Dense(t) => Ok(t.dims2()?),
            Weight::Quantized(q) => Ok(q.dims()),
        }
    }

    /// Rows (`out`; the vocabulary of an embedding).
    pub fn rows(&self) -> Result<usize> {
        Ok(self.dims2()?.0)
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Quantized(q) => q.nbytes(),
        }
    }

    /// "f32", or the block type ("q4_k").
    pub fn type_name(&self) -> &'static str {
        match self {
            Weight::Dense(_) => "f32",
            Weight::Quantized(q) => type_name(q.dtype()),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Weight::Quantized(_))
    }

    /// The float32 matrix: the tensor itself, or a dequantized copy.
    pub fn dense(&self) -> Result<Cow<'_, Tensor>> {
        match self {
            Weight::Dense(t) => Ok(Cow::Borrowed(t)),
            Weight::Quantized(q) => Ok(Cow::Owned(q.dequantize()?)),
        }
    }

    /// Rows `ids [n]` -> `[n, in]` (an embedding lookup).
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.index_select(ids, 0)?),
            Weight::Quantized(q) => {
                let ids = ids.to_vec1::<u32>()?;
                let cols = q.dims().1;
                Ok(Tensor::from_vec(
                    q.gather_f32(&ids)?,
                    (ids.len(), cols),
                    &Device::Cpu,
                )?)
            }
        }
    }

    /// The mean row `[in]`, in slabs when quantized (a 262k-row embedding is never
    /// dequantized whole).
    pub fn mean_row(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.mean(0)?),
            Weight::Quantized(q) => {
                let (rows, cols) = q.dims();
                let slab = 1024;
                let mut sum = vec![0f64; cols];
                let mut buf = vec![0f32; slab * cols];
                for start in (0..rows).step_by(slab) {
                    let n = slab.min(rows - start);
                    q.rows_f32(start..start + n, &mut buf[..n * cols]);
                    for row in buf[..n * cols].chunks(cols) {
                        for (s, v) in sum.iter_mut().zip(row) {
                            *s += f64::from(*v);
                        }
                    }
                }
                let mean = sum.iter().map(|s| (s / rows as f64) as f32).collect();
                Ok(Tensor::from_vec(mean, cols, &Device::Cpu)?)
            }
        }
    }

    /// The rows `order`, in that order (permuting or splitting a projection by output rows).
    pub fn gather_rows(&self, order: &[usize]) -> Result<Weight> {
        match self {
            Weight::Dense(t) => {
                let rows = t.dim(0)?;
                if let Some(&bad) = order.iter().find(|&&r| r >= rows) {
                    return Err(MsError::shape(format!(
                        "row {bad} of a matrix of {rows} rows"
                    )));
                }
                let idx: Vec<u32> = order.iter().map(|&r| r as u32).collect();
                let idx = Tensor::from_vec(idx, order.len(), &Device::Cpu)?;
                Ok(Weight::Dense(t.index_select(&idx, 0)?.contiguous()?))
            }
            Weight::Quantized(q) => Ok(q.gather_rows(order)?.into()),
        }
    }

    /// Consecutive rows `start..start + n`.
    pub fn row_range(&self, start: usize, n: usize) -> Result<Weight> {
        match self {
            Weight::Dense(t) => Ok(Weight::Dense(t.narrow(0, start, n)?.contiguous()?)),
            Weight::Quantized(_) => self.gather_rows(&(start..start + n).collect::<Vec<_>>()),
        }
    }
}
