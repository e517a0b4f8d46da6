//! Truth directions ("lie detectors"): a unit direction in activation space and a threshold
//! that separate true from false statements.
//!
//! - mass-mean (Marks & Tegmark 2023): difference of class means; the `iid` variant multiplies by
//!   the inverse within-class covariance (shrunk towards the identity, as a finite sample needs).
//! - logistic: the normal of a logistic-regression boundary.
//! - LAT (Zou et al. 2023, RepE): the first (uncentred) principal direction of differences of
//!   paired activations (a statement and its negation, or random pairs).
//! - CCS (Burns et al. 2022): unsupervised; a probe that makes p(x+) = 1 - p(x-) confidently,
//!   with the sign fixed afterwards from labels.

use linfa_linalg::eigh::EighInto;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::check;
use super::logistic::{LogisticModel, LogisticParams};
use crate::error::{MsError, Result};
use crate::interrupt::Cancel;

/// A deterministic permutation of `0..n`.
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionMethod {
    MassMean,
    MassMeanIid,
    Logistic,
    Lat,
    Ccs,
}

impl DirectionMethod {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "mass_mean" => Self::MassMean,
            "mass_mean_iid" => Self::MassMeanIid,
            "logistic" => Self::Logistic,
            "lat" => Self::Lat,
            "ccs" => Self::Ccs,
            other => {
                return Err(MsError::invalid(format!(
                    "unknown truth-direction method '{other}'; allowed: mass_mean, \
                     mass_mean_iid, logistic, lat, ccs"
                )))
            }
        })
    }
}

/// A fitted direction: `score(x) = x . direction`, true when `score > threshold`.
#[derive(Debug, Clone)]
pub struct TruthDirection {
    pub method: DirectionMethod,
    pub direction: Array1<f64>,
    pub threshold: f64,
}

fn class_means(x: &ArrayView2<f64>, y: &[usize]) -> Result<(Array1<f64>, Array1<f64>)> {
    let pos: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 1).collect();
    let neg: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 0).collect();
    if pos.is_empty() || neg.is_empty() {
        return Err(MsError::data(
            "truth directions need both true (1) and false (0) statements; got a single class",
        ));
    }
    if pos.len() + neg.len() != y.len() {
        return Err(MsError::data("labels must be 0 (false) or 1 (true)"));
    }
    let mean = |ix: &[usize]| x.select(Axis(0), ix).mean_axis(Axis(0)).unwrap_or_default();
    Ok((mean(&pos), mean(&neg)))
}

fn unit(v: Array1<f64>) -> Result<Array1<f64>> {
    let n = v.dot(&v).sqrt();
    if !(n > 0.0 && n.is_finite()) {
        return Err(MsError::data(
            "the fitted direction is zero: the classes are not separable along any direction",
        ));
    }
    Ok(v / n)
}

/// Orient `dir` so true statements score higher, and put the threshold halfway between the
/// projected class means.
fn orient(
    x: &ArrayView2<f64>,
    y: &[usize],
    dir: Array1<f64>,
    method: DirectionMethod,
) -> Result<TruthDirection> {
    let (mp, mn) = class_means(x, y)?;
    let mut dir = unit(dir)?;
    if mp.dot(&dir) < mn.dot(&dir) {
        dir = -dir;
    }
    let threshold = 0.5 * (mp.dot(&dir) + mn.dot(&dir));
    Ok(TruthDirection {
        method,
        direction: dir,
        threshold,
    })
}

fn eigh(m: Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    m.eigh_into()
        .map_err(|e| MsError::Compute(format!("eigendecomposition failed: {e:?}")))
}

/// `(C^T C / n + lambda I)^-1 b` for centred rows `C [n, d]`, with `lambda` 1 % of the mean
/// variance (a finite sample's covariance needs shrinking). With more features than rows the
/// d x d covariance is never formed: Woodbury's identity gives the same vector from the n x n
/// Gram matrix, `(b - C^T (n lambda I + C C^T)^-1 C b) / lambda`, so 20 statements of 5,000
/// features cost a 20 x 20 eigendecomposition instead of a 5,000 x 5,000 one.
fn shrunk_covariance_solve(c: &Array2<f64>, b: Array1<f64>) -> Result<Array1<f64>> {
    let (n, d) = c.dim();
    let total_variance = c.iter().map(|v| v * v).sum::<f64>() / n as f64;
    let lambda = 1e-2 * total_variance / d as f64 + 1e-12;
    if d <= n {
        let mut cov = c.t().dot(c) / n as f64;
        cov.diag_mut().mapv_inplace(|v| v + lambda);
        let (s, v) = eigh(cov)?;
        return Ok(v.dot(&(v.t().dot(&b) / &s)));
    }
    let mut gram = c.dot(&c.t());
    gram.diag_mut().mapv_inplace(|v| v + n as f64 * lambda);
    let (s, v) = eigh(gram)?;
    let cb = c.dot(&b);
    let solved = v.dot(&(v.t().dot(&cb) / &s));
    Ok((b - c.t().dot(&solved)) / lambda)
}

