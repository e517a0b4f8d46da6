//! Principal component analysis via the eigendecomposition of the covariance (or Gram) matrix.

use linfa_linalg::eigh::EighInto;
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::check;
use crate::error::{MsError, Result};

/// A component whose variance is at most this fraction of the largest one counts as zero
/// variance (rank-deficient data leaves eigenvalues of ~1e-16 relative from rounding).
const ZERO_REL_VARIANCE: f64 = 1e-12;

#[derive(Debug, Clone)]
pub struct Pca {
    pub mean: Array1<f64>,
    /// `[n_components, n_features]`, unit rows, sign fixed so that each row's largest-magnitude
    /// entry is positive (scikit-learn's convention).
    pub components: Array2<f64>,
    pub explained_variance: Array1<f64>,
    pub explained_variance_ratio: Array1<f64>,
    pub whiten: bool,
}

impl Pca {
    pub fn fit(x: &ArrayView2<f64>, n_components: usize, whiten: bool) -> Result<Self> {
        check::finite_matrix(x, "X")?;
        let (n, d) = x.dim();
        let max = n.min(d);
        if n_components == 0 || n_components > max {
            return Err(MsError::invalid(format!(
                "n_components={n_components} but X has {n} samples and {d} features: \
                 allowed 1 to {max}"
            )));
        }
        if n < 2 {
            return Err(MsError::data("PCA needs at least 2 samples"));
        }
        // Mean and covariance of `x / peak`, scaled back at the end: squaring raw values
        // overflows float64 past ~1e154 (and underflows below ~1e-154).
        let peak = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let unit = if peak > 0.0 { peak } else { 1.0 };
        let xs = x.mapv(|v| v / unit);
        let mean_s = xs.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
        let xc = xs - &mean_s;
        let mean = mean_s * unit;
        let fail = |e| MsError::Compute(format!("eigendecomposition failed: {e:?}"));
        let (eig, vecs) = if n >= d {
            let (s, v) = xc.t().dot(&xc).eigh_into().map_err(fail)?;
            (s, v)
        } else {
            let (s, u) = xc.dot(&xc.t()).eigh_into().map_err(fail)?;
            // Right singular vectors from left ones: v = X^T u / sqrt(s).
            let v = xc.t().dot(&u) / &s.mapv(|x| x.max(1e-300).sqrt());
            (s, v)
        };
        let total: f64 = eig.iter().map(|x| x.max(0.0)).sum();
        let mut order: Vec<usize> = (0..eig.len()).collect();
        order.sort_by(|&a, &b| eig[b].total_cmp(&eig[a]));
        let keep = &order[..n_components];
        let mut components = vecs.select(Axis(1), keep).reversed_axes();
        for mut row in components.rows_mut() {
            let norm = row.dot(&row).sqrt();
            // A zero-variance component of wide data can come out as an exact zero vector:
            // leave it zero (its projections are 0, as its variance is) instead of 0 / 0 = NaN.
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
            let big = row
                .iter()
                .cloned()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            if big < 0.0 {
                row.mapv_inplace(|v| -v);
            }
        }
        let top = eig.select(Axis(0), keep).mapv(|x| x.max(0.0));
        // Variances of the scaled data times `unit^2`, in an order that overflows (or
        // underflows) only when the true variance does; refused then rather than returned as
        // inf or 0 (whitening would divide by it).
        let largest = top.iter().cloned().fold(0.0f64, f64::max);
        let explained_variance = top.mapv(|s| {
            let sd = (s / (n as f64 - 1.0)).sqrt() * unit;
            sd * sd
        });
        let lost = explained_variance.iter().zip(&top).any(|(&v, &t)| {
            !v.is_finite() || (t > ZERO_REL_VARIANCE * largest && v < f64::MIN_POSITIVE)
        });
        if lost {
            return Err(MsError::data(format!(
                "the variance of X (values up to {peak:e}) is too large or too small for float64; \
                 rescale X (e.g. divide it by its largest absolute value)"
            )));
        }
        if whiten {
            // Whitening divides by each component's standard deviation: a (numerically) zero
            // one would turn the projections into inf or amplified rounding noise.
            let flat = top
                .iter()
                .filter(|&&s| s <= ZERO_REL_VARIANCE * largest)
                .count();
            let ok = n_components - flat;
            if ok == 0 {
                return Err(MsError::data(
                    "X has zero variance (all rows are equal): there is nothing to whiten",
                ));
            }
            if flat > 0 {
                return Err(MsError::data(format!(
                    "{flat} of the {n_components} requested components have zero variance (the \
                     centred data has rank {ok}), so they cannot be whitened: use \
                     n_components <= {ok}, or whiten=False"
                )));
            }
        }
        Ok(Pca {
            mean,
            explained_variance,
            explained_variance_ratio: top.mapv(|s| if total > 0.0 { s / total } else { 0.0 }),
            components,
            whiten,
        })
    }

    pub fn transform(&self, x: &ArrayView2<f64>) -> Result<Array2<f64>> {
        check::finite_matrix(x, "X")?;
        check::n_features(self.mean.len(), x.ncols(), "PCA.transform")?;
        let mut out = (x.to_owned() - &self.mean).dot(&self.components.t());
        if self.whiten {
            out /= &self.explained_variance.mapv(|v| v.max(1e-300).sqrt());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn finds_the_long_axis() {
        let x = array![
            [-2.0, -0.1],
            [-1.0, 0.1],
            [0.0, 0.0],
            [1.0, -0.1],
            [2.0, 0.1]
        ];
        let p = Pca::fit(&x.view(), 1, false).unwrap();
        assert!((p.components[[0, 0]].abs() - 1.0).abs() < 1e-2);
        assert!(p.explained_variance_ratio[0] > 0.99);
        assert!(Pca::fit(&x.view(), 3, false).is_err());
    }
}
