//! Gradients of a metric of the final logits with respect to the activations at hook sites
//! (no weight gradients): `d metric / d activation` with the activation's shape.
//!
//! Gradient checkpointing per block. A forward without graph keeps each block's input (the
//! residual stream: `(n_layers + 1) * batch * pos * d_model` floats); then, from the head
//! down, block `l` is recomputed with a graph from its saved input ([`graph`]) and the
//! incoming gradient is pulled through it by candle's reverse-mode autograd, which yields the
//! gradient at the block's input and at its hook sites. Besides the saved inputs, memory is
//! one block's graph: about five `[batch, head, pos, pos]` attention arrays (scores and
//! pattern, their gradients, one transient; the softmax has its own backward, see
//! [`softmax`]) and ten `[batch, pos, d_mlp]` arrays (see [`graph_bytes`]). Interventions apply in both passes
//! (see [`HookContext::visit_differentiable`]).

pub mod graph;
mod softmax;

use candle_core::{Device, Tensor, Var};

use crate::error::{MsError, Result};
use crate::hooks::{CapturedArray, HookContext, HookKind, HookPoint, Intervention};
use crate::interrupt::Cancel;
use crate::model::metric::Metric;
use crate::model::LanguageModel;
use graph::{AttendTables, Sites};

/// What the gradients are taken of.
pub enum GradInput {
    /// Token ids of each prompt (any lengths; batches are right-padded).
    Ids(Vec<Vec<u32>>),
    /// Token embeddings `[n, pos, d_model]` as the model feeds them to its first block's
    /// embedding stage (scaled, the `hook_embed` site): integrated gradients' paths.
    Embeddings(CapturedArray),
}

/// One gradient request.
pub struct GradRequest<'a> {
    pub input: GradInput,
    pub metric: &'a Metric,
    /// Sites whose gradients are returned, in forward order.
    pub points: Vec<HookPoint>,
    pub interventions: &'a [Intervention],
    /// Prompts per chunk at most (fewer when long prompts' attention would not fit).
    pub batch_size: usize,
    /// Also return the activations (after interventions) at the sites.
    pub with_values: bool,
}

/// What a gradient request returns; arrays have the batch (all prompts) first and are
/// padded to the longest prompt (padded positions zero).
pub struct GradOutput {
    pub grads: Vec<(String, CapturedArray)>,
    pub values: Vec<(String, CapturedArray)>,
    /// The metric of each prompt.
    pub metric: Vec<f32>,
    /// Token ids of each prompt (empty for embedding inputs).
    pub tokens: Vec<Vec<u32>>,
}

/// Bytes one chunk's attention graph may take before the chunk is split further.
const ATTENTION_GRAPH_BUDGET: usize = 1 << 30;

/// Bytes of one block's graph for `rows` prompts of `pos` tokens: about five attention-sized
/// and ten MLP-sized float arrays live at once (forward values and their gradients).
pub fn graph_bytes(n_heads: usize, d_mlp: usize, d_model: usize, rows: usize, pos: usize) -> usize {
    4 * rows * pos * (5 * n_heads * pos + 10 * d_mlp + 20 * d_model)
}

