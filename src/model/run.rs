//! Batched runs over many prompts: length-sorted chunks, right padding, captures gathered back
//! into the caller's order.

use candle_core::{Device, Tensor};

use super::{LanguageModel, RunPlan};
use crate::error::{MsError, Result};
use std::sync::Mutex;

use super::budget::RunFootprint;
use crate::hooks::{
    Action, ActivationCache, CaptureSpec, CapturedArray, HookContext, HookKind, Intervention,
    LogitsMode, Positions,
};
use crate::interrupt::Cancel;
use crate::kernels::per_core;

/// What one run returns.
pub struct RunOutput {
    /// `[batch, vocab]` (last positions) or `[batch, pos, vocab]`, if asked for.
    pub logits: Option<CapturedArray>,
    pub cache: ActivationCache,
    /// Token ids of each prompt (unpadded).
    pub tokens: Vec<Vec<u32>>,
}

/// Rows `rows` of an array whose axis 0 is the batch.
fn select_rows(a: &CapturedArray, rows: &[usize]) -> CapturedArray {
    let per: usize = a.shape[1..].iter().product();
    let mut data = Vec::with_capacity(per * rows.len());
    for &r in rows {
        data.extend_from_slice(&a.data[r * per..(r + 1) * per]);
    }
    let mut shape = a.shape.clone();
    shape[0] = rows.len();
    CapturedArray::new(shape, data)
}

fn select_positions(p: &Positions, rows: &[usize]) -> Positions {
    match p {
        Positions::PerPrompt(ix) => Positions::PerPrompt(rows.iter().map(|&r| ix[r]).collect()),
        other => other.clone(),
    }
}

/// The part of an intervention that applies to the prompts `rows`.
pub(crate) fn intervention_rows(
    iv: &Intervention,
    rows: &[usize],
    n_prompts: usize,
) -> Result<Intervention> {
    let action = match &iv.action {
        Action::Replace(values) => {
            if values.shape.first() != Some(&n_prompts) {
                return Err(MsError::shape(format!(
                    "intervention at '{}': replacement has shape {:?}, its first axis must be the \
                     batch ({n_prompts} prompts)",
                    iv.point.name(),
                    values.shape
                )));
            }
            Action::Replace(select_rows(values, rows))
        }
        other => other.clone(),
    };
    Ok(Intervention {
        point: iv.point,
        action,
        positions: iv.positions.as_ref().map(|p| select_positions(p, rows)),
    })
}

