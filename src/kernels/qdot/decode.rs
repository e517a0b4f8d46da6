//! Weight rows of each ggml block type, decoded to one form the dot kernels share: unsigned
//! 8-bit codes `u`, and per group of 16 values a scale `s` and an offset `o`, such that the
//! stored weight is exactly `s * u + o` (what ggml's dequantization computes, up to the one
//! rounding of that product). Every type multiplied here fits it: Q4_0 is `d * q - 8 d`, Q4_1
//! `d * q + m`, Q8_0 `d * (q + 128) - 128 d`, Q4_K `d sc * q - dmin m` per 32 values, Q6_K
//! `d sc * q - 32 d sc` per 16 values, ...
//!
//! Rows are padded with zero codes to a multiple of [`CHUNK`] values, the width of one
//! AVX-512 dot product; a zero code times anything adds nothing.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per kernel step (one 512-bit register of bytes).
pub const CHUNK: usize = 64;
/// Values sharing a scale and an offset.
pub const GROUP: usize = 16;
/// Values per 32-bit lane of a dot product (four byte products summed).
pub const LANE: usize = 4;

/// `k` rounded up to whole chunks.
pub fn padded(k: usize) -> usize {
    k.div_ceil(CHUNK) * CHUNK
}

/// Groups of a padded row, rounded up to a multiple of 16 so that the offset terms are summed
/// in whole 16-lane registers (the extra groups are zero).
pub fn group_stride(k64: usize) -> usize {
    (k64 / GROUP).div_ceil(16) * 16
}

/// Decoded rows: `codes [rows, k64]`, and per group of 16 values `scales [rows, groups]` and
/// `offsets [rows, groups]` (`groups` = [`group_stride`]).
pub struct DecodedRows {
    /// Rows in use (at most the rows allocated).
    used: usize,
    pub k: usize,
    pub k64: usize,
    pub groups: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub offsets: Vec<f32>,
}

impl DecodedRows {
    pub fn new(rows: usize, k: usize) -> Self {
        let k64 = padded(k);
        let groups = group_stride(k64);
        DecodedRows {
            used: rows,
            k,
            k64,
            groups,
            codes: vec![0; rows * k64],
            scales: vec![0.0; rows * groups],
            offsets: vec![0.0; rows * groups],
        }
    }

    pub fn rows(&self) -> usize {
        self.used
    }

    /// Use the first `rows` rows (at most as many as were allocated).
    pub fn use_rows(&mut self, rows: usize) {
        assert!(rows * self.k64 <= self.codes.len());
        self.used = rows;
    }
}

/// The block types decoded here.
pub fn supported(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One row's writer: group `g`'s scale and offset, and its codes.
pub(super) struct RowOut<'a> {
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    offsets: &'a mut [f32],
}

impl RowOut<'_> {
    /// Groups `first..first + n` get scale `s` and offset `o`.
    #[inline(always)]
    fn groups(&mut self, first: usize, n: usize, s: f32, o: f32) {
        self.scales[first..first + n].fill(s);
        self.offsets[first..first + n].fill(o);
    }
}

/// Decode rows `first..first + out.rows()` of a matrix stored as `bytes` (row-major blocks,
/// `k` values a row) into `out`.
pub fn decode_rows(dtype: GgmlDType, bytes: &[u8], k: usize, first: usize, out: &mut DecodedRows) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features `simd` is compiled for.
        unsafe { simd::decode_rows(dtype, bytes, k, first, out) };
        return;
    }
    match dtype {
        GgmlDType::Q4_0 => each_block(dtype, bytes, k, first, out, q4_0),
        GgmlDType::Q4_1 => each_block(dtype, bytes, k, first, out, q4_1),
        GgmlDType::Q5_0 => each_block(dtype, bytes, k, first, out, q5_0),
        GgmlDType::Q5_1 => each_block(dtype, bytes, k, first, out, q5_1),
        GgmlDType::Q8_0 => each_block(dtype, bytes, k, first, out, q8_0),
        GgmlDType::Q4K => each_block(dtype, bytes, k, first, out, q4_k),
        GgmlDType::Q5K => each_block(dtype, bytes, k, first, out, q5_k),
        GgmlDType::Q6K => each_block(dtype, bytes, k, first, out, q6_k),
        other => unreachable!("{other:?} is not decoded here (see `supported`)"),
    }
}

