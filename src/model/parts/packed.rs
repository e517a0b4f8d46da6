//! The attention kernel of packed continuations: many short sequences that each continue the
//! first `prefix` positions of one shared sequence (e.g. ablated variants of one prompt, which
//! agree with it up to the ablated token), run as a single batch-of-one matrix of rows.
//!
//! A right-padded batch would pad every variant to the longest suffix in it and repeat the
//! prefix's keys per variant; packed, the linear layers see exactly the rows that must be
//! recomputed, and attention reads the shared prefix's keys and values in place. The shared
//! prefix is either cached by an earlier run of the sequence, or the first segment itself: a
//! segment that starts at position 0 computes, layer by layer, exactly the keys and values the
//! others continue, so one packed run can hold the clean sequence and all its variants.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{MsError, Result};
use crate::kernels::fused::{softmax_row, with_f32};
use crate::model::KvCache;

/// One packed sequence: `rows` new positions continuing the shared sequence's first `prefix`
/// positions (so its rows sit at positions `prefix..prefix + rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub prefix: usize,
    pub rows: usize,
}

/// Where the segments' shared prefix keys and values come from.
#[derive(Clone, Copy)]
pub enum Prefix<'a> {
    /// Positions cached by an earlier run of the shared sequence (batch of one).
    Cache(&'a KvCache),
    /// The first segment's own rows (it must start at position 0 and be the longest prefix).
    FirstSegment,
}

impl Prefix<'_> {
    /// Positions of the shared sequence available to the segments.
    pub fn available(&self, segments: &[Segment]) -> usize {
        match self {
            Prefix::Cache(cache) => cache.len(),
            Prefix::FirstSegment => segments
                .first()
                .filter(|s| s.prefix == 0)
                .map_or(0, |s| s.rows),
        }
    }
}

/// Positions of every packed row, segment after segment.
/// Split items (in `order`) into consecutive packs of at most `max_members` items and about
/// `max_rows` rows (`rows_of(item)`); a pack always takes at least one item. This bounds the
/// memory of one packed run (ablation variants, activation patches).
pub fn greedy_packs(
    order: impl IntoIterator<Item = usize>,
    rows_of: impl Fn(usize) -> usize,
    max_members: usize,
    max_rows: usize,
) -> Vec<Vec<usize>> {
    let mut packs: Vec<Vec<usize>> = Vec::new();
    let (mut current, mut rows) = (Vec::new(), 0);
    for i in order {
        let r = rows_of(i);
        if !current.is_empty() && (current.len() >= max_members.max(1) || rows + r > max_rows) {
            packs.push(std::mem::take(&mut current));
            rows = 0;
        }
        current.push(i);
        rows += r;
    }
    if !current.is_empty() {
        packs.push(current);
    }
    packs
}

pub fn row_positions(segments: &[Segment]) -> Vec<usize> {
    segments
        .iter()
        .flat_map(|s| s.prefix..s.prefix + s.rows)
        .collect()
}

/// Attention geometry shared by every (segment, head) task.
struct Geometry {
    heads: usize,
    kv_heads: usize,
    d_head: usize,
    /// Rows of all segments together.
    total: usize,
    /// Positions in the prefix tensors.
    cached: usize,
    scale: f32,
    window: Option<usize>,
}

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    with_f32(&t, |s| s.to_vec())
        .ok_or_else(|| MsError::Compute("packed attention needs f32 CPU tensors".into()))
}

/// Causal attention of every segment over its prefix and its own rows.
///
/// `q [1, heads, total, d_head]`, `k`, `v [1, kv_heads, total, d_head]` (after RoPE);
/// `prefix`: keys and values `[1, kv_heads, cached, d_head]`, or `None` when the first
/// segment's own rows are the prefix. Returns `z [1, total, heads * d_head]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[Segment],
    prefix: Option<&(Tensor, Tensor)>,
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor> {
    let (_, h, total, dh) = q.dims4()?;
    let kvh = k.dim(1)?;
    let (k, v) = (f32_data(k)?, f32_data(v)?);
    let cached = match prefix {
        Some((pk, pv)) => {
            if pk.dim(0)? != 1 {
                return Err(MsError::invalid(
                    "packed segments continue a cache of one sequence, not a batch",
                ));
            }
            Some((f32_data(pk)?, f32_data(pv)?, pk.dim(2)?))
        }
        None => None,
    };
    let (pk, pv, n_shared) = match &cached {
        Some((pk, pv, n)) => (pk.as_slice(), pv.as_slice(), *n),
        None => (k.as_slice(), v.as_slice(), total),
    };
    let g = Geometry {
        heads: h,
        kv_heads: kvh,
        d_head: dh,
        total,
        cached: n_shared,
        scale: scale as f32,
        window,
    };
    let z = packed_attention(&f32_data(q)?, &k, &v, pk, pv, segments, &g);
    Ok(Tensor::from_vec(z, (1, total, h * dh), &Device::Cpu)?)
}