/// The top eigenvector of `D^T D` for rows `D [m, d]` (its top right singular vector), from the
/// m x m Gram matrix when there are more features than rows (`D^T u` for its top eigenvector
/// `u`, normalised: the same direction).
fn top_right_singular_vector(dm: &Array2<f64>) -> Result<Array1<f64>> {
    let (m, d) = dm.dim();
    let top = |s: &Array1<f64>| {
        (0..s.len())
            .max_by(|&a, &b| s[a].total_cmp(&s[b]))
            .unwrap_or(0)
    };
    if d <= m {
        let (s, v) = eigh(dm.t().dot(dm))?;
        return Ok(v.column(top(&s)).to_owned());
    }
    let (s, u) = eigh(dm.dot(&dm.t()))?;
    unit(dm.t().dot(&u.column(top(&s))))
}

/// Features whose largest magnitude lies outside this range are fitted on `x / max|x|`: the
/// squared norms and second moments below overflow past ~1e154 and underflow below ~1e-154
/// (a 1e300-scaled X was reported as "not separable along any direction").
const PLAIN_RANGE: (f64, f64) = (1e-100, 1e100);

impl TruthDirection {
    /// Fit with labels `y` (1 true, 0 false). `pairs` (indices into `x`) feed LAT and CCS;
    /// for CCS each pair is (statement, its negation).
    pub fn fit(
        x: &ArrayView2<f64>,
        y: &[usize],
        method: DirectionMethod,
        pairs: Option<&[(usize, usize)]>,
        seed: u64,
        cancel: &Cancel,
    ) -> Result<Self> {
        check::finite_matrix(x, "X")?;
        check::same_rows(x.nrows(), y.len(), "labels")?;
        let peak = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if peak == 0.0 || (PLAIN_RANGE.0..=PLAIN_RANGE.1).contains(&peak) {
            return Self::fit_plain(x, y, method, pairs, seed, cancel);
        }
        // Every method's direction is invariant to a global scale of X; the threshold scales
        // with it.
        let scaled = x.mapv(|v| v / peak);
        let mut fitted = Self::fit_plain(&scaled.view(), y, method, pairs, seed, cancel)?;
        fitted.threshold *= peak;
        if !fitted.threshold.is_finite() {
            return Err(MsError::data(format!(
                "the features are too large for float64 arithmetic (values up to {peak:e}): the \
                 threshold overflows; rescale X (e.g. divide it by its largest absolute value)"
            )));
        }
        Ok(fitted)
    }

    fn fit_plain(
        x: &ArrayView2<f64>,
        y: &[usize],
        method: DirectionMethod,
        pairs: Option<&[(usize, usize)]>,
        seed: u64,
        cancel: &Cancel,
    ) -> Result<Self> {
        let (mp, mn) = class_means(x, y)?;
        match method {
            DirectionMethod::MassMean => orient(x, y, &mp - &mn, method),
            DirectionMethod::MassMeanIid => {
                let mut centered = x.to_owned();
                for (mut row, &label) in centered.rows_mut().into_iter().zip(y) {
                    row -= if label == 1 { &mp } else { &mn };
                }
                let dir = shrunk_covariance_solve(&centered, &mp - &mn)?;
                orient(x, y, dir, method)
            }
            DirectionMethod::Logistic => {
                let params = LogisticParams {
                    c: 0.1,
                    max_iter: 1000,
                    tol: 1e-6,
                    standardize: true,
                    class_weight: None,
                    cancel: cancel.clone(),
                };
                let m = LogisticModel::fit(x, y, 2, &params)?;
                let w = m.coef.column(0).to_owned();
                let norm = w.dot(&w).sqrt();
                let dir = unit(w)?;
                Ok(TruthDirection {
                    method,
                    direction: dir,
                    threshold: -m.intercept[0] / norm,
                })
            }
            DirectionMethod::Lat => {
                let pairs = pairs_or_random(x.nrows(), pairs, seed)?;
                let diffs = Array2::from_shape_fn((pairs.len(), x.ncols()), |(k, j)| {
                    x[[pairs[k].0, j]] - x[[pairs[k].1, j]]
                });
                // Uncentred: the top eigenvector of the differences' second moment, so that
                // consistently ordered pairs (whose differences share a mean) work as well as
                // randomly ordered ones (whose differences spread along +-direction).
                orient(x, y, top_right_singular_vector(&diffs)?, method)
            }
            DirectionMethod::Ccs => {
                let pairs = pairs.ok_or_else(|| {
                    MsError::invalid("CCS needs pairs (statement index, negation index)")
                })?;
                let w = ccs_direction(x, pairs, seed, cancel)?;
                orient(x, y, w, method)
            }
        }
    }

