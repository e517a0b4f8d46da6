//! Ridge regression probe with multi-output targets and the regularisation chosen by efficient
//! leave-one-out (the closed form scikit-learn's `RidgeCV` uses) or k-fold cross-validation.
//!
//! One eigendecomposition serves every alpha of the grid: with `Z = standardised X` and
//! `Z^T Z = V S V^T`, the weights are `V (S + a)^-1 V^T Z^T y` and the leave-one-out residuals
//! are `r_i / (1 - h_i)` with the hat diagonal `h_i = sum_j (Z V)_ij^2 / (s_j + a) + 1/n`
//! (the `1/n` is the unpenalised intercept).

use linfa_linalg::eigh::EighInto;
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::check;
use super::standardize::Standardizer;
use crate::error::{MsError, Result};

/// How to choose alpha from the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RidgeCv {
    /// Efficient leave-one-out (generalised cross-validation), like `RidgeCV(cv=None)`.
    LeaveOneOut,
    /// k-fold cross-validation over contiguous-after-shuffle folds with a seed.
    KFold { k: usize, seed: u64 },
}

#[derive(Debug, Clone)]
pub struct RidgeParams {
    pub alphas: Vec<f64>,
    pub cv: RidgeCv,
    pub standardize: bool,
}

#[derive(Debug, Clone)]
pub struct RidgeModel {
    pub standardizer: Standardizer,
    /// `[n_features, n_targets]` in the original feature space.
    pub coef: Array2<f64>,
    pub intercept: Array1<f64>,
    pub alpha: f64,
    /// Mean squared CV error per alpha of the grid.
    pub cv_errors: Vec<f64>,
}

/// Eigendecomposition of `Z^T Z` (or of the Gram matrix when there are fewer rows than columns),
/// reused for every alpha.
struct Spectrum {
    /// `Z V` `[n, r]`
    zv: Array2<f64>,
    /// `V` `[d, r]`
    v: Array2<f64>,
    s: Array1<f64>,
}

fn spectrum(z: &Array2<f64>) -> Result<Spectrum> {
    let (n, d) = z.dim();
    let fail = |e| MsError::Compute(format!("eigendecomposition failed: {e:?}"));
    if n >= d {
        let (s, v) = z.t().dot(z).eigh_into().map_err(fail)?;
        let s = s.mapv(|x| x.max(0.0));
        Ok(Spectrum {
            zv: z.dot(&v),
            v,
            s,
        })
    } else {
        let (s, u) = z.dot(&z.t()).eigh_into().map_err(fail)?;
        let s = s.mapv(|x| x.max(0.0));
        // V = Z^T U S^-1/2 for the non-zero part; Z V = U S^1/2.
        let keep: Vec<usize> = (0..s.len())
            .filter(|&j| s[j] > 1e-10 * s.iter().cloned().fold(0.0, f64::max))
            .collect();
        let u = u.select(Axis(1), &keep);
        let s = s.select(Axis(0), &keep);
        let root = s.mapv(f64::sqrt);
        let v = z.t().dot(&u) / &root;
        let zv = &u * &root;
        Ok(Spectrum { zv, v, s })
    }
}

impl Spectrum {
    /// Weights `[d, k]` for centred targets.
    fn weights(&self, yc: &Array2<f64>, alpha: f64) -> Array2<f64> {
        let proj = self.zv.t().dot(yc); // [r, k]
        let scaled = &proj / &self.s.mapv(|s| s + alpha).insert_axis(Axis(1));
        self.v.dot(&scaled)
    }

    fn loo_error(&self, yc: &Array2<f64>, alpha: f64) -> f64 {
        let n = yc.nrows() as f64;
        let fitted = self
            .zv
            .dot(&(&self.zv.t().dot(yc) / &self.s.mapv(|s| s + alpha).insert_axis(Axis(1))));
        let inv = self.s.mapv(|s| 1.0 / (s + alpha));
        let mut total = 0.0;
        for (i, row) in self.zv.rows().into_iter().enumerate() {
            let h: f64 = row.iter().zip(&inv).map(|(x, w)| x * x * w).sum::<f64>() + 1.0 / n;
            for k in 0..yc.ncols() {
                let r = (yc[[i, k]] - fitted[[i, k]]) / (1.0 - h).max(1e-12);
                total += r * r;
            }
        }
        total / (yc.len() as f64)
    }
}

fn center(y: &ArrayView2<f64>) -> (Array2<f64>, Array1<f64>) {
    let mean = y
        .mean_axis(Axis(0))
        .unwrap_or_else(|| Array1::zeros(y.ncols()));
    (y.to_owned() - &mean, mean)
}

/// Fit on standardised (or centred) features with one alpha; returns (coef in z-space, y mean).
fn fit_fixed(
    z: &Array2<f64>,
    y: &ArrayView2<f64>,
    alpha: f64,
) -> Result<(Array2<f64>, Array1<f64>)> {
    let (yc, ym) = center(y);
    let sp = spectrum(z)?;
    Ok((sp.weights(&yc, alpha), ym))
}

fn kfold_indices(n: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let order = super::truth::seeded_permutation(n, seed);
    (0..k)
        .map(|f| order.iter().copied().skip(f).step_by(k).collect())
        .collect()
}

