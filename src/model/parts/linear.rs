//! A linear layer `x @ W^T + b`.

use candle_core::Tensor;

use crate::error::Result;
use crate::kernels::matmul;

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
}
