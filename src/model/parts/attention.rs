//! Multi-head attention with grouped KV heads: q/k/v projections (fused ones are split at
//! load, so every family exposes `hook_q/k/v` per head), optional per-head q/k norms, RoPE,
//! the attention kernel, and the output projection.
//!
//! The kernel is the only thing that differs between a batched forward (dense scores over the
//! batch's own positions, plus a KV cache during generation) and packed continuations of one
//! cached sequence (ablation variants, see [`super::packed`]).

use candle_core::{Device, Tensor};

use super::packed::{self, Segment};
use super::rope::rope_to_heads;
use super::{Linear, Norm};
use crate::error::Result;
use crate::hooks::{HookContext, HookKind, HookPoint};
use crate::kernels::{composed, decode_attention, dense_attention, fused};

/// The attention of one block.
#[derive(Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// RMSNorm over each head's query / key (Gemma 3, Qwen 3), before RoPE.
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
}

/// Keys and values of one layer, `[batch, kv_head, pos, d_head]`, held in buffers with room
/// for more positions: a generation step writes its rows in place. (Appending by concatenation
/// copied the whole cache at every step: 10 % of a 768-token SmolLM2 generation.)
#[derive(Default)]
pub struct LayerKv {
    /// `[batch, kv_head, capacity, d_head]` each.
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerKv {
    /// The cached keys and values: views of the buffers' first positions.
    pub fn get(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some((k, v)) = &self.buffers else {
            return Ok(None);
        };
        Ok(Some((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?)))
    }

    /// Append `k` and `v` `[batch, kv_head, t, d_head]`; returns every cached key and value.
    /// The first call allocates exactly its rows (a cache filled once, as for patching, holds
    /// no spare room); later ones double the capacity when it runs out.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let need = self.len + k.dim(2)?;
        let (bk, bv) = match self.buffers.take() {
            Some((bk, bv)) if bk.dim(2)? >= need => (bk, bv),
            old => {
                let room = match &old {
                    Some((bk, _)) => need.max(2 * bk.dim(2)?),
                    None => need,
                };
                let kept = self.len;
                let grow = |old: Option<Tensor>, like: &Tensor| -> Result<Tensor> {
                    let (b, h, _, d) = like.dims4()?;
                    let buffer = Tensor::zeros((b, h, room, d), like.dtype(), like.device())?;
                    if let Some(old) = old.filter(|_| kept > 0) {
                        buffer.slice_set(&old.narrow(2, 0, kept)?.contiguous()?, 2, 0)?;
                    }
                    Ok(buffer)
                };
                let (old_k, old_v) = old.unzip();
                (grow(old_k, k)?, grow(old_v, v)?)
            }
        };
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        let views = (bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?);
        self.buffers = Some((bk, bv));
        Ok(views)
    }
}

/// What the queries attend to besides the rows of this call.
pub enum Keys<'a> {
    /// Dense attention over the batch's positions after those in `cache` (which this call
    /// extends); `mask` is additive, broadcastable to `[batch, head, q, k]`.
    Dense {
        mask: &'a Tensor,
        cache: Option<&'a mut LayerKv>,
    },
    /// Packed segments (batch of one) continuing a shared prefix: the prefix's keys and values
    /// are `prefix`, or, when `None`, the first segment's own rows.
    Packed {
        segments: &'a [Segment],
        prefix: Option<&'a (Tensor, Tensor)>,
        window: Option<usize>,
    },
}

/// The geometry and tables of one layer's attention in one forward.
pub struct AttendWith<'a> {
    pub layer: usize,
    /// cos / sin `[pos, rotary_dim]` of the rows of this call (`None`: no RoPE).
    pub rope: Option<&'a (Tensor, Tensor)>,
    pub scale: f64,
    pub keys: Keys<'a>,
    /// Compute the output at these positions of each prompt only (keys and values still come
    /// from every position).
    pub queries: Option<&'a [Vec<usize>]>,
}

