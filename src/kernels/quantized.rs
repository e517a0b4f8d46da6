//! Weight matrices kept in their GGUF block format (Q4_0, Q4_1, Q8_0, the k-quants, ...) and
//! multiplied as stored: `x @ W^T` quantizes each activation row to the weight type's 8-bit
//! partner (Q8_0, Q8_1 or Q8_K, as ggml does) and takes integer dot products per block.
//!
//! The products go through [`super::qdot`] (its docs say why not candle's `QMatMul`); the
//! types it has no decoder for (Q2_K, Q3_K) through candle-core's `k_quants::matmul`.
//! Threads: candle's own pool is kept at one thread (see `python/mindscope/__init__.py`), so
//! the rows or columns are split over rayon here.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::qdot;
use crate::error::{MsError, Result};
use crate::formats::mapped::MappedFile;

/// Block types multiplied here (every ggml type candle has a dot product for).
pub const SUPPORTED: &[GgmlDType] = &[
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// The ggml name of a block type ("q4_k"), as llama.cpp and `gguf` print them.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// The rows of a matrix in one block type: the operations that need the type.
trait Blocks: Send + Sync {
    /// `dst [m, cols.len()] = lhs [m, k] @ W[cols]^T`.
    fn matmul_t(
        &self,
        cols: Range<usize>,
        k: usize,
        lhs: &[f32],
        dst: &mut [f32],
        batch_rows: usize,
    ) -> Result<()>;
    /// Rows `rows` as floats into `out [rows.len(), k]`.
    fn to_f32(&self, rows: Range<usize>, k: usize, out: &mut [f32]);
    /// A new matrix of the rows `order` (in that order).
    fn gather(&self, order: &[usize], k: usize) -> Box<dyn Blocks>;
    fn nbytes(&self) -> usize;
}

/// Where a matrix's blocks are: its own memory, or the model file's pages.
enum Store<T> {
    Owned(Vec<T>),
    /// `len` bytes at `offset` of a mapped file (aligned for `T`, checked at creation). The
    /// pages are handed back to the kernel when the matrix is dropped.
    Mapped {
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
    },
}

/// Rows stored as consecutive blocks of `T`, `k / T::BLCK_SIZE` blocks per row.
struct Typed<T: GgmlType>(Store<T>);

impl<T: GgmlType + 'static> Typed<T> {
    /// `len` bytes of blocks (a whole number, checked by the caller) written by `fill`.
    fn filled(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        let n = len / std::mem::size_of::<T>();
        let mut blocks: Vec<T> = Vec::with_capacity(n);
        // SAFETY: ggml blocks are `repr(C)` structs of f16s and byte arrays with the file's
        // layout, valid for any bit pattern; the bytes are zeroed before `fill` writes them.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), len);
            bytes.fill(0);
            fill(bytes);
            blocks.set_len(n);
        }
        Typed(Store::Owned(blocks))
    }

    /// Blocks read in place, when the bytes are aligned for `T`.
    fn mapped(file: Arc<MappedFile>, offset: usize, len: usize) -> Option<Self> {
        let at = file.bytes()[offset..offset + len].as_ptr() as usize;
        at.is_multiple_of(std::mem::align_of::<T>())
            .then_some(Typed(Store::Mapped { file, offset, len }))
    }

    fn blocks(&self) -> &[T] {
        match &self.0 {
            Store::Owned(v) => v,
            Store::Mapped { file, offset, len } => {
                let bytes = &file.bytes()[*offset..*offset + *len];
                // SAFETY: aligned (checked in `mapped`), a whole number of plain-old-data
                // blocks (checked by `QMatrix::mapped`), and the map lives as long as `file`.
                unsafe {
                    std::slice::from_raw_parts(
                        bytes.as_ptr().cast::<T>(),
                        len / std::mem::size_of::<T>(),
                    )
                }
            }
        }
    }

    fn row(&self, r: usize, k: usize) -> &[T] {
        let per_row = k / T::BLCK_SIZE;
        &self.blocks()[r * per_row..(r + 1) * per_row]
    }
}