    pub fn score(&self, x: &ArrayView2<f64>) -> Result<Array1<f64>> {
        check::finite_matrix(x, "X")?;
        check::n_features(self.direction.len(), x.ncols(), "score")?;
        Ok(x.dot(&self.direction))
    }
}

fn pairs_or_random(
    n: usize,
    pairs: Option<&[(usize, usize)]>,
    seed: u64,
) -> Result<Vec<(usize, usize)>> {
    match pairs {
        Some(p) => {
            if p.is_empty() {
                return Err(MsError::invalid("pairs is empty"));
            }
            if let Some(bad) = p.iter().find(|(a, b)| *a >= n || *b >= n) {
                return Err(MsError::invalid(format!(
                    "pair {bad:?} indexes beyond {n} samples"
                )));
            }
            Ok(p.to_vec())
        }
        None => {
            let perm = seeded_permutation(n, seed);
            Ok(perm
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (c[0], c[1]))
                .collect())
        }
    }
}

/// CCS: normalise each side of the pairs, then minimise
/// `mean((p+ - (1 - p-))^2 + min(p+, p-)^2)` over a linear probe with a few random restarts.
fn ccs_direction(
    x: &ArrayView2<f64>,
    pairs: &[(usize, usize)],
    seed: u64,
    cancel: &Cancel,
) -> Result<Array1<f64>> {
    let pairs = pairs_or_random(x.nrows(), Some(pairs), seed)?;
    let a_ix: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    let b_ix: Vec<usize> = pairs.iter().map(|p| p.1).collect();
    let norm = |m: Array2<f64>| {
        let mean = m.mean_axis(Axis(0)).unwrap_or_default();
        let c = m - &mean;
        let sd = c
            .mapv(|v| v * v)
            .mean_axis(Axis(0))
            .unwrap_or_default()
            .mapv(|v| v.sqrt().max(1e-8));
        c / &sd
    };
    let xa = norm(x.select(Axis(0), &a_ix));
    let xb = norm(x.select(Axis(0), &b_ix));
    let (n, d) = xa.dim();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut best: Option<(f64, Array1<f64>)> = None;
    for _ in 0..5 {
        cancel.check()?;
        let mut w = Array1::from_shape_fn(d, |_| rng.random::<f64>() - 0.5) / (d as f64).sqrt();
        let mut b = 0.0;
        // Adam on the CCS loss.
        let (mut m_w, mut v_w) = (Array1::<f64>::zeros(d), Array1::<f64>::zeros(d));
        let (mut m_b, mut v_b) = (0.0, 0.0);
        let (lr, b1, b2, eps) = (1e-2, 0.9, 0.999, 1e-8);
        let mut loss = 0.0;
        for step in 1..=500 {
            let pa = (xa.dot(&w) + b).mapv(|z| 1.0 / (1.0 + (-z).exp()));
            let pb = (xb.dot(&w) + b).mapv(|z| 1.0 / (1.0 + (-z).exp()));
            let mut ga = Array1::zeros(n);
            let mut gb = Array1::zeros(n);
            loss = 0.0;
            for i in 0..n {
                let cons = pa[i] - (1.0 - pb[i]);
                let conf = pa[i].min(pb[i]);
                loss += cons * cons + conf * conf;
                ga[i] = 2.0 * cons + if pa[i] <= pb[i] { 2.0 * conf } else { 0.0 };
                gb[i] = 2.0 * cons + if pb[i] < pa[i] { 2.0 * conf } else { 0.0 };
            }
            loss /= n as f64;
            // Chain through the sigmoid.
            let da = &ga * &pa.mapv(|p| p * (1.0 - p)) / n as f64;
            let db = &gb * &pb.mapv(|p| p * (1.0 - p)) / n as f64;
            let gw = xa.t().dot(&da) + xb.t().dot(&db);
            let gbias = da.sum() + db.sum();
            m_w = &m_w * b1 + &gw * (1.0 - b1);
            v_w = &v_w * b2 + &gw.mapv(|g| g * g) * (1.0 - b2);
            m_b = m_b * b1 + gbias * (1.0 - b1);
            v_b = v_b * b2 + gbias * gbias * (1.0 - b2);
            let c1 = 1.0 - b1.powi(step);
            let c2 = 1.0 - b2.powi(step);
            w = &w - &((&m_w / c1) / &((&v_w / c2).mapv(f64::sqrt) + eps) * lr);
            b -= lr * (m_b / c1) / ((v_b / c2).sqrt() + eps);
        }
        if best.as_ref().is_none_or(|(l, _)| loss < *l) {
            best = Some((loss, w));
        }
    }
    Ok(best.map(|(_, w)| w).unwrap_or_else(|| Array1::zeros(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two overlapping Gaussian clouds (identity covariance) separated along a planted
    /// direction: the setting where every supervised method should find that direction.
    fn planted(n: usize, d: usize) -> (Array2<f64>, Vec<usize>, Array1<f64>) {
        let mut rng = StdRng::seed_from_u64(1);
        let mut gauss = || {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let mut dir = Array1::from_shape_fn(d, |_| gauss());
        dir /= dir.dot(&dir).sqrt();
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let x = Array2::from_shape_fn((n, d), |(i, j)| {
            gauss() + if y[i] == 1 { 1.0 } else { -1.0 } * dir[j]
        });
        (x, y, dir)
    }

    #[test]
    fn supervised_methods_recover_the_planted_direction() {
        let (x, y, dir) = planted(8000, 20);
        // LAT pairs a true statement with a false one, as statement/negation pairs do.
        let pairs: Vec<(usize, usize)> = (0..4000).map(|k| (2 * k + 1, 2 * k)).collect();
        for m in [
            DirectionMethod::MassMean,
            DirectionMethod::MassMeanIid,
            DirectionMethod::Logistic,
            DirectionMethod::Lat,
        ] {
            let t =
                TruthDirection::fit(&x.view(), &y, m, Some(&pairs), 0, &Cancel::default()).unwrap();
            let cos = t.direction.dot(&dir);
            assert!(cos > 0.99, "{m:?}: cosine {cos}");
            let s = t.score(&x.view()).unwrap();
            let hits = s
                .iter()
                .zip(&y)
                .filter(|(v, &l)| (**v > t.threshold) == (l == 1))
                .count();
            // Bayes accuracy here is Phi(1) = 0.84.
            assert!(
                hits as f64 / 8000.0 > 0.82,
                "{m:?}: accuracy {}",
                hits as f64 / 8000.0
            );
        }
    }

    #[test]
    fn wide_data_uses_the_dual_and_gives_the_primal_direction() {
        // 12 rows, 40 features: the n x n route must give the d x d route's vector.
        let (x, y, _) = planted(12, 40);
        let (mp, mn) = class_means(&x.view(), &y).unwrap();
        let mut c = x.clone();
        for (mut row, &label) in c.rows_mut().into_iter().zip(&y) {
            row -= if label == 1 { &mp } else { &mn };
        }
        let b = &mp - &mn;
        let dual = shrunk_covariance_solve(&c, b.clone()).unwrap();
        let lambda = 1e-2 * c.iter().map(|v| v * v).sum::<f64>() / 12.0 / 40.0 + 1e-12;
        let mut cov = c.t().dot(&c) / 12.0;
        cov.diag_mut().mapv_inplace(|v| v + lambda);
        let (s, v) = eigh(cov).unwrap();
        let primal = v.dot(&(v.t().dot(&b) / &s));
        let rel = (&dual - &primal).mapv(f64::abs).sum() / primal.mapv(f64::abs).sum();
        assert!(rel < 1e-8, "dual vs primal: {rel}");
        let top_dual = top_right_singular_vector(&x).unwrap();
        let (s, v) = eigh(x.t().dot(&x)).unwrap();
        let k = (0..40).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        let cos = top_dual.dot(&v.column(k)).abs();
        assert!((cos - 1.0).abs() < 1e-9, "top singular vector: cos {cos}");
    }

    #[test]
    fn single_class_is_an_error() {
        let (x, _, _) = planted(10, 3);
        assert!(TruthDirection::fit(
            &x.view(),
            &[1; 10],
            DirectionMethod::MassMean,
            None,
            0,
            &Cancel::default()
        )
        .is_err());
    }
}
