//! Python bindings of activation dumps: `write_dump_part` and `dump_part_layout`.

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::IntoPyResult;
use crate::storage::{layout, write_part, DumpDtype, PartRows};

/// Write one part file (atomically); returns its size in bytes. `hooks` are
/// `(name, float32 [rows, d])` pairs.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn write_dump_part(
    py: Python<'_>,
    path: PathBuf,
    prompt_id: Vec<u32>,
    position: Vec<u32>,
    token_id: Vec<u32>,
    token_text: Vec<String>,
    hooks: Vec<(String, PyReadonlyArray2<'_, f32>)>,
    dtype: &str,
    metadata: HashMap<String, String>,
) -> PyResult<u64> {
    let dtype = DumpDtype::parse(dtype).py_err()?;
    let mut columns = Vec::with_capacity(hooks.len());
    for (name, arr) in &hooks {
        let d = arr.shape()[1];
        let values: Vec<f32> = match arr.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => arr.as_array().iter().copied().collect(),
        };
        columns.push((name.clone(), values, d));
    }
    let rows = PartRows {
        prompt_id,
        position,
        token_id,
        token_text,
    };
    py.detach(|| write_part(&path, &rows, &columns, dtype, metadata))
        .py_err()
}

/// `{"rows", "metadata", "columns": {name: {dtype, width, offset, nbytes, offsets_offset}}}`.
#[pyfunction]
fn dump_part_layout(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let l = py.detach(|| layout(&path)).py_err()?;
    let out = PyDict::new(py);
    out.set_item("rows", l.rows)?;
    out.set_item("metadata", l.metadata)?;
    let cols = PyDict::new(py);
    for c in l.columns {
        let d = PyDict::new(py);
        d.set_item("dtype", c.dtype)?;
        d.set_item("width", c.width)?;
        d.set_item("offset", c.offset)?;
        d.set_item("nbytes", c.nbytes)?;
        d.set_item("offsets_offset", c.offsets_offset)?;
        cols.set_item(c.name, d)?;
    }
    out.set_item("columns", cols)?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_dump_part, m)?)?;
    m.add_function(wrap_pyfunction!(dump_part_layout, m)?)?;
    Ok(())
}
