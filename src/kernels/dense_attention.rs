//! Attention of short sequences in one pass per query row, straight from the projections'
//! layout: `q [b, t, head, d_head]`, `k` and `v` `[b, t_k, kv_head, d_head]` (the `[b, t,
//! d_model]` outputs of the q/k/v linears, reshaped) to `z [b, t, head * d_head]` (the output
//! projection's input).
//!
//! The general path ([`crate::model::parts::attention::attend`]) copies q, k and v into
//! `[b, head, t, d_head]`, multiplies every (prompt, head) pair as its own small matrix
//! product (twice), materializes the scores and the pattern, and transposes `z` back: for
//! all-MiniLM-L6-v2 (32 tokens, 12 heads of 32) that was 10 % of a forward, for 1.4 % of its
//! arithmetic. Here each query row's scores are computed, masked, softmaxed (the same
//! [`softmax_row`] as the general path) and multiplied into `z` while they sit in L1.
//! Nothing is materialized, so the forward uses this path only when no hook reads the
//! pattern.

use std::mem::MaybeUninit;

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use super::fused::{softmax_row, with_f32, written_by};
use crate::error::Result;

/// Longest key axis this kernel takes: its dot products stream the keys once per query row,
/// which beats the general path's matrix products on short sequences (BERT's 512 at most)
/// but not on long ones.
pub const MAX_KEYS: usize = 512;

/// Query rows per parallel task.
const TASK_ROWS: usize = 64;

/// `z = softmax(q k^T * scale + mask) v` per head (query head `i` reads KV head
/// `i / (head / kv_head)`), for contiguous f32 `q [b, t, head, d]`, `k`, `v`
/// `[b, t_k, kv_head, d]` and a `mask` broadcastable to `[b, head, t, t_k]` (additive:
/// `-inf` hides a key). Returns `z [b, t, head * d]`, or `None` when the tensors do not
/// qualify (not contiguous f32, `t_k` above [`MAX_KEYS`], heads that do not group).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (b, t, h, dh) = q.dims4()?;
    let (bk, tk, kvh, dk) = k.dims4()?;
    if bk != b
        || dk != dh
        || v.dims() != k.dims()
        || kvh == 0
        || h % kvh != 0
        || tk == 0
        || tk > MAX_KEYS
        || dh == 0
    {
        return Ok(None);
    }
    let group = h / kvh;
    let Ok(mask) = mask.broadcast_as((b, h, t, tk)) else {
        return Ok(None);
    };
    let ms = mask.stride().to_vec();
    let mask_offset = mask.layout().start_offset();
    let (mask_storage, _) = mask.storage_and_layout();
    let Storage::Cpu(mask_cpu) = &*mask_storage else {
        return Ok(None);
    };
    let Ok(mask_data) = mask_cpu.as_slice::<f32>() else {
        return Ok(None);
    };
    let geometry = Geometry {
        h,
        dh,
        tk,
        kvh,
        group,
        scale: scale as f32,
    };
    let width = h * dh;
    let out = with_f32(q, |qs| {
        with_f32(k, |ks| {
            with_f32(v, |vs| {
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    // Tasks: (prompt, block of query rows), each writing its rows of z.
                    out.par_chunks_mut(t * width)
                        .enumerate()
                        .for_each(|(bi, out_b)| {
                            out_b
                                .par_chunks_mut(TASK_ROWS * width)
                                .enumerate()
                                .for_each(|(block, out_rows)| {
                                    let mask_at = |hi: usize, qi: usize| {
                                        mask_offset + bi * ms[0] + hi * ms[1] + qi * ms[2]
                                    };
                                    let task = Task {
                                        g: &geometry,
                                        q: &qs[bi * t * width..][..t * width],
                                        k: &ks[bi * tk * kvh * dh..][..tk * kvh * dh],
                                        v: &vs[bi * tk * kvh * dh..][..tk * kvh * dh],
                                        mask: mask_data,
                                        mask_at: &mask_at,
                                        mask_key_stride: ms[3],
                                        first_row: block * TASK_ROWS,
                                    };
                                    task.run(out_rows);
                                })
                        })
                };
                // SAFETY: every task writes all of its rows (every head of every row).
                unsafe { written_by(b * t * width, fill) }
            })
        })
    })
    .flatten()
    .flatten();
    out.map(|o| Ok(Tensor::from_vec(o, (b, t, width), &Device::Cpu)?))
        .transpose()
}

/// The sizes of one call.
struct Geometry {
    h: usize,
    dh: usize,
    tk: usize,
    kvh: usize,
    group: usize,
    scale: f32,
}

/// One prompt's query rows `first_row..` (as many as `out` holds).
struct Task<'a> {
    g: &'a Geometry,
    /// The prompt's `[t, head, d]`, `[t_k, kv_head, d]`, `[t_k, kv_head, d]`.
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    /// Offset of the mask row of (head, query row).
    mask_at: &'a dyn Fn(usize, usize) -> usize,
    mask_key_stride: usize,
    first_row: usize,
}

