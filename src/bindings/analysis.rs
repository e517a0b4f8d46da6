//! Python bindings of the analysis toolkit. Fitting runs in Rust with the GIL released; the
//! fitted arrays go back to Python, whose estimator classes predict with numpy.

use ndarray::Array1;
use numpy::{Element, IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{interruptible, interruptible_reporting, IntoPyResult};
use crate::analysis::ridge::RidgeCv;
use crate::analysis::sweep::{logistic_sweep as sweep_layers, SweepScore, SweepTarget};
use crate::analysis::{
    metrics, DirectionMethod, Feature, LogisticModel, LogisticParams, Pca, RidgeModel, RidgeParams,
    TruthDirection,
};
use crate::error::MsError;
use crate::interrupt::Cancel;

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
    let m = interruptible(py, |_| RidgeModel::fit(&xv, &yv, &params))?;
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
    let m = interruptible(py, |cancel| {
        let params = LogisticParams {
            c,
            max_iter,
            tol,
            standardize,
            class_weight,
            cancel: cancel.clone(),
        };
        LogisticModel::fit(&xv, &y, n_classes, &params)
    })?;
    let d = PyDict::new(py);
    d.set_item("coef", m.coef.into_pyarray(py))?;
    d.set_item("intercept", m.intercept.into_pyarray(py))?;
    d.set_item("mean", m.standardizer.mean.into_pyarray(py))?;
    d.set_item("scale", m.standardizer.scale.into_pyarray(py))?;
    d.set_item("n_iter", m.iterations)?;
    d.set_item("converged", m.converged)?;
    Ok(d)
}

/// One target of a sweep: class indices of every sample, the number of classes and the
/// per-class weights (or None).
type TargetSpec = (Vec<i64>, usize, Option<Vec<f64>>);

/// (train accuracy, test accuracy, L-BFGS iterations, converged) of one probe.
type ProbeScore = (f64, f64, usize, bool);

/// Logistic probes for every (layer, target) pair; `layers` are C-contiguous `[n, d]` arrays,
/// all float32 or all float64, read in place. Returns `[layers, targets, 4]` rows of (train
/// accuracy, test accuracy, iterations, converged). `progress(done, total)` counts probes.
#[pyfunction]
#[pyo3(signature = (layers, targets, train, test, c, max_iter, tol, standardize, progress=None))]
#[allow(clippy::too_many_arguments)]
fn logistic_sweep<'py>(
    py: Python<'py>,
    layers: Vec<Bound<'py, PyAny>>,
    targets: Vec<TargetSpec>,
    train: Vec<usize>,
    test: Vec<usize>,
    c: f64,
    max_iter: u64,
    tol: f64,
    standardize: bool,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<Vec<ProbeScore>>> {
    // The probes' optimizers stop between iterations when this token fires.
    let cancel = Cancel::new();
    let targets = targets
        .into_iter()
        .map(|(y, n_classes, class_weight)| {
            Ok(SweepTarget {
                labels: labels(&y, "y")?,
                n_classes,
                params: LogisticParams {
                    c,
                    max_iter,
                    tol,
                    standardize,
                    class_weight,
                    cancel: cancel.clone(),
                },
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let as_f32: PyResult<Vec<PyReadonlyArray2<'py, f32>>> =
        layers.iter().map(|l| l.extract()).collect();
    let scores = match as_f32 {
        Ok(arrays) => sweep_arrays(py, &arrays, &targets, &train, &test, &cancel, progress)?,
        Err(_) => {
            let arrays: Vec<PyReadonlyArray2<'py, f64>> = layers
                .iter()
                .map(|l| l.extract())
                .collect::<PyResult<_>>()?;
            sweep_arrays(py, &arrays, &targets, &train, &test, &cancel, progress)?
        }
    };
    Ok(scores
        .into_iter()
        .map(|per_target| {
            per_target
                .into_iter()
                .map(|s| (s.train, s.test, s.iterations, s.converged))
                .collect()
        })
        .collect())
}

fn sweep_arrays<T: Feature + Element>(
    py: Python<'_>,
    arrays: &[PyReadonlyArray2<'_, T>],
    targets: &[SweepTarget],
    train: &[usize],
    test: &[usize],
    cancel: &Cancel,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Vec<SweepScore>>> {
    let d = arrays.first().map_or(0, |a| a.shape()[1]);
    let slices = arrays
        .iter()
        .enumerate()
        .map(|(l, a)| {
            if a.shape()[1] != d {
                return Err(MsError::shape(format!(
                    "layer {l} has {} features, layer 0 has {d}",
                    a.shape()[1]
                )));
            }
            a.as_slice()
                .map_err(|_| MsError::invalid(format!("layer {l} is not a C-contiguous array")))
        })
        .collect::<Result<Vec<&[T]>, MsError>>()
        .py_err()?;
    interruptible_reporting(py, cancel, progress, |token| {
        sweep_layers(&slices, d, targets, train, test, token.progress())
    })
}

#[pyfunction]
fn pca_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    n_components: usize,
    whiten: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let xv = x.as_array();
    let p = interruptible(py, |_| Pca::fit(&xv, n_components, whiten))?;
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
    let t = interruptible(py, |cancel| {
        TruthDirection::fit(&xv, &y, method, pairs.as_deref(), seed, cancel)
    })?;
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
    let e = interruptible(py, |_| metrics::proximity_error(&a, &b))?;
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
    m.add_function(wrap_pyfunction!(logistic_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(pca_fit, m)?)?;
    m.add_function(wrap_pyfunction!(truth_fit, m)?)?;
    m.add_function(wrap_pyfunction!(auroc, m)?)?;
    m.add_function(wrap_pyfunction!(r2_per_target, m)?)?;
    m.add_function(wrap_pyfunction!(proximity_error, m)?)?;
    m.add_function(wrap_pyfunction!(great_circle_km, m)?)?;
    Ok(())
}
