//! Rotary position embeddings: frequencies (with their scaling), cos/sin tables for any
//! positions, and the rotation fused with the head transpose.
//!
//! Frequencies and tables are computed in f32 exactly as Hugging Face does (`1 / base^(2i/d)`,
//! times the position, then cos/sin): the residual stream of these models carries "massive
//! activations" in the thousands, which amplify even 1e-6 differences in the angles.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::kernels::{composed, fused};
use crate::model::config::{RopeScaling, RopeSpec};

#[derive(Debug, Clone)]
pub struct Rope {
    /// `[rotary_dim / 2]` inverse frequencies, scaling applied.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(spec: &RopeSpec) -> Self {
        let dim = spec.rotary_dim;
        let base = spec.theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        match &spec.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f32);
            }
            RopeScaling::Factors(factors) => {
                inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= *s);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                // transformers' `_compute_llama3_parameters`, in its f32 arithmetic.
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old = *original_context as f32;
                let low_wavelen = (*original_context / *low_freq_factor) as f32;
                let high_wavelen = (*original_context / *high_freq_factor) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                for f in inv_freq.iter_mut() {
                    let wavelen = two_pi / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    // (The wavelengths are finite, so `!(a < b)` is `a >= b`.)
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    *f = if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        Rope { inv_freq }
    }

    pub fn rotary_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// cos and sin tables `[n, rotary_dim]` for the given positions (rotate-half layout: the
    /// frequencies twice).
    pub fn tables(&self, positions: impl Iterator<Item = usize>) -> Result<(Tensor, Tensor)> {
        let r = self.rotary_dim();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        let mut n = 0;
        for p in positions {
            for _ in 0..2 {
                cos.extend(self.inv_freq.iter().map(|f| (f * p as f32).cos()));
                sin.extend(self.inv_freq.iter().map(|f| (f * p as f32).sin()));
            }
            n += 1;
        }
        Ok((
            Tensor::from_vec(cos, (n, r), &Device::Cpu)?,
            Tensor::from_vec(sin, (n, r), &Device::Cpu)?,
        ))
    }
}

/// RoPE on projections `x [batch, pos, head, d_head]` with tables `[pos, rotary_dim]`,
/// returned as `[batch, head, pos, d_head]`.
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match fused::rope_to_heads(x, cos, sin)? {
        Some(out) => Ok(out),
        None => composed::rope(&x.transpose(1, 2)?.contiguous()?, cos, sin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scaling: RopeScaling) -> RopeSpec {
        RopeSpec {
            theta: 500_000.0,
            rotary_dim: 16,
            scaling,
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = Rope::new(&spec(RopeScaling::None)).inv_freq;
        let scaled = Rope::new(&spec(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        }))
        .inv_freq;
        // Wavelength 2π < 8192 / 4: the highest frequency is unchanged.
        assert_eq!(scaled[0], plain[0]);
        // The lowest frequencies (wavelength > 8192) are divided by the factor.
        let last = plain.len() - 1;
        assert!((scaled[last] * 32.0 - plain[last]).abs() <= 1e-6 * plain[last]);
        assert!(scaled.iter().zip(&plain).all(|(s, p)| s <= p));
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = Rope::new(&spec(RopeScaling::None)).inv_freq;
        let scaled = Rope::new(&spec(RopeScaling::Linear { factor: 4.0 })).inv_freq;
        for (s, p) in scaled.iter().zip(&plain) {
            assert_eq!(*s, p / 4.0);
        }
    }

    #[test]
    fn tables_are_rotate_half_layout_for_given_positions() {
        let rope = Rope::new(&spec(RopeScaling::None));
        let (cos, _) = rope.tables([3usize, 0].into_iter()).unwrap();
        let rows = cos.to_vec2::<f32>().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][..8], rows[0][8..]);
        assert!(rows[1].iter().all(|&c| c == 1.0));
    }
}
