//! The attention softmax of the gradient path as one candle op with an explicit backward:
//! `P = softmax(scale * S)` over the causal keys of each query row (within the sliding window,
//! if any), and `dS = scale * P * (dP - sum(dP * P))`. Composed of candle's element-wise ops,
//! the same softmax keeps six `[batch, head, pos, pos]` arrays in the graph; this op keeps
//! its input and output only (at 2,048 tokens on SmolLM2, 151 MB each).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Causal softmax over the last axis of scores `[batch, head, q, k]` (q == k, no cache).
pub struct CausalSoftmax {
    pub scale: f32,
    /// Keys this many positions or more behind a query are hidden.
    pub window: Option<usize>,
}

impl CausalSoftmax {
    /// The visible keys `lo..=q` of query `q`.
    fn keys(&self, q: usize) -> std::ops::Range<usize> {
        let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w));
        lo..q + 1
    }
}

fn contiguous_f32<'a>(c: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = c.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("causal softmax: the input is not contiguous"),
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let tk = dims[dims.len() - 1];
        let tq = dims[dims.len() - 2];
        if tk != tq {
            candle_core::bail!("causal softmax: {tq} queries for {tk} keys");
        }
        let scores = contiguous_f32(s, l)?;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(tk)
            .zip(scores.par_chunks(tk))
            .enumerate()
            .for_each(|(row, (o, s))| {
                let keys = self.keys(row % tq);
                let max = s[keys.clone()]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let mut sum = 0f32;
                for j in keys.clone() {
                    let e = (s[j] * self.scale - max).exp();
                    o[j] = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                o[keys].iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = res.dims().to_vec();
        let tk = dims[dims.len() - 1];
        let tq = dims[dims.len() - 2];
        let res = res.contiguous()?;
        let grad = grad_res.contiguous()?;
        let (ps, pl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(pc), Storage::Cpu(gc)) = (&*ps, &*gs) else {
            candle_core::bail!("causal softmax: CPU tensors only");
        };
        let p = contiguous_f32(pc, pl)?;
        let g = contiguous_f32(gc, gl)?;
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(tk)
            .zip(p.par_chunks(tk).zip(g.par_chunks(tk)))
            .enumerate()
            .for_each(|(row, (o, (p, g)))| {
                let keys = self.keys(row % tq);
                let dot: f32 = keys.clone().map(|j| p[j] * g[j]).sum();
                for j in keys {
                    o[j] = self.scale * p[j] * (g[j] - dot);
                }
            });
        Ok(Some(Tensor::from_vec(out, dims, res.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The same softmax composed of candle ops (masked with -inf), differentiated by candle.
    fn composed(s: &Tensor, scale: f64, window: Option<usize>) -> Tensor {
        let t = s.dim(D::Minus1).unwrap();
        let mask = crate::model::parts::causal_mask(t, 0, window)
            .unwrap()
            .to_dtype(s.dtype())
            .unwrap();
        let x = (s * scale).unwrap().broadcast_add(&mask).unwrap();
        crate::kernels::composed::softmax_last(&x).unwrap()
    }

    #[test]
    fn forward_and_backward_equal_the_composition_and_finite_differences() {
        let dev = Device::Cpu;
        let s0 = (Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap() * 3.0).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
        for window in [None, Some(3)] {
            let op = || CausalSoftmax { scale: 0.7, window };
            let s = Var::from_tensor(&s0).unwrap();
            let p = s.as_tensor().apply_op1(op()).unwrap();
            let want = composed(&s0, 0.7, window);
            let diff = (&p - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
            let loss = (&p * &upstream).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let got = g.get(s.as_tensor()).unwrap().flatten_all().unwrap();
            let got = got.to_vec1::<f32>().unwrap();
            // Central differences of the loss, element by element, in f64.
            let base = s0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let up = upstream.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let loss_at = |x: &[f32]| -> f64 {
                let t = Tensor::from_slice(x, (2, 3, 6, 6), &dev).unwrap();
                let p = composed(&t.to_dtype(candle_core::DType::F64).unwrap(), 0.7, window);
                let p = p.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                p.iter().zip(&up).map(|(a, b)| a * f64::from(*b)).sum()
            };
            for i in (0..base.len()).step_by(7) {
                let h = 1e-3f32;
                let mut plus = base.clone();
                plus[i] += h;
                let mut minus = base.clone();
                minus[i] -= h;
                let fd = (loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(h));
                assert!(
                    (fd - f64::from(got[i])).abs() < 2e-3,
                    "element {i}: {} vs finite difference {fd}",
                    got[i]
                );
            }
        }
    }
}
