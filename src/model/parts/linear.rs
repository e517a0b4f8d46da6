//! A linear layer `x @ W^T + b`.

use candle_core::Tensor;

use crate::error::Result;
use crate::kernels::matmul;

/// Bytes of a tensor's elements.
pub fn nbytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// A weight `[out, in]` (multiplied through its transposed view, never copied) and an
/// optional bias `[out]`.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// `[..., in]` -> `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, self.bias.as_ref())
    }

    /// Bytes of its tensors.
    pub fn nbytes(&self) -> usize {
        nbytes(&self.weight) + self.bias.as_ref().map_or(0, nbytes)
    }
}