impl LanguageModel {
    /// `d metric / d activation` at `req.points`, and the metric, for every prompt.
    pub fn gradients(&self, req: GradRequest, cancel: &Cancel) -> Result<GradOutput> {
        let net = self.decoder("take gradients of its logits")?;
        let cfg = &net.cfg;
        if !cfg.causal {
            return Err(MsError::invalid(format!(
                "{}: gradients need a causal decoder",
                self.name
            )));
        }
        req.metric.check(cfg.vocab_size)?;
        let (n, t_max, lengths) = match &req.input {
            GradInput::Ids(tokens) => {
                if tokens.is_empty() {
                    return Err(MsError::invalid("the list of prompts is empty"));
                }
                for (i, ids) in tokens.iter().enumerate() {
                    self.check_prompt_ids(i, ids)?;
                }
                let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
                let t = *lengths.iter().max().unwrap_or(&1);
                (tokens.len(), t, lengths)
            }
            GradInput::Embeddings(e) => {
                check_embeddings(e, cfg.d_model, cfg.context_length)?;
                (e.shape[0], e.shape[1], vec![e.shape[1]; e.shape[0]])
            }
        };
        for (i, &len) in lengths.iter().enumerate() {
            req.metric
                .position(len)
                .map_err(|e| MsError::invalid(format!("prompt {i}: {e}")))?;
        }
        let per_row = graph_bytes(cfg.n_heads, cfg.d_mlp, cfg.d_model, 1, t_max);
        let chunk = (ATTENTION_GRAPH_BUDGET / per_row.max(1)).clamp(1, req.batch_size.max(1));
        let pad = self.tokenizer.pad_id.or(self.tokenizer.eos_id).unwrap_or(0);
        let mut out = GradOutput {
            grads: Vec::new(),
            values: Vec::new(),
            metric: Vec::with_capacity(n),
            tokens: match &req.input {
                GradInput::Ids(t) => t.clone(),
                GradInput::Embeddings(_) => Vec::new(),
            },
        };
        // Progress counts block passes of prompts: a forward and a backward pass per block.
        cancel
            .progress()
            .start((n * 2 * cfg.n_layers.max(1)) as u64);
        let mut start = 0;
        while start < n {
            let rows: Vec<usize> = (start..(start + chunk).min(n)).collect();
            let x = match &req.input {
                GradInput::Ids(tokens) => {
                    let mut ids = Vec::with_capacity(rows.len() * t_max);
                    for &r in &rows {
                        ids.extend_from_slice(&tokens[r]);
                        ids.extend(std::iter::repeat_n(pad, t_max - tokens[r].len()));
                    }
                    let ids = Tensor::from_vec(ids, (rows.len(), t_max), &Device::Cpu)?;
                    net.embed.tokens(&ids)?
                }
                GradInput::Embeddings(e) => {
                    let per = t_max * cfg.d_model;
                    Tensor::from_slice(
                        &e.data[start * per..(start + rows.len()) * per],
                        (rows.len(), t_max, cfg.d_model),
                        &Device::Cpu,
                    )?
                }
            };
            let ivs = req
                .interventions
                .iter()
                .map(|iv| super::run::intervention_rows(iv, &rows, n))
                .collect::<Result<Vec<_>>>()?;
            let chunk_lengths: Vec<usize> = rows.iter().map(|&r| lengths[r]).collect();
            let part = self.chunk_gradients(x, &chunk_lengths, &req, &ivs, cancel)?;
            out.metric.extend(part.metric);
            append(&mut out.grads, part.grads);
            append(&mut out.values, part.values);
            start += rows.len();
        }
        Ok(out)
    }

    /// One chunk: token embeddings `x [batch, pos, d_model]`, real `lengths`.
    fn chunk_gradients(
        &self,
        x: Tensor,
        lengths: &[usize],
        req: &GradRequest,
        interventions: &[Intervention],
        cancel: &Cancel,
    ) -> Result<GradOutput> {
        let net = &self.net;
        let cfg = &net.cfg;
        let (final_norm, lm_head) = match (&net.final_norm, &net.lm_head) {
            (Some(nm), Some(h)) => (nm, h),
            _ => return Err(MsError::invalid("this model has no LM head")),
        };
        let t = x.dim(1)?;
        let mut ctx =
            HookContext::new(&net.hooks, None, interventions, lengths)?.with_cancel(cancel);
        let ropes: Vec<(Tensor, Tensor)> = net
            .ropes
            .iter()
            .map(|r| r.tables(0..t))
            .collect::<Result<_>>()?;
        let tables = |layer: usize| {
            let spec = &cfg.layers[layer];
            AttendTables {
                layer,
                rope: spec.rope.map(|k| &ropes[k]),
                scale: spec.scale,
                window: spec.window,
            }
        };
        // Forward without graph, keeping each block's input.
        let mut none = Sites::none();
        let mut inputs = Vec::with_capacity(cfg.n_layers + 1);
        inputs.push(graph::embedding_stage(
            &net.embed,
            x.clone(),
            &mut ctx,
            &mut none,
        )?);
        let step = x.dim(0)? as u64;
        for (layer, blk) in net.blocks.iter().enumerate() {
            cancel.check()?;
            cancel.progress().advance(step);
            let y = graph::block(
                blk,
                inputs[layer].clone(),
                &mut ctx,
                &mut none,
                &tables(layer),
            )?;
            inputs.push(y);
        }
        let mut collected: Vec<Tap> = Vec::new();
        // The head: the metric and d metric / d logits at each prompt's metric row.
        let rows: Vec<usize> = lengths
            .iter()
            .map(|&len| req.metric.position(len))
            .collect::<Result<_>>()?;
        let top = Var::from_tensor(&inputs[cfg.n_layers])?;
        let mut sites = Sites::new(req.points.clone());
        let logits = graph::head_logits(
            final_norm,
            lm_head,
            top.as_tensor(),
            &rows,
            &mut ctx,
            &mut sites,
        )?;
        let host: Vec<Vec<f32>> = logits.to_vec2()?;
        let metric: Vec<f32> = host.iter().map(|row| req.metric.value(row)).collect();
        let seed: Vec<f32> = host
            .iter()
            .flat_map(|row| req.metric.grad_logits(row))
            .collect();
        let seed = Tensor::from_vec(seed, logits.dims(), &Device::Cpu)?;
        let mut grad = pull(&logits, &seed, &top, sites, &mut collected)?;
        // The blocks, from the top.
        for layer in (0..cfg.n_layers).rev() {
            cancel.check()?;
            cancel.progress().advance(step);
            inputs.truncate(layer + 1);
            let xin = Var::from_tensor(&inputs[layer])?;
            let mut sites = Sites::new(req.points.clone());
            let y = graph::block(
                &net.blocks[layer],
                xin.as_tensor().clone(),
                &mut ctx,
                &mut sites,
                &tables(layer),
            )?;
            grad = pull(&y, &grad, &xin, sites, &mut collected)?;
        }
        // The embedding stage.
        let xin = Var::from_tensor(&x)?;
        let mut sites = Sites::new(req.points.clone());
        let y = graph::embedding_stage(&net.embed, xin.as_tensor().clone(), &mut ctx, &mut sites)?;
        pull(&y, &grad, &xin, sites, &mut collected)?;
        // In the order asked.
        let mut grads = Vec::with_capacity(req.points.len());
        let mut values = Vec::new();
        for p in &req.points {
            let at = collected
                .iter()
                .position(|c| c.point == *p)
                .ok_or_else(|| {
                    MsError::invalid(format!(
                        "'{}' is not a site the gradient pass visits in this model",
                        p.name()
                    ))
                })?;
            let Tap {
                mut grad,
                mut value,
                ..
            } = collected.swap_remove(at);
            zero_padding(&mut grad, p.kind, lengths);
            grads.push((p.name(), grad));
            if req.with_values {
                zero_padding(&mut value, p.kind, lengths);
                values.push((p.name(), value));
            }
        }
        Ok(GradOutput {
            grads,
            values,
            metric,
            tokens: Vec::new(),
        })
    }
}

