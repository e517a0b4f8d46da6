//! Per-feature standardisation (zero mean, unit variance), recorded so that predictions on new
//! data use the training statistics.
//!
//! The statistics are computed on each feature divided by its largest magnitude, then scaled
//! back: squaring raw values overflows past ~1e154 (features of 1e300 got variance inf, hence
//! scale 1, hence probes of all-zero coefficients) and underflows below ~1e-154, so tiny
//! features were taken for constant ones.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::rows::{Feature, RowSet};
use crate::error::{MsError, Result};

/// Mean and scale of each feature. A constant feature gets scale 1 (as scikit-learn does).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Array1<f64>,
    pub scale: Array1<f64>,
}

/// Relative spread below which a feature counts as constant: `std / max|x|` of a column whose
/// values differ only by float64 rounding is ~1e-16.
const CONSTANT_REL_STD: f64 = 1e-12;

impl Standardizer {
    pub fn fit(x: &ArrayView2<f64>) -> Self {
        Self::fit_with(x.ncols(), x.nrows(), || {
            x.rows().into_iter().map(|r| r.to_vec())
        })
    }

    /// The same statistics over selected rows read in place (float64 sums).
    pub fn fit_rows<T: Feature>(x: &RowSet<T>) -> Self {
        Self::fit_with(x.d, x.len(), || {
            x.iter().map(|r| r.iter().map(|v| v.to_f64()).collect())
        })
    }

    /// Three passes over the rows: largest magnitude, mean and variance of `x / max|x|`.
    fn fit_with<I: Iterator<Item = Vec<f64>>>(d: usize, n: usize, rows: impl Fn() -> I) -> Self {
        let n = n.max(1) as f64;
        let mut peak = Array1::<f64>::zeros(d);
        for row in rows() {
            for (p, v) in peak.iter_mut().zip(row) {
                *p = p.max(v.abs());
            }
        }
        // An all-zero column divides by 1 instead of 0.
        let unit = peak.mapv(|p| if p > 0.0 { p } else { 1.0 });
        let mut mean = Array1::<f64>::zeros(d);
        for row in rows() {
            for ((m, v), u) in mean.iter_mut().zip(row).zip(&unit) {
                *m += v / u;
            }
        }
        mean /= n;
        let mut var = Array1::<f64>::zeros(d);
        for row in rows() {
            for (((s, v), m), u) in var.iter_mut().zip(row).zip(&mean).zip(&unit) {
                let c = v / u - m;
                *s += c * c;
            }
        }
        let scale = var
            .iter()
            .zip(&unit)
            .map(|(&v, &u)| {
                let rel = (v / n).sqrt();
                if rel > CONSTANT_REL_STD && (rel * u).is_finite() {
                    rel * u
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer {
            mean: mean * &unit,
            scale,
        }
    }

    /// Identity transform (no standardisation).
    pub fn identity(d: usize) -> Self {
        Standardizer {
            mean: Array1::zeros(d),
            scale: Array1::ones(d),
        }
    }

    /// `(x - mean) / scale`, as `x / scale - mean / scale` so that a huge feature far from its
    /// mean does not overflow the difference.
    #[inline(always)]
    fn apply(v: f64, m: f64, s: f64) -> f64 {
        v / s - m / s
    }

    /// The standardized copy, always row-major (solvers read its rows as slices).
    pub fn transform(&self, x: &ArrayView2<f64>) -> Array2<f64> {
        let mut out = x.as_standard_layout().into_owned();
        for mut row in out.rows_mut() {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = Self::apply(*v, m, s);
            }
        }
        out
    }

    /// A standardized float64 copy of the selected rows, `[rows, d]` row-major.
    pub fn transform_rows<T: Feature>(&self, x: &RowSet<T>) -> Array2<f64> {
        let mut out = Array2::zeros((x.len(), x.d));
        for (mut dst, src) in out.rows_mut().into_iter().zip(x.iter()) {
            for (((o, &v), &m), &s) in dst.iter_mut().zip(src).zip(&self.mean).zip(&self.scale) {
                *o = Self::apply(v.to_f64(), m, s);
            }
        }
        out
    }

    /// Weights fitted on standardized features `w` `[d, k]` and intercepts `b` `[k]` mapped back
    /// to the original feature space: `coef = w / scale`, `intercept = b - mean . coef`.
    /// Refuses results that float64 cannot hold (non-finite, or a non-zero weight that
    /// underflows to zero) instead of returning them: they come from features too large or too
    /// small for float64 arithmetic.
    pub fn to_original(
        &self,
        w: &Array2<f64>,
        b: &Array1<f64>,
    ) -> Result<(Array2<f64>, Array1<f64>)> {
        let coef = w / &self.scale.view().insert_axis(Axis(1));
        let intercept = b - &self.mean.dot(&coef);
        let lost = w
            .iter()
            .zip(&coef)
            .any(|(&a, &c)| !c.is_finite() || (a != 0.0 && c.abs() < f64::MIN_POSITIVE));
        if lost || intercept.iter().any(|v| !v.is_finite()) {
            let peak = self
                .scale
                .iter()
                .chain(&self.mean)
                .fold(0.0f64, |m, v| m.max(v.abs()));
            return Err(MsError::data(format!(
                "the features are too large or too small for float64 arithmetic (feature \
                 means/scales up to {peak:e}): the fitted coefficients would underflow or \
                 overflow; rescale X (e.g. divide it by its largest absolute value)"
            )));
        }
        Ok((coef, intercept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn statistics_survive_extreme_scales() {
        let x = array![[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]];
        let base = Standardizer::fit(&x.view());
        for k in [1e300, 1e-300] {
            let s = Standardizer::fit(&(&x * k).view());
            assert!((s.scale[0] / k / base.scale[0] - 1.0).abs() < 1e-12);
            assert!((s.mean[0] / k / base.mean[0] - 1.0).abs() < 1e-12);
            // The constant column stays constant (scale 1) at any magnitude.
            assert_eq!(s.scale[1], 1.0);
            let z = s.transform(&(&x * k).view());
            assert!((&z - &base.transform(&x.view()))
                .iter()
                .all(|d| d.abs() < 1e-12));
        }
    }

    #[test]
    fn unrepresentable_coefficients_are_refused() {
        let s = Standardizer {
            mean: array![0.0],
            scale: array![1e308],
        };
        let err = s.to_original(&array![[1e-10]], &array![0.0]).unwrap_err();
        assert!(err.to_string().contains("too large or too small"));
    }
}
