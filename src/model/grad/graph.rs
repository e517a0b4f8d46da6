//! The forward of the embedding stage, one block and the head written with plain candle ops,
//! which record the graph candle's reverse-mode autograd walks. It computes what the fast
//! forward (`parts/`, fused kernels, BLAS) computes, on the dense path (all positions, no KV
//! cache), and applies the run's interventions through
//! [`HookContext::visit_differentiable`].
//!
//! candle's `backward` keeps the gradients of variables only, so a hook site whose gradient
//! is wanted gets a zero variable added to it ([`Sites`]): the sum has the site's value and
//! the variable receives the site's gradient.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var};

use super::softmax::CausalSoftmax;

use crate::error::Result;
use crate::hooks::{HookContext, HookKind, HookPoint};
use crate::kernels::{composed, matmul};
use crate::model::config::{NormKind, Residual};
use crate::model::parts::mlp::activate;
use crate::model::parts::{Attention, Block, Embedding, Linear, Mlp, Norm, Weight};

/// The hook sites whose gradients one recomputation reads off: each gets a zero variable.
pub struct Sites {
    wanted: Vec<HookPoint>,
    /// The site, its zero variable and its value; empty on a forward without graph.
    pub taps: Vec<(HookPoint, Var, Tensor)>,
    /// Whether to add taps at all (false on the forward pass that only saves block inputs).
    active: bool,
}

impl Sites {
    pub fn new(wanted: Vec<HookPoint>) -> Self {
        Sites {
            wanted,
            taps: Vec::new(),
            active: true,
        }
    }

    /// A recorder that taps nothing.
    pub fn none() -> Self {
        Sites {
            wanted: Vec::new(),
            taps: Vec::new(),
            active: false,
        }
    }
}

/// A hook site: interventions, then a tap when its gradient is wanted.
fn site(ctx: &mut HookContext, sites: &mut Sites, point: HookPoint, t: Tensor) -> Result<Tensor> {
    let t = ctx.visit_differentiable(point, t)?;
    if !sites.active || !sites.wanted.contains(&point) {
        return Ok(t);
    }
    let tap = Var::zeros(t.dims(), t.dtype(), t.device())?;
    let out = (&t + tap.as_tensor())?;
    sites.taps.push((point, tap, t.detach()));
    Ok(out)
}

/// `x [rows, in] -> x @ W^T [rows, out]` as one op whose backward gives the input's gradient
/// only (`dy @ W`): candle's matmul backward would also compute the weight's gradient, a
/// third of the backward's products, which nothing here reads. The forward multiplies
/// through the same path as the fast forward (the loaded BLAS, else candle's).
struct LinearOp {
    weight: Tensor,
}

impl CustomOp1 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-input-grad-only"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = l.shape().dims2()?;
        let data = s.as_slice::<f32>()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("linear: the input is not contiguous");
        };
        let x = Tensor::from_slice(&data[a..b], (rows, k), &Device::Cpu)?;
        let y = matmul::linear_dense(&x, &self.weight, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let n = self.weight.dim(0)?;
        Ok((
            CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            Shape::from((rows, n)),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.matmul(&self.weight)?))
    }
}

/// `x [..., in] @ W^T` for a weight `[out, in]` (gradient for `x` only).
pub fn matmul_wt(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let y = x.reshape((rows, k))?.contiguous()?.apply_op1(LinearOp {
        weight: weight.clone(),
    })?;
    let mut shape = dims[..dims.len() - 1].to_vec();
    shape.push(weight.dim(0)?);
    Ok(y.reshape(shape)?)
}

