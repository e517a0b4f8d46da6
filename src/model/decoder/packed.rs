//! Packed continuations of one cached sequence: many short sequences that each continue the
//! first `prefix` positions of a sequence already in a [`KvCache`] (e.g. ablated variants of
//! one prompt, which agree with it up to the ablated token) run as a single matrix of rows.
//!
//! The shared prefix comes either from a [`KvCache`] filled by an earlier run, or from the
//! first packed segment itself (`Prefix::FirstSegment`): a segment that starts at position 0
//! computes, layer by layer, exactly the keys and values the others continue, so one packed
//! run can hold the clean sequence and all its variants.
//!
//! A right-padded batch would pad every variant to the longest suffix in it and repeat the
//! prefix's keys per variant; packed, the linear layers see exactly the rows that must be
//! recomputed, and attention reads the shared prefix's keys and values in place. No hooks
//! run here: this path serves scores, not captures.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{Decoder, KvCache};
use crate::error::{MsError, Result};
use crate::model::fused::{softmax_row, with_f32};
use crate::model::layers::{linear, residual_add, rope_tables, rope_to_heads};

/// One packed sequence: `rows` new positions continuing the cached sequence's first `prefix`
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

/// Attention geometry shared by every (segment, head) task.
struct Geometry {
    heads: usize,
    kv_heads: usize,
    d_head: usize,
    /// Rows of all segments together.
    total: usize,
    /// Positions in the cached prefix tensors.
    cached: usize,
    scale: f32,
    window: Option<usize>,
}

/// Causal attention of every segment over its cached prefix and its own rows.
///
/// `q [heads, total, d_head]`, `k`, `v [kv_heads, total, d_head]` (after RoPE), `pk`, `pv
/// [kv_heads, cached, d_head]` (may be empty when every prefix is 0). Returns
/// `z [total, heads * d_head]`.
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

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    with_f32(&t, |s| s.to_vec())
        .ok_or_else(|| MsError::Compute("packed attention needs f32 CPU tensors".into()))
}

