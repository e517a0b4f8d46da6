//! Single-pass CPU kernels for the elementwise parts of a block.
//!
//! candle runs every op of a composition as its own parallel pass into a fresh buffer
//! (RMSNorm is seven of them, softmax with scale and mask seven, RoPE with its head
//! transpose six). Each kernel here computes its composition's formula in one pass over
//! contiguous f32 CPU data, and returns `None` for any other tensor so that the caller runs
//! the candle composition (`composed.rs`) instead; tests check both agree. Deliberate
//! differences: RMSNorm and LayerNorm sum in f64, and the GLU uses a vectorized exp (libm's
//! `expf` is a call per element).

use std::mem::MaybeUninit;

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Elements per parallel task: big enough that the hand-off is noise, small enough that
/// both threads get work on a one-prompt forward.
const TASK_ELEMS: usize = 16 * 1024;

/// Run `f` on the elements of a contiguous f32 CPU tensor (`None` for anything else).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok().map(|s| f(&s[start..end])),
        _ => None,
    }
}

/// A new vector of `len` floats that `fill` writes, without zeroing it first. glibc hands
/// freed heap memory back to the next allocation, so `vec![0.0; n]` would clear it first: a
/// pass over every output for nothing.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written_by(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements (the caller's promise).
    unsafe { out.set_len(len) };
    out
}

/// `row` as floats once every element has been written.
///
/// # Safety
/// Every element of `row` is initialised.
unsafe fn assume_written(row: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller promises initialisation.
    unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Rows per task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last axis.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let d = x.dims().last().copied().unwrap_or(0);
    if d == 0 || weight.elem_count() != d {
        return Ok(None);
    }
    let eps = eps as f32;
    let out = with_f32(x, |xs| {
        with_f32(weight, |w| {
            let chunk = rows_per_task(d) * d;
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(chunk)
                    .zip(xs.par_chunks(chunk))
                    .for_each(|(o, x)| {
                        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                            // f64 sum: the massive-activation channels make an f32 running
                            // sum of 576 squares lose ~1e-6 relative.
                            let sum_sq: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
                            let mean_sq = (sum_sq / d as f64) as f32;
                            let inv = 1.0 / (mean_sq + eps).sqrt();
                            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                                o.write(x * inv * w);
                            }
                        }
                    })
            };
            // SAFETY: the rows of `d` (its length is a multiple of d) cover the output.
            unsafe { written_by(xs.len(), fill) }
        })
    })
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, x.shape(), &Device::Cpu)?))
        .transpose()
}

/// `(x - mean(x)) / sqrt(var(x) + eps) * weight + bias` over the last axis (`bias` optional).
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    layer_norm_of(x, None, weight, bias, eps)
}

/// [`layer_norm`] of `a + b` (two tensors of one shape: a post-norm block's residual add),
/// without writing the sum out: the same floats as [`add`] followed by [`layer_norm`].
pub fn add_layer_norm(
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    layer_norm_of(a, Some(b), weight, bias, eps)
}

/// LayerNorm of `x` (or of `x + plus`, same shape) over the last axis.
fn layer_norm_of(
    x: &Tensor,
    plus: Option<&Tensor>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    let d = x.dims().last().copied().unwrap_or(0);
    if d == 0 || weight.elem_count() != d || bias.is_some_and(|b| b.elem_count() != d) {
        return Ok(None);
    }
    let zeros;
    let bias_data = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(d, candle_core::DType::F32, &Device::Cpu)?;
            &zeros
        }
    };
    let norm = |xs: &[f32], ys: Option<&[f32]>| {
        with_f32(weight, |w| {
            with_f32(bias_data, |bs| {
                let chunk = rows_per_task(d) * d;
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    out.par_chunks_mut(chunk).enumerate().for_each(|(task, o)| {
                        let rows = task * chunk..task * chunk + o.len();
                        let ys = ys.map(|ys| &ys[rows.clone()]);
                        layer_norm_rows(&xs[rows], ys, w, bs, eps, o)
                    })
                };
                // SAFETY: the rows of `d` (its length is a multiple of d) cover the output.
                unsafe { written_by(xs.len(), fill) }
            })
        })
        .flatten()
    };
    let out = match plus {
        None => with_f32(x, |xs| norm(xs, None)).flatten(),
        Some(p) => with_f32(x, |xs| with_f32(p, |ys| norm(xs, Some(ys))))
            .flatten()
            .flatten(),
    };
    out.map(|o| Ok(Tensor::from_vec(o, x.shape(), &Device::Cpu)?))
        .transpose()
}