/// `decode(block bytes, first value, row)` for every block of the rows.
#[inline(always)]
fn each_block(
    dtype: GgmlDType,
    bytes: &[u8],
    k: usize,
    first: usize,
    out: &mut DecodedRows,
    decode: impl Fn(&[u8], usize, &mut RowOut),
) {
    let (block, size) = (dtype.block_size(), dtype.type_size());
    let row_bytes = k / block * size;
    let (k64, groups) = (out.k64, out.groups);
    for i in 0..out.rows() {
        let src = &bytes[(first + i) * row_bytes..(first + i + 1) * row_bytes];
        let mut row = RowOut {
            codes: &mut out.codes[i * k64..(i + 1) * k64],
            scales: &mut out.scales[i * groups..(i + 1) * groups],
            offsets: &mut out.offsets[i * groups..(i + 1) * groups],
        };
        for (b, blk) in src.chunks_exact(size).enumerate() {
            decode(blk, b * block, &mut row);
        }
    }
}

/// 32 four-bit codes: low nibbles are values 0..16, high nibbles 16..32.
#[inline(always)]
fn nibbles(qs: &[u8], codes: &mut [u8]) {
    for j in 0..16 {
        codes[j] = qs[j] & 0x0F;
        codes[j + 16] = qs[j] >> 4;
    }
}

/// 32 five-bit codes: nibbles plus bit `j` of `qh` as the fifth bit of value `j`.
#[inline(always)]
fn five_bits(qs: &[u8], qh: u32, codes: &mut [u8]) {
    for j in 0..16 {
        codes[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
}

#[inline(always)]
fn q4_0(b: &[u8], at: usize, row: &mut RowOut) {
    let d = half(b, 0);
    nibbles(&b[2..18], &mut row.codes[at..at + 32]);
    row.groups(at / GROUP, 2, d, -8.0 * d);
}

#[inline(always)]
fn q4_1(b: &[u8], at: usize, row: &mut RowOut) {
    let (d, m) = (half(b, 0), half(b, 2));
    nibbles(&b[4..20], &mut row.codes[at..at + 32]);
    row.groups(at / GROUP, 2, d, m);
}

#[inline(always)]
fn q5_0(b: &[u8], at: usize, row: &mut RowOut) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    five_bits(&b[6..22], qh, &mut row.codes[at..at + 32]);
    row.groups(at / GROUP, 2, d, -16.0 * d);
}

#[inline(always)]
fn q5_1(b: &[u8], at: usize, row: &mut RowOut) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    five_bits(&b[8..24], qh, &mut row.codes[at..at + 32]);
    row.groups(at / GROUP, 2, d, m);
}

#[inline(always)]
fn q8_0(b: &[u8], at: usize, row: &mut RowOut) {
    let d = half(b, 0);
    for (c, &q) in row.codes[at..at + 32].iter_mut().zip(&b[2..34]) {
        *c = q ^ 0x80; // i8 q -> u8 q + 128
    }
    row.groups(at / GROUP, 2, d, -128.0 * d);
}

/// ggml's 6-bit scale and minimum of sub-block `j` of a Q4_K / Q5_K superblock.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

#[inline(always)]
fn q4_k(b: &[u8], at: usize, row: &mut RowOut) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let base = at + 64 * j;
        for (l, &byte) in q.iter().enumerate() {
            row.codes[base + l] = byte & 0x0F;
            row.codes[base + 32 + l] = byte >> 4;
        }
        for half_ in 0..2 {
            let (sc, m) = scale_min_k4(2 * j + half_, scales);
            row.groups((base + 32 * half_) / GROUP, 2, d * sc, -(dmin * m));
        }
    }
}

#[inline(always)]
fn q5_k(b: &[u8], at: usize, row: &mut RowOut) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let base = at + 64 * j;
        let (bit_lo, bit_hi) = (1u8 << (2 * j), 2u8 << (2 * j));
        for l in 0..32 {
            row.codes[base + l] = (q[l] & 0x0F) | if qh[l] & bit_lo != 0 { 16 } else { 0 };
            row.codes[base + 32 + l] = (q[l] >> 4) | if qh[l] & bit_hi != 0 { 16 } else { 0 };
        }
        for half_ in 0..2 {
            let (sc, m) = scale_min_k4(2 * j + half_, scales);
            row.groups((base + 32 * half_) / GROUP, 2, d * sc, -(dmin * m));
        }
    }
}

