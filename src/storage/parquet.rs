//! Dump parts as Parquet files (on request): the same record batch as the Arrow IPC parts,
//! for tools that prefer Parquet (DuckDB and Spark read it natively). Parquet pages are
//! encoded, so reading decodes (no memory map); columns are read one at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use arrow_array::{
    Array, FixedSizeListArray, Float16Array, Float32Array, StringArray, UInt32Array,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use super::batch::{record_batch, write_atomically, DumpDtype, PartRows, WrittenPart};
use crate::error::{MsError, Result};

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MsError {
    MsError::Data(format!(
        "{} is not a readable Parquet dump part ({what}); other parts are unaffected",
        path.display()
    ))
}

fn write_err(path: &Path, e: ParquetError) -> MsError {
    MsError::io(
        format!("Parquet file {}", path.display()),
        std::io::Error::other(e.to_string()),
    )
}

/// Write one part as a Parquet file (one row group, uncompressed), atomically.
pub fn write_parquet_part(
    path: &Path,
    rows: &PartRows,
    hooks: &[(String, Vec<f32>, usize)],
    dtype: DumpDtype,
    metadata: HashMap<String, String>,
) -> Result<WrittenPart> {
    let batch = record_batch(rows, hooks, dtype, metadata)?;
    // One row group per part: a reader's "one column, all rows" is one column chunk.
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(batch.num_rows().max(1)))
        .build();
    write_atomically(path, |file| {
        let mut writer = ArrowWriter::try_new(BufWriter::new(file), batch.schema(), Some(props))
            .map_err(|e| write_err(path, e))?;
        writer.write(&batch).map_err(|e| write_err(path, e))?;
        writer
            .into_inner()
            .map_err(|e| write_err(path, e))?
            .into_inner()
            .map_err(|e| MsError::io(format!("cannot write {}", path.display()), e.into_error()))
    })
}

/// One column of a Parquet part, decoded.
pub enum ParquetColumn {
    UInt32(Vec<u32>),
    Utf8(Vec<String>),
    /// Row-major `[rows, width]` half floats as their bit patterns.
    Float16 {
        bits: Vec<u16>,
        width: usize,
    },
    Float32 {
        values: Vec<f32>,
        width: usize,
    },
}

/// The number of rows of a Parquet part (reads only the footer; a damaged file is an error
/// naming it).
pub fn parquet_rows(path: &Path) -> Result<usize> {
    let file =
        File::open(path).map_err(|e| MsError::io(format!("cannot open {}", path.display()), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corrupt(path, e))?;
    Ok(builder.metadata().file_metadata().num_rows() as usize)
}

/// Decode the column `name` of a Parquet part.
pub fn read_parquet_column(path: &Path, name: &str) -> Result<ParquetColumn> {
    let file =
        File::open(path).map_err(|e| MsError::io(format!("cannot open {}", path.display()), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corrupt(path, e))?;
    let index = builder
        .schema()
        .index_of(name)
        .map_err(|_| MsError::invalid(format!("{}: no column '{name}'", path.display())))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| corrupt(path, e))?;
    let mut out: Option<ParquetColumn> = None;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(path, e))?;
        let col = batch.column(0);
        append(&mut out, col.as_ref()).map_err(|what| corrupt(path, what))?;
    }
    out.ok_or_else(|| corrupt(path, "no rows"))
}

/// Append one decoded batch's column to `out` (a message on an unexpected type).
fn append(out: &mut Option<ParquetColumn>, col: &dyn Array) -> std::result::Result<(), String> {
    let any = col.as_any();
    match col.data_type() {
        DataType::UInt32 => {
            let a = any
                .downcast_ref::<UInt32Array>()
                .ok_or("bad uint32 column")?;
            match out.get_or_insert(ParquetColumn::UInt32(Vec::new())) {
                ParquetColumn::UInt32(v) => v.extend(a.values().iter().copied()),
                _ => return Err("column type changed between batches".into()),
            }
        }
        DataType::Utf8 => {
            let a = any.downcast_ref::<StringArray>().ok_or("bad utf8 column")?;
            match out.get_or_insert(ParquetColumn::Utf8(Vec::new())) {
                ParquetColumn::Utf8(v) => v.extend(a.iter().map(|s| s.unwrap_or("").to_string())),
                _ => return Err("column type changed between batches".into()),
            }
        }
        DataType::FixedSizeList(_, d) => {
            let list = any
                .downcast_ref::<FixedSizeListArray>()
                .ok_or("bad list column")?;
            let width = *d as usize;
            let child = list.values();
            let (offset, len) = (list.offset() * width, list.len() * width);
            if let Some(f) = child.as_any().downcast_ref::<Float32Array>() {
                let slice = &f.values()[offset..offset + len];
                match out.get_or_insert(ParquetColumn::Float32 {
                    values: Vec::new(),
                    width,
                }) {
                    ParquetColumn::Float32 { values, .. } => values.extend_from_slice(slice),
                    _ => return Err("column type changed between batches".into()),
                }
            } else if let Some(h) = child.as_any().downcast_ref::<Float16Array>() {
                let slice = &h.values()[offset..offset + len];
                match out.get_or_insert(ParquetColumn::Float16 {
                    bits: Vec::new(),
                    width,
                }) {
                    ParquetColumn::Float16 { bits, .. } => {
                        bits.extend(slice.iter().map(|x| x.to_bits()))
                    }
                    _ => return Err("column type changed between batches".into()),
                }
            } else {
                return Err(format!("activation column of {}", child.data_type()));
            }
        }
        other => return Err(format!("unexpected column type {other}")),
    }
    Ok(())
}