impl Task<'_> {
    fn run(&self, out: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { self.run_avx2(out) };
        }
        self.run_body(out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, out: &mut [MaybeUninit<f32>]) {
        self.run_body(out)
    }

    #[inline(always)]
    fn run_body(&self, out: &mut [MaybeUninit<f32>]) {
        let g = self.g;
        let (dh, tk, width) = (g.dh, g.tk, g.h * g.dh);
        let kv_row = g.kvh * dh;
        let rows = out.len() / width;
        // This KV head's keys transposed, [d, t_k]: a query row's scores are then d
        // multiply-adds of contiguous rows, vectorized along the keys.
        let mut keys_t = vec![0f32; dh * tk];
        let mut scores = vec![0f32; tk];
        let mut z = vec![0f32; dh];
        for hi in 0..g.h {
            let kv = hi / g.group;
            if hi % g.group == 0 {
                for j in 0..tk {
                    let key = &self.k[j * kv_row + kv * dh..][..dh];
                    for (d, &x) in key.iter().enumerate() {
                        keys_t[d * tk + j] = x;
                    }
                }
            }
            for r in 0..rows {
                let qi = self.first_row + r;
                let query = &self.q[qi * width + hi * dh..][..dh];
                for (j0, block) in scores.chunks_mut(LANES).enumerate() {
                    let (j0, n) = (j0 * LANES, block.len());
                    let key_col = |d: usize| &keys_t[d * tk + j0..][..n];
                    dot_block(query, key_col, block);
                }
                let base = (self.mask_at)(hi, qi);
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = *s * g.scale + self.mask[base + j * self.mask_key_stride];
                }
                softmax_row(&mut scores);
                for (d0, block) in z.chunks_mut(LANES).enumerate() {
                    let (d0, n) = (kv * dh + d0 * LANES, block.len());
                    let value = |j: usize| &self.v[j * kv_row + d0..][..n];
                    dot_block(&scores, value, block);
                }
                for (o, &x) in out[r * width + hi * dh..][..dh].iter_mut().zip(&z) {
                    o.write(x);
                }
            }
        }
    }
}

/// Accumulators per block: 32 floats are four AVX2 registers, kept in registers across the
/// reduction (a loop over a slice of runtime length would store and reload them every step).
const LANES: usize = 32;

/// `out[l] = sum_i w[i] * row(i)[l]` for `out` of at most [`LANES`] floats and rows of its
/// length, summed in order of `i` with fused multiply-adds.
#[inline(always)]
fn dot_block<'r>(w: &[f32], row: impl Fn(usize) -> &'r [f32], out: &mut [f32]) {
    if out.len() == LANES {
        let mut acc = [0f32; LANES];
        for (i, &wi) in w.iter().enumerate() {
            let r: &[f32; LANES] = row(i).try_into().expect("a full block");
            for l in 0..LANES {
                acc[l] = wi.mul_add(r[l], acc[l]);
            }
        }
        out.copy_from_slice(&acc);
    } else {
        out.fill(0.0);
        for (i, &wi) in w.iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(row(i)) {
                *o = wi.mul_add(x, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed;
    use crate::kernels::test_support::{max_abs_diff, randn};

    /// softmax(q k^T * scale + mask) v from candle ops, `[b, t, head * d]`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let (b, t, h, dh) = q.dims4().unwrap();
        let kvh = k.dim(2).unwrap();
        let heads = |x: &Tensor, n: usize| {
            // [b, t, n, d] -> [b, h, t, d], repeating each KV head for its group.
            let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let idx: Vec<u32> = (0..h).map(|i| (i / (h / n)) as u32).collect();
            let idx = Tensor::from_vec(idx, h, &Device::Cpu).unwrap();
            x.index_select(&idx, 1).unwrap()
        };
        let (qh, kh, vh) = (heads(q, h), heads(k, kvh), heads(v, kvh));
        let scores = qh.matmul(&kh.t().unwrap()).unwrap();
        let p = composed::softmax_last(&(scores * scale).unwrap().broadcast_add(mask).unwrap())
            .unwrap();
        p.matmul(&vh)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b, t, h * dh))
            .unwrap()
    }

    #[test]
    fn equals_the_composition_with_padding_causal_and_grouped_heads() {
        let inf = f32::NEG_INFINITY;
        // 70 query rows: two row blocks per prompt.
        let (b, t, dh) = (3, 70, 16);
        let lengths = [70usize, 41, 1];
        let padding: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |j| if j < l { 0.0 } else { inf }))
            .collect();
        let padding = Tensor::from_vec(padding, (b, 1, 1, t), &Device::Cpu).unwrap();
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { inf }))
            .collect();
        let causal = Tensor::from_vec(causal, (t, t), &Device::Cpu).unwrap();
        for (h, kvh) in [(4, 4), (6, 2)] {
            let q = randn(&[b, t, h, dh], 2.0);
            let k = randn(&[b, t, kvh, dh], 2.0);
            let v = randn(&[b, t, kvh, dh], 1.0);
            for mask in [&padding, &causal] {
                let got = attend(&q, &k, &v, mask, 0.25).unwrap().unwrap();
                let want = reference(&q, &k, &v, mask, 0.25);
                let diff = max_abs_diff(&got, &want);
                // Unseeded random inputs, outputs up to ~3: sums of 70 terms in another order
                // differ by a few ulp (seen: 2.1e-6).
                assert!(diff < 1e-5, "heads {h}/{kvh}: {diff}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_take() {
        let q = randn(&[1, 4, 2, 8], 1.0);
        let mask = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        // Not contiguous (a transposed view).
        let kt = randn(&[1, 2, 4, 8], 1.0).transpose(1, 2).unwrap();
        assert!(attend(&q, &kt, &kt, &mask, 1.0).unwrap().is_none());
        // Three query heads do not group over two KV heads.
        let q3 = randn(&[1, 4, 3, 8], 1.0);
        let k2 = randn(&[1, 4, 2, 8], 1.0);
        assert!(attend(&q3, &k2, &k2, &mask, 1.0).unwrap().is_none());
        // Longer than MAX_KEYS.
        let n = MAX_KEYS + 1;
        let long = randn(&[1, n, 1, 8], 1.0);
        let big_mask = Tensor::zeros((n, n), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(attend(&long, &long, &long, &big_mask, 1.0)
            .unwrap()
            .is_none());
    }
}
