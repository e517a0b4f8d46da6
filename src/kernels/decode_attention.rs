//! Attention of a few new query rows over a KV cache (a generation step): `q [b, head, t,
//! d_head]` against keys and values `[b, kv_head, t_k, d_head]` that are views of the cache's
//! buffers (rows contiguous, heads `capacity` rows apart).
//!
//! The general path multiplies `q k^T` and `pattern v` as batched matrix products; with one
//! query row per head those are matrix-vector products that candle's `gemm` runs at a fraction
//! of its speed, and it reads the cache views through their strides (14 % of a 768-token
//! SmolLM2 generation). Here each (prompt, head) task computes its scores as dot products over
//! contiguous key rows, softmaxes them (the general path's [`softmax_row`]) and sums the value
//! rows, all in L1. Nothing is materialized, so the forward uses this path only when no hook
//! reads the pattern.

use std::mem::MaybeUninit;

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use super::fused::{softmax_row, written_by};
use crate::error::Result;

/// Most query rows per call: a decode step has one (two with a speculative or a BOS row).
pub const MAX_QUERY_ROWS: usize = 4;

/// Key rows x head size under which one thread does the whole call: the fork-join of a
/// parallel loop costs more than a few thousand multiply-adds.
const SERIAL_BELOW: usize = 1 << 14;

/// `f(data from the tensor's first element on)` for an f32 CPU tensor of any strides.
fn with_strided<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => cpu
            .as_slice::<f32>()
            .ok()
            .map(|s| f(&s[layout.start_offset()..])),
        _ => None,
    }
}

/// `z = softmax(q k^T * scale + mask) v` per head (query head `i` reads KV head
/// `i / (head / kv_head)`), for f32 `q [b, head, t, d]` (contiguous), `k`, `v`
/// `[b, kv_head, t_k, d]` whose rows are contiguous (any head and prompt strides) and a
/// `mask` broadcastable to `[b, head, t, t_k]` (additive). Returns `z [b, t, head * d]`, or
/// `None` when the tensors do not qualify (more than [`MAX_QUERY_ROWS`] rows, other
/// layouts, heads that do not group).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (b, h, t, dh) = q.dims4()?;
    let (bk, kvh, tk, dk) = k.dims4()?;
    if bk != b
        || dk != dh
        || v.dims() != k.dims()
        || kvh == 0
        || h % kvh != 0
        || t == 0
        || t > MAX_QUERY_ROWS
        || tk == 0
        || dh == 0
        || !q.is_contiguous()
    {
        return Ok(None);
    }
    let Ok(mask) = mask.broadcast_as((b, h, t, tk)) else {
        return Ok(None);
    };
    // Rows of d contiguous floats, and the same layout for keys and values.
    let (ks, vs) = (k.stride(), v.stride());
    if ks[3] != 1 || ks[2] != dh || ks != vs {
        return Ok(None);
    }
    let ms = mask.stride().to_vec();
    let out = with_strided(q, |qd| {
        with_strided(k, |kd| {
            with_strided(v, |vd| {
                with_strided(&mask, |md| {
                    run(
                        Step {
                            q: qd,
                            k: kd,
                            v: vd,
                            mask: md,
                            kv_strides: [ks[0], ks[1]],
                            mask_strides: [ms[0], ms[1], ms[2], ms[3]],
                            h,
                            group: h / kvh,
                            t,
                            tk,
                            dh,
                            scale: scale as f32,
                        },
                        b,
                    )
                })
            })
        })
    })
    .flatten()
    .flatten()
    .flatten();
    out.map(|z| Ok(Tensor::from_vec(z, (b, t, h * dh), &Device::Cpu)?))
        .transpose()
}

/// z `[b, t, head * d]` of one call.
fn run(step: Step, b: usize) -> Vec<f32> {
    let (h, t, dh, tk) = (step.h, step.t, step.dh, step.tk);
    let task = |bh: usize, out: &mut [MaybeUninit<f32>]| step.head(bh, out);
    let width = h * dh;
    let tasks = b * h;
    let mut per_head = unsafe {
        // SAFETY: every task writes all t * dh values of its chunk.
        written_by(tasks * t * dh, |out| {
            if tk * dh * tasks < SERIAL_BELOW {
                out.chunks_mut(t * dh)
                    .enumerate()
                    .for_each(|(bh, o)| task(bh, o));
            } else {
                out.par_chunks_mut(t * dh)
                    .enumerate()
                    .for_each(|(bh, o)| task(bh, o));
            }
        })
    };
    // [b, head, t, d] -> [b, t, head * d] (t rows per head: a few hundred floats).
    if t > 1 {
        let mut z = vec![0f32; per_head.len()];
        for bi in 0..b {
            for hi in 0..h {
                for qi in 0..t {
                    let src = &per_head[((bi * h + hi) * t + qi) * dh..][..dh];
                    z[(bi * t + qi) * width + hi * dh..][..dh].copy_from_slice(src);
                }
            }
        }
        per_head = z;
    }
    per_head
}

