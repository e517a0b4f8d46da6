//! A linear layer `x @ W^T + b`.

use candle_core::Tensor;

use super::Weight;
use crate::error::Result;
use crate::kernels::activation::Act;
use crate::kernels::matmul;

/// Bytes of a tensor's elements.
pub fn nbytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// A weight `[out, in]` (float32, multiplied through its transposed view and never copied,
/// or quantized blocks) and an optional bias `[out]`.
#[derive(Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: impl Into<Weight>, bias: Option<Tensor>) -> Self {
        Linear {
            weight: weight.into(),
            bias,
        }
    }

    /// `[..., in]` -> `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, self.bias.as_ref())
    }

    /// `act([..., in] @ W^T + b)` -> `[..., out]`, the activation in place on the product.
    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        matmul::linear_act(x, &self.weight, self.bias.as_ref(), act)
    }

    /// Bytes of its tensors.
    pub fn nbytes(&self) -> usize {
        self.weight.nbytes() + self.bias.as_ref().map_or(0, nbytes)
    }
}