impl RidgeModel {
    pub fn fit(x: &ArrayView2<f64>, y: &ArrayView2<f64>, p: &RidgeParams) -> Result<Self> {
        check::finite_matrix(x, "X")?;
        check::finite_matrix(y, "y")?;
        check::same_rows(x.nrows(), y.nrows(), "y")?;
        if p.alphas.is_empty() || p.alphas.iter().any(|a| !(*a > 0.0 && a.is_finite())) {
            return Err(MsError::invalid(format!(
                "alphas must be a non-empty list of positive numbers, got {:?}",
                p.alphas
            )));
        }
        if x.nrows() < 3 {
            return Err(MsError::data(format!(
                "ridge needs at least 3 samples, got {}",
                x.nrows()
            )));
        }
        let standardizer = if p.standardize {
            Standardizer::fit(x)
        } else {
            let mut s = Standardizer::fit(x);
            s.scale.fill(1.0);
            s
        };
        let z = standardizer.transform(x);
        let cv_errors: Vec<f64> = if p.alphas.len() == 1 {
            vec![f64::NAN]
        } else {
            match p.cv {
                RidgeCv::LeaveOneOut => {
                    let (yc, _) = center(y);
                    let sp = spectrum(&z)?;
                    p.alphas.iter().map(|&a| sp.loo_error(&yc, a)).collect()
                }
                RidgeCv::KFold { k, seed } => {
                    if k < 2 || k > x.nrows() {
                        return Err(MsError::invalid(format!(
                            "k-fold needs 2 <= k <= n_samples, got k={k} for {} samples",
                            x.nrows()
                        )));
                    }
                    let folds = kfold_indices(x.nrows(), k, seed);
                    let mut errs = vec![0.0; p.alphas.len()];
                    for test in &folds {
                        let mut is_test = vec![false; x.nrows()];
                        test.iter().for_each(|&i| is_test[i] = true);
                        let train: Vec<usize> = (0..x.nrows()).filter(|&i| !is_test[i]).collect();
                        let zt = z.select(Axis(0), &train);
                        let zt_mean = zt.mean_axis(Axis(0)).unwrap_or_default();
                        let zt = zt - &zt_mean;
                        let yt = y.select(Axis(0), &train);
                        let (yc, ym) = center(&yt.view());
                        let sp = spectrum(&zt)?;
                        let zte = z.select(Axis(0), test) - &zt_mean;
                        let yte = y.select(Axis(0), test);
                        for (ai, &a) in p.alphas.iter().enumerate() {
                            let pred = zte.dot(&sp.weights(&yc, a)) + &ym;
                            errs[ai] += (&pred - &yte).mapv(|e| e * e).sum();
                        }
                    }
                    errs.iter().map(|e| e / y.len() as f64).collect()
                }
            }
        };
        let best = if p.alphas.len() == 1 {
            0
        } else {
            (0..p.alphas.len())
                .min_by(|&a, &b| cv_errors[a].total_cmp(&cv_errors[b]))
                .unwrap_or(0)
        };
        let alpha = p.alphas[best];
        let (w, ym) = fit_fixed(&z, y, alpha)?;
        let (coef, intercept) = standardizer.to_original(&w, &ym).map_err(|e| {
            if p.standardize {
                e
            } else {
                // Unstandardized, the Gram matrix of values past ~1e154 overflows.
                e.context("ridge with standardize=False (standardize=True fits such features)")
            }
        })?;
        Ok(RidgeModel {
            standardizer,
            coef,
            intercept,
            alpha,
            cv_errors,
        })
    }

    pub fn predict(&self, x: &ArrayView2<f64>) -> Result<Array2<f64>> {
        check::finite_matrix(x, "X")?;
        check::n_features(self.coef.nrows(), x.ncols(), "predict")?;
        Ok(x.dot(&self.coef) + &self.intercept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn data(n: usize, d: usize) -> (Array2<f64>, Array2<f64>, Array2<f64>) {
        let mut state = 7u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let x = Array::from_shape_fn((n, d), |_| rnd());
        let w = Array::from_shape_fn((d, 2), |_| rnd());
        let y = x.dot(&w) + 3.0;
        (x, y, w)
    }

    #[test]
    fn recovers_planted_weights_with_small_alpha() {
        let (x, y, w) = data(200, 10);
        let p = RidgeParams {
            alphas: vec![1e-8],
            cv: RidgeCv::LeaveOneOut,
            standardize: true,
        };
        let m = RidgeModel::fit(&x.view(), &y.view(), &p).unwrap();
        assert!(
            (&m.coef - &w)
                .mapv(f64::abs)
                .iter()
                .cloned()
                .fold(0.0, f64::max)
                < 1e-5
        );
        assert!((m.intercept[0] - 3.0).abs() < 1e-5);
    }

    #[test]
    fn wide_data_uses_the_gram_matrix() {
        let (x, y, _) = data(20, 50);
        let p = RidgeParams {
            alphas: vec![0.1, 1.0, 10.0],
            cv: RidgeCv::LeaveOneOut,
            standardize: false,
        };
        let m = RidgeModel::fit(&x.view(), &y.view(), &p).unwrap();
        let pred = m.predict(&x.view()).unwrap();
        assert!(pred.iter().all(|v| v.is_finite()));
        assert_eq!(m.cv_errors.len(), 3);
    }
}
