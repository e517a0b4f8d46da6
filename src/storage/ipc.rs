//! Dump parts as Arrow IPC files: writing one, and locating its columns for memory mapping.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::Array;
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::writer::FileWriter;
use arrow_ipc::{root_as_footer, Block};
use arrow_schema::{ArrowError, DataType};

use super::batch::{record_batch, write_atomically, DumpDtype, PartRows, WrittenPart};
use crate::error::{MsError, Result};

fn arrow_err(path: &Path, e: ArrowError) -> MsError {
    MsError::io(
        format!("Arrow IPC file {}", path.display()),
        std::io::Error::other(e.to_string()),
    )
}

/// Write one part as an Arrow IPC file: the row identity columns and one `[rows, d]` column
/// per hook (`hooks[i] = (name, row-major values, d)`). The file appears under `path` only
/// when complete (written to a temporary name, synced, then renamed).
pub fn write_part(
    path: &Path,
    rows: &PartRows,
    hooks: &[(String, Vec<f32>, usize)],
    dtype: DumpDtype,
    metadata: HashMap<String, String>,
) -> Result<WrittenPart> {
    let batch = record_batch(rows, hooks, dtype, metadata)?;
    write_atomically(path, |file| {
        let mut writer = FileWriter::try_new(BufWriter::new(file), &batch.schema())
            .map_err(|e| arrow_err(path, e))?;
        writer.write(&batch).map_err(|e| arrow_err(path, e))?;
        writer.finish().map_err(|e| arrow_err(path, e))?;
        writer
            .into_inner()
            .map_err(|e| arrow_err(path, e))?
            .into_inner()
            .map_err(|e| MsError::io(format!("cannot write {}", path.display()), e.into_error()))
    })
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
