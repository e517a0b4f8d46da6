//! The Python extension module `mindscope._native`.
//!
//! Each submodule binds one area of the core; this file only wires them together.
//! Rules for every binding: release the GIL while Rust computes (`py.detach`), return numpy
//! arrays that take ownership of Rust buffers (no copy), and turn every `MsError` into the typed
//! exception of `mindscope.errors` via `to_py_err`.

use pyo3::prelude::*;

use crate::error::MsError;

pub mod analysis;
pub mod convert;
pub mod model;
pub mod plot;
pub mod requests;
pub mod storage;

/// Convert a core error into the matching `mindscope.errors` exception (a user callback's
/// own exception is re-raised as itself).
pub fn to_py_err(err: MsError) -> PyErr {
    Python::attach(|py| {
        if let MsError::Callback { payload, .. } = &err {
            if let Some(e) = payload.0.downcast_ref::<PyErr>() {
                return e.clone_ref(py);
            }
        }
        let class = py
            .import("mindscope.errors")
            .and_then(|m| m.getattr(err.python_class()));
        match class {
            Ok(cls) => match cls.call1((err.to_string(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(e) => e,
        }
    })
}

/// `?`-friendly conversion for binding code.
pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crate::error::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py_err)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    model::register(m)?;
    analysis::register(m)?;
    plot::register(m)?;
    storage::register(m)?;
    Ok(())
}
