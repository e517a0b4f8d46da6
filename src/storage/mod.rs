//! Activation dumps on disk as Arrow IPC files (Feather v2), or Parquet on request, which
//! pandas, polars, DuckDB and pyarrow read directly.
//!
//! A dump is a folder of part files plus a manifest (written by the Python layer). Each part is
//! one Arrow IPC file holding one record batch: the row identity columns `prompt_id`,
//! `position`, `token_id`, `token_text`, then one `FixedSizeList<float16|float32>[d]` column per
//! hook point. Arrow stores each column's values contiguously, so "one hook, all rows" is one
//! contiguous byte range per part: [`layout`] reports where it lies and Python memory-maps it
//! without copying.

//! Parquet parts ([`write_parquet_part`]) hold the same record batch; they are decoded on
//! reading rather than mapped.

mod batch;
mod ipc;
mod parquet;

pub use self::parquet::{parquet_rows, read_parquet_column, write_parquet_part, ParquetColumn};
pub use batch::{file_crc32, DumpDtype, PartRows, WrittenPart};
pub use ipc::{layout, write_part, ColumnLayout, PartLayout};