/// `sum(f(x))` in f64 over eight interleaved partial sums (one chain of dependent adds
/// would take four cycles an element), then the remainder.
#[inline(always)]
fn sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l] as f64);
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        total += f(v as f64);
    }
    total
}

/// LayerNorm of each row of `x` (plus the same row of `y`), rows of `w.len()` floats.
#[inline(always)]
fn layer_norm_rows_body(
    x: &[f32],
    y: Option<&[f32]>,
    w: &[f32],
    bs: &[f32],
    eps: f64,
    out: &mut [MaybeUninit<f32>],
) {
    let d = w.len();
    let mut sum_row = vec![0f32; if y.is_some() { d } else { 0 }];
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let x = &x[r * d..][..d];
        let x = match y {
            Some(y) => {
                for ((s, &a), &b) in sum_row.iter_mut().zip(x).zip(&y[r * d..][..d]) {
                    *s = a + b;
                }
                &sum_row[..]
            }
            None => x,
        };
        // Two passes in f64: mean, then the centred second moment.
        let mean = sum_f64(x, |v| v) / d as f64;
        let var = sum_f64(x, |v| (v - mean) * (v - mean)) / d as f64;
        let inv = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(bs) {
            o.write((x - mean) * inv * w + b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_rows_avx2(
    x: &[f32],
    y: Option<&[f32]>,
    w: &[f32],
    bs: &[f32],
    eps: f64,
    out: &mut [MaybeUninit<f32>],
) {
    layer_norm_rows_body(x, y, w, bs, eps, out)
}

fn layer_norm_rows(
    x: &[f32],
    y: Option<&[f32]>,
    w: &[f32],
    bs: &[f32],
    eps: f64,
    out: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { layer_norm_rows_avx2(x, y, w, bs, eps, out) };
    }
    layer_norm_rows_body(x, y, w, bs, eps, out)
}

/// `x + row` with `row [n]` added to every row of `x [..., n]` (a linear layer's bias), on the
/// caller's rayon pool like [`add`].
pub fn add_row(x: &Tensor, row: &Tensor) -> Result<Option<Tensor>> {
    let n = x.dims().last().copied().unwrap_or(0);
    if n == 0 || row.elem_count() != n {
        return Ok(None);
    }
    let out = with_f32(x, |xs| {
        with_f32(row, |r| {
            let chunk = rows_per_task(n) * n;
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(chunk)
                    .zip(xs.par_chunks(chunk))
                    .for_each(|(o, x)| {
                        for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                            for ((o, &x), &b) in o.iter_mut().zip(x).zip(r) {
                                o.write(x + b);
                            }
                        }
                    })
            };
            // SAFETY: rows of `n` cover the output.
            unsafe { written_by(xs.len(), fill) }
        })
    })
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, x.shape(), &Device::Cpu)?))
        .transpose()
}

/// `a + b` for two tensors of one shape (the residual stream's adds).
///
/// candle's add runs on a thread pool of its own beside rayon's; this one runs on the
/// caller's rayon pool, so a chunk running on one core stays on that core.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    let out = with_f32(a, |xs| {
        with_f32(b, |ys| {
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(TASK_ELEMS)
                    .zip(xs.par_chunks(TASK_ELEMS).zip(ys.par_chunks(TASK_ELEMS)))
                    .for_each(|(o, (x, y))| {
                        for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                            o.write(x + y);
                        }
                    })
            };
            // SAFETY: a and b have one shape, so the zip covers every output element.
            unsafe { written_by(xs.len(), fill) }
        })
    })
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, a.shape(), &Device::Cpu)?))
        .transpose()
}

/// `e^x` to within 2 ulp, in a form the compiler vectorizes: libm's `expf` is a call per
/// element, which made the GLU 3x slower. Cephes' polynomial on `x - n ln 2` (with FMAs),
/// scaled by `2^n` through the exponent bits; `-inf` and underflow give 0.
///
/// Used for the MLP's gates and activations only. In the attention softmax the extra ulp moved SmolLM2's
/// last-layer residuals 30 % further from transformers' (the large attention-sink scores
/// amplify it), so the softmax keeps libm's `expf`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, clamped));
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r * r, r) + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; 2^n is (n + 127) << 23.
    let scale = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// The gate non-linearities a fused GLU supports (BERT's erf-GELU is not a GLU).
