//! Python bindings of the analysis toolkit. Fitting runs in Rust with the GIL released; the
//! fitted arrays go back to Python, whose estimator classes predict with numpy.

use ndarray::Array1;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::IntoPyResult;
use crate::analysis::ridge::RidgeCv;
use crate::analysis::{
    metrics, DirectionMethod, LogisticModel, LogisticParams, Pca, RidgeModel, RidgeParams,
    TruthDirection,
};
use crate::error::MsError;

fn labels(y: &[i64], what: &str) -> PyResult<Vec<usize>> {
    y.iter()
        .map(|&v| {
            usize::try_from(v).map_err(|_| {
                super::to_py_err(MsError::invalid(format!(
                    "{what}: label indices must be >= 0, got {v}"
                )))
            })
        })
        .collect()
}

/// Ridge regression; `cv` is 0 for efficient leave-one-out or k >= 2 for k-fold.
#[pyfunction]
#[pyo3(signature = (x, y, alphas, cv, seed, standardize))]
fn ridge_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    y: PyReadonlyArray2<'py, f64>,
    alphas: Vec<f64>,
    cv: usize,
    seed: u64,
    standardize: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (xv, yv) = (x.as_array(), y.as_array());
    let params = RidgeParams {
        alphas,
        cv: if cv == 0 {
            RidgeCv::LeaveOneOut
        } else {
            RidgeCv::KFold { k: cv, seed }
        },
        standardize,
    };
    let m = py.detach(|| RidgeModel::fit(&xv, &yv, &params)).py_err()?;
    let d = PyDict::new(py);
    d.set_item("coef", m.coef.into_pyarray(py))?;
    d.set_item("intercept", m.intercept.into_pyarray(py))?;
    d.set_item("alpha", m.alpha)?;
    d.set_item("cv_errors", m.cv_errors)?;
    d.set_item("mean", m.standardizer.mean.into_pyarray(py))?;
    d.set_item("scale", m.standardizer.scale.into_pyarray(py))?;
    Ok(d)
}

/// Logistic regression on class indices `0..n_classes`.
#[pyfunction]
#[pyo3(signature = (x, y, n_classes, c, max_iter, tol, standardize, class_weight=None))]
#[allow(clippy::too_many_arguments)]
fn logistic_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    y: Vec<i64>,
    n_classes: usize,
    c: f64,
    max_iter: u64,
    tol: f64,
    standardize: bool,
    class_weight: Option<Vec<f64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let xv = x.as_array();
    let y = labels(&y, "y")?;
    let params = LogisticParams {
        c,
        max_iter,
        tol,
        standardize,
        class_weight,
    };
    let m = py
        .detach(|| LogisticModel::fit(&xv, &y, n_classes, &params))
        .py_err()?;
    let d = PyDict::new(py);
    d.set_item("coef", m.coef.into_pyarray(py))?;
    d.set_item("intercept", m.intercept.into_pyarray(py))?;
    d.set_item("mean", m.standardizer.mean.into_pyarray(py))?;
    d.set_item("scale", m.standardizer.scale.into_pyarray(py))?;
    d.set_item("n_iter", m.iterations)?;
    d.set_item("converged", m.converged)?;
    Ok(d)
}

#[pyfunction]
fn pca_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    n_components: usize,
    whiten: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let xv = x.as_array();
    let p = py.detach(|| Pca::fit(&xv, n_components, whiten)).py_err()?;
    let d = PyDict::new(py);
    d.set_item("mean", p.mean.into_pyarray(py))?;
    d.set_item("components", p.components.into_pyarray(py))?;
    d.set_item("explained_variance", p.explained_variance.into_pyarray(py))?;
    d.set_item(
        "explained_variance_ratio",
        p.explained_variance_ratio.into_pyarray(py),
    )?;
    Ok(d)
}

/// A truth direction; `pairs` index rows of `x` (statement, negation / contrast).
#[pyfunction]
#[pyo3(signature = (x, y, method, pairs, seed))]
fn truth_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    y: Vec<i64>,
    method: &str,
    pairs: Option<Vec<(usize, usize)>>,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let xv = x.as_array();
    let y = labels(&y, "labels")?;
    let method = DirectionMethod::parse(method).py_err()?;
    let t = py
        .detach(|| TruthDirection::fit(&xv, &y, method, pairs.as_deref(), seed))
        .py_err()?;
    let d = PyDict::new(py);
    d.set_item("direction", t.direction.into_pyarray(py))?;
    d.set_item("threshold", t.threshold)?;
    Ok(d)
}

#[pyfunction]
fn auroc(y_true: Vec<i64>, scores: PyReadonlyArray1<'_, f64>) -> PyResult<f64> {
    let y = labels(&y_true, "y_true")?;
    let s: Vec<f64> = scores.as_array().to_vec();
    metrics::auroc(&y, &s).py_err()
}

#[pyfunction]
fn r2_per_target(
    y_true: PyReadonlyArray2<'_, f64>,
    y_pred: PyReadonlyArray2<'_, f64>,
) -> PyResult<Vec<f64>> {
    metrics::r2_per_target(&y_true.as_array(), &y_pred.as_array()).py_err()
}

#[pyfunction]
fn proximity_error<'py>(
    py: Python<'py>,
    y_true: PyReadonlyArray2<'py, f64>,
    y_pred: PyReadonlyArray2<'py, f64>,
) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
    let (a, b) = (y_true.as_array(), y_pred.as_array());
    let e = py.detach(|| metrics::proximity_error(&a, &b)).py_err()?;
    Ok(Array1::from(e).into_pyarray(py))
}

/// Great-circle distances in km between rows of two `[n, 2]` (lat, lon) arrays.
#[pyfunction]
fn great_circle_km<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f64>,
    b: PyReadonlyArray2<'py, f64>,
) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
    let (a, b) = (a.as_array(), b.as_array());
    if a.shape() != b.shape() || a.ncols() != 2 {
        return Err(super::to_py_err(MsError::shape(format!(
            "great_circle_km needs two [n, 2] (lat, lon) arrays, got {:?} and {:?}",
            a.shape(),
            b.shape()
        ))));
    }
    let d: Array1<f64> = a
        .rows()
        .into_iter()
        .zip(b.rows())
        .map(|(p, q)| metrics::great_circle_km((p[0], p[1]), (q[0], q[1])))
        .collect();
    Ok(d.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ridge_fit, m)?)?;
    m.add_function(wrap_pyfunction!(logistic_fit, m)?)?;
    m.add_function(wrap_pyfunction!(pca_fit, m)?)?;
    m.add_function(wrap_pyfunction!(truth_fit, m)?)?;
    m.add_function(wrap_pyfunction!(auroc, m)?)?;
    m.add_function(wrap_pyfunction!(r2_per_target, m)?)?;
    m.add_function(wrap_pyfunction!(proximity_error, m)?)?;
    m.add_function(wrap_pyfunction!(great_circle_km, m)?)?;
    Ok(())
}
