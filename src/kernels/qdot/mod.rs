//! Quantized weights times float activations, for every block type whose weights are
//! `scale * code + offset` per group of 16 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K):
//! weight rows are decoded in slabs to 8-bit codes (`decode`), activation rows rounded to 8
//! bits per 32 values (`acts`), and multiplied with exact integer dot products (`dot`: AVX-512
//! VNNI, or a portable kernel giving the same bits). One or two activation rows (a decode
//! step) skip the slab: `gemv` expands each chunk of codes in registers, with the same bits.
//!
//! Why not candle's `k_quants::matmul`: measured on this project's machine, its Q8_0 product
//! ran at 16 GMAC/s and Q5_0 at 2.6 GMAC/s (no vector kernel for Q4_1, Q5_0, Q5_1) against
//! 47 GMAC/s for float32 OpenBLAS, so a quantized batch was up to 6x slower than float32; and
//! its fast path (a repacked copy beside every Q4_K / Q6_K / Q8_0 weight) holds the weights
//! twice. Numbers: `bench/bench_model.py` and `cargo test --release --lib qdot -- --ignored`.

mod acts;
mod decode;
mod dot;
mod gemv;
mod panels;

use candle_core::quantized::GgmlDType;

pub use decode::supported;

/// Weight rows decoded at a time: their codes and scales (about 2 bytes a value) stay in L2
/// while every activation row passes over them; with few activation rows (a decode step), a
/// few weight rows at a time, so that they are read back from L1.
fn slab_rows(m: usize) -> usize {
    if m <= 8 && !panels::available() {
        8
    } else {
        128
    }
}

/// From this many activation rows on, the decoded slab is repacked in panels (`panels`); fewer
/// go to `gemv`. (The row-major `dot` kernel is the reference the others were built against,
/// and what a CPU without AVX-512 VNNI runs.) Every batch of three rows or more gets the same
/// bits for a row, whatever the batch: panels sum in their own order.
const PANEL_MIN_ROWS: usize = gemv::MAX_ROWS + 1;

thread_local! {
    /// Each thread's slab, kept between products: a decode step makes hundreds of products a
    /// token, and a fresh slab is an allocation and a zeroing each.
    static SLAB: std::cell::RefCell<Option<decode::DecodedRows>> = const { std::cell::RefCell::new(None) };
    /// Each thread's panels, likewise.
    static PANELS: std::cell::RefCell<panels::PanelSlab> = std::cell::RefCell::new(panels::PanelSlab::new());
}

