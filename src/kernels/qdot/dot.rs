//! The dot products of decoded weight rows with quantized activation rows.
//!
//! For one (activation row, weight row) pair, per chunk of 64 values: sixteen 32-bit lanes,
//! each the exact integer sum of four `u * q` products, converted to f32 and multiplied into
//! a 16-lane accumulator by the lane's scale (`weight scale * activation scale` of its group
//! of 16, with one fused multiply-add); the groups' offset terms `offset * activation group
//! sum` go into a second 16-lane accumulator, group `g` into lane `g % 16`, which is added to
//! the first lane by lane before the lanes are summed in a fixed tree. The AVX-512 VNNI kernel and the portable one do exactly these operations in this
//! order, so they agree to the bit, whatever the batch size or tile an element lands in.

use super::acts::QuantizedActs;
use super::decode::{DecodedRows, CHUNK, GROUP, LANE};

/// Lanes of one chunk.
const LANES: usize = CHUNK / LANE;

/// The 16 lanes summed as the AVX-512 kernel sums them: halves, then quarters, ...
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    let mut s8 = [0f32; 8];
    for i in 0..8 {
        s8[i] = acc[i] + acc[i + 8];
    }
    let mut s4 = [0f32; 4];
    for i in 0..4 {
        s4[i] = s8[i] + s8[i + 4];
    }
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// The offsets' share `sum_g offset_g * group_sum_g` (group `g` in lane `g % 16`) added to
/// the lanes of the products, then all summed once.
fn finish(mut acc: [f32; LANES], offsets: &[f32], sums: &[f32]) -> f32 {
    let mut shift = [0f32; LANES];
    for (g, (o, a)) in offsets.iter().zip(sums).enumerate() {
        shift[g % LANES] = o.mul_add(*a, shift[g % LANES]);
    }
    for (a, s) in acc.iter_mut().zip(shift) {
        *a += s;
    }
    sum_lanes(&acc)
}

/// `dst[r * ldd + c] = w_c . a_r` for every activation row `r` and weight row `c`.
pub fn products(w: &DecodedRows, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
    #[cfg(target_arch = "x86_64")]
    if vnni::available() {
        // SAFETY: the CPU has the features (checked), and the shapes agree (asserted inside).
        unsafe { vnni::products(w, a, dst, ldd) };
        return;
    }
    portable_products(w, a, dst, ldd)
}

