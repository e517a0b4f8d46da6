//! Python bindings of activation dumps: `write_dump_part`, `dump_part_layout` (Arrow IPC),
//! `parquet_part_rows` and `read_parquet_column` (Parquet).

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{guarded, interruptible, IntoPyResult};
use crate::error::MsError;
use crate::storage::{
    file_crc32, layout, parquet_rows, read_parquet_column as read_column, write_parquet_part,
    write_part, DumpDtype, ParquetColumn, PartRows,
};

/// Write one part file (atomically) as `"arrow"` (IPC) or `"parquet"`; returns its size in
/// bytes and the CRC-32 of its bytes. `hooks` are `(name, float32 [rows, d])` pairs.
#[pyfunction]
#[pyo3(signature = (path, prompt_id, position, token_id, token_text, hooks, dtype, metadata, format="arrow"))]
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
    format: &str,
) -> PyResult<(u64, u32)> {
    guarded(|| {
        let dtype = DumpDtype::parse(dtype).py_err()?;
        let write = match format {
            "arrow" => write_part,
            "parquet" => write_parquet_part,
            other => {
                return Err(MsError::invalid(format!(
                    "format '{other}' is not supported; use 'arrow' or 'parquet'"
                )))
                .py_err()
            }
        };
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
        let part = interruptible(py, |_| write(&path, &rows, &columns, dtype, metadata))?;
        Ok((part.bytes, part.crc32))
    })
}

/// CRC-32 of a part file's bytes (what the manifest records for it).
#[pyfunction]
fn part_checksum(py: Python<'_>, path: PathBuf) -> PyResult<u32> {
    interruptible(py, |_| file_crc32(&path))
}

/// Rows of a Parquet part (reads the footer only).
#[pyfunction]
fn parquet_part_rows(py: Python<'_>, path: PathBuf) -> PyResult<usize> {
    interruptible(py, |_| parquet_rows(&path))
}

/// One column of a Parquet part: a numpy array (`uint32 [rows]`, `float16|float32
/// [rows, d]`) or a list of strings.
#[pyfunction]
fn read_parquet_column(py: Python<'_>, path: PathBuf, name: String) -> PyResult<Py<PyAny>> {
    guarded(|| {
        let col = interruptible(py, |_| read_column(&path, &name))?;
        Ok(match col {
            ParquetColumn::UInt32(v) => v.into_pyarray(py).into_any().unbind(),
            ParquetColumn::Utf8(v) => v.into_pyobject(py)?.into_any().unbind(),
            ParquetColumn::Float32 { values, width } => {
                let rows = values.len() / width.max(1);
                values
                    .into_pyarray(py)
                    .reshape([rows, width])?
                    .into_any()
                    .unbind()
            }
            ParquetColumn::Float16 { bits, width } => {
                let rows = bits.len() / width.max(1);
                // Handed over as uint16 bit patterns; the Python layer views them as float16.
                bits.into_pyarray(py)
                    .reshape([rows, width])?
                    .into_any()
                    .unbind()
            }
        })
    })
}

/// `{"rows", "metadata", "columns": {name: {dtype, width, offset, nbytes, offsets_offset}}}`.
#[pyfunction]
fn dump_part_layout(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    guarded(|| {
        let l = interruptible(py, |_| layout(&path))?;
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
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_dump_part, m)?)?;
    m.add_function(wrap_pyfunction!(dump_part_layout, m)?)?;
    m.add_function(wrap_pyfunction!(part_checksum, m)?)?;
    m.add_function(wrap_pyfunction!(parquet_part_rows, m)?)?;
    m.add_function(wrap_pyfunction!(read_parquet_column, m)?)?;
    Ok(())
}