/// `x [..., in] @ W^T (+ b)`.
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    // A quantized weight is multiplied dequantized: the gradient is that of the model with
    // the stored (rounded) weights, exactly.
    let y = matmul_wt(x, l.weight.dense()?.as_ref())?;
    Ok(match &l.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

pub fn norm(x: &Tensor, n: &Norm) -> Result<Tensor> {
    match n.kind {
        NormKind::Rms => composed::rms_norm(x, &n.weight, n.eps),
        NormKind::Layer => composed::layer_norm(x, &n.weight, n.bias.as_ref(), n.eps),
    }
}

fn maybe_norm(x: Tensor, n: &Option<Norm>) -> Result<Tensor> {
    match n {
        Some(n) => norm(&x, n),
        None => Ok(x),
    }
}

/// What one block's attention needs besides its input.
pub struct AttendTables<'a> {
    pub layer: usize,
    /// cos / sin `[pos, rotary_dim]` (`None`: no RoPE).
    pub rope: Option<&'a (Tensor, Tensor)>,
    pub scale: f64,
    /// The causal attention's sliding window, if any.
    pub window: Option<usize>,
}

fn heads_first(x: &Tensor, rope: Option<&(Tensor, Tensor)>) -> Result<Tensor> {
    let x = x.transpose(1, 2)?.contiguous()?;
    match rope {
        Some((cos, sin)) => composed::rope(&x, cos, sin),
        None => Ok(x),
    }
}

fn attention(
    a: &Attention,
    x: &Tensor,
    ctx: &mut HookContext,
    sites: &mut Sites,
    t: &AttendTables,
) -> Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    let (h, kvh, dh) = (a.n_heads, a.n_kv_heads, a.d_head);
    let hp = |kind| HookPoint::block(t.layer, kind);
    let q = linear(x, &a.q)?.reshape((b, n, h, dh))?;
    let k = linear(x, &a.k)?.reshape((b, n, kvh, dh))?;
    let v = linear(x, &a.v)?.reshape((b, n, kvh, dh))?;
    let q = site(ctx, sites, hp(HookKind::AttnQ), q)?;
    let k = site(ctx, sites, hp(HookKind::AttnK), k)?;
    let v = site(ctx, sites, hp(HookKind::AttnV), v)?;
    let q = match &a.q_norm {
        Some(nm) => norm(&q, nm)?,
        None => q,
    };
    let k = match &a.k_norm {
        Some(nm) => norm(&k, nm)?,
        None => k,
    };
    let q = heads_first(&q, t.rope)?;
    let k = heads_first(&k, t.rope)?;
    let v = v.transpose(1, 2)?.contiguous()?;
    // Grouped-query attention: each KV head's query heads folded into the row axis.
    let group = h / kvh;
    let scores = q
        .reshape((b, kvh, group * n, dh))?
        .matmul(&k.t()?)?
        .reshape((b, h, n, n))?;
    let pattern = scores.apply_op1(CausalSoftmax {
        scale: t.scale as f32,
        window: t.window,
    })?;
    let pattern = site(ctx, sites, hp(HookKind::AttnPattern), pattern)?;
    let z = pattern
        .reshape((b, kvh, group * n, n))?
        .matmul(&v)?
        .reshape((b, h, n, dh))?
        .transpose(1, 2)?
        .contiguous()?;
    let z = site(ctx, sites, hp(HookKind::AttnZ), z)?;
    linear(&z.reshape((b, n, h * dh))?, &a.o)
}

fn mlp(
    m: &Mlp,
    layer: usize,
    x: &Tensor,
    ctx: &mut HookContext,
    sites: &mut Sites,
) -> Result<Tensor> {
    let post = HookPoint::block(layer, HookKind::MlpPost);
    match m {
        Mlp::Gated {
            gate,
            up,
            down,
            act,
        } => {
            let hidden = (activate(*act, &linear(x, gate)?)? * linear(x, up)?)?;
            linear(&site(ctx, sites, post, hidden)?, down)
        }
        Mlp::Plain { fc, proj, act } => {
            let hidden = activate(*act, &linear(x, fc)?)?;
            linear(&site(ctx, sites, post, hidden)?, proj)
        }
    }
}

