//! Python bindings of the plotting module: `render_figure(spec_json, path)`.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::{interruptible, IntoPyResult};
use crate::error::MsError;
use crate::plot::{render, FigureSpec};

/// Draw the figure described by `spec_json` (see `mindscope.plotting`) into a PNG at `path`.
#[pyfunction]
fn render_figure(py: Python<'_>, spec_json: &str, path: PathBuf) -> PyResult<()> {
    let spec: FigureSpec = serde_json::from_str(spec_json)
        .map_err(|e| MsError::invalid(format!("figure spec is not valid: {e}")))
        .py_err()?;
    interruptible(py, |_| render(&spec, &path))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(render_figure, m)?)?;
    Ok(())
}
