//! Activation rows rounded to 8 bits for the integer dot products: per block of 32 values a
//! scale `d = max |x| / 127` and codes `q = round(x / d)` (ggml's Q8 scheme, the scale kept
//! in f32), laid out the way the kernels read them.

use super::decode::{group_stride, padded, GROUP};

/// Values sharing one activation scale.
const BLOCK: usize = 32;

/// Quantized rows: `codes [m, k64]`, and per group of 16 values `scales [m, groups]` (its
/// block's `d`) and `group_sums [m, groups]` (`d * sum(q)`, for the weights' offsets).
pub struct QuantizedActs {
    pub k64: usize,
    pub groups: usize,
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub group_sums: Vec<f32>,
}

impl QuantizedActs {
    /// `x [m, k]` row-major.
    pub fn new(x: &[f32], k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            let mut out = Self::zeroed(x.len() / k, k);
            // SAFETY: the CPU has the features (checked).
            unsafe { avx512::fill(&mut out, x, k) };
            return out;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; the same code, vectorized.
            return unsafe { Self::new_avx2(x, k) };
        }
        Self::new_any(x, k)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn new_avx2(x: &[f32], k: usize) -> Self {
        Self::new_any(x, k)
    }

    fn zeroed(m: usize, k: usize) -> Self {
        let k64 = padded(k);
        let groups = group_stride(k64);
        QuantizedActs {
            k64,
            groups,
            codes: vec![0; m * k64],
            scales: vec![0.0; m * groups],
            group_sums: vec![0.0; m * groups],
        }
    }

    #[inline(always)]
    fn new_any(x: &[f32], k: usize) -> Self {
        let m = x.len() / k;
        let mut out = Self::zeroed(m, k);
        let (k64, groups) = (out.k64, out.groups);
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let codes = &mut out.codes[r * k64..r * k64 + k];
            for (b, (xs, qs)) in row.chunks(BLOCK).zip(codes.chunks_mut(BLOCK)).enumerate() {
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (q, v) in qs.iter_mut().zip(xs) {
                    *q = (v * inv).round_ties_even() as i8;
                }
                for (g, grp) in qs.chunks(GROUP).enumerate() {
                    let sum: i32 = grp.iter().map(|&q| i32::from(q)).sum();
                    out.scales[r * groups + b * 2 + g] = d;
                    out.group_sums[r * groups + b * 2 + g] = d * sum as f32;
                }
            }
        }
        out
    }

    pub fn rows(&self) -> usize {
        self.codes.len() / self.k64
    }
}

/// The same rounding, 32 values at a time in two 512-bit registers: the scale from their
/// largest magnitude, the codes by the conversion's round-to-nearest-even.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{QuantizedActs, BLOCK};

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
        })
    }

    /// Fill `out` (zeroed, `x.len() / k` rows) from `x [m, k]`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn fill(out: &mut QuantizedActs, x: &[f32], k: usize) {
        let (k64, groups) = (out.k64, out.groups);
        let whole = k / BLOCK;
        for (r, row) in x.chunks_exact(k).enumerate() {
            for b in 0..whole {
                let xs = &row[b * BLOCK..(b + 1) * BLOCK];
                // SAFETY: 32 floats in, 32 codes out.
                let (lo, hi) = unsafe {
                    (
                        _mm512_loadu_ps(xs.as_ptr()),
                        _mm512_loadu_ps(xs.as_ptr().add(16)),
                    )
                };
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
                let d = amax / 127.0;
                let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                // The default rounding mode (nearest, ties to even), as `round_ties_even`.
                let q_lo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
                let q_hi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
                let at = r * k64 + b * BLOCK;
                // SAFETY: the 32 codes of this block lie inside the row.
                unsafe {
                    let codes = out.codes.as_mut_ptr().add(at);
                    _mm_storeu_si128(codes.cast(), _mm512_cvtepi32_epi8(q_lo));
                    _mm_storeu_si128(codes.add(16).cast(), _mm512_cvtepi32_epi8(q_hi));
                }
                let g = r * groups + 2 * b;
                out.scales[g] = d;
                out.scales[g + 1] = d;
                out.group_sums[g] = d * _mm512_reduce_add_epi32(q_lo) as f32;
                out.group_sums[g + 1] = d * _mm512_reduce_add_epi32(q_hi) as f32;
            }
            if whole * BLOCK < k {
                // A last, partial block: the plain code (rare: weights come in blocks of 32).
                let tail = QuantizedActs::new_any(&row[whole * BLOCK..], k - whole * BLOCK);
                let at = r * k64 + whole * BLOCK;
                out.codes[at..r * k64 + k].copy_from_slice(&tail.codes[..k - whole * BLOCK]);
                let g = r * groups + 2 * whole;
                let n = (k - whole * BLOCK).div_ceil(super::GROUP);
                out.scales[g..g + n].copy_from_slice(&tail.scales[..n]);
                out.group_sums[g..g + n].copy_from_slice(&tail.group_sums[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_rounding_equals_the_plain_one() {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // Rows with a zero block, ties (x / d = n + 0.5), a partial last block (k = 100).
            for k in [96usize, 100, 576] {
                let mut x: Vec<f32> = (0..3 * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                    .collect();
                x[..32].fill(0.0);
                x[40] = 127.0;
                x[41] = 0.5;
                x[42] = 1.5;
                x[43] = -2.5;
                let fast = QuantizedActs::new(&x, k);
                let plain = QuantizedActs::new_any(&x, k);
                assert_eq!(fast.codes, plain.codes, "k={k}");
                assert_eq!(fast.scales, plain.scales, "k={k}");
                assert_eq!(fast.group_sums, plain.group_sums, "k={k}");
            }
        }
    }
}