#[derive(Debug, Clone, Copy)]
pub enum Gate {
    /// `x / (1 + exp(-x))`
    Silu,
    /// `0.5 x (1 + tanh(sqrt(2/π) x (1 + 0.044715 x²)))`
    GeluTanh,
}

impl Gate {
    #[inline(always)]
    pub(crate) fn silu(v: f32) -> f32 {
        v / (1.0 + exp(-v))
    }

    #[inline(always)]
    pub(crate) fn gelu_tanh(v: f32) -> f32 {
        const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
        // tanh(y) = 1 - 2 / (e^{2y} + 1), exact at both tails.
        let y = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
        0.5 * v * (2.0 - 2.0 / (exp(2.0 * y) + 1.0))
    }
}

/// `out = gate(g) * u`, one loop per gate so that each vectorizes. Plain `for` loops: a
/// closure (`for_each`) is compiled as a function of its own without the caller's target
/// features, which left Gemma's GELU scalar with a library call per `mul_add`.
#[inline(always)]
fn glu_body(gate: Gate, g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    let n = out.len().min(g.len()).min(u.len());
    let (g, u, out) = (&g[..n], &u[..n], &mut out[..n]);
    match gate {
        Gate::Silu => {
            for i in 0..n {
                out[i].write(Gate::silu(g[i]) * u[i]);
            }
        }
        Gate::GeluTanh => {
            for i in 0..n {
                out[i].write(Gate::gelu_tanh(g[i]) * u[i]);
            }
        }
    }
}

/// [`glu_body`] compiled for AVX2 + FMA (8 lanes and fused multiply-adds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn glu_body_avx2(gate: Gate, g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    glu_body(gate, g, u, out)
}

/// Writes all of `out` (which is as long as `g` and `u`).
fn glu_slice(gate: Gate, g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { glu_body_avx2(gate, g, u, out) };
    }
    glu_body(gate, g, u, out)
}

/// `row = softmax(row)` in place (the row already holds scaled, masked scores); libm's
/// `expf`, see [`exp`].
#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_body_avx2(row: &mut [f32]) {
    softmax_body(row)
}

pub fn softmax_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { softmax_body_avx2(row) };
    }
    softmax_body(row)
}

/// `sum(exp(x - shift))` over `xs`, accumulated in f64 per 8 lanes: the normalizer of a
/// vocabulary-wide softmax (262k entries for Gemma 3) at a few cycles an entry. The `exp` is
/// the MLP gate's (2 ulp).
pub fn exp_sum(xs: &[f32], shift: f32) -> f64 {
    const LANES: usize = 8;
    const BLOCK: usize = 256;
    // A block's exponentials go through an f32 buffer before their f64 sums: computed and
    // summed in one loop they stayed scalar (3 ns an element; the f64 conversion and the
    // underflow select defeated the vectorizer), in two loops each vectorizes.
    #[inline(always)]
    fn body(xs: &[f32], shift: f32) -> f64 {
        let mut lanes = [0f64; LANES];
        let mut e = [0f32; BLOCK];
        for block in xs.chunks(BLOCK) {
            let e = &mut e[..block.len()];
            for (e, &x) in e.iter_mut().zip(block) {
                *e = exp(x - shift);
            }
            let mut pieces = e.chunks_exact(LANES);
            for piece in &mut pieces {
                for i in 0..LANES {
                    lanes[i] += f64::from(piece[i]);
                }
            }
            for &v in pieces.remainder() {
                lanes[0] += f64::from(v);
            }
        }
        lanes.iter().sum()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body_avx2(xs: &[f32], shift: f32) -> f64 {
        body(xs, shift)
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { body_avx2(xs, shift) };
    }
    body(xs, shift)
}

/// `gate(g) * up` elementwise for two tensors of one shape (the GLU of an MLP).
pub fn glu(gate: Gate, g: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if g.dims() != up.dims() {
        return Ok(None);
    }
    let out = with_f32(g, |gs| {
        with_f32(up, |us| {
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(TASK_ELEMS)
                    .zip(gs.par_chunks(TASK_ELEMS).zip(us.par_chunks(TASK_ELEMS)))
                    .for_each(|(o, (g, u))| glu_slice(gate, g, u, o))
            };
            // SAFETY: g and up have one shape, and glu_slice writes all of its chunk.
            unsafe { written_by(gs.len(), fill) }
        })
    })
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, g.shape(), &Device::Cpu)?))
        .transpose()
}

