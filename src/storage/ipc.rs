//! Writing one dump part as an Arrow IPC file, and locating its columns for memory mapping.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray,
    UInt32Array,
};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::writer::FileWriter;
use arrow_ipc::{root_as_footer, Block};
use arrow_schema::{ArrowError, DataType, Field, Schema};
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
    fn arrow(self) -> DataType {
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

fn arrow_err(path: &Path, e: ArrowError) -> MsError {
    MsError::io(
        format!("Arrow IPC file {}", path.display()),
        std::io::Error::other(e.to_string()),
    )
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

/// Write one part: the row identity columns and one `[rows, d]` column per hook
/// (`hooks[i] = (name, row-major values, d)`). The file appears under `path` only when
/// complete (written to a temporary name, synced, then renamed).
pub fn write_part(
    path: &Path,
    rows: &PartRows,
    hooks: &[(String, Vec<f32>, usize)],
    dtype: DumpDtype,
    metadata: HashMap<String, String>,
) -> Result<u64> {
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
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| MsError::Compute(format!("building the record batch failed: {e}")))?;

    let file_name = path
        .file_name()
        .ok_or_else(|| MsError::invalid(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.partial", file_name.to_string_lossy()));
    let written = (|| -> Result<u64> {
        let file = File::create(&tmp)
            .map_err(|e| MsError::io(format!("cannot create {}", tmp.display()), e))?;
        let mut writer =
            FileWriter::try_new(BufWriter::new(file), &schema).map_err(|e| arrow_err(path, e))?;
        writer.write(&batch).map_err(|e| arrow_err(path, e))?;
        writer.finish().map_err(|e| arrow_err(path, e))?;
        let file = writer
            .into_inner()
            .map_err(|e| arrow_err(path, e))?
            .into_inner()
            .map_err(|e| MsError::io(format!("cannot write {}", tmp.display()), e.into_error()))?;
        file.sync_all()
            .map_err(|e| MsError::io(format!("cannot write {}", tmp.display()), e))?;
        Ok(file
            .metadata()
            .map_err(|e| MsError::io(format!("cannot stat {}", tmp.display()), e))?
            .len())
    })();
    match written {
        Ok(bytes) => {
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                MsError::io(format!("cannot move the part into {}", path.display()), e)
            })?;
            Ok(bytes)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Where one column's values lie in a part file.
#[derive(Debug, Clone)]
pub struct ColumnLayout {
    pub name: String,
    /// `"float16"`, `"float32"`, `"uint32"` or `"utf8"`.
    pub dtype: String,
    /// Values per row (1 for scalars, `d` for activation columns).
    pub width: usize,
    /// Byte offset and length of the values buffer in the file.
    pub offset: usize,
    pub nbytes: usize,
    /// For `utf8`: byte offset of the `rows + 1` int32 offsets.
    pub offsets_offset: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct PartLayout {
    pub rows: usize,
    pub columns: Vec<ColumnLayout>,
    pub metadata: HashMap<String, String>,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MsError {
    MsError::Data(format!(
        "{} is not a readable dump part ({what}); other parts are unaffected",
        path.display()
    ))
}

/// Memory-map a part file, decode its footer and single record batch without copying, and
/// report each column's byte range (relative to the start of the file).
pub fn layout(path: &Path) -> Result<PartLayout> {
    let file =
        File::open(path).map_err(|e| MsError::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: the map is read-only and dropped before returning; a file truncated
    // underneath would at worst fail to decode.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| MsError::io(format!("cannot map {}", path.display()), e))?;
    let base = mmap.as_ptr() as usize;
    let len = mmap.len();
    if len < 10 || &mmap[..6] != b"ARROW1" {
        return Err(corrupt(path, "no Arrow IPC file header"));
    }
    let bytes = bytes::Bytes::from_owner(mmap);
    let buffer = Buffer::from(bytes);
    let trailer: [u8; 10] = buffer[len - 10..]
        .try_into()
        .map_err(|_| corrupt(path, "truncated"))?;
    let footer_len = read_footer_length(trailer).map_err(|e| corrupt(path, e))?;
    if footer_len + 10 > len {
        return Err(corrupt(path, "footer length beyond the file"));
    }
    let footer =
        root_as_footer(&buffer[len - 10 - footer_len..len - 10]).map_err(|e| corrupt(path, e))?;
    let schema = Arc::new(
        try_fb_to_schema(footer.schema().ok_or_else(|| corrupt(path, "no schema"))?)
            .map_err(|e| corrupt(path, e))?,
    );
    let blocks: Vec<Block> = footer
        .recordBatches()
        .map(|b| b.iter().copied().collect())
        .unwrap_or_default();
    if blocks.len() != 1 {
        return Err(corrupt(
            path,
            format!("{} record batches, expected 1", blocks.len()),
        ));
    }
    let decoder = FileDecoder::new(schema.clone(), footer.version());
    let block = &blocks[0];
    let start = block.offset() as usize;
    let block_len = block.bodyLength() as usize + block.metaDataLength() as usize;
    if start + block_len > len {
        return Err(corrupt(path, "record batch beyond the end of the file"));
    }
    let batch = decoder
        .read_record_batch(block, &buffer.slice_with_length(start, block_len))
        .map_err(|e| corrupt(path, e))?
        .ok_or_else(|| corrupt(path, "empty record batch"))?;
    let rel = |ptr: *const u8| ptr as usize - base;
    let mut columns = Vec::new();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let data = col.to_data();
        let (dtype, width, values, offsets_offset) = match field.data_type() {
            DataType::UInt32 => ("uint32", 1, data.buffers()[0].clone(), None),
            DataType::Utf8 => (
                "utf8",
                1,
                data.buffers()[1].clone(),
                Some(rel(data.buffers()[0].as_ptr())),
            ),
            DataType::FixedSizeList(item, d) => {
                let child = &data.child_data()[0];
                let dtype = match item.data_type() {
                    DataType::Float16 => "float16",
                    DataType::Float32 => "float32",
                    other => return Err(corrupt(path, format!("column of {other}"))),
                };
                (dtype, *d as usize, child.buffers()[0].clone(), None)
            }
            other => return Err(corrupt(path, format!("unexpected column type {other}"))),
        };
        columns.push(ColumnLayout {
            name: field.name().clone(),
            dtype: dtype.to_string(),
            width,
            offset: rel(values.as_ptr()),
            nbytes: values.len(),
            offsets_offset,
        });
    }
    Ok(PartLayout {
        rows: batch.num_rows(),
        columns,
        metadata: schema.metadata().clone().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u32) -> PartRows {
        PartRows {
            prompt_id: (0..n).collect(),
            position: vec![3; n as usize],
            token_id: (100..100 + n).collect(),
            token_text: (0..n).map(|i| format!(" t{i}")).collect(),
        }
    }

    #[test]
    fn layout_points_at_the_written_values() {
        let dir = std::env::temp_dir().join(format!("ms-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("part-00000.arrow");
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_part(
            &path,
            &rows(3),
            &[("h".into(), values.clone(), 4)],
            DumpDtype::F32,
            meta,
        )
        .unwrap();
        let l = layout(&path).unwrap();
        assert_eq!(l.rows, 3);
        assert_eq!(l.metadata["k"], "v");
        let h = l.columns.iter().find(|c| c.name == "h").unwrap();
        assert_eq!((h.dtype.as_str(), h.width, h.nbytes), ("float32", 4, 48));
        let bytes = std::fs::read(&path).unwrap();
        let read: Vec<f32> = bytes[h.offset..h.offset + h.nbytes]
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(read, values);
        // A truncated file is reported as damaged, naming it.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = layout(&path).unwrap_err().to_string();
        assert!(err.contains("part-00000.arrow"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_rows_are_rejected_before_writing() {
        let path = std::env::temp_dir().join("ms-never.arrow");
        let err = write_part(
            &path,
            &rows(2),
            &[("h".into(), vec![0.0; 5], 2)],
            DumpDtype::F16,
            HashMap::new(),
        );
        assert!(err.is_err() && !path.exists());
    }
}