/// A site's gradient and value read off one recomputation.
struct Tap {
    point: HookPoint,
    grad: CapturedArray,
    value: CapturedArray,
}

/// Back-propagate `upstream` (d metric / d `y`) through the graph of `y`: returns the
/// gradient at the variable `input` and stores the gradients (and values) at the taps.
fn pull(
    y: &Tensor,
    upstream: &Tensor,
    input: &Var,
    sites: Sites,
    collected: &mut Vec<Tap>,
) -> Result<Tensor> {
    let loss = (y * upstream)?.sum_all()?;
    let grads = loss.backward()?;
    for (point, tap, value) in sites.taps {
        let g = match grads.get(tap.as_tensor()) {
            Some(g) => to_array(g)?,
            None => CapturedArray::new(tap.dims().to_vec(), vec![0.0; tap.elem_count()]),
        };
        collected.push(Tap {
            point,
            grad: g,
            value: to_array(&value)?,
        });
    }
    Ok(match grads.get(input.as_tensor()) {
        Some(g) => g.clone(),
        None => input.as_tensor().zeros_like()?,
    })
}

fn to_array(t: &Tensor) -> Result<CapturedArray> {
    Ok(CapturedArray::new(
        t.dims().to_vec(),
        t.flatten_all()?.to_vec1()?,
    ))
}

/// Zero positions at or after each prompt's length (the query axis of patterns).
fn zero_padding(a: &mut CapturedArray, kind: HookKind, lengths: &[usize]) {
    let axis = kind.pos_axis();
    if a.shape.len() <= axis {
        return;
    }
    let pre: usize = a.shape[1..axis].iter().product();
    let pos = a.shape[axis];
    let post: usize = a.shape[axis + 1..].iter().product();
    for (b, &len) in lengths.iter().enumerate() {
        for p in 0..pre {
            for t in len..pos {
                let o = ((b * pre + p) * pos + t) * post;
                a.data[o..o + post].fill(0.0);
            }
        }
    }
}

/// Append a chunk's arrays (same names, same order) along the batch axis.
fn append(all: &mut Vec<(String, CapturedArray)>, part: Vec<(String, CapturedArray)>) {
    if all.is_empty() {
        *all = part;
        return;
    }
    for ((_, whole), (_, p)) in all.iter_mut().zip(part) {
        whole.shape[0] += p.shape[0];
        whole.data.extend_from_slice(&p.data);
    }
}

fn check_embeddings(e: &CapturedArray, d_model: usize, context: usize) -> Result<()> {
    if e.shape.len() != 3 || e.shape[2] != d_model || e.shape[0] == 0 || e.shape[1] == 0 {
        return Err(MsError::shape(format!(
            "embeddings must be [batch, pos, d_model={d_model}] with batch, pos >= 1, got {:?}",
            e.shape
        )));
    }
    if e.shape[1] > context {
        return Err(MsError::invalid(format!(
            "embeddings have {} positions, more than the model's context length of {context}",
            e.shape[1]
        )));
    }
    if e.data.iter().any(|v| !v.is_finite()) {
        return Err(MsError::invalid("embeddings contain NaN or inf"));
    }
    Ok(())
}