/// The kernel on flat slices (layouts as in [`attend`]); `z [total, heads * d_head]`.
fn packed_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pk: &[f32],
    pv: &[f32],
    segments: &[Segment],
    g: &Geometry,
) -> Vec<f32> {
    let (h, dh) = (g.heads, g.d_head);
    let group = h / g.kv_heads;
    let mut out = vec![0f32; g.total * h * dh];
    // Split the output into each segment's rows, then work on the segments in parallel.
    let mut parts: Vec<(usize, Segment, &mut [f32])> = Vec::with_capacity(segments.len());
    let mut rest = out.as_mut_slice();
    let mut row0 = 0;
    for &seg in segments {
        let (mine, tail) = rest.split_at_mut(seg.rows * h * dh);
        parts.push((row0, seg, mine));
        rest = tail;
        row0 += seg.rows;
    }
    parts.into_par_iter().for_each(|(row0, seg, out)| {
        let mut scores = Vec::with_capacity(seg.prefix + seg.rows);
        let mut keys: Vec<(bool, usize)> = Vec::with_capacity(seg.prefix + seg.rows);
        for head in 0..h {
            let kvh = head / group;
            let key_row = |cached: bool, i: usize| -> (&[f32], &[f32]) {
                let (kk, vv, n) = if cached {
                    (pk, pv, g.cached)
                } else {
                    (k, v, g.total)
                };
                let at = (kvh * n + i) * dh;
                (&kk[at..at + dh], &vv[at..at + dh])
            };
            for j in 0..seg.rows {
                let pos = seg.prefix + j;
                let visible = |p: usize| g.window.is_none_or(|w| pos - p < w);
                keys.clear();
                keys.extend((0..seg.prefix).filter(|&p| visible(p)).map(|p| (true, p)));
                keys.extend(
                    (0..=j)
                        .filter(|&i| visible(seg.prefix + i))
                        .map(|i| (false, row0 + i)),
                );
                let qa = (head * g.total + row0 + j) * dh;
                let qrow = &q[qa..qa + dh];
                scores.clear();
                scores.extend(
                    keys.iter()
                        .map(|&(c, i)| dot(qrow, key_row(c, i).0) * g.scale),
                );
                softmax_row(&mut scores);
                let z = &mut out[(j * h + head) * dh..(j * h + head + 1) * dh];
                for (&(c, i), &p) in keys.iter().zip(&scores) {
                    for (o, &x) in z.iter_mut().zip(key_row(c, i).1) {
                        *o += p * x;
                    }
                }
            }
        }
    });
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookContext, HookKind, HookRegistry};
    use crate::model::parts::attention::{attend as dense, causal_mask};

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        // A small deterministic generator is enough for test data.
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Two segments continuing a 6-position sequence after 2 and 5 positions must get the
    /// rows that dense causal attention over each full sequence gives (with and without a
    /// sliding window).
    #[test]
    fn packed_attention_equals_dense_attention_per_sequence() {
        let (h, kvh, dh, cached) = (4, 2, 8, 6);
        let pk = random((1, kvh, cached, dh), 1);
        let pv = random((1, kvh, cached, dh), 2);
        let segments = [
            Segment { prefix: 2, rows: 3 },
            Segment { prefix: 5, rows: 2 },
        ];
        let total = 5;
        let (q, k, v) = (
            random((1, h, total, dh), 3),
            random((1, kvh, total, dh), 4),
            random((1, kvh, total, dh), 5),
        );
        let registry = HookRegistry::new(1, &HookKind::PER_BLOCK, false, true);
        for window in [None, Some(3)] {
            let prefix = (pk.clone(), pv.clone());
            let z = attend(&q, &k, &v, &segments, Some(&prefix), 0.3, window)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut row0 = 0;
            for seg in segments {
                let rows = |t: &Tensor| t.narrow(2, row0, seg.rows).unwrap();
                let prefix = |t: &Tensor| t.narrow(2, 0, seg.prefix).unwrap();
                let full_k = Tensor::cat(&[&prefix(&pk), &rows(&k)], 2).unwrap();
                let full_v = Tensor::cat(&[&prefix(&pv), &rows(&v)], 2).unwrap();
                let mask = causal_mask(seg.rows, seg.prefix, window).unwrap();
                let mut ctx = HookContext::inactive(&registry, &[seg.rows]);
                let want = dense(
                    0,
                    &rows(&q).contiguous().unwrap(),
                    &full_k,
                    &full_v,
                    &mask,
                    0.3,
                    &mut ctx,
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
                let got = &z[row0 * h * dh..(row0 + seg.rows) * h * dh];
                for (a, b) in want.iter().zip(got) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b} (window {window:?})");
                }
                row0 += seg.rows;
            }
        }
    }
}