/// One call's data (each slice starts at its tensor's offset) and sizes.
struct Step<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    /// Strides of the prompt and KV-head axes of `k` and `v` (rows are `dh` apart).
    kv_strides: [usize; 2],
    mask_strides: [usize; 4],
    h: usize,
    group: usize,
    t: usize,
    tk: usize,
    dh: usize,
    scale: f32,
}

impl Step<'_> {
    /// The `t` rows of z of task `bh` = (prompt, head), `[t, dh]` into `out`.
    fn head(&self, bh: usize, out: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { self.head_avx2(bh, out) };
        }
        self.head_body(bh, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_avx2(&self, bh: usize, out: &mut [MaybeUninit<f32>]) {
        self.head_body(bh, out)
    }

    #[inline(always)]
    fn head_body(&self, bh: usize, out: &mut [MaybeUninit<f32>]) {
        let (h, t, tk, dh) = (self.h, self.t, self.tk, self.dh);
        let (bi, hi) = (bh / h, bh % h);
        let kv_base = bi * self.kv_strides[0] + (hi / self.group) * self.kv_strides[1];
        let (keys, values) = (&self.k[kv_base..], &self.v[kv_base..]);
        let ms = &self.mask_strides;
        let mut scores = vec![0f32; tk];
        for qi in 0..t {
            let query = &self.q[((bi * h + hi) * t + qi) * dh..][..dh];
            let mask_row = bi * ms[0] + hi * ms[1] + qi * ms[2];
            for (j, s) in scores.iter_mut().enumerate() {
                let dot = dot(query, &keys[j * dh..][..dh]);
                *s = dot * self.scale + self.mask[mask_row + j * ms[3]];
            }
            softmax_row(&mut scores);
            weighted_rows(&scores, values, dh, &mut out[qi * dh..][..dh]);
        }
    }
}

/// `sum_i a[i] b[i]` in 16 lanes (the compiler vectorizes the lanes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out = sum_j w[j] * rows[j * d .. j * d + d]`, in order of `j`.
#[inline(always)]
fn weighted_rows(w: &[f32], rows: &[f32], d: usize, out: &mut [MaybeUninit<f32>]) {
    let mut acc = vec![0f32; d];
    for (j, &wj) in w.iter().enumerate() {
        for (a, &x) in acc.iter_mut().zip(&rows[j * d..][..d]) {
            *a += wj * x;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o.write(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed;
    use crate::kernels::test_support::{self, max_abs_diff};

    fn randn(shape: &[usize]) -> Tensor {
        test_support::randn(shape, 1.0)
    }

    /// The general path's composition: scores, masked softmax, pattern times values.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let (b, h, t, dh) = q.dims4().unwrap();
        let kvh = k.dim(1).unwrap();
        let (k, v) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let rep = |x: &Tensor| {
            let (b, kvh, tk, d) = x.dims4().unwrap();
            x.unsqueeze(2)
                .unwrap()
                .expand((b, kvh, h / kvh, tk, d))
                .unwrap()
                .reshape((b, h, tk, d))
                .unwrap()
        };
        let (k, v) = if kvh == h { (k, v) } else { (rep(&k), rep(&v)) };
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let p = composed::softmax_last(&scores.broadcast_add(mask).unwrap()).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * dh))
            .unwrap()
    }

    #[test]
    fn equals_the_composition_on_cache_views() {
        // SmolLM2's (9 heads over 3 KV heads of 64) and Gemma's (4 over 1 of 256) geometry,
        // keys and values as views of a buffer with spare room, one and two query rows.
        for (b, h, kvh, dh, t, tk) in [
            (1, 9, 3, 64, 1, 70),
            (2, 4, 1, 256, 2, 33),
            (1, 4, 4, 8, 1, 1),
        ] {
            let cap = tk + 13;
            let kbuf = randn(&[b, kvh, cap, dh]);
            let vbuf = randn(&[b, kvh, cap, dh]);
            let (k, v) = (
                kbuf.narrow(2, 0, tk).unwrap(),
                vbuf.narrow(2, 0, tk).unwrap(),
            );
            let q = randn(&[b, h, t, dh]);
            // A causal mask over the last t keys, broadcast over prompts and heads.
            let rows: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..tk).map(move |j| {
                        if j + t > tk + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(rows, (1, 1, t, tk), &Device::Cpu).unwrap();
            let got = attend(&q, &k, &v, &mask, 0.125)
                .unwrap()
                .expect("qualifies");
            let want = reference(&q, &k, &v, &mask, 0.125);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "{b} {h} {kvh} {dh} {t} {tk}: {diff}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        let (q, k) = (randn(&[1, 4, 5, 8]), randn(&[1, 2, 9, 8]));
        let mask = Tensor::zeros((1, 1, 5, 9), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            attend(&q, &k, &k, &mask, 1.0).unwrap().is_none(),
            "5 query rows"
        );
        let k_t = randn(&[1, 2, 8, 9]).transpose(2, 3).unwrap();
        let q1 = randn(&[1, 4, 1, 8]);
        let mask1 = Tensor::zeros((1, 1, 1, 9), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            attend(&q1, &k_t, &k_t, &mask1, 1.0).unwrap().is_none(),
            "rows not contiguous"
        );
    }
}