impl<T: GgmlType> Drop for Typed<T> {
    fn drop(&mut self) {
        if let Store::Mapped { file, offset, len } = &self.0 {
            file.release(*offset, *len);
        }
    }
}

impl<T: GgmlType + 'static> Blocks for Typed<T> {
    fn matmul_t(
        &self,
        cols: Range<usize>,
        k: usize,
        lhs: &[f32],
        dst: &mut [f32],
        batch_rows: usize,
    ) -> Result<()> {
        let per_row = k / T::BLCK_SIZE;
        let m = lhs.len() / k;
        let rhs = &self.blocks()[cols.start * per_row..cols.end * per_row];
        if qdot::supported(T::DTYPE) {
            qdot::matmul_t(
                T::DTYPE,
                rhs_bytes(rhs),
                cols.len(),
                k,
                lhs,
                dst,
                batch_rows,
            );
            return Ok(());
        }
        k_quants::matmul::<T>((m, k, cols.len()), lhs, rhs, dst)
            .map_err(|e| MsError::Compute(format!("quantized matmul: {e}")))
    }

    fn to_f32(&self, rows: Range<usize>, k: usize, out: &mut [f32]) {
        for (i, r) in rows.enumerate() {
            T::to_float(self.row(r, k), &mut out[i * k..(i + 1) * k]);
        }
    }

    fn gather(&self, order: &[usize], k: usize) -> Box<dyn Blocks> {
        let mut blocks = Vec::with_capacity(order.len() * (k / T::BLCK_SIZE));
        for &r in order {
            blocks.extend_from_slice(self.row(r, k));
        }
        Box::new(Typed(Store::Owned(blocks)))
    }

    fn nbytes(&self) -> usize {
        std::mem::size_of_val(self.blocks())
    }
}

