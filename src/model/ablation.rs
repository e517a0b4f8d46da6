//! Input-ablation attribution: how much the log-probability of a target continuation drops
//! when input tokens are removed or masked.
//!
//! Every ablated variant agrees with the clean prompt before the first ablated position, so
//! the clean run's keys and values for that prefix are computed once and shared. Variants are
//! grouped (sorted by where they start to differ) into batches that reuse the prefix up to
//! the earliest start in the batch, and only the rows that predict target tokens go through
//! the final norm and the LM head.

use candle_core::{Device, Tensor, D};

use super::{KvCache, LanguageModel};
use crate::error::{MsError, Result};
use crate::hooks::HookContext;

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

/// First position a batch must recompute: its earliest change, or earlier if a variant's first
/// scored row (the one predicting the first target token) lies before it.
fn recompute_from(batch: &[&Variant], m: usize) -> usize {
    batch
        .iter()
        .map(|v| v.start.min(v.ids.len() - m))
        .min()
        .unwrap_or(0)
}

/// Group variants (in `order`, sorted by where they start to differ) into batches of at most
/// `max_variants`, closing a batch once it would recompute more than `max_rows` positions.
/// Early variants recompute long suffixes and go in small batches, late ones in large
/// batches, so every batch keeps the matmuls about equally large.
fn plan_batches(
    order: &[usize],
    variants: &[Variant],
    m: usize,
    max_variants: usize,
    max_rows: usize,
) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for &i in order {
        current.push(i);
        let refs: Vec<&Variant> = current.iter().map(|&j| &variants[j]).collect();
        let from = recompute_from(&refs, m);
        let width = refs.iter().map(|v| v.ids.len() - from).max().unwrap_or(0);
        if current.len() > 1
            && (current.len() > max_variants.max(1) || current.len() * width > max_rows)
        {
            current.pop();
            batches.push(std::mem::take(&mut current));
            current.push(i);
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
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
                .embed_ids(&Tensor::from_vec(ids, (1, n), &Device::Cpu)?)?
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
    /// ranges of the prompt) ablated. Batches (at most `batch_size` variants and about
    /// `rows_per_batch` recomputed positions each) share the clean prefix.
    pub fn ablation_scores(
        &self,
        prompt: &[u32],
        target: &[u32],
        spans: &[(usize, usize)],
        ablation: Ablation,
        batch_size: usize,
        rows_per_batch: usize,
    ) -> Result<AblationScores> {
        self.check_ablation(prompt, target, spans, ablation)?;
        let m = target.len();
        let seq = [prompt, &target[..m - 1]].concat();
        let hooks = self.hooks();
        let n_layers = self.config().n_layers;

        // Clean run: keys/values of every position, and the clean score.
        let mut clean_kv = KvCache::default();
        let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu)?;
        let mut ctx = HookContext::inactive(hooks, &[seq.len()]);
        let decoder = self.decoder("run ablations against next-token log-probabilities")?;
        let hidden = decoder.run_blocks(
            decoder.embed_ids(&ids)?,
            &mut ctx,
            n_layers,
            Some(&mut clean_kv),
        )?;
        let clean_rows = hidden.squeeze(0)?.narrow(0, seq.len() - m, m)?;
        let clean = self.target_logprobs(&clean_rows, target)?[0];

        let mean = match ablation {
            Ablation::MeanEmbedding => Some(self.decoder("ablate")?.mean_input_embedding()?),
            _ => None,
        };
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| spans[i].0);
        let variants: Vec<Variant> = spans
            .iter()
            .map(|&sp| Self::variant(&seq, sp, ablation))
            .collect();
        let mut ablated = vec![0.0; spans.len()];
        for chunk in plan_batches(&order, &variants, m, batch_size, rows_per_batch) {
            let batch: Vec<&Variant> = chunk.iter().map(|&i| &variants[i]).collect();
            let from = recompute_from(&batch, m);
            let (x, lengths) = self.variant_embeddings(&batch, from, ablation, mean.as_ref())?;
            let mut kv = clean_kv.shared_prefix(from, batch.len())?;
            let mut ctx = HookContext::inactive(hooks, &lengths);
            let hidden = decoder.run_blocks(x, &mut ctx, n_layers, Some(&mut kv))?;
            let (b, t, d) = hidden.dims3()?;
            let idx: Vec<u32> = lengths
                .iter()
                .enumerate()
                .flat_map(|(j, &len)| (len - m..len).map(move |r| (j * t + r) as u32))
                .collect();
            let idx = Tensor::from_vec(idx, b * m, &Device::Cpu)?;
            let rows = hidden.reshape((b * t, d))?.index_select(&idx, 0)?;
            for (&i, score) in chunk.iter().zip(self.target_logprobs(&rows, target)?) {
                ablated[i] = score;
            }
        }
        Ok(AblationScores { clean, ablated })
    }

    /// The same numbers by brute force: one full forward pass per variant, no sharing. The
    /// reference for tests and the baseline in the benchmark.
    pub fn ablation_scores_naive(
        &self,
        prompt: &[u32],
        target: &[u32],
        spans: &[(usize, usize)],
        ablation: Ablation,
    ) -> Result<AblationScores> {
        self.check_ablation(prompt, target, spans, ablation)?;
        let m = target.len();
        let seq = [prompt, &target[..m - 1]].concat();
        let mean = match ablation {
            Ablation::MeanEmbedding => Some(self.decoder("ablate")?.mean_input_embedding()?),
            _ => None,
        };
        let score = |v: &Variant| -> Result<f64> {
            let (x, lengths) = self.variant_embeddings(&[v], 0, ablation, mean.as_ref())?;
            let mut ctx = HookContext::inactive(self.hooks(), &lengths);
            let hidden =
                self.decoder("ablate")?
                    .run_blocks(x, &mut ctx, self.config().n_layers, None)?;
            let rows = hidden.squeeze(0)?.narrow(0, lengths[0] - m, m)?;
            Ok(self.target_logprobs(&rows, target)?[0])
        };
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
    fn batches_respect_row_budget_and_order() {
        // 32 single-token deletions of a 32-token prompt (variants have 31 tokens).
        let variants: Vec<Variant> = (0..32).map(|s| variant(31, s)).collect();
        let order: Vec<usize> = (0..32).collect();
        let batches = plan_batches(&order, &variants, 1, 64, 256);
        assert_eq!(batches.concat(), order);
        for b in &batches {
            let refs: Vec<&Variant> = b.iter().map(|&i| &variants[i]).collect();
            let from = recompute_from(&refs, 1);
            assert!(b.len() == 1 || b.len() * (31 - from) <= 256);
        }
        // Later batches recompute shorter suffixes, so they hold more variants.
        assert!(batches.last().unwrap().len() > batches[0].len());
    }

    #[test]
    fn recompute_starts_early_enough_to_score_the_target() {
        // Deleting the last prompt token: the first target token is predicted from position 3.
        let v = variant(5, 4);
        assert_eq!(recompute_from(&[&v], 2), 3);
        assert_eq!(recompute_from(&[&variant(9, 2)], 2), 2);
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