/// `softmax(scores * scale + mask)` over the last axis, for `scores [b, h, t, tk]`
/// (contiguous) and a `mask` broadcastable to it (`[t, tk]` or `[b, 1, 1, tk]`).
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Option<Tensor>> {
    let (b, h, t, tk) = scores.dims4()?;
    let mask = mask.broadcast_as((b, h, t, tk))?;
    let mask_strides = mask.stride().to_vec();
    let mask_offset = mask.layout().start_offset();
    let scale = scale as f32;
    // The mask is read in place through its broadcast strides (zero on repeated axes).
    let (mask_storage, _) = mask.storage_and_layout();
    let Storage::Cpu(mask_cpu) = &*mask_storage else {
        return Ok(None);
    };
    let Ok(mask_data) = mask_cpu.as_slice::<f32>() else {
        return Ok(None);
    };
    let out = with_f32(scores, |s| {
        let chunk = rows_per_task(tk) * tk;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(chunk)
                .zip(s.par_chunks(chunk))
                .enumerate()
                .for_each(|(task, (o, s))| {
                    let first_row = task * chunk / tk;
                    for (r, (o, s)) in o.chunks_exact_mut(tk).zip(s.chunks_exact(tk)).enumerate() {
                        let row = first_row + r;
                        let (bi, hi, qi) = (row / (h * t), row / t % h, row % t);
                        let base = mask_offset
                            + bi * mask_strides[0]
                            + hi * mask_strides[1]
                            + qi * mask_strides[2];
                        for (k, (o, &s)) in o.iter_mut().zip(s).enumerate() {
                            o.write(s * scale + mask_data[base + k * mask_strides[3]]);
                        }
                        // SAFETY: the loop above wrote the whole row.
                        softmax_row(unsafe { assume_written(o) });
                    }
                })
        };
        // SAFETY: the rows of `tk` (its length is a multiple of tk) cover the output.
        unsafe { written_by(s.len(), fill) }
    });
    out.map(|o| Ok(Tensor::from_vec(o, (b, h, t, tk), &Device::Cpu)?))
        .transpose()
}

