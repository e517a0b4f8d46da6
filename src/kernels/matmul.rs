//! `x @ w^T` for the linear layers: quantized weights through [`super::quantized`]; float32
//! ones through the BLAS loaded at run time (see [`super::blas`]) when there is one, else
//! candle's matmul.

use candle_core::{Device, Tensor, D};

use super::activation::{self, Act};
use super::quantized::QMatrix;
use super::{blas, fused};
use crate::error::{MsError, Result};
use crate::model::parts::Weight;

/// Row counts up to which candle's path multiplies weights-first (`W x^T`): with few rows,
/// `gemm`'s cost is packing the whole weight matrix, which the other order streams once.
const SMALL_BATCH_ROWS: usize = 192;

/// `x [rows, k] @ w^T` through the loaded BLAS, for contiguous f32 CPU tensors, and whether
/// `bias` was added inside the product (see [`blas::sgemm_xwt`]; a bias that is not
/// contiguous f32 is left to the caller); `None` when there is no BLAS or the tensors do not
/// qualify.
fn blas_matmul(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Option<(Vec<f32>, bool)> {
    if !blas::is_loaded() {
        return None;
    }
    let (rows, k) = x.dims2().ok()?;
    let (n, k_w) = w.dims2().ok()?;
    if k != k_w {
        return None;
    }
    let product = |bs: Option<&[f32]>| {
        fused::with_f32(x, |xs| {
            fused::with_f32(w, |ws| blas::sgemm_xwt(xs, ws, bs, rows, n, k))
        })
        .flatten()
        .flatten()
    };
    match bias.and_then(|b| fused::with_f32(b, |bs| product(Some(bs)))) {
        Some(with_bias) => with_bias.map(|data| (data, true)),
        None => product(None).map(|data| (data, false)),
    }
}

/// `x [rows, in] @ q^T` for a quantized weight.
fn quantized_matmul(x: &Tensor, q: &QMatrix) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let (n, k_w) = q.dims();
    if k != k_w {
        return Err(MsError::shape(format!(
            "linear: x {:?} @ W^T [{n}, {k_w}]",
            x.dims()
        )));
    }
    let mut out = vec![0f32; rows * n];
    quantized_into(x, q, &mut out)?;
    Ok(Tensor::from_vec(out, (rows, n), &Device::Cpu)?)
}

/// `out = x @ q^T`, reading `x`'s floats in place when it is a contiguous f32 CPU tensor.
fn quantized_into(x: &Tensor, q: &QMatrix, out: &mut [f32]) -> Result<()> {
    let x = x.contiguous()?;
    match fused::with_f32(&x, |xs| q.matmul_t_into(xs, out)) {
        Some(done) => done,
        None => q.matmul_t_into(&x.flatten_all()?.to_vec1::<f32>()?, out),
    }
}

/// `x [..., in] @ w^T (+ b)` for a weight `w [out, in]`.
pub fn linear(x: &Tensor, w: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    match w {
        Weight::Dense(t) => linear_dense(x, t, bias),
        Weight::Quantized(q) => with_rows(x, bias, |x2| Ok((quantized_matmul(x2, q)?, false))),
    }
}

/// `act(x [..., in] @ w^T (+ b))`: the activation runs in place on the product's fresh buffer.
pub fn linear_act(x: &Tensor, w: &Weight, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    activation::activate_owned(act, linear(x, w, bias)?)
}

/// `x [..., in] @ w^T (+ b)` for a float32 weight `w [out, in]`.
pub fn linear_dense(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    with_rows(x, bias, |x2| {
        let (rows, n) = (x2.dim(0)?, w.dim(0)?);
        Ok(if let Some((data, bias_added)) = blas_matmul(x2, w, bias) {
            (Tensor::from_vec(data, (rows, n), &Device::Cpu)?, bias_added)
        } else if rows <= SMALL_BATCH_ROWS {
            (w.matmul(&x2.t()?)?.t()?.contiguous()?, false)
        } else {
            (x2.matmul(&w.t()?)?, false)
        })
    })
}

/// `product(x as [rows, in])` `[rows, out]`, plus the bias unless the product says it added
/// it already, back in `x`'s leading shape.
fn with_rows(
    x: &Tensor,
    bias: Option<&Tensor>,
    product: impl FnOnce(&Tensor) -> Result<(Tensor, bool)>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let (out, bias_added) = product(&x.reshape((rows, dims[dims.len() - 1]))?)?;
    let n = out.dim(1)?;
    let out = match bias.filter(|_| !bias_added) {
        Some(b) => match fused::add_row(&out, b)? {
            Some(o) => o,
            None => out.broadcast_add(b)?,
        },
        None => out,
    };
    let mut shape = dims[..dims.len() - 1].to_vec();
    shape.push(n);
    Ok(out.reshape(shape)?)
}

/// `out = x [..., in] @ w^T` for a weight `w [out, in]`, written into the caller's row-major
/// buffer of `rows * out` floats: the LM head's logits are the largest array of a forward,
/// and the matmul writes them straight into the buffer handed to numpy.
pub fn linear_into(x: &Tensor, w: &Weight, out: &mut [f32]) -> Result<()> {
    let w = match w {
        Weight::Dense(t) => t,
        Weight::Quantized(q) => return quantized_into(x, q, out),
    };
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
        let product = linear_dense(x, w, None)?.flatten_all()?.to_vec1::<f32>()?;
        out.copy_from_slice(&product);
    }
    Ok(())
}
