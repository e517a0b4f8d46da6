//! Many activation rows (a batch) against decoded weight rows repacked in panels of 16: one
//! 512-bit register holds 4 codes of each of 16 weight rows, so a dot-product instruction
//! advances 16 outputs at once against 4 broadcast activation codes, and a group's 16 values
//! are summed in integers before its scale is applied once for 16 outputs. The row-major
//! kernel (`dot`) pays a conversion, a scale product and a multiply-add for every 64 values of
//! every output: on this machine's VNNI that capped it at about 21 products a cycle.
//!
//! Each output is `f = 0; for every group g: f = fma(isum_g, ws_g * as_g, f);
//! f = fma(wo_g, asum_g, f)`, with `isum_g` the exact integer dot product of the group's 16
//! codes: [`portable_products`] does exactly that, and the AVX-512 kernel gives the same bits.

use super::acts::QuantizedActs;
use super::decode::{DecodedRows, GROUP};

/// Weight rows a panel holds (the lanes of a register).
pub const PANEL: usize = 16;
/// Values a dot-product step covers per row (four bytes in a 32-bit lane).
const STEP: usize = 4;

/// Decoded weight rows in panels: `codes [panels, k64 / 4, 16, 4]` and per group of 16 values
/// `scales`, `offsets [panels, k64 / 16, 16]`. Rows past the decoded ones are zero.
pub struct PanelSlab {
    rows: usize,
    k64: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
}

