//! Logistic-regression probes (binary and multinomial) with L2 regularisation and class
//! weights, fitted by L-BFGS.
//!
//! The objective is scikit-learn's, divided by `C * sum(weights)` (same minimiser):
//! `sum_i w_i loss_i / sum(w) + ||W||^2 / (2 C sum(w))`, intercept unpenalised; binary
//! problems use one logit column (class 1), multinomial ones a softmax over all classes.
//! linfa-logistic minimises the same loss but takes no sample weights (so no class weights)
//! and was 5.7x slower than scikit-learn on a 11,000 x 576, 17-class probe; hence this solver.
//!
//! Fits read the training rows where they are (`RowSet`: a row-major float32 or float64 buffer
//! and the indices of the rows to use), so a per-layer sweep copies nothing. Binary fits also
//! standardize implicitly (see `BinaryObjective`); multinomial ones gather a standardized
//! float64 copy, because their two matrix products per evaluation want a dense matrix.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};

use super::check;
use super::lbfgs::{minimize, LbfgsParams};
use super::rows::{Feature, RowSet};
use super::standardize::Standardizer;
use crate::error::{MsError, Result};
use crate::interrupt::Cancel;

#[derive(Debug, Clone)]
pub struct LogisticParams {
    /// Inverse regularisation strength, as in scikit-learn.
    pub c: f64,
    pub max_iter: u64,
    pub tol: f64,
    pub standardize: bool,
    /// Weight of each class (index = class); `None` weighs every sample 1.
    pub class_weight: Option<Vec<f64>>,
    /// Stops the fit between optimizer iterations (Ctrl-C).
    pub cancel: Cancel,
}

/// A fitted probe. Classes are `0..n_classes` (the Python layer maps labels to indices).
#[derive(Debug, Clone)]
pub struct LogisticModel {
    pub standardizer: Standardizer,
    /// `[n_features, n_classes]` for multinomial, `[n_features, 1]` for binary (positive class
    /// 1), in the original feature space.
    pub coef: Array2<f64>,
    pub intercept: Array1<f64>,
    pub n_classes: usize,
    /// L-BFGS iterations used, and whether the gradient tolerance was reached.
    pub iterations: usize,
    pub converged: bool,
}

/// Value and gradient of the binary objective, reading the original rows in place and
/// standardizing implicitly: with `v = w / s`, `z.w + b = x.v + (b - m.v)` and
/// `grad_w = (sum r x - m sum r) / s`, so no standardized copy is ever made.
struct BinaryObjective<'a, T> {
    x: RowSet<'a, T>,
    /// Class-1 indicator of each selected row.
    targets: Vec<f64>,
    /// Sample weights divided by their sum.
    weights: Vec<f64>,
    standardizer: &'a Standardizer,
    /// `1 / (C * sum(w))`.
    penalty: f64,
}

impl<T: Feature> BinaryObjective<'_, T> {
    fn eval(&self, theta: &Array1<f64>) -> (f64, Array1<f64>) {
        let d = self.x.d;
        let (w, b) = (&theta.as_slice().expect("contiguous theta")[..d], theta[d]);
        let (mean, scale) = (&self.standardizer.mean, &self.standardizer.scale);
        let v: Vec<f64> = w.iter().zip(scale).map(|(w, s)| w / s).collect();
        let c = b - mean.iter().zip(&v).map(|(m, v)| m * v).sum::<f64>();
        let mut gx = vec![0f64; d];
        let (loss, gb) = binary_pass(&self.x, &self.targets, &self.weights, &v, c, &mut gx);
        let mut grad = Array1::zeros(d + 1);
        for j in 0..d {
            grad[j] = (gx[j] - mean[j] * gb) / scale[j] + self.penalty * w[j];
        }
        grad[d] = gb;
        let reg = 0.5 * self.penalty * w.iter().map(|v| v * v).sum::<f64>();
        (loss + reg, grad)
    }
}