impl LanguageModel {
    /// Run prompts (already tokenized) in chunks of `batch_size`, capturing per `spec`.
    pub fn run_ids(
        &self,
        tokens: Vec<Vec<u32>>,
        spec: &CaptureSpec,
        interventions: &[Intervention],
        batch_size: usize,
        cancel: &Cancel,
    ) -> Result<RunOutput> {
        if tokens.is_empty() {
            return Err(MsError::invalid("the list of prompts is empty"));
        }
        for (i, ids) in tokens.iter().enumerate() {
            self.check_prompt_ids(i, ids)?;
        }
        if self.is_encoder() && spec.logits != LogitsMode::None {
            return Err(MsError::invalid(format!(
                "{} is an encoder: it has no logits; pass logits=None (\"none\")",
                self.name
            )));
        }
        let n = tokens.len();
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        // Validate positions for every prompt before any compute.
        spec.positions.resolve(&lengths)?;
        let t_max = *lengths.iter().max().unwrap_or(&1);
        // Arrays that keep the position axis (or, for patterns, the key axis) must line up
        // across chunks: pad them all to the longest prompt. Otherwise sort by length so
        // chunks carry little padding.
        let full_width = spec.positions == Positions::All
            || spec.logits == LogitsMode::All
            || spec.points.iter().any(|p| p.kind == HookKind::AttnPattern)
            || interventions
                .iter()
                .any(|iv| matches!(iv.action, Action::Replace(_)) && iv.positions.is_none());
        let mut order: Vec<usize> = (0..n).collect();
        if !full_width {
            order.sort_by_key(|&i| lengths[i]);
        }
        let n_blocks = RunPlan::blocks_needed(self.config().n_layers, spec);
        let pad = self.tokenizer.pad_id.or(self.tokenizer.eos_id).unwrap_or(0);
        let chunking = Chunking::new(batch_size, n, interventions);
        RunFootprint::estimate(
            self.config(),
            spec,
            n,
            t_max,
            chunking.size,
            chunking.workers,
        )
        .check_fits()?;
        let chunks: Vec<&[usize]> = order.chunks(chunking.size).collect();
        // Logits at every position go straight into one buffer, each chunk into its own rows
        // (full width, so `order` is the identity and a chunk's rows are contiguous).
        let vocab = self.config().vocab_size;
        let logits_in_place = spec.logits == LogitsMode::All
            && n_blocks == self.config().n_layers
            && !self.is_encoder();
        let mut all_logits = if logits_in_place {
            vec![0f32; n * t_max * vocab] // calloc'd fresh pages: written once, by the matmul
        } else {
            Vec::new()
        };
        let outs: Vec<Option<&mut [f32]>> = if logits_in_place {
            all_logits
                .chunks_mut(chunking.size * t_max * vocab)
                .map(Some)
                .collect()
        } else {
            chunks.iter().map(|_| None).collect()
        };
        let items: Vec<_> = chunks.into_iter().zip(outs).collect();
        let gathered = Gathered::new(n);
        let gathered_logits = Gathered::new(n);
        let run_chunk = |(rows, out): (&[usize], Option<&mut [f32]>)| -> Result<()> {
            let chunk_lengths: Vec<usize> = rows.iter().map(|&r| lengths[r]).collect();
            let width = if full_width {
                t_max
            } else {
                *chunk_lengths.iter().max().unwrap_or(&1)
            };
            let ids = padded_ids(&tokens, rows, width, pad)?;
            let chunk_spec = CaptureSpec {
                positions: select_positions(&spec.positions, rows),
                ..spec.clone()
            };
            let chunk_ivs = interventions
                .iter()
                .map(|iv| intervention_rows(iv, rows, n))
                .collect::<Result<Vec<_>>>()?;
            cancel.check()?;
            let mut ctx =
                HookContext::new(self.hooks(), Some(&chunk_spec), &chunk_ivs, &chunk_lengths)?
                    .with_cancel(cancel);
            let plan = RunPlan::new(
                &self.net,
                &ctx,
                &chunk_lengths,
                n_blocks,
                spec.logits,
                false,
            );
            let logits = self
                .net
                .forward(&ids, &chunk_lengths, &mut ctx, &plan, None, out)?;
            if let Some(l) = logits {
                gathered_logits.add(rows, vec![(String::new(), l)])?;
            }
            gathered.add(rows, ctx.cache.into_entries())?;
            cancel.progress().advance(rows.len() as u64);
            Ok(())
        };
        cancel.progress().start(n as u64);
        per_core::map(items, chunking.workers, run_chunk)?;
        let logits = if logits_in_place {
            Some(CapturedArray::new(vec![n, t_max, vocab], all_logits))
        } else {
            gathered_logits.into_arrays().pop().map(|(_, l)| l)
        };
        let mut cache = ActivationCache::default();
        for (name, array) in gathered.into_arrays() {
            cache.insert(name, array);
        }
        Ok(RunOutput {
            logits,
            cache,
            tokens,
        })
    }

    /// Sentence embeddings `[n, d_model]` of an encoder: mean over each prompt's real tokens
    /// of the last hidden state, L2-normalised (sentence-transformers' pooling).
    pub fn embed(
        &self,
        tokens: &[Vec<u32>],
        batch_size: usize,
        cancel: &Cancel,
    ) -> Result<CapturedArray> {
        if !self.is_encoder() {
            return Err(MsError::invalid(format!(
                "{} is a decoder; embed() pools an encoder's hidden states (load an encoder \
                 such as \"minilm-l6\"), or capture hook_resid_post from this model instead",
                self.name
            )));
        }
        if tokens.is_empty() {
            return Err(MsError::invalid("the list of prompts is empty"));
        }
        for (i, ids) in tokens.iter().enumerate() {
            self.check_prompt_ids(i, ids)?;
        }
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].len());
        let pad = self.tokenizer.pad_id.unwrap_or(0);
        let chunking = Chunking::new(batch_size, tokens.len(), &[]);
        let chunks: Vec<&[usize]> = order.chunks(chunking.size).collect();
        let gathered = Gathered::new(tokens.len());
        cancel.progress().start(tokens.len() as u64);
        per_core::map(chunks, chunking.workers, |rows| {
            let lengths: Vec<usize> = rows.iter().map(|&r| tokens[r].len()).collect();
            let width = *lengths.iter().max().unwrap_or(&1);
            let ids = padded_ids(tokens, rows, width, pad)?;
            let mut ctx = HookContext::inactive(self.hooks(), &lengths).with_cancel(cancel);
            let plan = RunPlan::full(&self.net, LogitsMode::None);
            let x = self.net.embed.tokens(&ids)?;
            let hidden = self.net.run_blocks(x, &lengths, &mut ctx, &plan, None)?;
            let pooled = mean_pool_normalized(&hidden, &lengths)?;
            let pooled =
                CapturedArray::new(pooled.dims().to_vec(), pooled.flatten_all()?.to_vec1()?);
            gathered.add(rows, vec![(String::new(), pooled)])?;
            cancel.progress().advance(rows.len() as u64);
            Ok(())
        })?;
        gathered
            .into_arrays()
            .pop()
            .map(|(_, a)| a)
            .ok_or_else(|| MsError::Internal("an embedding run produced no chunk".into()))
    }
}

