//! Input-ablation attribution: how much the log-probability of a target continuation drops
//! when input tokens are removed or masked.
//!
//! Every ablated variant agrees with the clean prompt before the first ablated position, so
//! the clean run's keys and values for that prefix are computed once and shared. Each variant
//! recomputes only its own suffix; the suffixes of many variants run packed as one matrix of
//! rows (`decoder::packed`), and only the rows that predict target tokens go through the
//! final norm and the LM head.

use candle_core::{Device, Tensor, D};

use super::parts::packed::greedy_packs;
use super::{KvCache, LanguageModel, Prefix, RunPlan, Segment};
use crate::error::{MsError, Result};
use crate::hooks::{HookContext, LogitsMode};
use crate::interrupt::Cancel;
use crate::kernels::per_core;

/// How an input span is ablated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ablation {
    /// Remove the tokens (later tokens move up).
    Delete,
    /// Replace each token with this token id.
    Replace(u32),
    /// Set the tokens' input embeddings to zero.
    ZeroEmbedding,
    /// Set the tokens' input embeddings to the mean embedding over the vocabulary.
    MeanEmbedding,
}

/// What to score: the target continuation after the prompt, clean and with each token span
/// (`[start, end)` of the prompt) ablated.
#[derive(Debug, Clone, Copy)]
pub struct AblationJob<'a> {
    pub prompt: &'a [u32],
    pub target: &'a [u32],
    pub spans: &'a [(usize, usize)],
    pub ablation: Ablation,
}

/// How much one packed run holds: at most `variants` variants and about `rows` recomputed
/// positions (bounds the memory of a run).
#[derive(Debug, Clone, Copy)]
pub struct PackLimits {
    pub variants: usize,
    pub rows: usize,
}

/// Target log-probabilities: clean, and with each span ablated.
#[derive(Debug, Clone)]
pub struct AblationScores {
    /// `log p(target | prompt)`, summed over target tokens.
    pub clean: f64,
    /// The same with span `i` ablated.
    pub ablated: Vec<f64>,
}

/// One ablated variant: its tokens, which of them get a replaced embedding, and where it
/// first differs from the clean sequence.
struct Variant {
    ids: Vec<u32>,
    masked: std::ops::Range<usize>,
    start: usize,
}

/// First position a variant must recompute: where it starts to differ, or earlier if its
/// first scored row (the one predicting the first target token) lies before that.
fn recompute_from(v: &Variant, m: usize) -> usize {
    v.start.min(v.ids.len() - m)
}

/// Split variants (in `order`) into packs of at most `max_variants` variants and about
/// `max_rows` recomputed rows (a pack always takes at least one variant), which bounds the
/// memory of one packed run.
fn plan_packs(
    order: &[usize],
    variants: &[Variant],
    m: usize,
    max_variants: usize,
    max_rows: usize,
) -> Vec<Vec<usize>> {
    greedy_packs(
        order.iter().copied(),
        |i| variants[i].ids.len() - recompute_from(&variants[i], m),
        max_variants,
        max_rows,
    )
}

impl LanguageModel {
    fn check_ablation(
        &self,
        prompt: &[u32],
        target: &[u32],
        spans: &[(usize, usize)],
        ablation: Ablation,
    ) -> Result<()> {
        if target.is_empty() {
            return Err(MsError::invalid(
                "the target is empty: give at least one token to score",
            ));
        }
        self.check_prompt_ids(0, prompt)?;
        self.tokenizer.check_ids(target)?;
        if let Ablation::Replace(id) = ablation {
            self.tokenizer.check_ids(&[id])?;
        }
        let ctx = self.config().context_length;
        if prompt.len() + target.len() - 1 > ctx {
            return Err(MsError::invalid(format!(
                "prompt and target ({} tokens) exceed the context length of {ctx}",
                prompt.len() + target.len() - 1
            )));
        }
        for &(s, e) in spans {
            if s >= e || e > prompt.len() {
                return Err(MsError::invalid(format!(
                    "span ({s}, {e}) is not a non-empty token range inside the prompt's {} tokens",
                    prompt.len()
                )));
            }
            if ablation == Ablation::Delete && e - s == prompt.len() {
                return Err(MsError::invalid(
                    "deleting every prompt token leaves nothing to condition on; ablate a shorter span",
                ));
            }
        }
        Ok(())
    }

