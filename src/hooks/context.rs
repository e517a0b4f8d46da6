//! The per-forward hook runtime: the forward pass hands every hook site's tensor to
//! [`HookContext::visit`], which applies interventions and records captures.

use candle_core::Tensor;

use super::{
    Action, ActivationCache, CaptureSpec, CapturedArray, HookPoint, HookRegistry, HookSet,
    Intervention, Positions,
};
use crate::error::{MsError, Result};
use crate::interrupt::Cancel;

/// How a flat activation buffer splits around its position axis: `[batch, pre, pos, post]`.
#[derive(Debug, Clone, Copy)]
struct PosLayout {
    batch: usize,
    pre: usize,
    pos: usize,
    post: usize,
}

impl PosLayout {
    fn of(shape: &[usize], pos_axis: usize) -> Self {
        PosLayout {
            batch: shape[0],
            pre: shape[1..pos_axis].iter().product(),
            pos: shape[pos_axis],
            post: shape[pos_axis + 1..].iter().product(),
        }
    }
    fn offset(&self, b: usize, pre: usize, t: usize) -> usize {
        ((b * self.pre + pre) * self.pos + t) * self.post
    }
}

/// Shape of an activation after selecting `n_pos` positions (`None` drops the axis).
fn selected_shape(shape: &[usize], pos_axis: usize, n_pos: Option<usize>) -> Vec<usize> {
    let mut out = shape[..pos_axis].to_vec();
    if let Some(n) = n_pos {
        out.push(n);
    }
    out.extend_from_slice(&shape[pos_axis + 1..]);
    out
}

/// Copy the selected positions of each prompt out of a full activation.
fn gather(
    data: &[f32],
    shape: &[usize],
    pos_axis: usize,
    sel: &[Vec<usize>],
    keep_axis: bool,
) -> CapturedArray {
    let l = PosLayout::of(shape, pos_axis);
    let n_pos = sel.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(l.batch * l.pre * n_pos * l.post);
    for (b, positions) in sel.iter().enumerate() {
        for pre in 0..l.pre {
            for &t in positions {
                let o = l.offset(b, pre, t);
                out.extend_from_slice(&data[o..o + l.post]);
            }
        }
    }
    CapturedArray::new(
        selected_shape(shape, pos_axis, keep_axis.then_some(n_pos)),
        out,
    )
}

/// Zero the padded positions (t >= length) so that no stale numbers leak into analyses.
fn zero_padding(data: &mut [f32], shape: &[usize], pos_axis: usize, lengths: &[usize]) {
    let l = PosLayout::of(shape, pos_axis);
    for (b, &len) in lengths.iter().enumerate() {
        for pre in 0..l.pre {
            for t in len..l.pos {
                let o = l.offset(b, pre, t);
                data[o..o + l.post].fill(0.0);
            }
        }
    }
}

/// Per prompt, the positions an intervention touches (all positions when unrestricted).
fn target_positions(
    positions: &Option<Positions>,
    lengths: &[usize],
    t_max: usize,
) -> Result<Vec<Vec<usize>>> {
    match positions {
        None | Some(Positions::All) => Ok(vec![(0..t_max).collect(); lengths.len()]),
        Some(p) => Ok(p.resolve(lengths)?.unwrap_or_default()),
    }
}

