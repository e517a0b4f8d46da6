//! numpy <-> core array conversions. Outputs hand the Rust buffer to numpy (no copy).

use ndarray::{ArrayD, IxDyn};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods, ToPyArray};
use pyo3::prelude::*;

use crate::error::MsError;
use crate::hooks::CapturedArray;

/// Move a captured array into a numpy array without copying its buffer.
pub fn array_to_py<'py>(
    py: Python<'py>,
    a: CapturedArray,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let arr = ArrayD::from_shape_vec(IxDyn(&a.shape), a.data)
        .map_err(|e| super::to_py_err(MsError::Compute(format!("bad array shape: {e}"))))?;
    Ok(numpy::PyArray::from_owned_array(py, arr))
}

/// Copy a numpy float32 array (any layout) into a row-major captured array.
pub fn array_from_py(a: &PyReadonlyArrayDyn<'_, f32>) -> CapturedArray {
    let view = a.as_array();
    let shape = a.shape().to_vec();
    let data = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    CapturedArray::new(shape, data)
}

/// A numpy view of a slice (copies; for small outputs such as token ids).
pub fn vec_to_py<'py, T: numpy::Element + Clone>(
    py: Python<'py>,
    v: &[T],
) -> Bound<'py, numpy::PyArray1<T>> {
    v.to_pyarray(py)
}

/// Read an optional float32 array argument.
pub fn opt_array(a: Option<PyReadonlyArrayDyn<'_, f32>>) -> Option<CapturedArray> {
    a.as_ref().map(array_from_py)
}