impl PanelSlab {
    pub fn new() -> Self {
        PanelSlab {
            rows: 0,
            k64: 0,
            codes: Vec::new(),
            scales: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// The rows of `w`, repacked (the buffers kept between calls).
    pub fn repack(&mut self, w: &DecodedRows) {
        let (rows, k64, stride) = (w.rows(), w.k64, w.groups);
        let panels = rows.div_ceil(PANEL);
        let groups = k64 / GROUP;
        self.rows = rows;
        self.k64 = k64;
        self.codes.clear();
        self.codes.resize(panels * PANEL * k64, 0);
        self.scales.clear();
        self.scales.resize(panels * groups * PANEL, 0.0);
        self.offsets.clear();
        self.offsets.resize(panels * groups * PANEL, 0.0);
        let steps = k64 / STEP;
        for r in 0..rows {
            let (p, lane) = (r / PANEL, r % PANEL);
            let src = &w.codes[r * k64..(r + 1) * k64];
            let panel = &mut self.codes[p * PANEL * k64..(p + 1) * PANEL * k64];
            for (s, four) in src.chunks_exact(STEP).enumerate() {
                let at = (s * PANEL + lane) * STEP;
                panel[at..at + STEP].copy_from_slice(four);
            }
            for g in 0..groups {
                let at = (p * groups + g) * PANEL + lane;
                self.scales[at] = w.scales[r * stride + g];
                self.offsets[at] = w.offsets[r * stride + g];
            }
            debug_assert_eq!(steps * STEP, k64);
        }
    }

    fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    fn groups(&self) -> usize {
        self.k64 / GROUP
    }
}

/// Whether the panel kernel runs on this CPU (AVX-512 VNNI); elsewhere `dot` is faster than
/// [`portable_products`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::dot::vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst[r * ldd + c] = w_c . a_r` for every activation row `r` and weight row `c`.
pub fn products(w: &PanelSlab, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has the features (checked); the shapes are asserted inside.
        unsafe { vnni::products(w, a, dst, ldd) };
        return;
    }
    portable_products(w, a, dst, ldd)
}

/// The kernel without SIMD intrinsics (the reference the fast one must equal).
pub fn portable_products(w: &PanelSlab, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
    assert_eq!(w.k64, a.k64);
    let (k64, groups) = (w.k64, w.groups());
    for r in 0..a.rows() {
        let codes_a = &a.codes[r * k64..(r + 1) * k64];
        for c in 0..w.rows {
            let (p, lane) = (c / PANEL, c % PANEL);
            let panel = &w.codes[p * PANEL * k64..(p + 1) * PANEL * k64];
            let mut f = 0f32;
            for g in 0..groups {
                let mut isum = 0i32;
                for s in g * GROUP / STEP..(g + 1) * GROUP / STEP {
                    for i in 0..STEP {
                        let u = panel[(s * PANEL + lane) * STEP + i];
                        isum += i32::from(u) * i32::from(codes_a[s * STEP + i]);
                    }
                }
                let at = (p * groups + g) * PANEL + lane;
                let ag = r * a.groups + g;
                let scale = w.scales[at] * a.scales[ag];
                f = (isum as f32).mul_add(scale, f);
                f = w.offsets[at].mul_add(a.group_sums[ag], f);
            }
            dst[r * ldd + c] = f;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{PanelSlab, QuantizedActs, GROUP, PANEL, STEP};

    /// Activation rows and panels per tile: 4 x 2 integer and 4 x 2 float accumulators.
    const TR: usize = 4;
    const TP: usize = 2;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn products(w: &PanelSlab, a: &QuantizedActs, dst: &mut [f32], ldd: usize) {
        assert_eq!(w.k64, a.k64);
        let (m, n, panels) = (a.rows(), w.rows, w.panels());
        assert!(m == 0 || dst.len() >= (m - 1) * ldd + n);
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(TR);
            let mut p0 = 0;
            while p0 < panels {
                let ps = (panels - p0).min(TP);
                // SAFETY (all): the tile lies inside the slab and the activations; the stores
                // are masked to the `n` weight rows.
                unsafe {
                    match (rows, ps) {
                        (4, 2) => tile::<4, 2>(w, a, r0, p0, dst, ldd),
                        (4, _) => tile::<4, 1>(w, a, r0, p0, dst, ldd),
                        (3, 2) => tile::<3, 2>(w, a, r0, p0, dst, ldd),
                        (3, _) => tile::<3, 1>(w, a, r0, p0, dst, ldd),
                        (2, 2) => tile::<2, 2>(w, a, r0, p0, dst, ldd),
                        (2, _) => tile::<2, 1>(w, a, r0, p0, dst, ldd),
                        (_, 2) => tile::<1, 2>(w, a, r0, p0, dst, ldd),
                        _ => tile::<1, 1>(w, a, r0, p0, dst, ldd),
                    }
                }
                p0 += ps;
            }
            r0 += rows;
        }
    }

    /// Activation rows `r0..r0 + R` against panels `p0..p0 + P`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(
        w: &PanelSlab,
        a: &QuantizedActs,
        r0: usize,
        p0: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        let (k64, groups) = (w.k64, w.groups());
        let mut f = [[_mm512_setzero_ps(); P]; R];
        for g in 0..groups {
            let mut isum = [[_mm512_setzero_si512(); P]; R];
            for s in g * GROUP / STEP..(g + 1) * GROUP / STEP {
                let mut wc = [_mm512_setzero_si512(); P];
                for (p, v) in wc.iter_mut().enumerate() {
                    // SAFETY: step `s` of panel `p0 + p`: 64 bytes inside the codes.
                    *v = unsafe {
                        _mm512_loadu_si512(
                            w.codes
                                .as_ptr()
                                .add((p0 + p) * PANEL * k64 + s * PANEL * STEP)
                                .cast(),
                        )
                    };
                }
                for (r, isum_r) in isum.iter_mut().enumerate() {
                    // SAFETY: 4 codes of activation row `r0 + r` at value `4 s`.
                    let four = unsafe {
                        a.codes
                            .as_ptr()
                            .add((r0 + r) * k64 + s * STEP)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let av = _mm512_set1_epi32(four);
                    for p in 0..P {
                        isum_r[p] = _mm512_dpbusd_epi32(isum_r[p], wc[p], av);
                    }
                }
            }
            let mut ws = [_mm512_setzero_ps(); P];
            let mut wo = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let at = ((p0 + p) * groups + g) * PANEL;
                // SAFETY: 16 floats of group `g` of the panel.
                unsafe {
                    ws[p] = _mm512_loadu_ps(w.scales.as_ptr().add(at));
                    wo[p] = _mm512_loadu_ps(w.offsets.as_ptr().add(at));
                }
            }
            for r in 0..R {
                let ag = (r0 + r) * a.groups + g;
                let a_scale = _mm512_set1_ps(a.scales[ag]);
                let a_sum = _mm512_set1_ps(a.group_sums[ag]);
                for p in 0..P {
                    let scale = _mm512_mul_ps(ws[p], a_scale);
                    f[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][p]), scale, f[r][p]);
                    f[r][p] = _mm512_fmadd_ps(wo[p], a_sum, f[r][p]);
                }
            }
        }
        for (r, f_r) in f.iter().enumerate() {
            for (p, v) in f_r.iter().enumerate() {
                let c0 = (p0 + p) * PANEL;
                let valid = w.rows.saturating_sub(c0).min(PANEL);
                let mask: __mmask16 = if valid == PANEL {
                    0xFFFF
                } else {
                    (1u16 << valid) - 1
                };
                // SAFETY: the lanes stored are weight rows below `w.rows`, inside `dst`.
                unsafe {
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().add((r0 + r) * ldd + c0), mask, *v)
                };
            }
        }
    }
}
