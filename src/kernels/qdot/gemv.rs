//! A few activation rows (a decode step: one) against weight rows read straight from their
//! blocks: each chunk of 64 codes is expanded in registers and used at once, never written to
//! a decoded slab, which for one activation row costs more than the dot product itself.
//!
//! The arithmetic is `dot`'s, lane for lane and in the same order (the scales and offsets are
//! the ones `decode` computes, the offsets' share is accumulated into lane `g % 16` of group
//! `g` as `dot::finish` does, with masked fused multiply-adds), so an activation row gets the
//! same bits here as inside a batch. AVX-512 VNNI only; elsewhere the slab path runs.

#[cfg(target_arch = "x86_64")]
pub use x86::{available, products};

#[cfg(not(target_arch = "x86_64"))]
pub fn available(_: candle_core::quantized::GgmlDType) -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
pub fn products(
    _: candle_core::quantized::GgmlDType,
    _: &[u8],
    _: usize,
    _: usize,
    _: &super::acts::QuantizedActs,
    _: &mut [f32],
) {
    unreachable!("`available` is false here")
}

/// Activation rows handled together (they share each expanded weight chunk). Measured on
/// one thread (`qdot::timing`): 0.04-0.05 ns a weight for one row against 0.13-0.15 for the
/// slab path, 0.06-0.07 against 0.10 for two, and no gain for four, whose 32 accumulators
/// no longer fit the registers.
pub const MAX_ROWS: usize = 2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use candle_core::quantized::GgmlDType;

    use super::super::acts::QuantizedActs;
    use super::super::decode::{CHUNK, GROUP};
    use super::super::dot::vnni::{lane_scales, sum_lanes};
    use super::MAX_ROWS;

    /// Whether `dtype` is multiplied here on this CPU (every type `decode` reads, given VNNI).
    pub fn available(dtype: GgmlDType) -> bool {
        super::super::dot::vnni::available()
            && is_x86_feature_detected!("f16c")
            && super::super::decode::supported(dtype)
    }

    /// `dst[r * n + c] = w_c . a_r` for the `n` weight rows stored as `bytes` (`k` values a row,
    /// block type `dtype`) and the activation rows of `a` (at most [`MAX_ROWS`]).
    pub fn products(
        dtype: GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
        a: &QuantizedActs,
        dst: &mut [f32],
    ) {
        assert!(available(dtype), "{dtype:?} is not multiplied here");
        let m = a.rows();
        assert!(m <= MAX_ROWS && dst.len() >= m * n);
        let row_bytes = k / dtype.block_size() * dtype.type_size();
        assert!(bytes.len() >= n * row_bytes && a.k64 == super::super::decode::padded(k));
        let shape = Shape { n, k, row_bytes };
        // SAFETY: the features are there (`available`), the sizes were checked above.
        unsafe {
            match dtype {
                GgmlDType::Q4_0 => rows::<Pairs<Q4_0>>(bytes, shape, a, dst),
                GgmlDType::Q4_1 => rows::<Pairs<Q4_1>>(bytes, shape, a, dst),
                GgmlDType::Q5_0 => rows::<Pairs<Q5_0>>(bytes, shape, a, dst),
                GgmlDType::Q5_1 => rows::<Pairs<Q5_1>>(bytes, shape, a, dst),
                GgmlDType::Q8_0 => rows::<Pairs<Q8_0>>(bytes, shape, a, dst),
                GgmlDType::Q4K => rows::<Q4K>(bytes, shape, a, dst),
                GgmlDType::Q5K => rows::<Q5K>(bytes, shape, a, dst),
                GgmlDType::Q6K => rows::<Q6K>(bytes, shape, a, dst),
                other => unreachable!("{other:?} (see `available`)"),
            }
        }
    }

    /// How far ahead of the tile the weights are requested from memory: a decode step streams
    /// every weight once, and the hardware prefetcher alone left the kernel waiting. Measured
    /// on one thread over 64 MB (`qdot::timing::streamed`): Q8_0 0.18 -> 0.07 ns a weight,
    /// Q4_1 0.075 -> 0.055, Q5_0 0.088 -> 0.056; 1-8 KB ahead all within noise of 2 KB.
    const PREFETCH_AHEAD: usize = 2048;

    #[derive(Clone, Copy)]
    struct Shape {
        n: usize,
        k: usize,
        row_bytes: usize,
    }

    /// Chunk `ch` (values `64 ch ..`) of one weight row: its 64 codes, the lane scales (each
    /// group's scale on its 4 lanes) and the 4 groups' offsets.
    #[derive(Clone, Copy)]
    struct Chunk {
        codes: __m512i,
        scales: __m512,
        offsets: __m128,
    }

    trait Layout {
        /// What chunks `CHUNKS * i ..` share, read once (a superblock's scales).
        type Head: Copy + Default;
        const CHUNKS: usize;
        /// # Safety
        /// As `chunk`, for the first chunk of a head.
        unsafe fn head(row: *const u8, ch: usize) -> Self::Head;
        /// # Safety
        /// `row` points at a whole stored row of `k` values; `ch < padded(k) / 64`; `head`
        /// is chunk `ch`'s; AVX-512 VNNI and F16C are enabled in the caller.
        unsafe fn chunk(row: *const u8, head: &Self::Head, ch: usize, k: usize) -> Chunk;
    }

    /// Weight rows four at a time against all the activation rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c")]
    unsafe fn rows<L: Layout>(bytes: &[u8], s: Shape, a: &QuantizedActs, dst: &mut [f32]) {
        let m = a.rows();
        let mut c0 = 0;
        // SAFETY (all): rows `c0..c0 + C` lie inside `bytes`, activation rows inside `a`.
        unsafe {
            while c0 + 4 <= s.n {
                match m {
                    1 => tile::<L, 1, 4>(bytes, s, a, c0, dst),
                    _ => tile::<L, MAX_ROWS, 4>(bytes, s, a, c0, dst),
                }
                c0 += 4;
            }
            for c in c0..s.n {
                match m {
                    1 => tile::<L, 1, 1>(bytes, s, a, c, dst),
                    _ => tile::<L, MAX_ROWS, 1>(bytes, s, a, c, dst),
                }
            }
        }
    }

    /// Activation rows `0..R` against weight rows `c0..c0 + C`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c")]
    unsafe fn tile<L: Layout, const R: usize, const C: usize>(
        bytes: &[u8],
        s: Shape,
        a: &QuantizedActs,
        c0: usize,
        dst: &mut [f32],
    ) {
        let (k64, groups) = (a.k64, a.groups);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut shift = [[_mm512_setzero_ps(); C]; R];
        let mut heads = [L::Head::default(); C];
        let chunks = k64 / CHUNK;
        // The tile's rows are contiguous: while they are multiplied, the bytes PREFETCH_AHEAD
        // further on are requested, a chunk's share at a time.
        let tile_bytes = C * s.row_bytes;
        let ahead = bytes
            .as_ptr()
            .wrapping_add(c0 * s.row_bytes + PREFETCH_AHEAD);
        for ch in 0..chunks {
            let from = ch * tile_bytes / chunks;
            let to = (ch + 1) * tile_bytes / chunks;
            for line in (from..to).step_by(64) {
                // A hint: an address beyond the weights is never read.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
            }
            let mut w = [Chunk {
                codes: zero,
                scales: _mm512_setzero_ps(),
                offsets: _mm_setzero_ps(),
            }; C];
            for (c, (chunk, head)) in w.iter_mut().zip(heads.iter_mut()).enumerate() {
                // SAFETY: the caller's rows are whole; `ch` is inside the padded row.
                unsafe {
                    let row = bytes.as_ptr().add((c0 + c) * s.row_bytes);
                    if ch % L::CHUNKS == 0 {
                        *head = L::head(row, ch);
                    }
                    *chunk = L::chunk(row, head, ch, s.k);
                }
            }
            // Group `g` of the offsets goes to lane `g % 16`: this chunk's groups 4 ch + i
            // to lanes 4 (ch % 4) + i.
            let lanes: __mmask16 = 0xFu16 << (4 * (ch % 4));
            for (r, (acc_r, shift_r)) in acc.iter_mut().zip(shift.iter_mut()).enumerate() {
                // SAFETY: chunk `ch` and its 4 groups lie inside activation row `r`.
                let (ac, a_scales, a_sums) = unsafe {
                    let g = r * groups + ch * CHUNK / GROUP;
                    (
                        _mm512_loadu_si512(a.codes.as_ptr().add(r * k64 + ch * CHUNK).cast()),
                        lane_scales(a.scales.as_ptr().add(g)),
                        _mm512_broadcast_f32x4(_mm_loadu_ps(a.group_sums.as_ptr().add(g))),
                    )
                };
                for c in 0..C {
                    let isum = _mm512_dpbusd_epi32(zero, w[c].codes, ac);
                    let scale = _mm512_mul_ps(w[c].scales, a_scales);
                    acc_r[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc_r[c]);
                    let offsets = _mm512_broadcast_f32x4(w[c].offsets);
                    shift_r[c] = _mm512_mask3_fmadd_ps(offsets, a_sums, shift_r[c], lanes);
                }
            }
        }
        let n = s.n;
        for r in 0..R {
            for c in 0..C {
                dst[r * n + c0 + c] = sum_lanes(_mm512_add_ps(acc[r][c], shift[r][c]));
            }
        }
    }

    /// An f16 at `p`, as f32.
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller points at 2 readable bytes and enabled F16C.
        unsafe {
            let bits = i32::from(p.cast::<u16>().read_unaligned());
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
        }
    }

    /// Lanes 0..8 `lo`, lanes 8..16 `hi`: the lane scales of two halves of 32 values.
    #[inline(always)]
    fn halves(lo: f32, hi: f32) -> __m512 {
        // SAFETY: AVX-512F is enabled in every caller (they are inlined into `tile`).
        unsafe { _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(lo), _mm512_set1_ps(hi)) }
    }

    /// 64 codes from two runs of 32.
    #[inline(always)]
    fn join(lo: __m256i, hi: __m256i) -> __m512i {
        // SAFETY: as `halves`.
        unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
    }

    /// 16 bytes of nibbles -> 32 codes: low nibbles, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles16(p: *const u8) -> __m256i {
        // SAFETY: the caller points at 16 bytes.
        unsafe {
            let v = _mm_loadu_si128(p.cast());
            let low = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(v), low),
                _mm_and_si128(v, low),
            )
        }
    }

    /// A block of 32 values: its codes (but the fifth bits), scale and offset.
    trait Block32 {
        const BYTES: usize;
        /// Whether the codes have a fifth bit, bit `j` of [`Block32::fifth_bits`] for code `j`.
        const FIVE_BITS: bool = false;
        /// # Safety
        /// `p` points at a whole block; the caller enabled the features.
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32);
        /// # Safety
        /// As `block`.
        #[inline(always)]
        unsafe fn fifth_bits(_: *const u8) -> u32 {
            0
        }
    }

    struct Q4_0;
    impl Block32 for Q4_0 {
        const BYTES: usize = 18;
        #[inline(always)]
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: d, then 16 bytes of nibbles.
            unsafe {
                let d = half(p);
                (nibbles16(p.add(2)), d, -8.0 * d)
            }
        }
    }

    struct Q4_1;
    impl Block32 for Q4_1 {
        const BYTES: usize = 20;
        #[inline(always)]
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: d, m, then 16 bytes of nibbles.
            unsafe { (nibbles16(p.add(4)), half(p), half(p.add(2))) }
        }
    }

    struct Q5_0;
    impl Block32 for Q5_0 {
        const BYTES: usize = 22;
        const FIVE_BITS: bool = true;
        #[inline(always)]
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: d, 4 bytes of fifth bits, then 16 bytes of nibbles.
            unsafe {
                let d = half(p);
                (nibbles16(p.add(6)), d, -16.0 * d)
            }
        }
        #[inline(always)]
        unsafe fn fifth_bits(p: *const u8) -> u32 {
            // SAFETY: as `block`.
            unsafe { p.add(2).cast::<u32>().read_unaligned() }
        }
    }

    struct Q5_1;
    impl Block32 for Q5_1 {
        const BYTES: usize = 24;
        const FIVE_BITS: bool = true;
        #[inline(always)]
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: d, m, 4 bytes of fifth bits, then 16 bytes of nibbles.
            unsafe { (nibbles16(p.add(8)), half(p), half(p.add(2))) }
        }
        #[inline(always)]
        unsafe fn fifth_bits(p: *const u8) -> u32 {
            // SAFETY: as `block`.
            unsafe { p.add(4).cast::<u32>().read_unaligned() }
        }
    }

    struct Q8_0;
    impl Block32 for Q8_0 {
        const BYTES: usize = 34;
        #[inline(always)]
        unsafe fn block(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: d, then 32 signed codes (made unsigned: q + 128).
            unsafe {
                let d = half(p);
                let q = _mm256_loadu_si256(p.add(2).cast());
                (_mm256_xor_si256(q, _mm256_set1_epi8(-128)), d, -128.0 * d)
            }
        }
    }

    /// Chunks of two 32-value blocks (the last one alone when a row has an odd count).
    struct Pairs<B>(B);
    impl<B: Block32> Layout for Pairs<B> {
        type Head = ();
        const CHUNKS: usize = 1;
        #[inline(always)]
        unsafe fn head(_: *const u8, _: usize) {}
        #[inline(always)]
        unsafe fn chunk(row: *const u8, _: &(), ch: usize, k: usize) -> Chunk {
            // SAFETY: blocks `2 ch` and, when the row has it, `2 ch + 1`.
            unsafe {
                let first = row.add(2 * ch * B::BYTES);
                let second = (2 * ch + 1 < k / 32).then(|| first.add(B::BYTES));
                let (c0, d0, o0) = B::block(first);
                let (c1, d1, o1) = match second {
                    Some(p) => B::block(p),
                    None => (_mm256_setzero_si256(), 0.0, 0.0),
                };
                let mut codes = join(c0, c1);
                if B::FIVE_BITS {
                    // Bit j of the mask is code j's fifth bit: add 16 to those codes.
                    let bits = u64::from(B::fifth_bits(first))
                        | second.map_or(0, |p| u64::from(B::fifth_bits(p)) << 32);
                    codes = _mm512_mask_add_epi8(codes, bits, codes, _mm512_set1_epi8(16));
                }
                Chunk {
                    codes,
                    scales: halves(d0, d1),
                    offsets: _mm_set_ps(o1, o1, o0, o0),
                }
            }
        }
    }

    /// ggml's 6-bit scale and minimum of sub-block `j` of a Q4_K / Q5_K superblock.
    #[inline(always)]
    unsafe fn scale_min_k4(j: usize, s: *const u8) -> (f32, f32) {
        // SAFETY: the caller points at the 12 scale bytes.
        let s = unsafe { std::slice::from_raw_parts(s, 12) };
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

    /// A Q4_K / Q5_K superblock's 8 sub-block scales `d sc` and offsets `-dmin m`.
    #[derive(Clone, Copy, Default)]
    struct K4Head {
        scales: [f32; 8],
        offsets: [f32; 8],
    }

    /// The head of the superblock at `b`.
    #[inline(always)]
    unsafe fn k4_head(b: *const u8) -> K4Head {
        // SAFETY: the caller points at a superblock.
        unsafe {
            let (d, dmin) = (half(b), half(b.add(2)));
            let mut head = K4Head::default();
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, b.add(4));
                head.scales[j] = d * sc;
                head.offsets[j] = -(dmin * m);
            }
            head
        }
    }

    /// Chunk `j` of a Q4_K / Q5_K superblock from its 64 codes: sub-blocks `2 j`, `2 j + 1`.
    #[inline(always)]
    fn k4_chunk(head: &K4Head, j: usize, lo: __m256i, hi: __m256i) -> Chunk {
        let (o0, o1) = (head.offsets[2 * j], head.offsets[2 * j + 1]);
        Chunk {
            codes: join(lo, hi),
            scales: halves(head.scales[2 * j], head.scales[2 * j + 1]),
            // SAFETY: SSE is always there on x86_64.
            offsets: unsafe { _mm_set_ps(o1, o1, o0, o0) },
        }
    }

    /// 32 bytes of nibbles -> (low nibbles, high nibbles).
    #[inline(always)]
    unsafe fn nibbles32(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller points at 32 bytes.
        unsafe {
            let v = _mm256_loadu_si256(p.cast());
            let low = _mm256_set1_epi8(0x0F);
            (
                _mm256_and_si256(v, low),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
            )
        }
    }

    struct Q4K;
    impl Layout for Q4K {
        type Head = K4Head;
        const CHUNKS: usize = 4;
        #[inline(always)]
        unsafe fn head(row: *const u8, ch: usize) -> K4Head {
            // SAFETY: superblock `ch / 4` of the row.
            unsafe { k4_head(row.add(ch / 4 * 144)) }
        }
        #[inline(always)]
        unsafe fn chunk(row: *const u8, head: &K4Head, ch: usize, _: usize) -> Chunk {
            // SAFETY: superblock `ch / 4` (144 bytes: d, dmin, 12 scale bytes, 128 of nibbles).
            unsafe {
                let (b, j) = (row.add(ch / 4 * 144), ch % 4);
                let (lo, hi) = nibbles32(b.add(16 + 32 * j));
                k4_chunk(head, j, lo, hi)
            }
        }
    }

    struct Q5K;
    impl Layout for Q5K {
        type Head = K4Head;
        const CHUNKS: usize = 4;
        #[inline(always)]
        unsafe fn head(row: *const u8, ch: usize) -> K4Head {
            // SAFETY: superblock `ch / 4` of the row.
            unsafe { k4_head(row.add(ch / 4 * 176)) }
        }
        #[inline(always)]
        unsafe fn chunk(row: *const u8, head: &K4Head, ch: usize, _: usize) -> Chunk {
            // SAFETY: superblock `ch / 4` (176 bytes: d, dmin, 12 scale bytes, 32 of fifth
            // bits, 128 of nibbles).
            unsafe {
                let (b, j) = (row.add(ch / 4 * 176), ch % 4);
                let (lo, hi) = nibbles32(b.add(48 + 32 * j));
                let h = _mm256_loadu_si256(b.add(16).cast());
                let sixteen = _mm256_set1_epi8(16);
                let bit = |s: usize| {
                    let mask = _mm256_set1_epi8((1u8 << s) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(h, mask), mask);
                    _mm256_and_si256(set, sixteen)
                };
                let lo = _mm256_or_si256(lo, bit(2 * j));
                let hi = _mm256_or_si256(hi, bit(2 * j + 1));
                k4_chunk(head, j, lo, hi)
            }
        }
    }

    struct Q6K;
    impl Layout for Q6K {
        type Head = ();
        const CHUNKS: usize = 1;
        #[inline(always)]
        unsafe fn head(_: *const u8, _: usize) {}
        #[inline(always)]
        unsafe fn chunk(row: *const u8, _: &(), ch: usize, _: usize) -> Chunk {
            // SAFETY: superblock `ch / 4` (210 bytes: 128 of low nibbles, 64 of high bit
            // pairs, 16 signed scales, d); chunk `ch % 4` is part `ch % 2` of half `ch % 4 / 2`.
            unsafe {
                let b = row.add(ch / 4 * 210);
                let (half_, part) = (ch % 4 / 2, ch % 2);
                let ql = b.add(64 * half_);
                let h = _mm256_loadu_si256(b.add(128 + 32 * half_).cast());
                let (a, c) = (
                    _mm256_loadu_si256(ql.cast()),
                    _mm256_loadu_si256(ql.add(32).cast()),
                );
                let low = _mm256_set1_epi8(0x0F);
                let three = _mm256_set1_epi8(3);
                // Values 0..32 of the part from `a`, 32..64 from `c`; part 0 takes the low
                // nibbles and bit pairs 0 and 1 of `h`, part 1 the high ones and pairs 2, 3.
                let (a, c, h_lo, h_hi) = if part == 0 {
                    (a, c, h, _mm256_srli_epi16::<2>(h))
                } else {
                    (
                        _mm256_srli_epi16::<4>(a),
                        _mm256_srli_epi16::<4>(c),
                        _mm256_srli_epi16::<4>(h),
                        _mm256_srli_epi16::<6>(h),
                    )
                };
                let pair = |x: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(x, three));
                let lo = _mm256_or_si256(_mm256_and_si256(a, low), pair(h_lo));
                let hi = _mm256_or_si256(_mm256_and_si256(c, low), pair(h_hi));
                let d = _mm_set1_ps(half(b.add(208)));
                let sc = b
                    .add(192 + 8 * half_ + 4 * part)
                    .cast::<i32>()
                    .read_unaligned();
                let sc = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(sc)));
                let scales = _mm_mul_ps(d, sc);
                let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
                Chunk {
                    codes: join(lo, hi),
                    scales: _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales)),
                    offsets: _mm_mul_ps(_mm_set1_ps(-32.0), scales),
                }
            }
        }
    }
}
