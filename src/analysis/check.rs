//! Input validation shared by the estimators: clear errors instead of NaN results or panics.

use ndarray::{ArrayView1, ArrayView2};

use crate::error::{MsError, Result};

pub fn finite_matrix(x: &ArrayView2<f64>, what: &str) -> Result<()> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(MsError::data(format!(
            "{what} is empty (shape {:?})",
            x.shape()
        )));
    }
    if let Some((idx, v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(MsError::data(format!(
            "{what} contains {v} at row {}, column {}: features must be finite (no NaN or inf)",
            idx.0, idx.1
        )));
    }
    Ok(())
}

pub fn finite_vector(y: &ArrayView1<f64>, what: &str) -> Result<()> {
    if let Some((i, v)) = y.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(MsError::data(format!(
            "{what} contains {v} at index {i}: values must be finite"
        )));
    }
    Ok(())
}

pub fn same_rows(n_x: usize, n_y: usize, what: &str) -> Result<()> {
    if n_x != n_y {
        return Err(MsError::shape(format!(
            "{what} has {n_y} entries but X has {n_x} rows: they must match"
        )));
    }
    Ok(())
}

pub fn n_features(expected: usize, got: usize, what: &str) -> Result<()> {
    if expected != got {
        return Err(MsError::shape(format!(
            "{what}: X has {got} features but the estimator was fitted on {expected}"
        )));
    }
    Ok(())
}