/// The kernel without SIMD intrinsics (any CPU; the reference the fast one must equal).
pub fn portable_products(w: &DecodedRows, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
    let (k64, groups) = (w.k64, w.groups);
    assert_eq!((k64, groups), (a.k64, a.groups));
    for r in 0..a.rows() {
        let codes_a = &a.codes[r * k64..(r + 1) * k64];
        let scales_a = &a.scales[r * groups..(r + 1) * groups];
        let sums_a = &a.group_sums[r * groups..(r + 1) * groups];
        for c in 0..w.rows() {
            let codes_w = &w.codes[c * k64..(c + 1) * k64];
            let scales_w = &w.scales[c * groups..(c + 1) * groups];
            let mut acc = [0f32; LANES];
            for lane in 0..k64 / LANE {
                let mut isum = 0i32;
                for j in lane * LANE..(lane + 1) * LANE {
                    isum += i32::from(codes_w[j]) * i32::from(codes_a[j]);
                }
                let g = lane * LANE / GROUP;
                let scale = scales_w[g] * scales_a[g];
                let l = lane % LANES;
                acc[l] = (isum as f32).mul_add(scale, acc[l]);
            }
            let offsets = &w.offsets[c * groups..(c + 1) * groups];
            dst[r * ldd + c] = finish(acc, offsets, sums_a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{DecodedRows, QuantizedActs, CHUNK, GROUP, LANE, LANES};

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }

    /// Activation rows per tile and weight rows per tile: 4 x 4 accumulators, plus the loaded
    /// codes and scales, fit the 32 vector registers.
    const TR: usize = 4;
    const TC: usize = 4;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(in crate::kernels::qdot) fn sum_lanes(v: __m512) -> f32 {
        // Lanes i + 8, then i + 4, i + 2, i + 1: the tree of `super::sum_lanes`.
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let s8 = _mm256_add_ps(_mm512_castps512_ps256(v), high);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    /// The lane scales of one chunk from its 4 group scales at `p`: each repeated 4 times.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(in crate::kernels::qdot) unsafe fn lane_scales(p: *const f32) -> __m512 {
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        // SAFETY: the caller points at 4 floats.
        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(unsafe { _mm_loadu_ps(p) }))
    }

    /// `acc` plus the offsets' share, as `super::finish` adds it (`n` groups, a multiple of
    /// 16), before the lanes are summed.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn shifted(acc: __m512, offsets: *const f32, sums: *const f32, n: usize) -> __m512 {
        let mut shift = _mm512_setzero_ps();
        for g in (0..n).step_by(LANES) {
            // SAFETY: the caller's rows hold `n` floats each.
            unsafe {
                shift = _mm512_fmadd_ps(
                    _mm512_loadu_ps(offsets.add(g)),
                    _mm512_loadu_ps(sums.add(g)),
                    shift,
                );
            }
        }
        _mm512_add_ps(acc, shift)
    }

    /// The lane sums of 16 vectors at once, each by `sum_lanes`'s tree (lanes i + 8, then
    /// i + 4, i + 2, i + 1), the additions shared: lane `4 l + j` of the result is the sum of
    /// `v[4 j + l]`. A fourth of the instructions of 16 `sum_lanes`, which on 576-wide layers
    /// were a fifth of a tile's work.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn sum_lanes_16(v: [__m512; 16]) -> __m512 {
        // Halves: per pair, [a's lanes i + (i + 8), b's], 8 lanes each.
        let s8: [__m512; 8] = std::array::from_fn(|p| {
            let (a, b) = (v[2 * p], v[2 * p + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // Quarters: per pair of those, 4 lanes for each of 4 vectors, in 128-bit order.
        let s4: [__m512; 4] = std::array::from_fn(|q| {
            let (a, b) = (s8[2 * q], s8[2 * q + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        });
        // Pairs of lanes, then single lanes, inside each 128 bits.
        let s2: [__m512; 2] = std::array::from_fn(|h| {
            let (a, b) = (s4[2 * h], s4[2 * h + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        });
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(s2[0], s2[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(s2[0], s2[1]),
        )
    }

    /// Rows `rs` of the activations against rows `cs` of the weights (at most TR x TC).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const C: usize>(
        w: &DecodedRows,
        a: &QuantizedActs,
        r0: usize,
        c0: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        let (k64, groups) = (w.k64, w.groups);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for ch in 0..k64 / CHUNK {
            let mut wc = [zero; C];
            let mut ws = [_mm512_setzero_ps(); C];
            for c in 0..C {
                let row = c0 + c;
                // SAFETY: chunk `ch` of row `row` lies inside the decoded buffers.
                unsafe {
                    wc[c] = _mm512_loadu_si512(w.codes.as_ptr().add(row * k64 + ch * CHUNK).cast());
                    ws[c] = lane_scales(w.scales.as_ptr().add(row * groups + ch * CHUNK / GROUP));
                }
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let row = r0 + r;
                // SAFETY: as above, for the activations.
                let (ac, as_) = unsafe {
                    (
                        _mm512_loadu_si512(a.codes.as_ptr().add(row * k64 + ch * CHUNK).cast()),
                        lane_scales(a.scales.as_ptr().add(row * groups + ch * CHUNK / GROUP)),
                    )
                };
                for c in 0..C {
                    let isum = _mm512_dpbusd_epi32(zero, wc[c], ac);
                    let scale = _mm512_mul_ps(ws[c], as_);
                    acc_r[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc_r[c]);
                }
            }
        }
        let mut done = [[_mm512_setzero_ps(); C]; R];
        for (r, done_r) in done.iter_mut().enumerate() {
            let sums = a.group_sums[(r0 + r) * groups..].as_ptr();
            for (c, d) in done_r.iter_mut().enumerate() {
                let offsets = w.offsets[(c0 + c) * groups..].as_ptr();
                // SAFETY: both rows hold `groups` floats.
                *d = unsafe { shifted(acc[r][c], offsets, sums, groups) };
            }
        }
        if R == 4 && C == 4 {
            // Output (r, c) is lane 4 r + c of the sums of v[4 c + r].
            let sums = sum_lanes_16(std::array::from_fn(|i| done[i % 4][i / 4]));
            let mut out = [0f32; 16];
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sums) };
            for r in 0..4 {
                let at = (r0 + r) * ldd + c0;
                dst[at..at + 4].copy_from_slice(&out[4 * r..4 * r + 4]);
            }
            return;
        }
        for r in 0..R {
            for c in 0..C {
                dst[(r0 + r) * ldd + c0 + c] = sum_lanes(done[r][c]);
            }
        }
    }

    /// Every (activation row, weight row) product, in tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn products(w: &DecodedRows, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
        assert_eq!((w.k64, w.groups), (a.k64, a.groups));
        assert_eq!(w.groups % LANES, 0);
        let (m, n) = (a.rows(), w.rows());
        assert!(m == 0 || dst.len() >= (m - 1) * ldd + n);
        const _: () = assert!(CHUNK / LANE == LANES);
        let full_c = n / TC * TC;
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(TR);
            let mut c0 = 0;
            // SAFETY (all calls): the tiles stay inside `m` x `n`; features as ours.
            unsafe {
                while c0 < full_c {
                    match rows {
                        4 => tile::<4, TC>(w, a, r0, c0, dst, ldd),
                        3 => tile::<3, TC>(w, a, r0, c0, dst, ldd),
                        2 => tile::<2, TC>(w, a, r0, c0, dst, ldd),
                        _ => tile::<1, TC>(w, a, r0, c0, dst, ldd),
                    }
                    c0 += TC;
                }
                for c in full_c..n {
                    for r in r0..r0 + rows {
                        tile::<1, 1>(w, a, r, c, dst, ldd);
                    }
                }
            }
            r0 += rows;
        }
    }
}
