//! Per-feature standardisation (zero mean, unit variance), recorded so that predictions on new
//! data use the training statistics.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::rows::{Feature, RowSet};

/// Mean and scale of each feature. A constant feature gets scale 1 (as scikit-learn does).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Array1<f64>,
    pub scale: Array1<f64>,
}

impl Standardizer {
    pub fn fit(x: &ArrayView2<f64>) -> Self {
        let n = x.nrows() as f64;
        let mean = x
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let mut var = Array1::<f64>::zeros(x.ncols());
        for row in x.rows() {
            for ((v, &m), &xi) in var.iter_mut().zip(&mean).zip(row) {
                *v += (xi - m) * (xi - m);
            }
        }
        let scale = var.mapv(|v| Self::scale_of(v / n));
        Standardizer { mean, scale }
    }

    /// The same statistics over selected rows read in place (two passes, float64 sums).
    pub fn fit_rows<T: Feature>(x: &RowSet<T>) -> Self {
        let n = x.len().max(1) as f64;
        let mut mean = Array1::<f64>::zeros(x.d);
        for row in x.iter() {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v.to_f64();
            }
        }
        mean /= n;
        let mut var = Array1::<f64>::zeros(x.d);
        for row in x.iter() {
            for ((s, &m), &v) in var.iter_mut().zip(&mean).zip(row) {
                let c = v.to_f64() - m;
                *s += c * c;
            }
        }
        let scale = var.mapv(|v| Self::scale_of(v / n));
        Standardizer { mean, scale }
    }

    /// Standard deviation from a variance; a constant feature gets 1.
    fn scale_of(var: f64) -> f64 {
        let s = var.sqrt();
        if s > 1e-12 * (1.0 + s) && s.is_finite() {
            s
        } else {
            1.0
        }
    }

    /// Identity transform (no standardisation).
    pub fn identity(d: usize) -> Self {
        Standardizer {
            mean: Array1::zeros(d),
            scale: Array1::ones(d),
        }
    }

    /// The standardized copy, always row-major (solvers read its rows as slices).
    pub fn transform(&self, x: &ArrayView2<f64>) -> Array2<f64> {
        let mut out = x.as_standard_layout().into_owned();
        for mut row in out.rows_mut() {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }

    /// A standardized float64 copy of the selected rows, `[rows, d]` row-major.
    pub fn transform_rows<T: Feature>(&self, x: &RowSet<T>) -> Array2<f64> {
        let mut out = Array2::zeros((x.len(), x.d));
        for (mut dst, src) in out.rows_mut().into_iter().zip(x.iter()) {
            for (((o, &v), &m), &s) in dst.iter_mut().zip(src).zip(&self.mean).zip(&self.scale) {
                *o = (v.to_f64() - m) / s;
            }
        }
        out
    }
}
