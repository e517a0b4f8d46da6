//! RMSNorm and LayerNorm over the last axis.

use candle_core::Tensor;

use super::block::residual_add;
use super::linear::nbytes;
use crate::error::Result;
use crate::kernels::{composed, fused};
use crate::model::config::NormKind;

#[derive(Clone)]
pub struct Norm {
    pub kind: NormKind,
    /// `[d]`; for Gemma already `1 + w` (its norms multiply by one plus the stored weight).
    pub weight: Tensor,
    /// `[d]` (LayerNorm only, when the family has one).
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    /// Bytes of its tensors.
    pub fn nbytes(&self) -> usize {
        nbytes(&self.weight) + self.bias.as_ref().map_or(0, nbytes)
    }

    /// The norm of `a + b` (two tensors of one shape): one pass for a LayerNorm, else the
    /// residual add, then the norm.
    pub fn forward_sum(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.kind == NormKind::Layer {
            let fused = fused::add_layer_norm(a, b, &self.weight, self.bias.as_ref(), self.eps)?;
            if let Some(out) = fused {
                return Ok(out);
            }
        }
        self.forward(&residual_add(a, b)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, eps) = (&self.weight, self.bias.as_ref(), self.eps);
        match self.kind {
            NormKind::Rms => match fused::rms_norm(x, w, eps)? {
                Some(out) => Ok(out),
                None => composed::rms_norm(x, w, eps),
            },
            NormKind::Layer => match fused::layer_norm(x, w, b, eps)? {
                Some(out) => Ok(out),
                None => composed::layer_norm(x, w, b, eps),
            },
        }
    }
}