/// `dst [m, n] = lhs [m, k] @ W^T` for `W [n, k]` stored as `bytes` in block type `dtype`.
/// `lhs` is part of a product of `batch_rows` rows (split over threads), which chooses the
/// kernel, so that a row gets the same bits whichever part it lands in.
pub fn matmul_t(
    dtype: GgmlDType,
    bytes: &[u8],
    n: usize,
    k: usize,
    lhs: &[f32],
    dst: &mut [f32],
    batch_rows: usize,
) {
    debug_assert!(supported(dtype));
    let acts = acts::QuantizedActs::new(lhs, k);
    if batch_rows <= gemv::MAX_ROWS && gemv::available(dtype) {
        gemv::products(dtype, bytes, n, k, &acts, dst);
        return;
    }
    let in_panels = batch_rows >= PANEL_MIN_ROWS && panels::available();
    let per = slab_rows(acts.rows()).min(n);
    SLAB.with(|cell| {
        let mut cell = cell.borrow_mut();
        // Decoding writes every code and group of a row but the padding, which stays zero
        // as long as the shape is the same.
        let fits =
            matches!(&*cell, Some(s) if s.rows() == per && s.k64 == decode::padded(k) && s.k == k);
        if !fits {
            *cell = Some(decode::DecodedRows::new(per, k));
        }
        let slab = cell.as_mut().expect("set above");
        PANELS.with(|panels_cell| {
            let mut repacked = panels_cell.borrow_mut();
            for c0 in (0..n).step_by(per) {
                slab.use_rows(per.min(n - c0));
                decode::decode_rows(dtype, bytes, k, c0, slab);
                if in_panels {
                    repacked.repack(slab);
                    panels::products(&repacked, &acts, &mut dst[c0..], n);
                } else {
                    dot::products(slab, &acts, &mut dst[c0..], n);
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    const TYPES: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    fn stored(dtype: GgmlDType, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        (q.data().unwrap().into_owned(), deq.to_vec1().unwrap())
    }

    #[test]
    fn decoded_rows_are_ggmls_dequantized_weights() {
        let (n, k) = (5, 512);
        for dtype in TYPES {
            let (bytes, want) = stored(dtype, n, k);
            let mut dec = decode::DecodedRows::new(n, k);
            decode::decode_rows(dtype, &bytes, k, 0, &mut dec);
            for r in 0..n {
                for i in 0..k {
                    let g = r * dec.groups + i / decode::GROUP;
                    let (s, o) = (dec.scales[g], dec.offsets[g]);
                    let got = s * f32::from(dec.codes[r * dec.k64 + i]) + o;
                    let w = want[r * k + i];
                    assert!(
                        (got - w).abs() <= 1e-6 * w.abs().max(1e-3),
                        "{dtype:?} [{r},{i}]: {got} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn products_are_close_to_the_dequantized_product_and_batches_agree() {
        // k = 544 = 8.5 chunks: a padded tail; n = 7: a weight tile of 4 and three single rows.
        let (n, k) = (7, 544);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let (bytes, w) = stored(dtype, n, k);
            let m = 6;
            let x = values(m * k, 9);
            let mut all = vec![0f32; m * n];
            matmul_t(dtype, &bytes, n, k, &x, &mut all, m);
            for r in 0..m {
                // In another batch of three or more rows, the row gives the same bits; alone
                // (a decode step's kernel, its own order of sums) within rounding.
                let others = [r, (r + 1) % m, (r + 2) % m];
                let three: Vec<f32> = others
                    .iter()
                    .flat_map(|&o| &x[o * k..(o + 1) * k])
                    .copied()
                    .collect();
                let mut in_three = vec![0f32; 3 * n];
                matmul_t(dtype, &bytes, n, k, &three, &mut in_three, 3);
                assert_eq!(in_three[..n], all[r * n..(r + 1) * n], "{dtype:?} row {r}");
                let mut one = vec![0f32; n];
                matmul_t(dtype, &bytes, n, k, &x[r * k..(r + 1) * k], &mut one, 1);
                for (c, (a, b)) in one.iter().zip(&all[r * n..(r + 1) * n]).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{dtype:?} [{r},{c}] {a} vs {b}"
                    );
                }
                for c in 0..n {
                    let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                    let size: f32 = (0..k).map(|i| (x[r * k + i] * w[c * k + i]).abs()).sum();
                    // 8-bit activations: under 1 % of the sum of the products' magnitudes.
                    let err = (all[r * n + c] - exact).abs();
                    assert!(err < 0.01 * size, "{dtype:?} [{r},{c}] {err} of {size}");
                }
            }
        }
    }

    #[test]
    fn rows_read_from_their_blocks_equal_the_decoded_ones_bit_for_bit() {
        // n = 9: two quads of weight rows and one alone; k = 544 (17 blocks of 32, a half
        // chunk at the end) for the 32-value types, 768 (3 superblocks) for the k-quants.
        for dtype in TYPES {
            if !gemv::available(dtype) {
                eprintln!("{dtype:?}: no AVX-512 VNNI here, the slab path runs");
                continue;
            }
            let k = if dtype.block_size() == 32 { 544 } else { 768 };
            let n = 9;
            let (bytes, _) = stored(dtype, n, k);
            let mut dec = decode::DecodedRows::new(n, k);
            decode::decode_rows(dtype, &bytes, k, 0, &mut dec);
            for m in 1..=gemv::MAX_ROWS {
                let acts = acts::QuantizedActs::new(&values(m * k, 21 + m as u64), k);
                let (mut fused, mut portable) = (vec![0f32; m * n], vec![0f32; m * n]);
                gemv::products(dtype, &bytes, n, k, &acts, &mut fused);
                dot::portable_products(&dec, &acts, &mut portable, n);
                assert_eq!(fused, portable, "{dtype:?} m={m}");
            }
        }
    }

    #[test]
    fn panels_equal_their_portable_kernel_bit_for_bit() {
        // n = 37: two whole panels and 5 rows of a third; m = 7: a tile of 4 rows and one of 3.
        let n = 37;
        for dtype in TYPES {
            let k = if dtype.block_size() == 32 { 544 } else { 768 };
            let (bytes, _) = stored(dtype, n, k);
            let mut dec = decode::DecodedRows::new(n, k);
            decode::decode_rows(dtype, &bytes, k, 0, &mut dec);
            let mut slab = panels::PanelSlab::new();
            slab.repack(&dec);
            let m = 7;
            let acts = acts::QuantizedActs::new(&values(m * k, 5), k);
            let (mut fast, mut portable) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
            panels::products(&slab, &acts, &mut fast, n);
            panels::portable_products(&slab, &acts, &mut portable, n);
            assert_eq!(fast, portable, "{dtype:?}");
        }
    }

    #[test]
    fn batches_in_panels_are_close_to_the_dequantized_product() {
        let (n, k, m) = (21, 544, PANEL_MIN_ROWS + 3);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let (bytes, w) = stored(dtype, n, k);
            let x = values(m * k, 13);
            let mut got = vec![0f32; m * n];
            matmul_t(dtype, &bytes, n, k, &x, &mut got, m);
            for r in 0..m {
                for c in 0..n {
                    let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                    let size: f32 = (0..k).map(|i| (x[r * k + i] * w[c * k + i]).abs()).sum();
                    let err = (got[r * n + c] - exact).abs();
                    assert!(err < 0.01 * size, "{dtype:?} [{r},{c}] {err} of {size}");
                }
            }
        }
    }

    #[test]
    fn the_fast_kernel_equals_the_portable_one_bit_for_bit() {
        let (n, k) = (9, 768);
        for dtype in TYPES {
            let (bytes, _) = stored(dtype, n, k);
            let mut dec = decode::DecodedRows::new(n, k);
            decode::decode_rows(dtype, &bytes, k, 0, &mut dec);
            for m in [1, 5] {
                let acts = acts::QuantizedActs::new(&values(m * k, 21), k);
                let (mut fast, mut portable) = (vec![0f32; m * n], vec![0f32; m * n]);
                dot::products(&dec, &acts, &mut fast, n);
                dot::portable_products(&dec, &acts, &mut portable, n);
                assert_eq!(fast, portable, "{dtype:?} m={m}");
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release --lib qdot::timing -- --ignored --nocapture`: the phases of one
    /// product on one thread.
    #[test]
    #[ignore]
    fn phases() {
        let (n, k) = (1536, 768);
        let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &candle_core::Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q5_0,
            GgmlDType::Q4_1,
        ] {
            let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap();
            for m in [1usize, 2, 256] {
                let x = vec![0.5f32; m * k];
                let t = std::time::Instant::now();
                let acts = acts::QuantizedActs::new(&x, k);
                let t_acts = t.elapsed().as_secs_f64();
                let mut dec = decode::DecodedRows::new(n, k);
                let t = std::time::Instant::now();
                decode::decode_rows(dtype, &bytes, k, 0, &mut dec);
                let t_dec = t.elapsed().as_secs_f64();
                let mut out = vec![0f32; m * n];
                let t = std::time::Instant::now();
                dot::products(&dec, &acts, &mut out, n);
                let t_dot = t.elapsed().as_secs_f64();
                if m <= gemv::MAX_ROWS && gemv::available(dtype) {
                    let t = std::time::Instant::now();
                    for _ in 0..10 {
                        gemv::products(dtype, &bytes, n, k, &acts, &mut out);
                    }
                    let t_fused = t.elapsed().as_secs_f64() / 10.0;
                    println!(
                        "{dtype:?} m={m}: read from the blocks {:.3} ms ({:.3} ns/weight)",
                        t_fused * 1e3,
                        t_fused * 1e9 / (n * k) as f64
                    );
                }
                println!(
                    "{dtype:?} m={m}: acts {:.3} ms, decode {:.3} ms ({:.2} ns/weight), dot {:.3} ms ({:.1} GMAC/s)",
                    t_acts * 1e3,
                    t_dec * 1e3,
                    t_dec * 1e9 / (n * k) as f64,
                    t_dot * 1e3,
                    (m * n * k) as f64 / t_dot / 1e9
                );
            }
        }
    }

    /// One activation row against 64 MB of weights (beyond the caches, as in a decode step),
    /// on one thread: ns a weight, and the bandwidth that makes.
    #[test]
    #[ignore]
    fn streamed() {
        let (n, k) = (1536, 576);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q5_0] {
            let w =
                candle_core::Tensor::randn(0f32, 1.0, (n, k), &candle_core::Device::Cpu).unwrap();
            let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
            let one = q.data().unwrap().into_owned();
            let copies = (64 << 20) / one.len();
            let all: Vec<u8> = one
                .iter()
                .copied()
                .cycle()
                .take(copies * one.len())
                .collect();
            let x = vec![0.5f32; k];
            let mut out = vec![0f32; n];
            for round in 0..3 {
                let t = std::time::Instant::now();
                for c in 0..copies {
                    matmul_t(
                        dtype,
                        &all[c * one.len()..(c + 1) * one.len()],
                        n,
                        k,
                        &x,
                        &mut out,
                        1,
                    );
                }
                let dt = t.elapsed().as_secs_f64();
                let weights = (copies * n * k) as f64;
                if round > 0 {
                    println!(
                        "{dtype:?}: {:.3} ns/weight, {:.1} GB/s",
                        dt * 1e9 / weights,
                        all.len() as f64 / dt / 1e9
                    );
                }
            }
        }
    }
}