    /// The variant of `seq` (prompt + target without its last token) with `span` ablated.
    fn variant(seq: &[u32], (s, e): (usize, usize), ablation: Ablation) -> Variant {
        let ids = match ablation {
            Ablation::Delete => [&seq[..s], &seq[e..]].concat(),
            Ablation::Replace(id) => {
                let mut v = seq.to_vec();
                v[s..e].fill(id);
                v
            }
            Ablation::ZeroEmbedding | Ablation::MeanEmbedding => seq.to_vec(),
        };
        let masked = match ablation {
            Ablation::ZeroEmbedding | Ablation::MeanEmbedding => s..e,
            _ => 0..0,
        };
        Variant {
            ids,
            masked,
            start: s,
        }
    }

    /// Sum over target tokens of their log-probabilities, from final residual rows
    /// `[n_variants * m, d_model]` (variant-major, the `m` rows that predict the target).
    fn target_logprobs(&self, rows: &Tensor, target: &[u32]) -> Result<Vec<f64>> {
        let logits = self.decoder("score next tokens")?.unembed(rows)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?.to_vec2::<f32>()?;
        let m = target.len();
        Ok(logp
            .chunks(m)
            .map(|rows| {
                rows.iter()
                    .zip(target)
                    .map(|(r, &t)| f64::from(r[t as usize]))
                    .sum()
            })
            .collect())
    }

    /// Input embeddings of a batch of variants from position `from` on, right-padded, with
    /// each variant's masked positions replaced. Returns `[batch, pos, d_model]` and lengths.
    fn variant_embeddings(
        &self,
        batch: &[&Variant],
        from: usize,
        ablation: Ablation,
        mean: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<usize>)> {
        let lengths: Vec<usize> = batch.iter().map(|v| v.ids.len() - from).collect();
        let t = *lengths.iter().max().unwrap_or(&1);
        let mut rows = Vec::with_capacity(batch.len());
        for v in batch {
            let mut ids = v.ids[from..].to_vec();
            ids.resize(t, 0);
            let n = ids.len();
            let mut x = self
                .decoder("ablate")?
                .embed
                .tokens(&Tensor::from_vec(ids, (1, n), &Device::Cpu)?)?
                .squeeze(0)?;
            if !v.masked.is_empty() {
                let (s, e) = (v.masked.start - from, v.masked.end - from);
                let d = x.dim(1)?;
                let fill = match (ablation, mean) {
                    (Ablation::MeanEmbedding, Some(m)) => m.reshape((1, d))?.repeat((e - s, 1))?,
                    _ => Tensor::zeros((e - s, d), x.dtype(), &Device::Cpu)?,
                };
                x = x.slice_assign(&[s..e, 0..d], &fill)?;
            }
            rows.push(x);
        }
        Ok((Tensor::stack(&rows, 0)?, lengths))
    }