#[inline(always)]
fn q6_k(b: &[u8], at: usize, row: &mut RowOut) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        let base = at + 128 * n;
        for l in 0..32 {
            row.codes[base + l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            row.codes[base + l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            row.codes[base + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            row.codes[base + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
        // Groups of 16 in order: scales 0..8 of this half.
        for (g, &s) in sc[..8].iter().enumerate() {
            let s = d * f32::from(s as i8);
            row.groups(base / GROUP + g, 1, s, -32.0 * s);
        }
    }
}

/// The same decoders with the code expansion in AVX2 (the scales and offsets as above).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::*;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn decode_rows(
        dtype: GgmlDType,
        bytes: &[u8],
        k: usize,
        first: usize,
        out: &mut DecodedRows,
    ) {
        match dtype {
            GgmlDType::Q4_0 => each_block(dtype, bytes, k, first, out, |b, at, row| {
                nibbles16(&b[2..18], &mut row.codes[at..at + 32]);
                let d = half(b, 0);
                row.groups(at / GROUP, 2, d, -8.0 * d);
            }),
            GgmlDType::Q4_1 => each_block(dtype, bytes, k, first, out, |b, at, row| {
                nibbles16(&b[4..20], &mut row.codes[at..at + 32]);
                row.groups(at / GROUP, 2, half(b, 0), half(b, 2));
            }),
            GgmlDType::Q5_0 => each_block(dtype, bytes, k, first, out, |b, at, row| {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                five_bits32(&b[6..22], qh, &mut row.codes[at..at + 32]);
                let d = half(b, 0);
                row.groups(at / GROUP, 2, d, -16.0 * d);
            }),
            GgmlDType::Q5_1 => each_block(dtype, bytes, k, first, out, |b, at, row| {
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                five_bits32(&b[8..24], qh, &mut row.codes[at..at + 32]);
                row.groups(at / GROUP, 2, half(b, 0), half(b, 2));
            }),
            GgmlDType::Q8_0 => each_block(dtype, bytes, k, first, out, |b, at, row| {
                // SAFETY: 32 bytes in and out.
                unsafe {
                    let q = _mm256_loadu_si256(b[2..34].as_ptr().cast());
                    let u = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
                    _mm256_storeu_si256(row.codes[at..at + 32].as_mut_ptr().cast(), u);
                }
                let d = half(b, 0);
                row.groups(at / GROUP, 2, d, -128.0 * d);
            }),
            GgmlDType::Q4K => each_block(dtype, bytes, k, first, out, |b, at, row| {
                let (d, dmin) = (half(b, 0), half(b, 2));
                for j in 0..4 {
                    let base = at + 64 * j;
                    nibbles32(
                        &b[16 + 32 * j..48 + 32 * j],
                        &mut row.codes[base..base + 64],
                        None,
                    );
                    for h in 0..2 {
                        let (sc, m) = scale_min_k4(2 * j + h, &b[4..16]);
                        row.groups((base + 32 * h) / GROUP, 2, d * sc, -(dmin * m));
                    }
                }
            }),
            GgmlDType::Q5K => each_block(dtype, bytes, k, first, out, |b, at, row| {
                let (d, dmin) = (half(b, 0), half(b, 2));
                for j in 0..4 {
                    let base = at + 64 * j;
                    let qh = (&b[16..48], 2 * j as u32);
                    nibbles32(
                        &b[48 + 32 * j..80 + 32 * j],
                        &mut row.codes[base..base + 64],
                        Some(qh),
                    );
                    for h in 0..2 {
                        let (sc, m) = scale_min_k4(2 * j + h, &b[4..16]);
                        row.groups((base + 32 * h) / GROUP, 2, d * sc, -(dmin * m));
                    }
                }
            }),
            GgmlDType::Q6K => each_block(dtype, bytes, k, first, out, |b, at, row| {
                let d = half(b, 208);
                for n in 0..2 {
                    let base = at + 128 * n;
                    six_bits(
                        &b[64 * n..64 * n + 64],
                        &b[128 + 32 * n..160 + 32 * n],
                        &mut row.codes[base..base + 128],
                    );
                    for (g, &s) in b[192 + 8 * n..200 + 8 * n].iter().enumerate() {
                        let s = d * f32::from(s as i8);
                        row.groups(base / GROUP + g, 1, s, -32.0 * s);
                    }
                }
            }),
            other => unreachable!("{other:?} is not decoded here (see `supported`)"),
        }
    }

    /// 16 bytes -> 32 codes: low nibbles, then high nibbles.
    #[inline(always)]
    fn nibbles16(qs: &[u8], codes: &mut [u8]) {
        assert!(qs.len() >= 16 && codes.len() >= 32);
        // SAFETY: lengths checked; AVX2 is enabled in the caller.
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let low = _mm_set1_epi8(0x0F);
            _mm_storeu_si128(codes.as_mut_ptr().cast(), _mm_and_si128(v, low));
            _mm_storeu_si128(
                codes[16..].as_mut_ptr().cast(),
                _mm_and_si128(_mm_srli_epi16(v, 4), low),
            );
        }
    }

    /// 32 bytes -> 64 codes: low nibbles, then high nibbles; with `qh = (bits, shift)`, bit
    /// `shift` of `bits[l]` is the fifth bit of code `l` and bit `shift + 1` that of `32 + l`.
    #[inline(always)]
    fn nibbles32(qs: &[u8], codes: &mut [u8], qh: Option<(&[u8], u32)>) {
        assert!(qs.len() >= 32 && codes.len() >= 64);
        // SAFETY: lengths checked; AVX2 is enabled in the caller.
        unsafe {
            let v = _mm256_loadu_si256(qs.as_ptr().cast());
            let low = _mm256_set1_epi8(0x0F);
            let mut lo = _mm256_and_si256(v, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            if let Some((bits, shift)) = qh {
                assert!(bits.len() >= 32);
                let h = _mm256_loadu_si256(bits.as_ptr().cast());
                let sixteen = _mm256_set1_epi8(16);
                let bit = |s: u32| {
                    let mask = _mm256_set1_epi8((1u8 << s) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(h, mask), mask);
                    _mm256_and_si256(set, sixteen)
                };
                lo = _mm256_or_si256(lo, bit(shift));
                hi = _mm256_or_si256(hi, bit(shift + 1));
            }
            _mm256_storeu_si256(codes.as_mut_ptr().cast(), lo);
            _mm256_storeu_si256(codes[32..].as_mut_ptr().cast(), hi);
        }
    }

    /// 16 bytes of nibbles and 32 fifth bits (bit `j` of `qh` for code `j`) -> 32 codes.
    #[inline(always)]
    fn five_bits32(qs: &[u8], qh: u32, codes: &mut [u8]) {
        assert!(qs.len() >= 16 && codes.len() >= 32);
        // SAFETY: lengths checked; AVX2 is enabled in the caller.
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let low = _mm_set1_epi8(0x0F);
            let nib = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(v, 4), low),
                _mm_and_si128(v, low),
            );
            // Byte j gets byte j / 8 of qh, then its bit j % 8 is tested.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh as i32),
                _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                ),
            );
            let bits = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
            let c = _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(16)));
            _mm256_storeu_si256(codes.as_mut_ptr().cast(), c);
        }
    }

    /// Half a Q6_K superblock: 64 bytes of low nibbles and 32 of high bit pairs -> 128 codes.
    #[inline(always)]
    fn six_bits(ql: &[u8], qh: &[u8], codes: &mut [u8]) {
        assert!(ql.len() >= 64 && qh.len() >= 32 && codes.len() >= 128);
        // SAFETY: lengths checked; AVX2 is enabled in the caller.
        unsafe {
            let low = _mm256_set1_epi8(0x0F);
            let three = _mm256_set1_epi8(3);
            let a = _mm256_loadu_si256(ql.as_ptr().cast());
            let b = _mm256_loadu_si256(ql[32..].as_ptr().cast());
            let h = _mm256_loadu_si256(qh.as_ptr().cast());
            let pair = |s: i32| {
                let shifted = match s {
                    0 => h,
                    2 => _mm256_srli_epi16(h, 2),
                    4 => _mm256_srli_epi16(h, 4),
                    _ => _mm256_srli_epi16(h, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(shifted, three), 4)
            };
            let parts = [
                _mm256_or_si256(_mm256_and_si256(a, low), pair(0)),
                _mm256_or_si256(_mm256_and_si256(b, low), pair(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), low), pair(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), low), pair(6)),
            ];
            for (i, p) in parts.iter().enumerate() {
                _mm256_storeu_si256(codes[32 * i..].as_mut_ptr().cast(), *p);
            }
        }
    }
}