/// One pass of the binary objective over the rows: returns the weighted loss and the
/// intercept gradient, and accumulates `sum r x` into `gx`. Dispatches to an AVX2/FMA build of
/// the same code where the CPU has it (the crate's baseline is SSE2).
fn binary_pass<T: Feature>(
    x: &RowSet<T>,
    t: &[f64],
    wt: &[f64],
    v: &[f64],
    c: f64,
    gx: &mut [f64],
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { binary_pass_avx2(x, t, wt, v, c, gx) };
    }
    binary_pass_body(x, t, wt, v, c, gx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn binary_pass_avx2<T: Feature>(
    x: &RowSet<T>,
    t: &[f64],
    wt: &[f64],
    v: &[f64],
    c: f64,
    gx: &mut [f64],
) -> (f64, f64) {
    binary_pass_body(x, t, wt, v, c, gx)
}

#[inline(always)]
fn binary_pass_body<T: Feature>(
    x: &RowSet<T>,
    t: &[f64],
    wt: &[f64],
    v: &[f64],
    c: f64,
    gx: &mut [f64],
) -> (f64, f64) {
    let (mut loss, mut gb) = (0.0, 0.0);
    for ((row, &t), &wi) in x.iter().zip(t).zip(wt) {
        let logit = dot(row, v) + c;
        // softplus(z) - y z, computed stably.
        let softplus = if logit > 0.0 {
            logit + (-logit).exp().ln_1p()
        } else {
            logit.exp().ln_1p()
        };
        loss += wi * (softplus - t * logit);
        let r = wi * (1.0 / (1.0 + (-logit).exp()) - t);
        for (g, &xj) in gx.iter_mut().zip(row) {
            *g += r * xj.to_f64();
        }
        gb += r;
    }
    (loss, gb)
}

/// Features up to this magnitude are fitted as they are when not standardized (the results of
/// ordinary inputs stay exactly as they were); beyond it, on `x / 2^k`.
const RAW_LIMIT: f64 = 4294967296.0; // 2^32

/// The power of two that brings the largest |x| of the rows to at most 1, or 1 when they are
/// no larger than `RAW_LIMIT`.
fn global_unit<T: Feature>(x: &RowSet<T>) -> f64 {
    let peak = x
        .iter()
        .flat_map(|row| row.iter())
        .fold(0.0f64, |m, v| m.max(v.to_f64().abs()));
    if peak <= RAW_LIMIT {
        1.0
    } else {
        2f64.powi(peak.log2().ceil() as i32)
    }
}

/// Dot product with eight independent partial sums, so that it vectorizes (a single running
/// sum is one dependent add per element).
#[inline(always)]
fn dot<T: Feature>(a: &[T], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x.to_f64() * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i].to_f64() * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Value and gradient of the weighted softmax cross-entropy at `theta = [W (d x k, row-major),
/// b (k)]`, on a standardized dense copy `z`.
struct SoftmaxObjective {
    z: Array2<f64>,
    /// One-hot targets `[n, k]`.
    targets: Array2<f64>,
    /// Sample weights divided by their sum.
    weights: Array1<f64>,
    /// `1 / (C * sum(w))`.
    penalty: f64,
    k: usize,
}

impl SoftmaxObjective {
    fn eval(&self, theta: &Array1<f64>) -> (f64, Array1<f64>) {
        let d = self.z.ncols();
        let k = self.k;
        let w = theta
            .slice(s![..d * k])
            .into_shape_with_order((d, k))
            .expect("theta holds d * k weights");
        let b = theta.slice(s![d * k..]);
        let mut scores = self.z.dot(&w) + b;
        let mut loss = 0.0;
        // Turn `scores` into the residuals (p - y) * weight, accumulating the loss.
        for ((mut row, t), &wi) in scores
            .rows_mut()
            .into_iter()
            .zip(self.targets.rows())
            .zip(&self.weights)
        {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - m).exp()).sum();
            let lse = m + sum.ln();
            loss += wi * (lse - row.dot(&t));
            row.zip_mut_with(&t, |v, &y| *v = wi * ((*v - lse).exp() - y));
        }
        let gw = self.z.t().dot(&scores) + &(&w * self.penalty);
        let mut grad = Array1::zeros(theta.len());
        grad.slice_mut(s![..d * k])
            .assign(&gw.into_shape_with_order(d * k).expect("d * k gradient"));
        grad.slice_mut(s![d * k..])
            .assign(&scores.sum_axis(Axis(0)));
        let reg = 0.5 * self.penalty * w.iter().map(|v| v * v).sum::<f64>();
        (loss + reg, grad)
    }
}