    /// Log-probability of `target` after `prompt`, clean and with each of `spans` (token
    /// ranges of the prompt) ablated. Variants run packed (at most `batch_size` variants and about
    /// `rows_per_batch` recomputed positions per run), each continuing the clean prefix.
    pub fn ablation_scores(
        &self,
        job: &AblationJob,
        limits: PackLimits,
        cancel: &Cancel,
    ) -> Result<AblationScores> {
        let AblationJob {
            prompt,
            target,
            spans,
            ablation,
        } = *job;
        self.check_ablation(prompt, target, spans, ablation)?;
        let m = target.len();
        let seq = [prompt, &target[..m - 1]].concat();

        let decoder = self.decoder("run ablations against next-token log-probabilities")?;
        let mean = match ablation {
            Ablation::MeanEmbedding => Some(decoder.embed.mean_token()?),
            _ => None,
        };
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| spans[i].0);
        let variants: Vec<Variant> = spans
            .iter()
            .map(|&sp| Self::variant(&seq, sp, ablation))
            .collect();
        let clean_variant = Variant {
            ids: seq.clone(),
            masked: 0..0,
            start: 0,
        };
        let packs = plan_packs(&order, &variants, m, limits.variants, limits.rows);
        let mut ablated = vec![0.0; spans.len()];
        // Progress counts sequences scored: the clean one and every variant.
        let progress = cancel.progress();
        progress.start(spans.len() as u64 + 1);
        if let [pack] = packs.as_slice() {
            // One run: the clean sequence is the first segment, whose rows give every variant
            // its prefix keys and values as the layers go. (One such pack per core, each with
            // its own clean segment, repeats the clean rows and was no faster: README,
            // Benchmarks.)
            let members: Vec<&Variant> = std::iter::once(&clean_variant)
                .chain(pack.iter().map(|&i| &variants[i]))
                .collect();
            let scores =
                self.run_pack(&members, job, mean.as_ref(), Prefix::FirstSegment, cancel)?;
            for (&i, &score) in pack.iter().zip(&scores[1..]) {
                ablated[i] = score;
            }
            progress.advance(members.len() as u64);
            return Ok(AblationScores {
                clean: scores[0],
                ablated,
            });
        }
        // Several runs: the clean run fills a cache that every pack continues; packs run one
        // per core ([`per_core`]), so up to one pack per core is in memory.
        let workers = per_core::workers();
        let mut clean_kv = KvCache::default();
        let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu)?;
        let mut ctx = HookContext::inactive(self.hooks(), &[seq.len()]);
        let plan = RunPlan::full(decoder, LogitsMode::None);
        ctx.cancel = cancel.clone();
        let hidden = decoder.run_blocks(
            decoder.embed.tokens(&ids)?,
            &[seq.len()],
            &mut ctx,
            &plan,
            Some(&mut clean_kv),
        )?;
        let clean_rows = hidden.squeeze(0)?.narrow(0, seq.len() - m, m)?;
        let clean = self.target_logprobs(&clean_rows, target)?[0];
        progress.advance(1);
        let scored = per_core::map(packs, workers, |pack| {
            let members: Vec<&Variant> = pack.iter().map(|&i| &variants[i]).collect();
            let scores = self.run_pack(
                &members,
                job,
                mean.as_ref(),
                Prefix::Cache(&clean_kv),
                cancel,
            )?;
            progress.advance(pack.len() as u64);
            Ok((pack, scores))
        })?;
        for (pack, scores) in scored {
            for (&i, score) in pack.iter().zip(scores) {
                ablated[i] = score;
            }
        }
        Ok(AblationScores { clean, ablated })
    }

    /// Target scores of variants run as one pack, each recomputing from its first change.
    /// `mean` is the mean embedding (for `MeanEmbedding`).
    fn run_pack(
        &self,
        members: &[&Variant],
        job: &AblationJob,
        mean: Option<&Tensor>,
        prefix: Prefix,
        cancel: &Cancel,
    ) -> Result<Vec<f64>> {
        let (m, ablation, target) = (job.target.len(), job.ablation, job.target);
        let mut segments = Vec::with_capacity(members.len());
        let mut inputs = Vec::with_capacity(members.len());
        let mut keep = Vec::with_capacity(members.len() * m);
        let mut row0 = 0;
        for v in members {
            let from = recompute_from(v, m);
            let (x, _) = self.variant_embeddings(&[v], from, ablation, mean)?;
            let rows = v.ids.len() - from;
            inputs.push(x.squeeze(0)?);
            segments.push(Segment { prefix: from, rows });
            keep.extend(row0 + rows - m..row0 + rows);
            row0 += rows;
        }
        let decoder = self.decoder("ablate")?;
        let final_rows =
            decoder.run_packed(Tensor::cat(&inputs, 0)?, &segments, prefix, &keep, cancel)?;
        self.target_logprobs(&final_rows, target)
    }

    /// The same numbers by brute force: one full forward pass per variant, no sharing. The
    /// reference for tests and the baseline in the benchmark.
    pub fn ablation_scores_naive(
        &self,
        job: &AblationJob,
        cancel: &Cancel,
    ) -> Result<AblationScores> {
        let AblationJob {
            prompt,
            target,
            spans,
            ablation,
        } = *job;
        self.check_ablation(prompt, target, spans, ablation)?;
        let m = target.len();
        let seq = [prompt, &target[..m - 1]].concat();
        let mean = match ablation {
            Ablation::MeanEmbedding => Some(self.decoder("ablate")?.embed.mean_token()?),
            _ => None,
        };
        let score = |v: &Variant| -> Result<f64> {
            let (x, lengths) = self.variant_embeddings(&[v], 0, ablation, mean.as_ref())?;
            let mut ctx = HookContext::inactive(self.hooks(), &lengths).with_cancel(cancel);
            let net = self.decoder("ablate")?;
            let plan = RunPlan::full(net, LogitsMode::None);
            let hidden = net.run_blocks(x, &lengths, &mut ctx, &plan, None)?;
            let rows = hidden.squeeze(0)?.narrow(0, lengths[0] - m, m)?;
            let score = self.target_logprobs(&rows, target)?[0];
            cancel.progress().advance(1);
            Ok(score)
        };
        cancel.progress().start(spans.len() as u64 + 1);
        let clean = score(&Variant {
            ids: seq.clone(),
            masked: 0..0,
            start: 0,
        })?;
        let ablated = spans
            .iter()
            .map(|&sp| score(&Self::variant(&seq, sp, ablation)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AblationScores { clean, ablated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(len: usize, start: usize) -> Variant {
        Variant {
            ids: vec![0; len],
            masked: 0..0,
            start,
        }
    }

    #[test]
    fn packs_respect_the_row_budget_and_keep_the_order() {
        // 32 single-token deletions of a 32-token prompt (variants have 31 tokens).
        let variants: Vec<Variant> = (0..32).map(|s| variant(31, s)).collect();
        let order: Vec<usize> = (0..32).collect();
        let packs = plan_packs(&order, &variants, 1, 64, 256);
        assert_eq!(packs.concat(), order);
        let rows = |p: &Vec<usize>| -> usize {
            p.iter()
                .map(|&i| 31 - recompute_from(&variants[i], 1))
                .sum()
        };
        assert!(packs.iter().all(|p| p.len() == 1 || rows(p) <= 256));
        // Every variant recomputes only its own suffix: 31 + 30 + ... + 1, and 1 for the last.
        assert_eq!(packs.iter().map(rows).sum::<usize>(), 31 * 32 / 2 + 1);
        assert_eq!(plan_packs(&order, &variants, 1, 10, 10_000).len(), 4);
    }

    #[test]
    fn recompute_starts_early_enough_to_score_the_target() {
        // Deleting the last prompt token: the first target token is predicted from position 3.
        assert_eq!(recompute_from(&variant(5, 4), 2), 3);
        assert_eq!(recompute_from(&variant(9, 2), 2), 2);
    }

    #[test]
    fn variants_follow_the_ablation() {
        let seq = [10, 11, 12, 13];
        assert_eq!(
            LanguageModel::variant(&seq, (1, 3), Ablation::Delete).ids,
            [10, 13]
        );
        assert_eq!(
            LanguageModel::variant(&seq, (1, 2), Ablation::Replace(7)).ids,
            [10, 7, 12, 13]
        );
        let z = LanguageModel::variant(&seq, (2, 4), Ablation::ZeroEmbedding);
        assert_eq!((z.ids.len(), z.masked.clone(), z.start), (4, 2..4, 2));
    }
}
