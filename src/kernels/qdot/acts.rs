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

    #[inline(always)]
    fn new_any(x: &[f32], k: usize) -> Self {
        let m = x.len() / k;
        let k64 = padded(k);
        let groups = group_stride(k64);
        let mut out = QuantizedActs {
            k64,
            groups,
            codes: vec![0; m * k64],
            scales: vec![0.0; m * groups],
            group_sums: vec![0.0; m * groups],
        };
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