/// The bytes of a slice of blocks.
fn rhs_bytes<T>(blocks: &[T]) -> &[u8] {
    // SAFETY: plain-old-data blocks, read as the bytes they are.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// A weight `[rows, cols]` (`[out, in]`) in a ggml block type.
pub struct QMatrix {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    blocks: Box<dyn Blocks>,
}

/// Below this many multiply-adds a product runs on the calling thread: splitting it costs
/// more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 18;

impl QMatrix {
    /// A matrix from its stored bytes (row-major, each row a whole number of blocks), copied.
    pub fn from_bytes(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        Self::filled(dtype, rows, cols, bytes.len(), |dst| {
            dst.copy_from_slice(bytes)
        })
    }

    /// A matrix of `len` stored bytes that `fill` writes into its own memory.
    pub fn filled(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Self> {
        Self::check(dtype, rows, cols, len)?;
        let blocks: Box<dyn Blocks> = match dtype {
            GgmlDType::Q4_0 => Box::new(Typed::<k_quants::BlockQ4_0>::filled(len, fill)),
            GgmlDType::Q4_1 => Box::new(Typed::<k_quants::BlockQ4_1>::filled(len, fill)),
            GgmlDType::Q5_0 => Box::new(Typed::<k_quants::BlockQ5_0>::filled(len, fill)),
            GgmlDType::Q5_1 => Box::new(Typed::<k_quants::BlockQ5_1>::filled(len, fill)),
            GgmlDType::Q8_0 => Box::new(Typed::<k_quants::BlockQ8_0>::filled(len, fill)),
            GgmlDType::Q2K => Box::new(Typed::<k_quants::BlockQ2K>::filled(len, fill)),
            GgmlDType::Q3K => Box::new(Typed::<k_quants::BlockQ3K>::filled(len, fill)),
            GgmlDType::Q4K => Box::new(Typed::<k_quants::BlockQ4K>::filled(len, fill)),
            GgmlDType::Q5K => Box::new(Typed::<k_quants::BlockQ5K>::filled(len, fill)),
            GgmlDType::Q6K => Box::new(Typed::<k_quants::BlockQ6K>::filled(len, fill)),
            _ => unreachable!("checked against SUPPORTED above"),
        };
        Ok(QMatrix {
            dtype,
            rows,
            cols,
            blocks,
        })
    }

    /// A matrix read in place from `len` bytes at `offset` of a mapped file; `None` when the
    /// bytes are not aligned for the block type (the caller copies them instead).
    pub fn mapped(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
    ) -> Option<Result<Self>> {
        if let Err(e) = Self::check(dtype, rows, cols, len) {
            return Some(Err(e));
        }
        fn boxed<T: GgmlType + 'static>(t: Option<Typed<T>>) -> Option<Box<dyn Blocks>> {
            t.map(|t| Box::new(t) as Box<dyn Blocks>)
        }
        let f = file;
        let blocks = match dtype {
            GgmlDType::Q4_0 => boxed(Typed::<k_quants::BlockQ4_0>::mapped(f, offset, len)),
            GgmlDType::Q4_1 => boxed(Typed::<k_quants::BlockQ4_1>::mapped(f, offset, len)),
            GgmlDType::Q5_0 => boxed(Typed::<k_quants::BlockQ5_0>::mapped(f, offset, len)),
            GgmlDType::Q5_1 => boxed(Typed::<k_quants::BlockQ5_1>::mapped(f, offset, len)),
            GgmlDType::Q8_0 => boxed(Typed::<k_quants::BlockQ8_0>::mapped(f, offset, len)),
            GgmlDType::Q2K => boxed(Typed::<k_quants::BlockQ2K>::mapped(f, offset, len)),
            GgmlDType::Q3K => boxed(Typed::<k_quants::BlockQ3K>::mapped(f, offset, len)),
            GgmlDType::Q4K => boxed(Typed::<k_quants::BlockQ4K>::mapped(f, offset, len)),
            GgmlDType::Q5K => boxed(Typed::<k_quants::BlockQ5K>::mapped(f, offset, len)),
            GgmlDType::Q6K => boxed(Typed::<k_quants::BlockQ6K>::mapped(f, offset, len)),
            _ => unreachable!("checked against SUPPORTED above"),
        }?;
        Some(Ok(QMatrix {
            dtype,
            rows,
            cols,
            blocks,
        }))
    }

    /// A supported type, and `len` bytes that are exactly `rows` rows of whole blocks.
    fn check(dtype: GgmlDType, rows: usize, cols: usize, len: usize) -> Result<()> {
        let (block, size) = (dtype.block_size(), dtype.type_size());
        if !SUPPORTED.contains(&dtype) {
            return Err(MsError::UnsupportedArchitecture(format!(
                "weights of type {} cannot be multiplied quantized; supported: {}",
                type_name(dtype),
                SUPPORTED
                    .iter()
                    .map(|&t| type_name(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if cols == 0 || !cols.is_multiple_of(block) || len != rows * cols / block * size {
            return Err(MsError::ModelFormat(format!(
                "a {} matrix [{rows}, {cols}] needs rows of whole {block}-value blocks ({} \
                 bytes in all); it has {} bytes",
                type_name(dtype),
                rows * (cols / block.max(1)) * size,
                len
            )));
        }
        Ok(())
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.blocks.nbytes()
    }

    /// `out [m, rows] = x [m, cols] @ W^T`, for `x` row-major. Rows of `x` are split over the
    /// rayon pool when there are enough of them (each thread streams the whole weight, which
    /// stays in cache), the weight's rows otherwise (one prompt's decode step).
    pub fn matmul_t_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        let m = x.len() / k;
        if x.len() != m * k || out.len() != m * n {
            return Err(MsError::shape(format!(
                "quantized matmul: x of {} floats @ W^T [{n}, {k}] into {} floats",
                x.len(),
                out.len()
            )));
        }
        let threads = rayon::current_num_threads();
        if threads <= 1 || m * n * k < PARALLEL_MIN_MACS {
            return self.blocks.matmul_t(0..n, k, x, out, m);
        }
        if m >= 2 * threads {
            let per = m.div_ceil(threads);
            return x
                .par_chunks(per * k)
                .zip(out.par_chunks_mut(per * n))
                .try_for_each(|(xs, o)| self.blocks.matmul_t(0..n, k, xs, o, m));
        }
        // Few rows: split the weight's rows (output columns) in multiples of 4 (candle's
        // kernels take columns four at a time).
        let per = n.div_ceil(threads).div_ceil(4) * 4;
        let ranges: Vec<Range<usize>> = (0..n).step_by(per).map(|a| a..(a + per).min(n)).collect();
        if m == 1 {
            return out
                .par_chunks_mut(per)
                .zip(ranges)
                .try_for_each(|(o, cols)| self.blocks.matmul_t(cols, k, x, o, m));
        }
        let parts: Vec<Vec<f32>> = ranges
            .par_iter()
            .map(|cols| {
                let mut part = vec![0f32; m * cols.len()];
                self.blocks.matmul_t(cols.clone(), k, x, &mut part, m)?;
                Ok(part)
            })
            .collect::<Result<_>>()?;
        for (cols, part) in ranges.iter().zip(&parts) {
            let w = cols.len();
            for (row, src) in part.chunks(w).enumerate() {
                out[row * n + cols.start..row * n + cols.end].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// Rows `rows` as floats `[rows.len(), cols]` (an embedding lookup, or a dequantized slab).
    pub fn rows_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        self.blocks.to_f32(rows, self.cols, out)
    }

    /// The rows `ids` as floats `[ids.len(), cols]` (token embeddings).
    pub fn gather_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let k = self.cols;
        let mut out = vec![0f32; ids.len() * k];
        for (i, &id) in ids.iter().enumerate() {
            let r = id as usize;
            if r >= self.rows {
                return Err(MsError::invalid(format!(
                    "token id {id} is out of range (the matrix has {} rows)",
                    self.rows
                )));
            }
            self.blocks
                .to_f32(r..r + 1, k, &mut out[i * k..(i + 1) * k]);
        }
        Ok(out)
    }

    /// The whole matrix as f32 `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let k = self.cols;
        let mut out = vec![0f32; self.rows * k];
        let per = 64;
        out.par_chunks_mut(per * k).enumerate().for_each(|(i, o)| {
            let a = i * per;
            self.blocks.to_f32(a..a + o.len() / k, k, o)
        });
        Ok(Tensor::from_vec(out, (self.rows, k), &Device::Cpu)?)
    }

    /// A matrix of the rows `order` of this one, in that order (splitting or permuting
    /// projections without leaving the block format: blocks never cross rows).
    pub fn gather_rows(&self, order: &[usize]) -> Result<QMatrix> {
        if let Some(&bad) = order.iter().find(|&&r| r >= self.rows) {
            return Err(MsError::shape(format!(
                "row {bad} of a [{}, {}] matrix",
                self.rows, self.cols
            )));
        }
        Ok(QMatrix {
            dtype: self.dtype,
            rows: order.len(),
            cols: self.cols,
            blocks: self.blocks.gather(order, self.cols),
        })
    }

    /// The first row index (if any) holding a NaN or infinity once dequantized: a block scale
    /// of NaN would make every activation through it NaN. Checked in slabs of rows.
    pub fn first_non_finite_row(&self) -> Option<usize> {
        let per = 256;
        let k = self.cols;
        (0..self.rows.div_ceil(per))
            .into_par_iter()
            .find_map_first(|slab| {
                let rows = slab * per..((slab + 1) * per).min(self.rows);
                let mut buf = vec![0f32; rows.len() * k];
                self.blocks.to_f32(rows.clone(), k, &mut buf);
                buf.chunks(k)
                    .position(|r| r.iter().any(|x| !x.is_finite()))
                    .map(|i| rows.start + i)
            })
    }
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QMatrix({} [{}, {}])",
            type_name(self.dtype),
            self.rows,
            self.cols
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    /// A deterministic test matrix (no rand dependency in expectations).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn quantized(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
        let w = Tensor::from_vec(values(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        QMatrix::from_bytes(dtype, rows, cols, &q.data().unwrap()).unwrap()
    }

    #[test]
    fn every_type_multiplies_like_its_dequantized_weight() {
        // 1, 3 and 9 rows: the weight's rows split over threads (written in place, then
        // copied), and the activation rows split; 262 rows leave a tail beyond the quads.
        let (n, k) = (262, 1024);
        for &dtype in SUPPORTED {
            let q = quantized(dtype, n, k);
            let w = q.dequantize().unwrap().to_vec2::<f32>().unwrap();
            for m in [1, 3, 9] {
                let x = values(m * k, 11 + m as u32);
                let mut got = vec![0f32; m * n];
                q.matmul_t_into(&x, &mut got).unwrap();
                for r in 0..m {
                    for c in 0..n {
                        let want: f32 = (0..k).map(|i| x[r * k + i] * w[c][i]).sum();
                        let norm: f32 = (0..k).map(|i| (x[r * k + i] * w[c][i]).abs()).sum();
                        // The activations are rounded to 8 bits per block: about 1 % of the
                        // sum of magnitudes at worst.
                        let err = (got[r * n + c] - want).abs();
                        assert!(
                            err <= 0.02 * norm,
                            "{dtype:?} m={m} [{r},{c}]: {err} vs {norm}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gathered_rows_are_the_rows() {
        let q = quantized(GgmlDType::Q4K, 8, 256);
        let g = q.gather_rows(&[5, 1]).unwrap();
        let (all, some) = (q.dequantize().unwrap(), g.dequantize().unwrap());
        let all = all.to_vec2::<f32>().unwrap();
        let some = some.to_vec2::<f32>().unwrap();
        assert_eq!(some, vec![all[5].clone(), all[1].clone()]);
        assert_eq!(q.gather_f32(&[1]).unwrap(), all[1]);
        assert!(q.gather_rows(&[8]).is_err());
    }

    #[test]
    fn bad_sizes_and_types_are_refused() {
        assert!(QMatrix::from_bytes(GgmlDType::Q4_0, 2, 48, &[0; 36]).is_err());
        assert!(QMatrix::from_bytes(GgmlDType::Q4_0, 2, 32, &[0; 35]).is_err());
        assert!(QMatrix::from_bytes(GgmlDType::F16, 2, 32, &[0; 128]).is_err());
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::quantized::QTensor;

    /// `cargo test --release --lib kernels::quantized::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn time_products() {
        for (dtype, n, k) in [
            (GgmlDType::Q4_1, 1536, 576),
            (GgmlDType::Q8_0, 49152, 576),
            (GgmlDType::Q4K, 2048, 640),
            (GgmlDType::Q5_0, 2048, 640),
            (GgmlDType::Q6K, 2048, 768),
        ] {
            let k = k / 256 * 256 + if k % 256 == 0 { 0 } else { 256 };
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let q = QMatrix::from_bytes(dtype, n, k, &q.data().unwrap()).unwrap();
            for m in [1usize, 64, 1024] {
                let x = vec![0.5f32; m * k];
                let mut out = vec![0f32; m * n];
                let reps = (2_000_000_000 / (m * n * k)).clamp(1, 200);
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    q.matmul_t_into(&x, &mut out).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{dtype:?} [{n}x{k}] m={m}: {:.3} ms, {:.1} GMAC/s, {:.2} ns/weight-row-pass",
                    s * 1e3,
                    (m * n * k) as f64 / s / 1e9,
                    s * 1e9 / (n * k) as f64
                );
            }
        }
    }
}
