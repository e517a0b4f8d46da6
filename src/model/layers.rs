//! Building blocks shared by every architecture family: linear maps, norms, activations,
//! RoPE, attention masks and the attention core with its hooks.

use candle_core::{Device, Tensor, D};

use super::{blas, fused};
use crate::error::{MsError, Result};
use crate::hooks::{HookContext, HookKind, HookPoint};

/// Row counts up to which `linear` multiplies weights-first (see there).
/// Measured on SmolLM2 (2 threads): weights-first wins 2.4x at 16 rows, 1.1x at 128,
/// ties at 256.
const SMALL_BATCH_ROWS: usize = 192;

/// `x [rows, k] @ w^T` through the BLAS loaded at run time (see `blas.rs`), for contiguous
/// f32 CPU tensors; `None` when there is no BLAS or the tensors do not qualify.
fn blas_matmul(x: &Tensor, w: &Tensor) -> Option<Vec<f32>> {
    if !blas::is_loaded() {
        return None;
    }
    let (rows, k) = x.dims2().ok()?;
    let (n, k_w) = w.dims2().ok()?;
    if k != k_w {
        return None;
    }
    fused::with_f32(x, |xs| {
        fused::with_f32(w, |ws| blas::sgemm_xwt(xs, ws, rows, n, k))
    })
    .flatten()
    .flatten()
}

/// `x [..., in] @ w^T (+ b)` for a weight `w [out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, dims[dims.len() - 1]))?;
    let n = w.dim(0)?;
    let out = if let Some(data) = blas_matmul(&x2, w) {
        Tensor::from_vec(data, (rows, n), &Device::Cpu)?
    } else if rows <= SMALL_BATCH_ROWS {
        // With few rows, gemm's cost is packing the whole weight matrix; multiplying the
        // other way round (W x^T) streams the weights once instead.
        w.matmul(&x2.t()?)?.t()?.contiguous()?
    } else {
        x2.matmul(&w.t()?)?
    };
    let out = match bias {
        Some(b) => out.broadcast_add(b)?,
        None => out,
    };
    let mut shape = dims[..dims.len() - 1].to_vec();
    shape.push(w.dim(0)?);
    Ok(out.reshape(shape)?)
}

/// `out = x [..., in] @ w^T` for a weight `w [out, in]`, written into the caller's row-major
/// buffer of `rows * out` floats.
///
/// For the LM head: its logits are the largest array of a forward pass (200 MB for
/// 16 x 64 tokens of SmolLM2), and copying them out of a candle tensor cost 0.13 s,
/// 6 % of the forward. The matmul writes straight into the buffer handed to numpy instead.
pub fn linear_into(x: &Tensor, w: &Tensor, out: &mut [f32]) -> Result<()> {
    let k = x.dim(D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let (n, k_w) = w.dims2()?;
    if out.len() != rows * n || k != k_w {
        return Err(MsError::shape(format!(
            "linear_into: x {:?} @ w^T {:?} does not fit an output of {} floats",
            x.dims(),
            w.dims(),
            out.len()
        )));
    }
    let written = fused::with_f32(x, |xs| {
        fused::with_f32(w, |ws| {
            if blas::sgemm_xwt_into(xs, ws, rows, n, k, out) {
                return;
            }
            let threads = candle_core::utils::get_num_threads();
            let parallelism = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: `xs` is [rows, k] row-major, `ws` is [n, k] row-major (read as the
            // [k, n] matrix w^T through strides), `out` is [rows, n]; with read_dst = false
            // gemm writes every element.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    xs.as_ptr(),
                    1,
                    k as isize,
                    ws.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        })
    })
    .flatten();
    if written.is_none() {
        // Not contiguous f32: the general path, then one copy.
        let product = linear(x, w, None)?.flatten_all()?.to_vec1::<f32>()?;
        out.copy_from_slice(&product);
    }
    Ok(())
}

/// `a + b` for two tensors of one shape: the residual stream's adds (see [`fused::add`]).
pub fn residual_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match fused::add(a, b)? {
        Some(out) => Ok(out),
        None => Ok((a + b)?),
    }
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    match fused::rms_norm(x, weight, eps)? {
        Some(out) => Ok(out),
        None => rms_norm_composed(x, weight, eps),
    }
}

/// [`rms_norm`] as candle ops (any device or dtype).
pub(crate) fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// LayerNorm over the last axis with weight and bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(centered
        .broadcast_mul(&inv)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)?)
}