impl Decoder {
    /// Run all blocks on packed input embeddings `x [total, d_model]` (segment after
    /// segment), each segment continuing the first `prefix` positions of the shared sequence
    /// held by `source`.
    /// Returns the final residual stream at `keep` (row indices into `x`): `[keep, d_model]`.
    /// The last block computes its attention output and MLP only for those rows.
    pub fn run_packed(
        &self,
        x: Tensor,
        segments: &[Segment],
        source: Prefix,
        keep: &[usize],
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (total, _) = x.dims2()?;
        if segments.iter().map(|s| s.rows).sum::<usize>() != total {
            return Err(MsError::shape(format!(
                "packed segments cover {} rows, the input has {total}",
                segments.iter().map(|s| s.rows).sum::<usize>()
            )));
        }
        let available = match source {
            Prefix::Cache(cache) => cache.len(),
            Prefix::FirstSegment if segments.first().is_some_and(|s| s.prefix == 0) => {
                segments[0].rows
            }
            Prefix::FirstSegment => 0,
        };
        if let Some(s) = segments.iter().find(|s| s.prefix > available) {
            return Err(MsError::invalid(format!(
                "a segment continues {} shared positions, only {available} are available",
                s.prefix
            )));
        }
        let end = segments
            .iter()
            .map(|s| s.prefix + s.rows)
            .max()
            .unwrap_or(0);
        if end > cfg.context_length {
            return Err(MsError::invalid(format!(
                "{end} tokens do not fit the model's context length of {}",
                cfg.context_length
            )));
        }
        let positions: Vec<u32> = segments
            .iter()
            .flat_map(|s| (s.prefix..s.prefix + s.rows).map(|p| p as u32))
            .collect();
        let positions = Tensor::from_vec(positions, total, &Device::Cpu)?;
        let keep = Tensor::from_vec(
            keep.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            keep.len(),
            &Device::Cpu,
        )?;
        let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let mut tables: Vec<((u64, Option<usize>), Tensor, Tensor)> = Vec::new();
        let mut x = x;
        for layer in 0..cfg.n_layers {
            let blk = &self.blocks[layer];
            let (theta, window) = cfg.layer_attention(layer);
            let key = (theta.to_bits(), window);
            if !tables.iter().any(|t| t.0 == key) {
                let (cos, sin) = rope_tables(theta, dh, 0, end)?;
                tables.push((
                    key,
                    cos.index_select(&positions, 0)?,
                    sin.index_select(&positions, 0)?,
                ));
            }
            let (_, cos, sin) = tables.iter().find(|t| t.0 == key).expect("just added");
            let normed = self.norm(&x, &blk.attn_norm)?;
            let q = linear(&normed, &blk.wq, blk.bq.as_ref())?.reshape((1, total, h, dh))?;
            let k = linear(&normed, &blk.wk, blk.bk.as_ref())?.reshape((1, total, kvh, dh))?;
            let v = linear(&normed, &blk.wv, blk.bv.as_ref())?.reshape((1, total, kvh, dh))?;
            let (q, k) = match (&blk.q_norm, &blk.k_norm) {
                (Some(qn), Some(kn)) => (self.norm(&q, qn)?, self.norm(&k, kn)?),
                _ => (q, k),
            };
            let q = rope_to_heads(&q, cos, sin)?;
            let k = rope_to_heads(&k, cos, sin)?;
            let v = v.transpose(1, 2)?;
            let (k, v) = (f32_data(&k)?, f32_data(&v)?);
            let cached = match source {
                Prefix::Cache(cache) => match cache.layers.get(layer).and_then(|s| s.as_ref()) {
                    Some((pk, pv)) if pk.dim(0)? == 1 => Some((f32_data(pk)?, f32_data(pv)?)),
                    Some(_) => {
                        return Err(MsError::invalid(
                            "packed segments continue a cache of one sequence, not a batch",
                        ))
                    }
                    None => Some((Vec::new(), Vec::new())),
                },
                Prefix::FirstSegment => None,
            };
            let (pk, pv, n_shared) = match &cached {
                Some((pk, pv)) => (pk.as_slice(), pv.as_slice(), available),
                None => (k.as_slice(), v.as_slice(), total),
            };
            let geometry = Geometry {
                heads: h,
                kv_heads: kvh,
                d_head: dh,
                total,
                cached: n_shared,
                scale: cfg.attn_scale as f32,
                window,
            };
            let z = packed_attention(&f32_data(&q)?, &k, &v, pk, pv, segments, &geometry);
            let mut z = Tensor::from_vec(z, (total, h * dh), &Device::Cpu)?;
            if layer + 1 == cfg.n_layers {
                // Only the kept rows are read after the last block.
                z = z.index_select(&keep, 0)?;
                x = x.index_select(&keep, 0)?;
            }
            let mut attn = linear(&z, &blk.wo, None)?;
            if let Some(w) = &blk.post_attn_norm {
                attn = self.norm(&attn, w)?;
            }
            let mid = residual_add(&x, &attn)?;
            let normed = self.norm(&mid, &blk.mlp_norm)?;
            let gate = linear(&normed, &blk.w_gate, None)?;
            let up = linear(&normed, &blk.w_up, None)?;
            let post = cfg.family.activation().glu(&gate, &up)?;
            let mut mlp = linear(&post, &blk.w_down, None)?;
            if let Some(w) = &blk.post_mlp_norm {
                mlp = self.norm(&mlp, w)?;
            }
            x = residual_add(&mid, &mlp)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookContext, HookKind, HookRegistry};
    use crate::model::layers::{attend, causal_mask};

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
        let registry = HookRegistry::new(1, &HookKind::PER_BLOCK, true);
        for window in [None, Some(3)] {
            let g = Geometry {
                heads: h,
                kv_heads: kvh,
                d_head: dh,
                total,
                cached,
                scale: 0.3,
                window,
            };
            let data = |t: &Tensor| f32_data(t).unwrap();
            let z = packed_attention(
                &data(&q),
                &data(&k),
                &data(&v),
                &data(&pk),
                &data(&pv),
                &segments,
                &g,
            );
            let mut row0 = 0;
            for seg in segments {
                let rows = |t: &Tensor| t.narrow(2, row0, seg.rows).unwrap();
                let prefix = |t: &Tensor| t.narrow(2, 0, seg.prefix).unwrap();
                let full_k = Tensor::cat(&[&prefix(&pk), &rows(&k)], 2).unwrap();
                let full_v = Tensor::cat(&[&prefix(&pv), &rows(&v)], 2).unwrap();
                let mask = causal_mask(seg.rows, seg.prefix, window).unwrap();
                let mut ctx = HookContext::inactive(&registry, &[seg.rows]);
                let dense = attend(
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
                let packed = &z[row0 * h * dh..(row0 + seg.rows) * h * dh];
                for (a, b) in dense.iter().zip(packed) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b} (window {window:?})");
                }
                row0 += seg.rows;
            }
        }
    }
}