fn apply_action(
    name: &str,
    action: &Action,
    act: &mut CapturedArray,
    pos_axis: usize,
    positions: &Option<Positions>,
    lengths: &[usize],
) -> Result<()> {
    let l = PosLayout::of(&act.shape, pos_axis);
    let targets = target_positions(positions, lengths, l.pos)?;
    let each = |data: &mut [f32], f: &mut dyn FnMut(&mut [f32], usize)| {
        // f gets a `post` slice and a running index over the selected (b, pre, t) rows.
        let mut row = 0;
        for (b, ts) in targets.iter().enumerate() {
            for pre in 0..l.pre {
                for &t in ts {
                    let o = l.offset(b, pre, t);
                    f(&mut data[o..o + l.post], row);
                    row += 1;
                }
            }
        }
    };
    match action {
        Action::Zero => each(&mut act.data, &mut |s, _| s.fill(0.0)),
        Action::Add { vector, scale } => {
            check_trailing(name, vector.len(), l.post, &act.shape, pos_axis)?;
            each(&mut act.data, &mut |s, _| {
                for (x, v) in s.iter_mut().zip(vector) {
                    *x += scale * v;
                }
            })
        }
        Action::Mean(vector) => {
            let mean = match vector {
                Some(v) => {
                    check_trailing(name, v.len(), l.post, &act.shape, pos_axis)?;
                    v.clone()
                }
                None => real_token_mean(&act.data, l, lengths),
            };
            each(&mut act.data, &mut |s, _| s.copy_from_slice(&mean))
        }
        Action::Replace(values) => {
            if values.shape == act.shape && positions.is_none() {
                act.data.copy_from_slice(&values.data);
            } else {
                let keep = positions.as_ref().is_none_or(Positions::keeps_pos_axis);
                let n_pos = targets.first().map_or(0, Vec::len);
                let want = selected_shape(&act.shape, pos_axis, keep.then_some(n_pos));
                if values.shape != want {
                    return Err(MsError::shape(format!(
                        "intervention at '{name}': replacement has shape {:?}, expected {:?} \
                         (the full activation is {:?})",
                        values.shape, want, act.shape
                    )));
                }
                each(&mut act.data, &mut |s, row| {
                    s.copy_from_slice(&values.data[row * l.post..(row + 1) * l.post])
                })
            }
        }
        Action::Custom(f) => {
            let shape = act.shape.clone();
            f(name, act)?;
            if act.shape != shape || act.data.len() != shape.iter().product::<usize>() {
                return Err(MsError::shape(format!(
                    "hook function at '{name}' changed the activation's shape from {shape:?} to {:?}",
                    act.shape
                )));
            }
        }
    }
    Ok(())
}

fn check_trailing(
    name: &str,
    got: usize,
    want: usize,
    shape: &[usize],
    pos_axis: usize,
) -> Result<()> {
    if got != want {
        return Err(MsError::shape(format!(
            "intervention at '{name}': vector has {got} values, expected {want} (trailing shape {:?})",
            &shape[pos_axis + 1..]
        )));
    }
    Ok(())
}

fn real_token_mean(data: &[f32], l: PosLayout, lengths: &[usize]) -> Vec<f32> {
    let mut sum = vec![0f64; l.post];
    let mut count = 0usize;
    for (b, &len) in lengths.iter().enumerate() {
        for pre in 0..l.pre {
            for t in 0..len {
                let o = l.offset(b, pre, t);
                for (s, x) in sum.iter_mut().zip(&data[o..o + l.post]) {
                    *s += f64::from(*x);
                }
                count += 1;
            }
        }
    }
    sum.iter()
        .map(|s| (*s / count.max(1) as f64) as f32)
        .collect()
}

fn to_array(t: &Tensor) -> Result<CapturedArray> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(CapturedArray::new(shape, data))
}

/// Applies interventions and records captures during one forward pass.
pub struct HookContext<'a> {
    registry: &'a HookRegistry,
    capture: HookSet,
    capture_sel: Option<Vec<Vec<usize>>>,
    keep_pos_axis: bool,
    intervene: HookSet,
    interventions: Vec<(HookPoint, &'a Intervention)>,
    lengths: Vec<usize>,
    pub cache: ActivationCache,
    /// The call's cancellation token, checked by the forward between layers.
    pub cancel: Cancel,
}

impl<'a> HookContext<'a> {
    /// A context for a batch with the given real lengths.
    pub fn new(
        registry: &'a HookRegistry,
        spec: Option<&CaptureSpec>,
        interventions: &'a [Intervention],
        lengths: &[usize],
    ) -> Result<Self> {
        let (capture, capture_sel, keep_pos_axis) = match spec {
            Some(s) => (
                s.set.clone(),
                s.positions.resolve(lengths)?,
                s.positions.keeps_pos_axis(),
            ),
            None => (registry.empty_set(), None, true),
        };
        let mut intervene = registry.empty_set();
        let mut list = Vec::with_capacity(interventions.len());
        for iv in interventions {
            let idx = registry.index(iv.point).ok_or_else(|| {
                MsError::UnknownHook(format!("'{}' is not a hook of this model", iv.point.name()))
            })?;
            if let Some(p) = &iv.positions {
                p.resolve(lengths)?; // fail before running anything
            }
            intervene.insert(idx);
            list.push((iv.point, iv));
        }
        Ok(HookContext {
            registry,
            capture,
            capture_sel,
            keep_pos_axis,
            intervene,
            interventions: list,
            lengths: lengths.to_vec(),
            cache: ActivationCache::default(),
            cancel: Cancel::default(),
        })
    }

    /// The same context, stopping with `MsError::Interrupted` once `cancel` fires.
    pub fn with_cancel(mut self, cancel: &Cancel) -> Self {
        self.cancel = cancel.clone();
        self
    }

