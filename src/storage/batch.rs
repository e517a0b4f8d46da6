//! What every part file holds, whatever its format: the record batch of one part, and
//! writing a file so that it appears only when complete.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema};
use half::f16;

use crate::error::{MsError, Result};

/// Element type of the activation columns on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DumpDtype {
    F16,
    F32,
}

impl DumpDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "float16" => Ok(DumpDtype::F16),
            "float32" => Ok(DumpDtype::F32),
            other => Err(MsError::invalid(format!(
                "dtype '{other}' is not supported; use 'float16' or 'float32'"
            ))),
        }
    }
    pub fn arrow(self) -> DataType {
        match self {
            DumpDtype::F16 => DataType::Float16,
            DumpDtype::F32 => DataType::Float32,
        }
    }
}

/// The identity of each row of a part.
pub struct PartRows {
    pub prompt_id: Vec<u32>,
    pub position: Vec<u32>,
    pub token_id: Vec<u32>,
    pub token_text: Vec<String>,
}

fn activation_column(values: &[f32], d: usize, dtype: DumpDtype) -> Result<ArrayRef> {
    let child: ArrayRef = match dtype {
        DumpDtype::F32 => Arc::new(Float32Array::from(values.to_vec())),
        DumpDtype::F16 => Arc::new(Float16Array::from(
            values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
        )),
    };
    let item = Arc::new(Field::new("item", dtype.arrow(), false));
    FixedSizeListArray::try_new(item, d as i32, child, None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| MsError::Compute(format!("building an activation column failed: {e}")))
}

/// One part as a record batch: the row identity columns and one `[rows, d]` column per hook
/// (`hooks[i] = (name, row-major values, d)`), with `metadata` on the schema.
pub fn record_batch(
    rows: &PartRows,
    hooks: &[(String, Vec<f32>, usize)],
    dtype: DumpDtype,
    metadata: HashMap<String, String>,
) -> Result<RecordBatch> {
    let n = rows.prompt_id.len();
    if [
        rows.position.len(),
        rows.token_id.len(),
        rows.token_text.len(),
    ]
    .iter()
    .any(|&l| l != n)
    {
        return Err(MsError::shape(
            "prompt_id, position, token_id and token_text must have one entry per row",
        ));
    }
    let mut fields = vec![
        Field::new("prompt_id", DataType::UInt32, false),
        Field::new("position", DataType::UInt32, false),
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token_text", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(rows.prompt_id.clone())),
        Arc::new(UInt32Array::from(rows.position.clone())),
        Arc::new(UInt32Array::from(rows.token_id.clone())),
        Arc::new(StringArray::from(rows.token_text.clone())),
    ];
    for (name, values, d) in hooks {
        if *d == 0 || values.len() != n * d {
            return Err(MsError::shape(format!(
                "hook '{name}': {} values for {n} rows of width {d}",
                values.len()
            )));
        }
        let item = Field::new("item", dtype.arrow(), false);
        fields.push(Field::new(
            name,
            DataType::FixedSizeList(Arc::new(item), *d as i32),
            false,
        ));
        columns.push(activation_column(values, *d, dtype)?);
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| MsError::Compute(format!("building the record batch failed: {e}")))
}

/// A finished part file: its size and the CRC-32 of its bytes (recorded in the manifest so
/// that a part changed on disk afterwards is caught on reading or resuming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenPart {
    pub bytes: u64,
    pub crc32: u32,
}

/// A file being written, hashed as the bytes go through (no second read of the file).
pub struct HashingFile {
    file: File,
    hasher: crc32fast::Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// CRC-32 of a whole file, read through a memory map.
pub fn file_crc32(path: &Path) -> Result<u32> {
    let file =
        File::open(path).map_err(|e| MsError::io(format!("cannot open {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| MsError::io(format!("cannot stat {}", path.display()), e))?
        .len();
    if len == 0 {
        return Ok(crc32fast::hash(&[]));
    }
    // SAFETY: read-only map of a part file that this process does not modify; a part is
    // never rewritten in place (parts are replaced by rename).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| MsError::io(format!("cannot map {}", path.display()), e))?;
    Ok(crc32fast::hash(&map))
}

/// Write a file through `write` (which gets the open temporary file and returns it when done)
/// under a temporary name, sync it, then rename it to `path`: a reader never sees a partial
/// part, even after `kill -9`. Returns the file's size and checksum.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(HashingFile) -> Result<HashingFile>,
) -> Result<WrittenPart> {
    let file_name = path
        .file_name()
        .ok_or_else(|| MsError::invalid(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.partial", file_name.to_string_lossy()));
    let written = (|| -> Result<WrittenPart> {
        let file = File::create(&tmp)
            .map_err(|e| MsError::io(format!("cannot create {}", tmp.display()), e))?;
        let HashingFile { file, hasher } = write(HashingFile {
            file,
            hasher: crc32fast::Hasher::new(),
        })?;
        file.sync_all()
            .map_err(|e| MsError::io(format!("cannot write {}", tmp.display()), e))?;
        let bytes = file
            .metadata()
            .map_err(|e| MsError::io(format!("cannot stat {}", tmp.display()), e))?
            .len();
        Ok(WrittenPart {
            bytes,
            crc32: hasher.finalize(),
        })
    })();
    match written {
        Ok(part) => {
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                MsError::io(format!("cannot move the part into {}", path.display()), e)
            })?;
            Ok(part)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