/// One block on the residual stream `x [batch, pos, d_model]` (all positions).
pub fn block(
    blk: &Block,
    x: Tensor,
    ctx: &mut HookContext,
    sites: &mut Sites,
    t: &AttendTables,
) -> Result<Tensor> {
    let hp = |kind| HookPoint::block(t.layer, kind);
    let x = site(ctx, sites, hp(HookKind::ResidPre), x)?;
    let post = match blk.residual {
        Residual::Sequential => {
            let a = attention(&blk.attn, &norm(&x, &blk.attn_norm)?, ctx, sites, t)?;
            let a = site(
                ctx,
                sites,
                hp(HookKind::AttnOut),
                maybe_norm(a, &blk.post_attn_norm)?,
            )?;
            let mid = site(ctx, sites, hp(HookKind::ResidMid), (&x + a)?)?;
            let m = mlp(&blk.mlp, t.layer, &norm(&mid, &blk.mlp_norm)?, ctx, sites)?;
            let m = site(
                ctx,
                sites,
                hp(HookKind::MlpOut),
                maybe_norm(m, &blk.post_mlp_norm)?,
            )?;
            (mid + m)?
        }
        Residual::Parallel => {
            let a = attention(&blk.attn, &norm(&x, &blk.attn_norm)?, ctx, sites, t)?;
            let a = site(ctx, sites, hp(HookKind::AttnOut), a)?;
            let m = mlp(&blk.mlp, t.layer, &norm(&x, &blk.mlp_norm)?, ctx, sites)?;
            let m = site(ctx, sites, hp(HookKind::MlpOut), m)?;
            ((m + a)? + x)?
        }
        Residual::PostNorm => {
            let a = attention(&blk.attn, &x, ctx, sites, t)?;
            let a = site(ctx, sites, hp(HookKind::AttnOut), a)?;
            let mid = norm(&(&x + a)?, &blk.attn_norm)?;
            let mid = site(ctx, sites, hp(HookKind::ResidMid), mid)?;
            let m = mlp(&blk.mlp, t.layer, &mid, ctx, sites)?;
            let m = site(ctx, sites, hp(HookKind::MlpOut), m)?;
            norm(&(mid + m)?, &blk.mlp_norm)?
        }
    };
    site(ctx, sites, hp(HookKind::ResidPost), post)
}

/// From token embeddings `x [batch, pos, d_model]` (scaled; the `hook_embed` site) to the
/// first block's input.
pub fn embedding_stage(
    e: &Embedding,
    x: Tensor,
    ctx: &mut HookContext,
    sites: &mut Sites,
) -> Result<Tensor> {
    let mut x = site(ctx, sites, HookPoint::global(HookKind::Embed), x)?;
    if let Some(table) = &e.positions {
        let (b, t, d) = x.dims3()?;
        let idx = Tensor::arange(0u32, t as u32, &Device::Cpu)?;
        let pos = table
            .index_select(&idx, 0)?
            .reshape((1, t, d))?
            .broadcast_as((b, t, d))?
            .contiguous()?;
        let pos = site(ctx, sites, HookPoint::global(HookKind::PosEmbed), pos)?;
        x = (x + pos)?;
    }
    if let Some(tt) = &e.token_type {
        x = x.broadcast_add(tt)?;
    }
    if let Some(n) = &e.norm {
        x = norm(&x, n)?;
    }
    Ok(x)
}

/// The final norm (the `ln_final.hook_normalized` site, all positions) and the logits at one
/// row per prompt: `x [batch, pos, d_model]`, `rows[b]` -> `[batch, vocab]`.
pub fn head_logits(
    final_norm: &Norm,
    lm_head: &Weight,
    x: &Tensor,
    rows: &[usize],
    ctx: &mut HookContext,
    sites: &mut Sites,
) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let normed = site(
        ctx,
        sites,
        HookPoint::global(HookKind::LnFinal),
        norm(x, final_norm)?,
    )?;
    let idx: Vec<u32> = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| (i * t + r) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, b, &Device::Cpu)?;
    let picked = normed.reshape((b * t, d))?.index_select(&idx, 0)?;
    matmul_wt(&picked, lm_head.dense()?.as_ref())
}
