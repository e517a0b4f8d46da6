//! The MLP of a block: gated (`down(act(gate(x)) * up(x))`) or plain (`proj(act(fc(x)))`),
//! with `mlp.hook_post` on the hidden activation `[batch, pos, d_mlp]`.

use candle_core::Tensor;

use super::Linear;
use crate::error::Result;
use crate::hooks::{HookContext, HookKind, HookPoint};
use crate::kernels::activation::Act;
use crate::kernels::fused::{self, Gate};
use crate::model::config::Activation;

#[derive(Clone)]
pub enum Mlp {
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
    Plain {
        fc: Linear,
        proj: Linear,
        act: Activation,
    },
}

/// `act(x)` element-wise.
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}

/// The kernel computing `act` in place on a product.
fn kernel_act(act: Activation) -> Act {
    match act {
        Activation::Silu => Act::Silu,
        Activation::GeluTanh => Act::GeluTanh,
        Activation::GeluErf => Act::GeluErf,
        Activation::Relu => Act::Relu,
    }
}

/// `act(gate) * up`, in one pass where a fused kernel exists.
fn glu(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused_gate = match act {
        Activation::Silu => Some(Gate::Silu),
        Activation::GeluTanh => Some(Gate::GeluTanh),
        Activation::GeluErf | Activation::Relu => None,
    };
    if let Some(g) = fused_gate {
        if let Some(out) = fused::glu(g, gate, up)? {
            return Ok(out);
        }
    }
    Ok((activate(act, gate)? * up)?)
}

impl Mlp {
    /// Bytes of its tensors.
    /// Its linear layers.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Mlp::Gated { gate, up, down, .. } => vec![gate, up, down],
            Mlp::Plain { fc, proj, .. } => vec![fc, proj],
        }
    }

    pub fn nbytes(&self) -> usize {
        match self {
            Mlp::Gated { gate, up, down, .. } => gate.nbytes() + up.nbytes() + down.nbytes(),
            Mlp::Plain { fc, proj, .. } => fc.nbytes() + proj.nbytes(),
        }
    }

    /// `x [batch, pos, d_model]` -> `[batch, pos, d_model]`.
    pub fn forward(&self, layer: usize, x: &Tensor, ctx: &mut HookContext) -> Result<Tensor> {
        let post_point = HookPoint::block(layer, HookKind::MlpPost);
        match self {
            Mlp::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let hidden = glu(*act, &gate.forward(x)?, &up.forward(x)?)?;
                down.forward(&ctx.visit(post_point, hidden)?)
            }
            Mlp::Plain { fc, proj, act } => {
                let hidden = fc.forward_act(x, kernel_act(*act))?;
                proj.forward(&ctx.visit(post_point, hidden)?)
            }
        }
    }
}