/// The MLP non-linearities of the supported families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama's SwiGLU gate).
    Silu,
    /// GELU, tanh approximation (Gemma's GeGLU gate, `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU with the exact error function (BERT).
    GeluErf,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => x.silu()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::GeluErf => x.gelu_erf()?,
        })
    }

    /// `act(gate) * up`, the gated MLP's product (one pass where possible).
    pub fn glu(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        let fused_gate = match self {
            Activation::Silu => Some(fused::Gate::Silu),
            Activation::GeluTanh => Some(fused::Gate::GeluTanh),
            Activation::GeluErf => None,
        };
        if let Some(g) = fused_gate {
            if let Some(out) = fused::glu(g, gate, up)? {
                return Ok(out);
            }
        }
        Ok((self.apply(gate)? * up)?)
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::GeluErf => "gelu",
        }
    }
}

/// Softmax over the last axis (masked entries are `-inf` and get probability 0).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// cos and sin tables `[t, d_head]` for positions `offset..offset + t` (rotate-half layout).
///
/// Computed in f32 exactly as Hugging Face does (`1 / base^(2i/d)`, times the position,
/// then cos/sin): the residual stream of these models carries "massive activations" in
/// the thousands, which amplify even 1e-6 differences in the angles.
pub fn rope_tables(base: f64, d_head: usize, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
    let half = d_head / 2;
    let base = base as f32;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / d_head as f32))
        .collect();
    let mut cos = Vec::with_capacity(t * d_head);
    let mut sin = Vec::with_capacity(t * d_head);
    for p in offset..offset + t {
        for _ in 0..2 {
            cos.extend(inv_freq.iter().map(|f| (f * p as f32).cos()));
            sin.extend(inv_freq.iter().map(|f| (f * p as f32).sin()));
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, d_head), &Device::Cpu)?,
        Tensor::from_vec(sin, (t, d_head), &Device::Cpu)?,
    ))
}

/// RoPE on projections `x [batch, pos, head, d_head]`, returned as `[batch, head, pos, d_head]`.
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match fused::rope_to_heads(x, cos, sin)? {
        Some(out) => Ok(out),
        None => apply_rope(&x.transpose(1, 2)?.contiguous()?, cos, sin),
    }
}

/// `x * cos + rotate_half(x) * sin` for `x: [batch, head, pos, d_head]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Additive causal mask `[t, offset + t]`; with a `window`, a query also ignores keys
/// `window` or more positions behind it (sliding-window attention).
pub fn causal_mask(t: usize, offset: usize, window: Option<usize>) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let q = offset + i;
            (0..total).map(move |j| {
                let in_window = window.is_none_or(|w| q - j.min(q) < w);
                if j <= q && in_window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), &Device::Cpu)?)
}

/// Additive padding mask `[batch, 1, 1, t]` for bidirectional attention over right-padded
/// rows: keys at or after a row's length get `-inf`.
pub fn padding_mask(lengths: &[usize], t: usize) -> Result<Tensor> {
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(
        mask,
        (lengths.len(), 1, 1, t),
        &Device::Cpu,
    )?)
}

/// Scaled dot-product attention with grouped KV heads and the pattern hook.
///
/// `q [batch, head, t, d_head]`, `k` and `v` `[batch, kv_head, t_k, d_head]`, `mask`
/// broadcastable to `[batch, head, t, t_k]`. Returns `z [batch, t, head * d_head]`.
pub fn attend(
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    ctx: &mut HookContext,
) -> Result<Tensor> {
    let (b, h, t, dh) = q.dims4()?;
    let kvh = k.dim(1)?;
    let tk = k.dim(2)?;
    let group = h / kvh;
    // Grouped-query attention without copying K/V: fold each KV head's query heads into
    // the row axis, so one batched matmul serves the whole group.
    let q = q.reshape((b, kvh, group * t, dh))?;
    let scores = q.matmul(&k.t()?)?.reshape((b, h, t, tk))?;
    let pattern = match fused::masked_softmax(&scores, scale, mask)? {
        Some(p) => p,
        None => softmax_last(&(scores * scale)?.broadcast_add(mask)?)?,
    };
    let pattern = ctx.visit(HookPoint::block(layer, HookKind::AttnPattern), pattern)?;
    Ok(pattern
        .reshape((b, kvh, group * t, tk))?
        .matmul(v)?
        .reshape((b, h, t, dh))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, h * dh))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_hides_old_keys() {
        let m = causal_mask(4, 0, Some(2))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let visible: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|v| v.is_finite()).collect())
            .collect();
        assert_eq!(visible[0], [true, false, false, false]);
        assert_eq!(visible[3], [false, false, true, true]);
        let full = causal_mask(4, 0, None).unwrap().to_vec2::<f32>().unwrap();
        assert!(full[3].iter().all(|v| v.is_finite()));
    }

    #[test]
    fn padding_mask_hides_padding_keys() {
        let m = padding_mask(&[2, 3], 3).unwrap().flatten_all().unwrap();
        let v = m.to_vec1::<f32>().unwrap();
        assert!(v[0].is_finite() && v[1].is_finite() && v[2].is_infinite());
        assert!(v[3..].iter().all(|x| x.is_finite()));
    }
}