impl LogisticModel {
    /// Fit on all rows of `x` `[n, d]` with class indices `y` `[n]`.
    pub fn fit(
        x: &ArrayView2<f64>,
        y: &[usize],
        n_classes: usize,
        p: &LogisticParams,
    ) -> Result<Self> {
        check::finite_matrix(x, "X")?;
        check::same_rows(x.nrows(), y.len(), "y")?;
        let xs = x.as_standard_layout();
        let all: Vec<usize> = (0..x.nrows()).collect();
        let rows = RowSet::new(xs.as_slice().expect("standard layout"), x.ncols(), &all)?;
        Self::fit_rows(&rows, y, n_classes, p)
    }

    /// Fit on the selected rows, read in place; `y[k]` is the class of `rows.row(k)`.
    /// The caller has checked that the rows are finite.
    pub fn fit_rows<T: Feature>(
        x: &RowSet<T>,
        y: &[usize],
        n_classes: usize,
        p: &LogisticParams,
    ) -> Result<Self> {
        check::same_rows(x.len(), y.len(), "y")?;
        if !(p.c > 0.0 && p.c.is_finite()) {
            return Err(MsError::invalid(format!(
                "C must be a positive number, got {}",
                p.c
            )));
        }
        let mut counts = vec![0usize; n_classes.max(1)];
        for &c in y {
            if c >= n_classes {
                return Err(MsError::invalid(format!(
                    "label index {c} >= n_classes {n_classes}"
                )));
            }
            counts[c] += 1;
        }
        if counts.iter().filter(|&&c| c > 0).count() < 2 {
            return Err(MsError::data(
                "y contains a single class: a classifier needs at least two classes",
            ));
        }
        let class_weight = match &p.class_weight {
            Some(cw) if cw.len() != n_classes => {
                return Err(MsError::invalid(format!(
                    "class_weight has {} entries for {n_classes} classes",
                    cw.len()
                )))
            }
            Some(cw) if cw.iter().any(|w| !(*w > 0.0 && w.is_finite())) => {
                return Err(MsError::invalid(format!(
                    "class weights must be positive numbers, got {cw:?}"
                )))
            }
            Some(cw) => cw.clone(),
            None => vec![1.0; n_classes],
        };
        // Without standardisation, huge features are still solved on `x / unit` (a power of
        // two, so exact) with the penalty rescaled to the same objective: on raw values of 1e200
        // the gradient tolerance is out of reach and L-BFGS returned all-zero coefficients.
        let unit = if p.standardize { 1.0 } else { global_unit(x) };
        let standardizer = if p.standardize {
            Standardizer::fit_rows(x)
        } else {
            let mut s = Standardizer::identity(x.d);
            s.scale.fill(unit);
            s
        };
        let raw: Vec<f64> = y.iter().map(|&c| class_weight[c]).collect();
        let total: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / total).collect();
        // ||coef||^2 = ||w / unit||^2 (0 when unit^2 overflows: the penalty is then negligible).
        let penalty = 1.0 / (p.c * total) / (unit * unit);
        let lbfgs = LbfgsParams {
            max_iter: p.max_iter as usize,
            gtol: p.tol,
            ..Default::default()
        };
        let d = x.d;
        let k = if n_classes == 2 { 1 } else { n_classes };
        let result = if k == 1 {
            let objective = BinaryObjective {
                x: *x,
                targets: y.iter().map(|&c| c as f64).collect(),
                weights,
                standardizer: &standardizer,
                penalty,
            };
            minimize(
                |theta| objective.eval(theta),
                Array1::zeros(d + 1),
                &lbfgs,
                &p.cancel,
            )?
        } else {
            let mut targets = Array2::zeros((x.len(), k));
            for (i, &c) in y.iter().enumerate() {
                targets[[i, c]] = 1.0;
            }
            let objective = SoftmaxObjective {
                z: standardizer.transform_rows(x),
                targets,
                weights: Array1::from(weights),
                penalty,
                k,
            };
            minimize(
                |theta| objective.eval(theta),
                Array1::zeros(d * k + k),
                &lbfgs,
                &p.cancel,
            )?
        };
        let w = result
            .x
            .slice(s![..d * k])
            .into_shape_with_order((d, k))
            .expect("d * k weights")
            .to_owned();
        let b = result.x.slice(s![d * k..]).to_owned();
        let (coef, intercept) = standardizer.to_original(&w, &b)?;
        Ok(LogisticModel {
            standardizer,
            coef,
            intercept,
            n_classes,
            iterations: result.iterations,
            converged: result.converged,
        })
    }

    /// Decision values: `[n]` logit of class 1 (binary) or `[n, k]` class scores.
    pub fn decision(&self, x: &ArrayView2<f64>) -> Result<Array2<f64>> {
        check::finite_matrix(x, "X")?;
        check::n_features(self.coef.nrows(), x.ncols(), "predict")?;
        Ok(x.dot(&self.coef) + &self.intercept)
    }

    /// Predicted class of each selected row (ties go to the lower class, as an argmax over
    /// `predict_proba` does).
    pub fn predict_rows<T: Feature>(&self, x: &RowSet<T>) -> Result<Vec<usize>> {
        check::n_features(self.coef.nrows(), x.d, "predict")?;
        let coef_t = self.coef.t().as_standard_layout().into_owned();
        let coef_t = coef_t.as_slice().expect("standard layout");
        Ok(x.iter()
            .map(|row| {
                let score =
                    |c: usize| dot(row, &coef_t[c * x.d..(c + 1) * x.d]) + self.intercept[c];
                if self.n_classes == 2 {
                    usize::from(score(0) > 0.0)
                } else {
                    (0..self.n_classes)
                        .fold((0, f64::NEG_INFINITY), |best, c| {
                            let s = score(c);
                            if s > best.1 {
                                (c, s)
                            } else {
                                best
                            }
                        })
                        .0
                }
            })
            .collect())
    }

    /// Accuracy on the selected rows, `y[k]` being the class of `rows.row(k)`.
    pub fn accuracy_rows<T: Feature>(&self, x: &RowSet<T>, y: &[usize]) -> Result<f64> {
        check::same_rows(x.len(), y.len(), "y")?;
        let predicted = self.predict_rows(x)?;
        let hits = predicted.iter().zip(y).filter(|(p, t)| p == t).count();
        Ok(hits as f64 / y.len().max(1) as f64)
    }

    /// Class probabilities `[n, n_classes]`.
    pub fn predict_proba(&self, x: &ArrayView2<f64>) -> Result<Array2<f64>> {
        let d = self.decision(x)?;
        if self.n_classes == 2 {
            let p1 = d.column(0).mapv(|z| 1.0 / (1.0 + (-z).exp()));
            let mut out = Array2::zeros((x.nrows(), 2));
            out.column_mut(1).assign(&p1);
            out.column_mut(0).assign(&p1.mapv(|p| 1.0 - p));
            return Ok(out);
        }
        let mut out = d;
        for mut row in out.rows_mut() {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            row.mapv_inplace(|v| (v - m).exp());
            let s = row.sum();
            row.mapv_inplace(|v| v / s);
        }
        Ok(out)
    }

    pub fn predict(&self, x: &ArrayView2<f64>) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    )
                    .0
            })
            .collect())
    }
}