impl Attention {
    /// Bytes of its tensors.
    /// Its projections, q, k, v, o.
    pub fn linears(&self) -> [&Linear; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    pub fn nbytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o]
            .iter()
            .map(|l| l.nbytes())
            .sum::<usize>()
            + [&self.q_norm, &self.k_norm]
                .iter()
                .map(|n| n.as_ref().map_or(0, Norm::nbytes))
                .sum::<usize>()
    }

    /// `x [batch, pos, d_model]` -> `[batch, n, d_model]` (`n` = pos, or the queries kept).
    pub fn forward(&self, x: &Tensor, ctx: &mut HookContext, a: AttendWith) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, dh) = (self.n_heads, self.n_kv_heads, self.d_head);
        let hp = |kind| HookPoint::block(a.layer, kind);
        let q = self.q.forward(x)?.reshape((b, t, h, dh))?;
        let k = self.k.forward(x)?.reshape((b, t, kvh, dh))?;
        let v = self.v.forward(x)?.reshape((b, t, kvh, dh))?;
        let q = ctx.visit(hp(HookKind::AttnQ), q)?;
        let k = ctx.visit(hp(HookKind::AttnK), k)?;
        let v = ctx.visit(hp(HookKind::AttnV), v)?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        // Without RoPE, a KV cache, a query selection or a pattern hook, short sequences
        // attend in one pass from the projections' layout (no head transposes, no scores).
        if let Keys::Dense { mask, cache: None } = &a.keys {
            if a.rope.is_none() && a.queries.is_none() && !ctx.wants(hp(HookKind::AttnPattern)) {
                if let Some(z) = dense_attention::attend(&q, &k, &v, mask, a.scale)? {
                    let z = ctx.visit(hp(HookKind::AttnZ), z.reshape((b, t, h, dh))?)?;
                    return self.o.forward(&z.reshape((b, t, h * dh))?);
                }
            }
        }
        let (q, k) = match a.rope {
            Some((cos, sin)) => (rope_to_heads(&q, cos, sin)?, rope_to_heads(&k, cos, sin)?),
            None => (heads_first(&q)?, heads_first(&k)?),
        };
        let v = heads_first(&v)?;
        let z = match a.keys {
            Keys::Dense { mask, cache } => {
                let cached = cache.is_some();
                let (k, v) = match cache {
                    Some(slot) => slot.append(&k, &v)?,
                    None => (k, v),
                };
                // A generation step: its few query rows read the cache in place.
                let unhooked = a.queries.is_none() && !ctx.wants(hp(HookKind::AttnPattern));
                if cached && unhooked {
                    if let Some(z) = decode_attention::attend(&q, &k, &v, mask, a.scale)? {
                        let z = ctx.visit(hp(HookKind::AttnZ), z.reshape((b, t, h, dh))?)?;
                        return self.o.forward(&z.reshape((b, t, h * dh))?);
                    }
                }
                let (q, mask) = match a.queries {
                    Some(sel) => (pick_positions(&q, 2, sel)?, pick_mask_rows(mask, sel)?),
                    None => (q, mask.clone()),
                };
                attend(a.layer, &q, &k, &v, &mask, a.scale, ctx)?
            }
            Keys::Packed {
                segments,
                prefix,
                window,
            } => {
                let z = packed::attend(&q, &k, &v, segments, prefix, a.scale, window)?;
                match a.queries {
                    Some(sel) => pick_positions(&z, 1, sel)?,
                    None => z,
                }
            }
        };
        let n = z.dim(1)?;
        let z = ctx.visit(hp(HookKind::AttnZ), z.reshape((b, n, h, dh))?)?;
        self.o.forward(&z.reshape((b, n, h * dh))?)
    }
}

/// `[batch, pos, head, d]` -> `[batch, head, pos, d]`, contiguous.
fn heads_first(x: &Tensor) -> Result<Tensor> {
    Ok(x.transpose(1, 2)?.contiguous()?)
}

