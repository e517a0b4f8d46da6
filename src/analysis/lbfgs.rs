//! A small L-BFGS minimiser (two-loop recursion, backtracking Armijo line search) for smooth
//! convex objectives such as regularised logistic regression.

use ndarray::Array1;

use crate::error::Result;
use crate::interrupt::Cancel;

/// Stopping rules, as scipy's L-BFGS-B that scikit-learn uses: the largest gradient entry
/// below `gtol`, or a relative decrease of the objective below `ftol`.
#[derive(Debug, Clone, Copy)]
pub struct LbfgsParams {
    pub max_iter: usize,
    pub gtol: f64,
    pub ftol: f64,
    pub history: usize,
}

impl Default for LbfgsParams {
    fn default() -> Self {
        LbfgsParams {
            max_iter: 1000,
            gtol: 1e-4,
            ftol: 64.0 * f64::EPSILON,
            history: 10,
        }
    }
}

/// What the minimiser reached.
#[derive(Debug, Clone)]
pub struct LbfgsResult {
    pub x: Array1<f64>,
    pub value: f64,
    pub iterations: usize,
    pub converged: bool,
}

fn max_abs(v: &Array1<f64>) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Minimise `f` from `x0`; `f(x)` returns the value and the gradient. Stops with
/// `MsError::Interrupted` between iterations once `cancel` fires.
pub fn minimize<F>(
    mut f: F,
    x0: Array1<f64>,
    p: &LbfgsParams,
    cancel: &Cancel,
) -> Result<LbfgsResult>
where
    F: FnMut(&Array1<f64>) -> (f64, Array1<f64>),
{
    let mut x = x0;
    let (mut fx, mut g) = f(&x);
    let mut s_hist: Vec<Array1<f64>> = Vec::new();
    let mut y_hist: Vec<Array1<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    for iter in 0..p.max_iter {
        cancel.check()?;
        if max_abs(&g) <= p.gtol {
            return Ok(LbfgsResult {
                x,
                value: fx,
                iterations: iter,
                converged: true,
            });
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * s_hist[i].dot(&q);
            q.scaled_add(-alpha[i], &y_hist[i]);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => s.dot(y) / y.dot(y),
            _ => 1.0 / max_abs(&g).max(1e-12).max(g.dot(&g).sqrt()),
        };
        q *= gamma;
        for i in 0..s_hist.len() {
            let beta = rho[i] * y_hist[i].dot(&q);
            q.scaled_add(alpha[i] - beta, &s_hist[i]);
        }
        let mut d = -q;
        let mut slope = g.dot(&d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d = -&g / g.dot(&g).sqrt().max(1e-12);
            slope = g.dot(&d);
        }
        // Backtracking line search with the Armijo condition.
        let mut step = 1.0;
        let (mut x_new, mut f_new, mut g_new);
        loop {
            x_new = &x + &(&d * step);
            (f_new, g_new) = f(&x_new);
            if f_new <= fx + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s = &x_new - &x;
        let y = &g_new - &g;
        let sy = s.dot(&y);
        if sy > 1e-12 * y.dot(&y).max(1e-300) {
            if s_hist.len() == p.history {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            rho.push(1.0 / sy);
            s_hist.push(s);
            y_hist.push(y);
        }
        let decrease = fx - f_new;
        x = x_new;
        g = g_new;
        let converged = decrease.abs() <= p.ftol * fx.abs().max(f_new.abs()).max(1.0);
        fx = f_new;
        if converged {
            return Ok(LbfgsResult {
                x,
                value: fx,
                iterations: iter + 1,
                converged: true,
            });
        }
    }
    Ok(LbfgsResult {
        x,
        value: fx,
        iterations: p.max_iter,
        converged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_a_quadratic() {
        // f(x) = sum_i (i + 1) (x_i - 1)^2
        let f = |x: &Array1<f64>| {
            let mut g = Array1::zeros(x.len());
            let mut v = 0.0;
            for i in 0..x.len() {
                let w = (i + 1) as f64;
                v += w * (x[i] - 1.0).powi(2);
                g[i] = 2.0 * w * (x[i] - 1.0);
            }
            (v, g)
        };
        let r = minimize(
            f,
            Array1::zeros(20),
            &LbfgsParams {
                gtol: 1e-10,
                ..Default::default()
            },
            &Cancel::default(),
        )
        .unwrap();
        assert!(r.converged);
        assert!(r.x.iter().all(|v| (v - 1.0).abs() < 1e-8), "{:?}", r.x);
    }
}
