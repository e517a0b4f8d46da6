//! Text generation with a KV cache: greedy, temperature, top-k and top-p sampling.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{KvCache, LanguageModel, RunPlan};
use crate::error::{MsError, Result};
use crate::hooks::{
    CaptureSpec, CapturedArray, HookContext, HookKind, HookRegistry, Intervention, LogitsMode,
    Positions,
};
use crate::interrupt::Cancel;

/// How to pick each next token. `temperature == 0` is greedy (argmax).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Stop after the end-of-sequence token.
    pub stop_at_eos: bool,
}

impl SamplingParams {
    fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(MsError::invalid(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(MsError::invalid("top_k must be at least 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(MsError::invalid(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        Ok(())
    }
}

/// A generated continuation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The continuation's text (the prompt excluded).
    pub text: String,
    /// Prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// New token ids.
    pub token_ids: Vec<u32>,
    /// Log-probability of each new token under the model's distribution (temperature 1,
    /// before top-k/top-p), so that greedy and sampled runs report comparable numbers.
    pub logprobs: Vec<f32>,
    /// The captured hooks, `[1, pos, ...]` over every position that was run: the prompt and
    /// each new token but the last (which no forward has read).
    pub cache: Vec<(String, CapturedArray)>,
}

/// Captures of every step, joined along the position axis.
struct StepCaptures {
    /// Positions the whole generation can run (each array's buffer is sized for them once).
    max_positions: usize,
    /// Name, the shape after the position axis, the data, positions so far.
    arrays: Vec<(String, Vec<usize>, Vec<f32>, usize)>,
}

impl StepCaptures {
    fn new(max_positions: usize) -> Self {
        StepCaptures {
            max_positions,
            arrays: Vec::new(),
        }
    }

    /// Append one step's `[1, t, ...]` arrays.
    fn push(&mut self, step: Vec<(String, CapturedArray)>) -> Result<()> {
        if self.arrays.is_empty() {
            self.arrays = step
                .iter()
                .map(|(n, a)| {
                    let rest = a.shape.get(2..).unwrap_or_default().to_vec();
                    let data =
                        Vec::with_capacity(self.max_positions * rest.iter().product::<usize>());
                    (n.clone(), rest, data, 0)
                })
                .collect();
        }
        for ((name, a), (want, rest, data, positions)) in step.into_iter().zip(&mut self.arrays) {
            if name != *want || a.shape.len() < 2 || a.shape[0] != 1 || a.shape[2..] != rest[..] {
                return Err(MsError::Compute(format!(
                    "generate: hook '{name}' changed shape between steps ({:?})",
                    a.shape
                )));
            }
            *positions += a.shape[1];
            data.extend_from_slice(&a.data);
        }
        Ok(())
    }

    fn finish(self) -> Vec<(String, CapturedArray)> {
        self.arrays
            .into_iter()
            .map(|(name, rest, mut data, positions)| {
                data.shrink_to_fit(); // a stop at end-of-sequence leaves reserved room
                let mut shape = vec![1, positions];
                shape.extend(rest);
                (name, CapturedArray::new(shape, data))
            })
            .collect()
    }
}

/// A capture for generation: hooks whose position axis is the second (every hook but the
/// attention pattern, whose key axis grows each step), at every position, no logits.
pub fn generation_capture(registry: &HookRegistry, patterns: &[String]) -> Result<CaptureSpec> {
    let spec = CaptureSpec::new(registry, patterns, Positions::All, None, LogitsMode::None)?;
    if let Some(p) = spec.points.iter().find(|p| p.kind == HookKind::AttnPattern) {
        return Err(MsError::invalid(format!(
            "generate cannot capture '{}': an attention pattern gains a key per step; capture it \
             with run_with_cache on the prompt plus the generated text",
            p.name()
        )));
    }
    Ok(spec)
}

/// Temperatures below this sample greedily.
const GREEDY_BELOW: f64 = 1e-6;

/// `log_softmax(logits)[id]`, without the vector: a step of a 262k-token vocabulary
/// (Gemma 3) would spend a millisecond on it. The exponentials are f32 (2 ulp), their sum f64.
fn log_prob(logits: &[f32], id: usize) -> f32 {
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    logits[id] - max - crate::kernels::fused::exp_sum(logits, max).ln() as f32
}

fn pick_token(logits: &[f32], p: &SamplingParams, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    // Below this, sampling is the argmax to within float precision (and dividing the logits
    // by it would overflow to inf): greedy.
    if p.temperature < GREEDY_BELOW {
        return argmax();
    }
    let mut cand: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, f64::from(x) / p.temperature))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = p.top_k {
        cand.truncate(k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|(_, x)| (x - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    if let Some(top_p) = p.top_p {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let r: f64 = rng.random();
    let mut cum = 0.0;
    for (i, q) in probs.iter().enumerate() {
        cum += q;
        if r < cum {
            return cand[i].0 as u32;
        }
    }
    cand[probs.len() - 1].0 as u32
}

impl LanguageModel {
    /// Continue one prompt. Interventions apply at every step (e.g. steering vectors); the
    /// hooks of `capture` (see [`generation_capture`]) are kept at every step, in the core.
    pub fn generate(
        &self,
        prompt: &str,
        params: &SamplingParams,
        interventions: &[Intervention],
        capture: Option<&CaptureSpec>,
        cancel: &Cancel,
    ) -> Result<Generation> {
        params.validate()?;
        let prompt_ids = self.encode_prompts(&[prompt.to_string()])?.remove(0);
        let ctx_len = self.config().context_length;
        if prompt_ids.len() + params.max_new_tokens > ctx_len {
            return Err(MsError::invalid(format!(
                "prompt ({} tokens) + max_new_tokens ({}) exceed the context length of {ctx_len}",
                prompt_ids.len(),
                params.max_new_tokens
            )));
        }
        let mut rng = StdRng::seed_from_u64(params.seed);
        let mut cache = KvCache::default();
        let mut input = prompt_ids.clone();
        let mut new_ids = Vec::new();
        let mut logprobs = Vec::new();
        let net = self.decoder("generate text")?;
        // The prompt, then one position per new token but the last.
        let mut captured =
            StepCaptures::new(prompt_ids.len() + params.max_new_tokens.saturating_sub(1));
        for _ in 0..params.max_new_tokens {
            let ids = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu)?;
            let lengths = [input.len()];
            let mut ctx = HookContext::new(self.hooks(), capture, interventions, &lengths)?
                .with_cancel(cancel);
            let plan = RunPlan::new(
                net,
                &ctx,
                &lengths,
                net.cfg.n_layers,
                LogitsMode::Last,
                true,
            );
            let logits = net
                .forward(&ids, &lengths, &mut ctx, &plan, Some(&mut cache), None)?
                .ok_or_else(|| MsError::Compute("forward returned no logits".into()))?;
            let logits = logits.data;
            if capture.is_some() {
                captured.push(std::mem::take(&mut ctx.cache).into_entries())?;
            }
            let next = pick_token(&logits, params, &mut rng);
            logprobs.push(log_prob(&logits, next as usize));
            new_ids.push(next);
            if params.stop_at_eos && Some(next) == self.tokenizer.eos_id {
                break;
            }
            input = vec![next];
        }
        Ok(Generation {
            text: self.tokenizer.decode(&new_ids)?,
            prompt_ids,
            token_ids: new_ids,
            logprobs,
            cache: captured.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f64, k: Option<usize>, p: Option<f64>) -> SamplingParams {
        SamplingParams {
            max_new_tokens: 1,
            temperature: t,
            top_k: k,
            top_p: p,
            seed: 0,
            stop_at_eos: false,
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            pick_token(&[0.1, 3.0, 2.0], &params(0.0, None, None), &mut rng),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(
                pick_token(&[0.1, 3.0, 2.9], &params(1.0, Some(1), None), &mut rng),
                1
            );
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        let mut rng = StdRng::seed_from_u64(2);
        // probs ~ [0.84, 0.11, 0.04]: top_p 0.5 keeps only the first.
        for _ in 0..20 {
            assert_eq!(
                pick_token(&[3.0, 1.0, 0.0], &params(1.0, None, Some(0.5)), &mut rng),
                0
            );
        }
    }

    #[test]
    fn sampling_is_seeded() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..16)
                .map(|_| pick_token(&logits, &params(1.0, None, None), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn log_probs_normalise_and_match_f64() {
        let logits = [1.0f32, 2.0, 3.0, -40.0, 7.5];
        let total: f64 = (0..logits.len())
            .map(|i| f64::from(log_prob(&logits, i)).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        for (i, &x) in logits.iter().enumerate() {
            let want = f64::from(x) - lse;
            let err = (f64::from(log_prob(&logits, i)) - want).abs();
            assert!(err < 1e-6 * want.abs().max(1.0), "{i}: {err}");
        }
    }
}