/// The arrays a run returns, filled as its chunks finish: a chunk's rows are copied straight
/// to its prompts' rows and the chunk's own buffers dropped, so a run holds its returned
/// arrays plus the chunks in flight, never a second copy of the whole capture. The arrays
/// are allocated zeroed by the first chunk (fresh pages: memory is committed as rows arrive).
struct Gathered {
    n_prompts: usize,
    arrays: Mutex<Vec<(String, CapturedArray)>>,
}

impl Gathered {
    fn new(n_prompts: usize) -> Self {
        Gathered {
            n_prompts,
            arrays: Mutex::new(Vec::new()),
        }
    }

    /// Place a chunk's arrays (axis 0 = the prompts `rows`, every chunk naming the same arrays
    /// in the same order).
    fn add(&self, rows: &[usize], parts: Vec<(String, CapturedArray)>) -> Result<()> {
        let mut arrays = self.arrays.lock().map_err(|_| {
            MsError::Internal("a chunk of this run failed while storing its rows".into())
        })?;
        let whole = rows.len() == self.n_prompts && rows.iter().enumerate().all(|(k, &r)| k == r);
        if arrays.is_empty() {
            if whole {
                *arrays = parts; // one chunk in prompt order: keep its buffers as they are
                return Ok(());
            }
            for (name, part) in &parts {
                let mut shape = part.shape.clone();
                shape[0] = self.n_prompts;
                let len = shape.iter().product();
                arrays.push((name.clone(), CapturedArray::new(shape, vec![0f32; len])));
            }
        }
        if arrays.len() != parts.len() {
            return Err(MsError::Internal(format!(
                "a chunk returned {} arrays, the first returned {}",
                parts.len(),
                arrays.len()
            )));
        }
        for ((name, part), (full_name, full)) in parts.iter().zip(arrays.iter_mut()) {
            if name != full_name || part.shape[1..] != full.shape[1..] {
                return Err(MsError::Internal(format!(
                    "chunk array '{name}' {:?} does not line up with '{full_name}' {:?}",
                    part.shape, full.shape
                )));
            }
            let per: usize = part.shape[1..].iter().product();
            for (k, &r) in rows.iter().enumerate() {
                full.data[r * per..(r + 1) * per]
                    .copy_from_slice(&part.data[k * per..(k + 1) * per]);
            }
        }
        Ok(())
    }

    fn into_arrays(self) -> Vec<(String, CapturedArray)> {
        self.arrays
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a run's prompts are split into chunks, and whether chunks run concurrently.
///
/// With several rayon workers, a batch of `batch_size` prompts runs as one chunk per core
/// ([`per_core`]); peak memory stays that of `batch_size` prompts. Interventions whose result
/// depends on the chunk (a mean over "this batch") or that call back into Python keep one
/// chunk at a time, with the kernels parallel inside it.
struct Chunking {
    size: usize,
    workers: usize,
}

impl Chunking {
    fn new(batch_size: usize, n_prompts: usize, interventions: &[Intervention]) -> Self {
        let batch_size = batch_size.max(1);
        let threads = per_core::workers();
        let chunk_local = interventions
            .iter()
            .all(|iv| !matches!(iv.action, Action::Mean(None) | Action::Custom(_)));
        if threads < 2 || !chunk_local || n_prompts < 2 {
            return Chunking {
                size: batch_size,
                workers: 1,
            };
        }
        // A multiple of `threads` chunks, so that no core idles through a last, lone chunk.
        let n_chunks = n_prompts.div_ceil(batch_size) * threads;
        Chunking {
            size: n_prompts.div_ceil(n_chunks).max(1),
            workers: threads,
        }
    }
}

/// Token ids of the prompts `rows`, right-padded with `pad` to `width`: `[rows, width]`.
fn padded_ids(tokens: &[Vec<u32>], rows: &[usize], width: usize, pad: u32) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        ids.extend_from_slice(&tokens[r]);
        ids.extend(std::iter::repeat_n(pad, width - tokens[r].len()));
    }
    Ok(Tensor::from_vec(ids, (rows.len(), width), &Device::Cpu)?)
}

/// Sentence embeddings as sentence-transformers computes them: the mean of the final hidden
/// states over each row's real tokens, L2-normalised. `hidden [batch, pos, d]` -> `[batch, d]`.
fn mean_pool_normalized(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, _) = hidden.dims3()?;
    let weights: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |j| if j < len { 1.0 / len as f32 } else { 0.0 }))
        .collect();
    let w = Tensor::from_vec(weights, (b, t, 1), &Device::Cpu)?;
    let mean = hidden.broadcast_mul(&w)?.sum(1)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}