/// RoPE (rotate-half layout) fused with the head transpose: `x [b, t, h, d_head]` to
/// `[b, h, t, d_head]` with `x * cos + rotate_half(x) * sin` on the first `r` dimensions of
/// each head (tables `[t, r]`, `r` even and at most `d_head`; partial rotary when smaller) and
/// the other dimensions passed through.
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    let (b, t, h, dh) = x.dims4()?;
    let r = cos.dims().get(1).copied().unwrap_or(0);
    if cos.dims() != [t, r] || sin.dims() != [t, r] || r % 2 != 0 || r > dh {
        return Ok(None);
    }
    let half = r / 2;
    let out = with_f32(x, |xs| {
        with_f32(cos, |cos| {
            with_f32(sin, |sin| {
                // One task per (batch, head): `t * d_head` contiguous output elements.
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    out.par_chunks_mut(t * dh).enumerate().for_each(|(bh, o)| {
                        let (bi, hi) = (bh / h, bh % h);
                        for (p, o) in o.chunks_exact_mut(dh).enumerate() {
                            let src = &xs[((bi * t + p) * h + hi) * dh..][..dh];
                            let (c, s) = (&cos[p * r..][..r], &sin[p * r..][..r]);
                            for i in 0..r {
                                let rotated = if i < half {
                                    -src[i + half]
                                } else {
                                    src[i - half]
                                };
                                o[i].write(src[i] * c[i] + rotated * s[i]);
                            }
                            for i in r..dh {
                                o[i].write(src[i]);
                            }
                        }
                    })
                };
                // SAFETY: b * h tasks of t rows of d_head cover the output.
                unsafe { written_by(xs.len(), fill) }
            })
        })
    })
    .flatten()
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, (b, h, t, dh), &Device::Cpu)?))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed;
    use crate::kernels::test_support::{max_abs_diff, randn};
    use candle_core::DType;

    #[test]
    fn rms_norm_equals_composition_with_massive_values() {
        let x = randn(&[3, 70, 576], 1.0);
        // One "massive activation" channel, as in the real residual stream.
        let spike = Tensor::zeros((3, 70, 576), DType::F32, &Device::Cpu)
            .unwrap()
            .slice_assign(&[0..3, 0..70, 7..8], &randn(&[3, 70, 1], 3000.0))
            .unwrap();
        let x = (x + spike).unwrap();
        let w = randn(&[576], 1.0);
        let fused = rms_norm(&x, &w, 1e-5).unwrap().unwrap();
        let composed = composed::rms_norm(&x, &w, 1e-5).unwrap();
        let exact = composed::rms_norm(
            &x.to_dtype(DType::F64).unwrap(),
            &w.to_dtype(DType::F64).unwrap(),
            1e-5,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        // Relative to the largest output. The fused sum of squares is in f64, so it is
        // closer to the exact value than candle's f32 composition is.
        let largest = exact.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let largest = largest.to_scalar::<f32>().unwrap();
        let to_exact = max_abs_diff(&fused, &exact) / largest;
        let to_composed = max_abs_diff(&fused, &composed) / largest;
        assert!(to_exact < 3e-7, "fused vs exact: {to_exact}");
        assert!(to_composed < 1e-5, "fused vs candle ops: {to_composed}");
    }

    #[test]
    fn exp_is_within_two_ulp_and_saturates() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn exp_sum_equals_a_float64_sum() {
        // Lengths around the block (256) and lane (8) sizes, values spanning underflow.
        for n in [0, 1, 7, 8, 255, 256, 257, 1000, 262_147] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 200) as f32 * 0.5 - 90.0)
                .collect();
            let shift = 3.0;
            let want: f64 = xs.iter().map(|&x| f64::from(x - shift).exp()).sum();
            let got = exp_sum(&xs, shift);
            // exp flushes below e^-87 (1.6e-38) to 0: an absolute term for those.
            assert!(
                (got - want).abs() <= 1e-6 * want + 1e-36,
                "n {n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn glu_equals_composition() {
        let g = randn(&[5, 33, 100], 3.0);
        let u = randn(&[5, 33, 100], 1.0);
        let silu = (g.silu().unwrap() * &u).unwrap();
        let gelu = (g.gelu().unwrap() * &u).unwrap();
        assert!(max_abs_diff(&glu(Gate::Silu, &g, &u).unwrap().unwrap(), &silu) < 1e-5);
        assert!(max_abs_diff(&glu(Gate::GeluTanh, &g, &u).unwrap().unwrap(), &gelu) < 1e-5);
        // Shapes that differ are left to candle (which reports them).
        assert!(glu(Gate::Silu, &g, &randn(&[5, 33, 99], 1.0))
            .unwrap()
            .is_none());
    }

    #[test]
    fn add_equals_candle_add_exactly() {
        let a = randn(&[3, 70, 576], 50.0);
        let b = randn(&[3, 70, 576], 1.0);
        let ours = add(&a, &b).unwrap().unwrap();
        assert_eq!(ours.dims(), a.dims());
        assert_eq!(max_abs_diff(&ours, &(&a + &b).unwrap()), 0.0);
        assert!(add(&a, &randn(&[3, 70, 575], 1.0)).unwrap().is_none());
        assert!(
            add(&a.transpose(1, 2).unwrap(), &b.transpose(1, 2).unwrap())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn masked_softmax_equals_composition_for_both_mask_kinds() {
        let scores = randn(&[2, 3, 7, 9], 4.0);
        let inf = f32::NEG_INFINITY;
        // A causal mask with a window ([q, k]) and a padding mask ([b, 1, 1, k]).
        let causal: Vec<f32> = (0..7)
            .flat_map(|i| {
                (0..9).map(move |j| {
                    if j <= i + 2 && i + 2 - j.min(i + 2) < 4 {
                        0.0
                    } else {
                        inf
                    }
                })
            })
            .collect();
        let causal = Tensor::from_vec(causal, (7, 9), &Device::Cpu).unwrap();
        let padding: Vec<f32> = [9usize, 5]
            .iter()
            .flat_map(|&l| (0..9).map(move |j| if j < l { 0.0 } else { inf }))
            .collect();
        let padding = Tensor::from_vec(padding, (2, 1, 1, 9), &Device::Cpu).unwrap();
        for mask in [causal, padding] {
            let composed =
                composed::softmax_last(&(&scores * 0.125).unwrap().broadcast_add(&mask).unwrap())
                    .unwrap();
            let fused = masked_softmax(&scores, 0.125, &mask).unwrap().unwrap();
            assert!(max_abs_diff(&fused, &composed) < 1e-6);
        }
    }

    #[test]
    fn rope_to_heads_equals_transpose_then_rope() {
        let x = randn(&[2, 5, 3, 8], 2.0);
        let (cos, sin) = (randn(&[5, 8], 1.0), randn(&[5, 8], 1.0));
        let composed = composed::rope(
            &x.transpose(1, 2).unwrap().contiguous().unwrap(),
            &cos,
            &sin,
        )
        .unwrap();
        let fused = rope_to_heads(&x, &cos, &sin).unwrap().unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-6);
        // Partial rotary: the tables cover 4 of 8 dimensions, the other 4 pass through.
        let (cos, sin) = (randn(&[5, 4], 1.0), randn(&[5, 4], 1.0));
        let heads = x.transpose(1, 2).unwrap().contiguous().unwrap();
        let composed = composed::rope(&heads, &cos, &sin).unwrap();
        let fused = rope_to_heads(&x, &cos, &sin).unwrap().unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-6);
        let pass = |t: &Tensor| t.narrow(3, 4, 4).unwrap();
        assert_eq!(max_abs_diff(&pass(&fused), &pass(&heads)), 0.0);
    }

    #[test]
    fn layer_norm_and_bias_add_equal_composition() {
        let x = (randn(&[3, 11, 64], 2.0) + 5.0).unwrap();
        let (w, b) = (randn(&[64], 1.0), randn(&[64], 1.0));
        for bias in [Some(&b), None] {
            let fused = layer_norm(&x, &w, bias, 1e-5).unwrap().unwrap();
            let want = composed::layer_norm(&x, &w, bias, 1e-5).unwrap();
            assert!(max_abs_diff(&fused, &want) < 1e-5);
        }
        let y = randn(&[3, 11, 64], 3.0);
        let fused_sum = add_layer_norm(&x, &y, &w, Some(&b), 1e-5).unwrap().unwrap();
        let separate = layer_norm(&add(&x, &y).unwrap().unwrap(), &w, Some(&b), 1e-5)
            .unwrap()
            .unwrap();
        assert_eq!(max_abs_diff(&fused_sum, &separate), 0.0);
        let added = add_row(&x, &b).unwrap().unwrap();
        assert_eq!(max_abs_diff(&added, &x.broadcast_add(&b).unwrap()), 0.0);
    }

    #[test]
    fn non_contiguous_input_falls_back() {
        let x = randn(&[4, 6], 1.0).t().unwrap();
        assert!(rms_norm(&x, &randn(&[4], 1.0), 1e-5).unwrap().is_none());
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release --lib kernels::fused::timing -- --ignored --nocapture`: ns per
    /// element of the vocabulary-wide exp sum (Gemma 3: 262k) and of the GLU (one thread).
    #[test]
    #[ignore]
    fn time_exp_sum_and_glu() {
        let n = 262_144;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.02 - 10.0)
            .collect();
        let per_elem = |reps: usize, f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            (0..reps).for_each(|_| f());
            t.elapsed().as_secs_f64() * 1e9 / (reps * n) as f64
        };
        let mut sink = 0.0;
        let ns = per_elem(200, &mut || sink += exp_sum(&xs, 10.0));
        println!("exp_sum {ns:.3} ns/element ({sink:.3e})");
        let g = Tensor::from_vec(xs.clone(), (64, n / 64), &Device::Cpu).unwrap();
        for gate in [Gate::Silu, Gate::GeluTanh] {
            let ns = per_elem(50, &mut || {
                glu(gate, &g, &g).unwrap();
            });
            println!("glu {gate:?} {ns:.3} ns/element");
        }
    }
}