    /// A context that does nothing (plain inference).
    pub fn inactive(registry: &'a HookRegistry, lengths: &[usize]) -> Self {
        HookContext {
            registry,
            capture: registry.empty_set(),
            capture_sel: None,
            keep_pos_axis: true,
            intervene: registry.empty_set(),
            interventions: Vec::new(),
            lengths: lengths.to_vec(),
            cache: ActivationCache::default(),
            cancel: Cancel::default(),
        }
    }

    /// Whether anything is registered at `point` (lets the forward skip optional work).
    #[inline]
    pub fn wants(&self, point: HookPoint) -> bool {
        self.registry
            .index(point)
            .is_some_and(|i| self.capture.contains(i) || self.intervene.contains(i))
    }

    /// Whether an intervention is registered at `point`.
    pub fn intervenes(&self, point: HookPoint) -> bool {
        self.registry
            .index(point)
            .is_some_and(|i| self.intervene.contains(i))
    }

    /// The captured positions of each prompt, unless all positions are captured (or none).
    pub fn capture_positions(&self) -> Option<&[Vec<usize>]> {
        self.capture_sel
            .as_deref()
            .filter(|s| s.first().is_some_and(|p| !p.is_empty()))
    }

    /// Whether `point` is captured.
    pub fn captures(&self, point: HookPoint) -> bool {
        self.registry
            .index(point)
            .is_some_and(|i| self.capture.contains(i))
    }

    /// Capture `t [batch, n_selected, ...]`, an activation computed at the
    /// [`capture_positions`](Self::capture_positions) only (the selection is already made);
    /// returns it unchanged.
    pub fn visit_selected(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        if self.captures(point) {
            let mut act = to_array(&t)?;
            if !self.keep_pos_axis {
                act.shape.remove(point.kind.pos_axis());
            }
            self.cache.insert(point.name(), act);
        }
        Ok(t)
    }

    /// Hand a hook site's tensor over; returns the (possibly modified) tensor to continue with.
    pub fn visit(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        let Some(idx) = self.registry.index(point) else {
            return Ok(t);
        };
        let capture = self.capture.contains(idx);
        let intervene = self.intervene.contains(idx);
        if !capture && !intervene {
            return Ok(t);
        }
        let pos_axis = point.kind.pos_axis();
        let name = point.name();
        let mut act = to_array(&t)?;
        let t = if intervene {
            for (p, iv) in &self.interventions {
                if *p == point {
                    apply_action(
                        &name,
                        &iv.action,
                        &mut act,
                        pos_axis,
                        &iv.positions,
                        &self.lengths,
                    )?;
                }
            }
            Tensor::from_slice(&act.data, act.shape.as_slice(), t.device())?
        } else {
            t
        };
        if capture {
            let captured = match &self.capture_sel {
                Some(sel) => gather(&act.data, &act.shape, pos_axis, sel, self.keep_pos_axis),
                None => {
                    zero_padding(&mut act.data, &act.shape, pos_axis, &self.lengths);
                    act
                }
            };
            self.cache.insert(name, captured);
        }
        Ok(t)
    }
}

