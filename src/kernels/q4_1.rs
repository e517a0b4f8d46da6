//! Q4_1 weights times activations quantized to 8 bits (ggml's Q8_1 scheme), with AVX2.
//!
//! candle-core has vectorized dot products for Q4_0, Q8_0 and the k-quants, but only a scalar
//! one for Q4_1, the type of SmolLM2's packaged GGUF: measured on this project's 2-core
//! AVX512 machine, the scalar path made a Q4_1 decode step slower than the float32 weights
//! (see `bench/bench_model.py`). This is the same arithmetic as ggml's
//! `ggml_vec_dot_q4_1_q8_1`, with the activation scales kept in f32.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::f16;

use crate::error::Result;

/// Values per block.
const QK: usize = 32;

/// ggml's `block_q4_1`: scale, minimum, 32 four-bit values (low nibbles are values 0..16,
/// high nibbles 16..32).
#[repr(C)]
struct BlockQ4_1 {
    d: u16,
    m: u16,
    qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Activation rows rounded to 8 bits per block of 32: `x ~ d * q`, and `s = d * sum(q)` for
/// the weight's minimum term.
struct QuantizedRows {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

fn quantize_rows(x: &[f32]) -> QuantizedRows {
    let blocks = x.len() / QK;
    let mut out = QuantizedRows {
        q: vec![0; x.len()],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
    };
    for (xs, qs) in x.chunks_exact(QK).zip(out.q.chunks_exact_mut(QK)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        out.d.push(d);
        out.s.push(d * sum as f32);
    }
    out
}

fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Rows of the activation tile that share one pass over a weight row.
const ROW_TILE: usize = 16;

/// `dst [m, n] = lhs [m, k] @ W^T` for `n` rows of Q4_1 blocks in `rhs`; `None` when the CPU
/// has no AVX2 (the caller falls back to candle's scalar path).
pub fn matmul_t(
    lhs: &[f32],
    m: usize,
    k: usize,
    rhs: &[u8],
    n: usize,
    dst: &mut [f32],
) -> Option<Result<()>> {
    if !has_avx2() {
        return None;
    }
    let per_row = k / QK;
    assert_eq!(rhs.len(), n * per_row * std::mem::size_of::<BlockQ4_1>());
    assert!(lhs.len() == m * k && dst.len() >= m * n);
    // SAFETY: the bytes are `n * per_row` blocks of ggml's layout (checked length; u16 fields
    // need 2-byte alignment, which the caller's Vec of candle's Q4_1 blocks has).
    let blocks: &[BlockQ4_1] =
        unsafe { std::slice::from_raw_parts(rhs.as_ptr().cast(), n * per_row) };
    let a = quantize_rows(lhs);
    for tile in (0..m).step_by(ROW_TILE) {
        let rows = tile..(tile + ROW_TILE).min(m);
        for c in 0..n {
            let w = &blocks[c * per_row..(c + 1) * per_row];
            for r in rows.clone() {
                let b = r * per_row..(r + 1) * per_row;
                // SAFETY: AVX2 and FMA were detected; the slices have `per_row` blocks each.
                dst[r * n + c] =
                    unsafe { dot(w, &a.q[r * k..(r + 1) * k], &a.d[b.clone()], &a.s[b]) };
            }
        }
    }
    Some(Ok(()))
}

/// One weight row times one quantized activation row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot(w: &[BlockQ4_1], q: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, b) in w.iter().enumerate() {
        let dw = f16::from_bits(b.d).to_f32();
        mins += f16::from_bits(b.m).to_f32() * s[i];
        // SAFETY: 16 bytes of nibbles and 32 activation bytes per block.
        let (nibbles, qa) = unsafe {
            (
                _mm_loadu_si128(b.qs.as_ptr().cast()),
                _mm256_loadu_si256(q.as_ptr().add(i * QK).cast()),
            )
        };
        let qw = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nibbles, 4), nibbles), low);
        // u8 (0..15) x i8 pairs summed to i16 (at most 2 * 15 * 127), then to i32.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qa), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * d[i]), acc);
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair))) + mins
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot(_: &[BlockQ4_1], _: &[i8], _: &[f32], _: &[f32]) -> f32 {
    unreachable!("has_avx2 is false off x86_64")
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{self, BlockQ4_1 as CandleQ4_1};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn agrees_with_candles_scalar_q4_1_product() {
        if !super::has_avx2() {
            return; // nothing of ours runs on this CPU: candle's path is the only one
        }
        let (m, n, k) = (5, 12, 256);
        let vals = |len: usize, f: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as f32 * f).sin() * 1.7).clamp(-1.5, 1.5))
                .collect()
        };
        let w = Tensor::from_vec(vals(n * k, 0.37), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let bytes = q.data().unwrap();
        let x = vals(m * k, 0.11);
        let mut ours = vec![0f32; m * n];
        super::matmul_t(&x, m, k, &bytes, n, &mut ours)
            .unwrap()
            .unwrap();
        let blocks: Vec<CandleQ4_1> = bytes
            .chunks(20)
            .map(|b| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<CandleQ4_1>()) })
            .collect();
        let mut theirs = vec![0f32; m * n];
        k_quants::matmul::<CandleQ4_1>((m, k, n), &x, &blocks, &mut theirs).unwrap();
        // Both against the exact product with the dequantized weight: ours (activation scales
        // in f32) must be no further from it than candle's (scales in f16), up to rounding.
        let wd = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (mut ours_err, mut theirs_err, mut scale) = (0f32, 0f32, 0f32);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * wd[c][i]).sum();
                scale = scale.max((0..k).map(|i| (x[r * k + i] * wd[c][i]).abs()).sum());
                ours_err = ours_err.max((ours[r * n + c] - exact).abs());
                theirs_err = theirs_err.max((theirs[r * n + c] - exact).abs());
            }
        }
        assert!(
            ours_err <= theirs_err * 1.1 + 1e-4,
            "ours {ours_err} vs candle {theirs_err}"
        );
        // 8-bit activations: well under 1 % of the sum of the products' magnitudes.
        assert!(ours_err < 5e-3 * scale, "{ours_err} of {scale}");
    }
}
