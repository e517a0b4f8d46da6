//! The activation of a plain MLP (`proj(act(fc(x)))`), applied in place to the hidden layer
//! `fc(x)` as soon as the product has written it: one vectorized pass, no second buffer.
//!
//! candle's `gelu_erf` calls libm's `erff` once per element (a branchy scalar function), which
//! was 19 % of all-MiniLM-L6-v2's forward; here the exact GELU goes through `erfc` in a form
//! the compiler vectorizes.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use super::fused::{exp, Gate};
use crate::error::Result;

/// Elements per parallel task (as in [`super::fused`]).
const TASK_ELEMS: usize = 16 * 1024;

/// The element-wise non-linearities of a plain MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `0.5 x (1 + erf(x / sqrt(2)))` (BERT's and GPT-NeoX's "gelu").
    GeluErf,
    /// `0.5 x (1 + tanh(sqrt(2/π) x (1 + 0.044715 x²)))`.
    GeluTanh,
    /// `x / (1 + exp(-x))`.
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// `erfc(x)` with a relative error below 1.2e-7 in exact arithmetic (Numerical Recipes'
/// Chebyshev fit, `erfcc`) plus a few f32 roundings: `t exp(-z² + P(t))` with
/// `t = 1 / (1 + z / 2)`, `z = |x|`, and `2 - erfc(z)` for negative `x`. Small values stay
/// accurate in relative terms (no `1 - erf` cancellation), which the GELU of a negative
/// input needs.
#[inline(always)]
fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77_f32;
    let p = p.mul_add(t, -0.822_152_23);
    let p = p.mul_add(t, 1.488_515_9);
    let p = p.mul_add(t, -1.135_204);
    let p = p.mul_add(t, 0.278_868_07);
    let p = p.mul_add(t, -0.186_288_06);
    let p = p.mul_add(t, 0.096_784_18);
    let p = p.mul_add(t, 0.374_091_96);
    let p = p.mul_add(t, 1.000_023_7);
    let p = p.mul_add(t, -1.265_512_2);
    let tail = t * exp((-z).mul_add(z, p));
    if x >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

impl Act {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            // 1 + erf(v / √2) = erfc(-v / √2).
            Act::GeluErf => 0.5 * v * erfc(-v * std::f32::consts::FRAC_1_SQRT_2),
            Act::GeluTanh => Gate::gelu_tanh(v),
            Act::Silu => Gate::silu(v),
            Act::Relu => v.max(0.0),
        }
    }
}

/// `xs = act(xs)`, one loop per activation so that each vectorizes.
#[inline(always)]
fn apply_body(act: Act, xs: &mut [f32]) {
    match act {
        Act::GeluErf => xs.iter_mut().for_each(|v| *v = Act::GeluErf.apply(*v)),
        Act::GeluTanh => xs.iter_mut().for_each(|v| *v = Act::GeluTanh.apply(*v)),
        Act::Silu => xs.iter_mut().for_each(|v| *v = Act::Silu.apply(*v)),
        Act::Relu => xs.iter_mut().for_each(|v| *v = Act::Relu.apply(*v)),
    }
}

/// [`apply_body`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_body_avx2(act: Act, xs: &mut [f32]) {
    apply_body(act, xs)
}

/// `xs = act(xs)` on one thread.
pub fn apply_slice(act: Act, xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { apply_body_avx2(act, xs) };
    }
    apply_body(act, xs)
}

/// `xs = act(xs)` in parallel chunks on the caller's rayon pool.
pub fn apply_in_place(act: Act, xs: &mut [f32]) {
    xs.par_chunks_mut(TASK_ELEMS)
        .for_each(|chunk| apply_slice(act, chunk));
}

impl InplaceOp1 for Act {
    fn name(&self) -> &'static str {
        "mlp-activation"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("mlp-activation: the tensor is not contiguous");
        };
        match storage {
            CpuStorage::F32(data) => {
                apply_in_place(*self, &mut data[start..end]);
                Ok(())
            }
            _ => candle_core::bail!("mlp-activation: the tensor is not f32"),
        }
    }
}

/// `act(x)` for a tensor the caller owns alone (a product just computed, that no other
/// tensor shares): in place when it is contiguous f32 on the CPU, else a new tensor from
/// candle's ops.
pub fn activate_owned(act: Act, x: Tensor) -> Result<Tensor> {
    if x.is_contiguous() && x.dtype() == candle_core::DType::F32 && x.device().is_cpu() {
        x.inplace_op1(&act)?;
        return Ok(x);
    }
    Ok(match act {
        Act::GeluErf => x.gelu_erf()?,
        Act::GeluTanh => x.gelu()?,
        Act::Silu => x.silu()?,
        Act::Relu => x.relu()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::max_abs_diff;
    use candle_core::Device;

    /// erfc in f64, a reference independent of the code under test: 1 - erf by erf's Taylor
    /// series for |x| < 3 (erfc >= 2e-5 there, so the subtraction keeps ~11 digits), the
    /// asymptotic continued fraction of erfc(|x|) beyond, and erfc(x) = 2 - erfc(-x).
    fn erfc64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-20 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(z) = exp(-z²) / sqrt(π) / (z + 1/2 / (z + 1 / (z + 3/2 / (z + ...))))
            let z = x.abs();
            let mut frac = z;
            for k in (1..60).rev() {
                frac = z + (k as f64 / 2.0) / frac;
            }
            let tail = (-z * z).exp() / std::f64::consts::PI.sqrt() / frac;
            if x > 0.0 {
                tail
            } else {
                2.0 - tail
            }
        }
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * erfc64(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn gelu_erf_is_close_to_exact_everywhere() {
        // Relative to the output where it matters (|gelu| > 1e-6; below, the f32 rounding of
        // x / √2, which libm's erff sees too, grows to 1e-5 relative in erfc's exponent
        // -z², on outputs under 1e-6); and against |x|, the scale of a unit's input.
        let mut worst_rel = 0f64;
        let mut worst_abs = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4 * 6.0; // -12 .. 12
            let got = Act::GeluErf.apply(x) as f64;
            let want = gelu64(x as f64);
            let err = (got - want).abs();
            if want.abs() > 1e-6 {
                worst_rel = worst_rel.max(err / want.abs());
            }
            worst_abs = worst_abs.max(err / (x as f64).abs().max(1e-30));
        }
        assert!(worst_rel < 2e-6, "worst relative error {worst_rel}");
        assert!(worst_abs < 2e-7, "worst error / |x| {worst_abs}");
        assert_eq!(Act::GeluErf.apply(0.0), 0.0);
        assert_eq!(Act::GeluErf.apply(-20.0), 0.0);
        assert_eq!(Act::GeluErf.apply(20.0), 20.0);
    }

    #[test]
    fn in_place_activations_equal_candle_ops() {
        let x = (Tensor::randn(0f32, 1.0, (7, 300), &Device::Cpu).unwrap() * 3.0).unwrap();
        for (act, want) in [
            (Act::GeluErf, x.gelu_erf().unwrap()),
            (Act::GeluTanh, x.gelu().unwrap()),
            (Act::Silu, x.silu().unwrap()),
            (Act::Relu, x.relu().unwrap()),
        ] {
            let got = activate_owned(act, x.copy().unwrap()).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 2e-6, "{act:?}: {diff}");
        }
        // A strided view goes through candle's op and leaves its source alone.
        let t = x.t().unwrap();
        let got = activate_owned(Act::Relu, t.clone()).unwrap();
        assert_eq!(got.dims(), t.dims());
        assert!(x.min_all().unwrap().to_scalar::<f32>().unwrap() < 0.0);
    }
}
