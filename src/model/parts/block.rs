//! One transformer block: attention and MLP combined with the residual stream the way the
//! family's [`Residual`] says, with a hook at every site.

use candle_core::Tensor;

use super::attention::{pick_positions, AttendWith};
use super::{Attention, Mlp, Norm};
use crate::error::Result;
use crate::hooks::{HookContext, HookKind, HookPoint};
use crate::kernels::fused;
use crate::model::config::Residual;

#[derive(Clone)]
pub struct Block {
    pub residual: Residual,
    /// Before attention (sequential, parallel), or after the attention residual (post-norm).
    pub attn_norm: Norm,
    pub attn: Attention,
    /// On the attention output before its residual add (Gemma's sandwich norms).
    pub post_attn_norm: Option<Norm>,
    /// Before the MLP (sequential, parallel), or after the MLP residual (post-norm).
    pub mlp_norm: Norm,
    pub mlp: Mlp,
    /// On the MLP output before its residual add (Gemma).
    pub post_mlp_norm: Option<Norm>,
}

/// `a + b` for two tensors of one shape (the residual stream's adds).
pub fn residual_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match fused::add(a, b)? {
        Some(out) => Ok(out),
        None => Ok((a + b)?),
    }
}

fn maybe_norm(norm: &Option<Norm>, x: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

impl Block {
    /// Bytes of its tensors.
    pub fn nbytes(&self) -> usize {
        let opt = |n: &Option<Norm>| n.as_ref().map_or(0, Norm::nbytes);
        self.attn_norm.nbytes()
            + self.attn.nbytes()
            + opt(&self.post_attn_norm)
            + self.mlp_norm.nbytes()
            + self.mlp.nbytes()
            + opt(&self.post_mlp_norm)
    }

    /// The block on the residual stream `x [batch, pos, d_model]`. With `attend.queries`,
    /// everything from the attention output on runs at those positions only, and the result
    /// is `[batch, n, d_model]`.
    pub fn forward(&self, x: Tensor, ctx: &mut HookContext, attend: AttendWith) -> Result<Tensor> {
        let layer = attend.layer;
        let hp = |kind| HookPoint::block(layer, kind);
        let rows = attend.queries;
        let x = ctx.visit(hp(HookKind::ResidPre), x)?;
        let at_rows = |t: &Tensor| -> Result<Tensor> {
            match rows {
                Some(sel) => pick_positions(t, 1, sel),
                None => Ok(t.clone()),
            }
        };
        let post = match self.residual {
            Residual::Sequential => {
                let attn = self
                    .attn
                    .forward(&self.attn_norm.forward(&x)?, ctx, attend)?;
                let attn = ctx.visit(
                    hp(HookKind::AttnOut),
                    maybe_norm(&self.post_attn_norm, attn)?,
                )?;
                let mid = residual_add(&at_rows(&x)?, &attn)?;
                let mid = ctx.visit(hp(HookKind::ResidMid), mid)?;
                let mlp = self
                    .mlp
                    .forward(layer, &self.mlp_norm.forward(&mid)?, ctx)?;
                let mlp = ctx.visit(hp(HookKind::MlpOut), maybe_norm(&self.post_mlp_norm, mlp)?)?;
                residual_add(&mid, &mlp)?
            }
            Residual::Parallel => {
                let attn = self
                    .attn
                    .forward(&self.attn_norm.forward(&x)?, ctx, attend)?;
                let attn = ctx.visit(hp(HookKind::AttnOut), attn)?;
                let x = at_rows(&x)?;
                let mlp = self.mlp.forward(layer, &self.mlp_norm.forward(&x)?, ctx)?;
                let mlp = ctx.visit(hp(HookKind::MlpOut), mlp)?;
                // transformers' order: mlp + attn + x.
                residual_add(&residual_add(&mlp, &attn)?, &x)?
            }
            Residual::PostNorm => {
                let attn = self.attn.forward(&x, ctx, attend)?;
                let attn = ctx.visit(hp(HookKind::AttnOut), attn)?;
                let mid = self.attn_norm.forward_sum(&at_rows(&x)?, &attn)?;
                let mid = ctx.visit(hp(HookKind::ResidMid), mid)?;
                let mlp = self.mlp.forward(layer, &mid, ctx)?;
                let mlp = ctx.visit(hp(HookKind::MlpOut), mlp)?;
                self.mlp_norm.forward_sum(&mid, &mlp)?
            }
        };
        match rows {
            Some(_) => ctx.visit_selected(hp(HookKind::ResidPost), post),
            None => ctx.visit(hp(HookKind::ResidPost), post),
        }
    }
}
