//! Logistic-regression probes (binary and multinomial) on linfa-logistic.
//!
//! scikit-learn minimises `C * sum(loss) + ||w||^2 / 2`; linfa-logistic minimises
//! `sum(loss) + alpha * ||w||^2 / 2` (intercept unpenalised in both), so `alpha = 1 / C`.
//! linfa-logistic has no sample weights, so class weights are not offered.

use linfa::prelude::*;
use linfa::Dataset;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::check;
use super::standardize::Standardizer;
use crate::error::{MsError, Result};

#[derive(Debug, Clone)]
pub struct LogisticParams {
    /// Inverse regularisation strength, as in scikit-learn.
    pub c: f64,
    pub max_iter: u64,
    pub tol: f64,
    pub standardize: bool,
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
}

fn lin_err(e: impl std::fmt::Display) -> MsError {
    MsError::Compute(format!("logistic regression failed: {e}"))
}

impl LogisticModel {
    pub fn fit(
        x: &ArrayView2<f64>,
        y: &[usize],
        n_classes: usize,
        p: &LogisticParams,
    ) -> Result<Self> {
        check::finite_matrix(x, "X")?;
        check::same_rows(x.nrows(), y.len(), "y")?;
        if !(p.c > 0.0 && p.c.is_finite()) {
            return Err(MsError::invalid(format!(
                "C must be a positive number, got {}",
                p.c
            )));
        }
        let present = {
            let mut seen = vec![false; n_classes.max(1)];
            for &c in y {
                if c >= n_classes {
                    return Err(MsError::invalid(format!(
                        "label index {c} >= n_classes {n_classes}"
                    )));
                }
                seen[c] = true;
            }
            seen.iter().filter(|&&s| s).count()
        };
        if present < 2 {
            return Err(MsError::data(
                "y contains a single class: a classifier needs at least two classes",
            ));
        }
        let standardizer = if p.standardize {
            Standardizer::fit(x)
        } else {
            Standardizer::identity(x.ncols())
        };
        let z = standardizer.transform(x);
        let alpha = 1.0 / p.c;
        let targets = Array1::from(y.to_vec());
        let (w, b) = if n_classes == 2 {
            let ds = Dataset::new(z, targets);
            let m = LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(p.max_iter)
                .gradient_tolerance(p.tol)
                .fit(&ds)
                .map_err(lin_err)?;
            // linfa's "positive" class is the first label it saw; orient the weights to class 1.
            let sign = if m.labels().pos.class == 1 { 1.0 } else { -1.0 };
            (
                (m.params() * sign).insert_axis(Axis(1)),
                Array1::from(vec![m.intercept() * sign]),
            )
        } else {
            let ds = Dataset::new(z, targets);
            let m = MultiLogisticRegression::default()
                .alpha(alpha)
                .max_iterations(p.max_iter)
                .gradient_tolerance(p.tol)
                .fit(&ds)
                .map_err(lin_err)?;
            // Columns follow the sorted labels seen; place them at their class index.
            let mut w = Array2::zeros((x.ncols(), n_classes));
            let mut b = Array1::from_elem(n_classes, -1e30);
            for (col, &cls) in m.classes().iter().enumerate() {
                w.column_mut(cls).assign(&m.params().column(col));
                b[cls] = m.intercept()[col];
            }
            (w, b)
        };
        let coef = &w / &standardizer.scale.view().insert_axis(Axis(1));
        let intercept = &b - &standardizer.mean.dot(&coef);
        Ok(LogisticModel {
            standardizer,
            coef,
            intercept,
            n_classes,
        })
    }

    /// Decision values: `[n]` logit of class 1 (binary) or `[n, k]` class scores.
    pub fn decision(&self, x: &ArrayView2<f64>) -> Result<Array2<f64>> {
        check::finite_matrix(x, "X")?;
        check::n_features(self.coef.nrows(), x.ncols(), "predict")?;
        Ok(x.dot(&self.coef) + &self.intercept)
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
