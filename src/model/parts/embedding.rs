//! The embedding stage: token embeddings (with `hook_embed`), then whatever the family adds
//! before the first block (learned positions with `hook_pos_embed`, BERT's token-type
//! embedding and LayerNorm). Its output is `blocks.0.hook_resid_pre`.

use candle_core::{Device, Tensor};

use super::linear::nbytes;
use super::{Norm, Weight};
use crate::error::Result;
use crate::hooks::{HookContext, HookKind, HookPoint};

#[derive(Clone)]
pub struct Embedding {
    /// `[vocab, d_model]`, as stored (unscaled; float32 or quantized).
    pub tokens: Weight,
    /// Token embeddings are multiplied by this (Gemma: sqrt(d_model)).
    pub scale: Option<f64>,
    /// Learned absolute positions `[context, d_model]`.
    pub positions: Option<Tensor>,
    /// Added to every position (BERT's token type 0) `[d_model]`.
    pub token_type: Option<Tensor>,
    /// Normalizes the sum (BERT).
    pub norm: Option<Norm>,
}

impl Embedding {
    /// Bytes of its tensors.
    pub fn nbytes(&self) -> usize {
        let opt = |t: &Option<Tensor>| t.as_ref().map_or(0, nbytes);
        self.tokens.nbytes()
            + opt(&self.positions)
            + opt(&self.token_type)
            + self.norm.as_ref().map_or(0, Norm::nbytes)
    }

    /// Token embeddings `[batch, pos, d_model]` of ids `[batch, pos]` (scaled).
    pub fn tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.tokens.dims2()?.1;
        let x = self
            .tokens
            .lookup(&ids.flatten_all()?)?
            .reshape((b, t, d))?;
        Ok(match self.scale {
            Some(s) => (x * s)?,
            None => x,
        })
    }

    /// The mean token embedding `[d_model]` as fed to the model (scaled).
    pub fn mean_token(&self) -> Result<Tensor> {
        let m = self.tokens.mean_row()?;
        Ok(match self.scale {
            Some(s) => (m * s)?,
            None => m,
        })
    }

    /// From token embeddings `x [batch, pos, d_model]` (the `hook_embed` site, visited here)
    /// to the first block's input; `positions` are the rows' positions (the same for every
    /// prompt of the batch).
    pub fn finish(&self, x: Tensor, positions: &[usize], ctx: &mut HookContext) -> Result<Tensor> {
        let mut x = ctx.visit(HookPoint::global(HookKind::Embed), x)?;
        if let Some(table) = &self.positions {
            let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let idx = Tensor::from_vec(idx, positions.len(), &Device::Cpu)?;
            let (b, t, d) = x.dims3()?;
            let pos = table.index_select(&idx, 0)?.reshape((1, t, d))?;
            let pos = ctx.visit(
                HookPoint::global(HookKind::PosEmbed),
                pos.broadcast_as((b, t, d))?.contiguous()?,
            )?;
            x = (x + pos)?;
        }
        if let Some(tt) = &self.token_type {
            x = x.broadcast_add(tt)?;
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(&x)?;
        }
        Ok(x)
    }
}
