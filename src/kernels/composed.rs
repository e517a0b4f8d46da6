//! The element-wise formulas as compositions of candle ops: what the [`super::fused`] kernels
//! compute in one pass, for tensors those kernels do not take (not contiguous, not f32), and
//! the reference the fused kernels are tested against.

use candle_core::{Tensor, D};

use crate::error::Result;

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// LayerNorm over the last axis, with an optional bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let out = centered.broadcast_mul(&inv)?.broadcast_mul(weight)?;
    Ok(match bias {
        Some(b) => out.broadcast_add(b)?,
        None => out,
    })
}

/// Softmax over the last axis (masked entries are `-inf` and get probability 0).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// RoPE on `x [batch, head, pos, d_head]`: `x * cos + rotate_half(x) * sin` on the first `r`
/// dimensions (tables `[pos, r]`), the rest passed through.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dh = x.dim(D::Minus1)?;
    let r = cos.dim(D::Minus1)?;
    let rot = x.narrow(D::Minus1, 0, r)?;
    let half = r / 2;
    let x1 = rot.narrow(D::Minus1, 0, half)?;
    let x2 = rot.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let out = (rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    if r == dh {
        return Ok(out);
    }
    let pass = x.narrow(D::Minus1, r, dh - r)?;
    Ok(Tensor::cat(&[&out, &pass], D::Minus1)?)
}