/// Scaled dot-product attention with grouped KV heads and the pattern hook.
///
/// `q [batch, head, t, d_head]`, `k` and `v` `[batch, kv_head, t_k, d_head]`, `mask`
/// broadcastable to `[batch, head, t, t_k]`. Returns `z [batch, t, head * d_head]`.
pub fn attend(
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    ctx: &mut HookContext,
) -> Result<Tensor> {
    let (b, h, t, dh) = q.dims4()?;
    let kvh = k.dim(1)?;
    let tk = k.dim(2)?;
    let group = h / kvh;
    // Grouped-query attention without copying K/V: fold each KV head's query heads into
    // the row axis, so one batched matmul serves the whole group.
    let q = q.reshape((b, kvh, group * t, dh))?;
    let scores = q.matmul(&k.t()?)?.reshape((b, h, t, tk))?;
    let pattern = match fused::masked_softmax(&scores, scale, mask)? {
        Some(p) => p,
        None => composed::softmax_last(&(scores * scale)?.broadcast_add(mask)?)?,
    };
    let pattern = ctx.visit(HookPoint::block(layer, HookKind::AttnPattern), pattern)?;
    Ok(pattern
        .reshape((b, kvh, group * t, tk))?
        .matmul(v)?
        .reshape((b, h, t, dh))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, h * dh))?)
}

/// Additive causal mask `[t, offset + t]`; with a `window`, a query also ignores keys
/// `window` or more positions behind it (sliding-window attention).
pub fn causal_mask(t: usize, offset: usize, window: Option<usize>) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let q = offset + i;
            (0..total).map(move |j| {
                if j <= q && window.is_none_or(|w| q - j < w) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), &Device::Cpu)?)
}

/// Additive padding mask `[batch, 1, 1, t]` for bidirectional attention over right-padded
/// rows: keys at or after a row's length get `-inf`.
pub fn padding_mask(lengths: &[usize], t: usize) -> Result<Tensor> {
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(
        mask,
        (lengths.len(), 1, 1, t),
        &Device::Cpu,
    )?)
}

/// `x [batch, ..., pos, ...]` at positions `sel[b]` of each prompt (`pos_axis` is the
/// position axis): the same shape with `pos` replaced by the number of positions selected.
pub fn pick_positions(x: &Tensor, pos_axis: usize, sel: &[Vec<usize>]) -> Result<Tensor> {
    let dims = x.dims();
    let (b, t) = (dims[0], dims[pos_axis]);
    let pre: usize = dims[1..pos_axis].iter().product();
    let post: usize = dims[pos_axis + 1..].iter().product();
    let n = sel.first().map_or(0, Vec::len);
    let idx: Vec<u32> = sel
        .iter()
        .enumerate()
        .flat_map(|(bi, ps)| {
            (0..pre).flat_map(move |p| ps.iter().map(move |&pos| ((bi * pre + p) * t + pos) as u32))
        })
        .collect();
    let idx = Tensor::from_vec(idx, b * pre * n, &Device::Cpu)?;
    let mut shape = dims.to_vec();
    shape[pos_axis] = n;
    Ok(x.reshape((b * pre * t, post))?
        .index_select(&idx, 0)?
        .reshape(shape)?)
}

/// Rows of a mask at each prompt's selected query positions: a mask `[q_pos, k_pos]` shared by
/// the batch gives `[batch, 1, n, k_pos]`; a per-prompt key mask `[batch, 1, 1, k_pos]` is the
/// same for every query and is returned as is.
fn pick_mask_rows(mask: &Tensor, sel: &[Vec<usize>]) -> Result<Tensor> {
    if mask.rank() == 4 {
        return Ok(mask.clone());
    }
    let tk = mask.dim(1)?;
    let n = sel.first().map_or(0, Vec::len);
    let idx: Vec<u32> = sel.iter().flatten().map(|&p| p as u32).collect();
    let idx = Tensor::from_vec(idx, sel.len() * n, &Device::Cpu)?;
    Ok(mask.index_select(&idx, 0)?.reshape((sel.len(), 1, n, tk))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_hides_old_keys() {
        let m = causal_mask(4, 0, Some(2))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let visible: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|v| v.is_finite()).collect())
            .collect();
        assert_eq!(visible[0], [true, false, false, false]);
        assert_eq!(visible[3], [false, false, true, true]);
        let full = causal_mask(4, 0, None).unwrap().to_vec2::<f32>().unwrap();
        assert!(full[3].iter().all(|v| v.is_finite()));
    }

    #[test]
    fn padding_mask_hides_padding_keys() {
        let m = padding_mask(&[2, 3], 3).unwrap().flatten_all().unwrap();
        let v = m.to_vec1::<f32>().unwrap();
        assert!(v[0].is_finite() && v[1].is_finite() && v[2].is_infinite());
        assert!(v[3..].iter().all(|x| x.is_finite()));
    }
}