impl HookContext<'_> {
    /// Hand a hook site's tensor of a differentiable forward over: the interventions registered
    /// there apply to its value as in [`visit`](Self::visit), and gradients flow through the
    /// elements they keep (a steering vector adds a constant) but not through the elements
    /// they replace (zero, mean, patched values are constants). Nothing is captured.
    ///
    /// A Python hook function has no gradient, and a mean over "this batch" would depend on
    /// the batch: both are refused.
    pub fn visit_differentiable(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        if !self.intervenes(point) {
            return Ok(t);
        }
        let pos_axis = point.kind.pos_axis();
        let name = point.name();
        let mut act = to_array(&t)?;
        let mut pass = CapturedArray::new(act.shape.clone(), vec![1.0; act.data.len()]);
        for (p, iv) in &self.interventions {
            if *p != point {
                continue;
            }
            match &iv.action {
                Action::Custom(_) => {
                    return Err(MsError::invalid(format!(
                        "intervention at '{name}': a Python hook function has no gradient; \
                         gradients compose with zero, replace (patch), mean (with a given \
                         vector) and add (steer) interventions"
                    )))
                }
                Action::Mean(None) => {
                    return Err(MsError::invalid(format!(
                        "intervention at '{name}': a mean over this batch depends on the \
                         batch, so its gradient is ambiguous; pass the mean vector explicitly"
                    )))
                }
                Action::Add { .. } => {}
                Action::Zero | Action::Replace(_) | Action::Mean(Some(_)) => apply_action(
                    &name,
                    &Action::Zero,
                    &mut pass,
                    pos_axis,
                    &iv.positions,
                    &self.lengths,
                )?,
            }
            apply_action(
                &name,
                &iv.action,
                &mut act,
                pos_axis,
                &iv.positions,
                &self.lengths,
            )?;
        }
        let dev = t.device().clone();
        let values = Tensor::from_slice(&act.data, act.shape.as_slice(), &dev)?;
        let pass = Tensor::from_slice(&pass.data, act.shape.as_slice(), &dev)?;
        // (t - detach(t)) is exactly zero, with t's gradient: the value is `values` bit for
        // bit, the gradient `pass` element-wise.
        Ok(((&t - t.detach())?.mul(&pass)? + values)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookKind, LogitsMode};

    fn arange(shape: &[usize]) -> CapturedArray {
        let n = shape.iter().product();
        CapturedArray::new(shape.to_vec(), (0..n).map(|x| x as f32).collect())
    }

    #[test]
    fn gather_last_drops_pos_axis() {
        let a = arange(&[2, 3, 2]);
        let g = gather(&a.data, &a.shape, 1, &[vec![2], vec![0]], false);
        assert_eq!(g.shape, vec![2, 2]);
        assert_eq!(g.data, vec![4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn gather_pattern_uses_query_axis() {
        // [batch=1, head=2, q=2, k=2]
        let a = arange(&[1, 2, 2, 2]);
        let g = gather(&a.data, &a.shape, 2, &[vec![1]], false);
        assert_eq!(g.shape, vec![1, 2, 2]);
        assert_eq!(g.data, vec![2.0, 3.0, 6.0, 7.0]);
    }

    #[test]
    fn replace_at_last_position_checks_shape() {
        let mut a = arange(&[2, 3, 2]);
        let vals = CapturedArray::new(vec![2, 2], vec![-1.0; 4]);
        let pos = Some(Positions::Last);
        apply_action("x", &Action::Replace(vals), &mut a, 1, &pos, &[3, 1]).unwrap();
        assert_eq!(&a.data[4..6], &[-1.0, -1.0]);
        assert_eq!(&a.data[6..8], &[-1.0, -1.0]);
        assert_eq!(&a.data[0..4], &[0.0, 1.0, 2.0, 3.0]);
        let bad = CapturedArray::new(vec![2, 3], vec![0.0; 6]);
        assert!(apply_action("x", &Action::Replace(bad), &mut a, 1, &pos, &[3, 1]).is_err());
    }

    #[test]
    fn add_and_mean() {
        let mut a = arange(&[1, 2, 2]);
        let add = Action::Add {
            vector: vec![1.0, 2.0],
            scale: 2.0,
        };
        apply_action("x", &add, &mut a, 1, &None, &[2]).unwrap();
        assert_eq!(a.data, vec![2.0, 5.0, 4.0, 7.0]);
        apply_action("x", &Action::Mean(None), &mut a, 1, &None, &[2]).unwrap();
        assert_eq!(a.data, vec![3.0, 6.0, 3.0, 6.0]);
        let wrong = Action::Add {
            vector: vec![1.0],
            scale: 1.0,
        };
        assert!(apply_action("x", &wrong, &mut a, 1, &None, &[2]).is_err());
    }

    #[test]
    fn visit_captures_only_requested_points() {
        let reg = HookRegistry::new(2, &HookKind::PER_BLOCK, false, true);
        let spec = CaptureSpec::new(
            &reg,
            &["blocks.1.hook_resid_post".to_string()],
            Positions::Last,
            None,
            LogitsMode::None,
        )
        .unwrap();
        let mut ctx = HookContext::new(&reg, Some(&spec), &[], &[2, 1]).unwrap();
        let dev = candle_core::Device::Cpu;
        let t = Tensor::arange(0f32, 8.0, &dev)
            .unwrap()
            .reshape((2, 2, 2))
            .unwrap();
        ctx.visit(HookPoint::block(0, HookKind::ResidPost), t.clone())
            .unwrap();
        ctx.visit(HookPoint::block(1, HookKind::ResidPost), t)
            .unwrap();
        assert_eq!(ctx.cache.len(), 1);
        let got = ctx.cache.get("blocks.1.hook_resid_post").unwrap();
        assert_eq!(got.shape, vec![2, 2]);
        assert_eq!(got.data, vec![2.0, 3.0, 4.0, 5.0]);
    }
}
