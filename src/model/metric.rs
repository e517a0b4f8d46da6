//! PLACEHOLDER written against the shared issue-20 interface until the lead's `metric.rs`
//! lands on main (take main's version on merge).

use serde::Deserialize;

use crate::error::{MsError, Result};

/// A scalar of the final logits at one position of one prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Metric {
    Logprob {
        target: u32,
        #[serde(default)]
        position: Option<usize>,
    },
    LogitDiff {
        a: u32,
        b: u32,
        #[serde(default)]
        position: Option<usize>,
    },
    LogitsDot {
        weights: Vec<f32>,
        #[serde(default)]
        position: Option<usize>,
    },
}

impl Metric {
    pub fn check(&self, vocab: usize) -> Result<()> {
        let id = |t: u32| {
            if (t as usize) < vocab {
                Ok(())
            } else {
                Err(MsError::invalid(format!(
                    "metric token id {t} is outside the vocabulary of {vocab}"
                )))
            }
        };
        match self {
            Metric::Logprob { target, .. } => id(*target),
            Metric::LogitDiff { a, b, .. } => id(*a).and(id(*b)),
            Metric::LogitsDot { weights, .. } => {
                if weights.len() != vocab || weights.iter().any(|w| !w.is_finite()) {
                    Err(MsError::invalid("metric weights must be [vocab] finite"))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub fn position(&self, len: usize) -> Result<usize> {
        let p = match self {
            Metric::Logprob { position, .. }
            | Metric::LogitDiff { position, .. }
            | Metric::LogitsDot { position, .. } => *position,
        };
        match p {
            None => Ok(len.saturating_sub(1)),
            Some(p) if p < len => Ok(p),
            Some(p) => Err(MsError::invalid(format!(
                "metric position {p} is beyond the prompt, which has {len} tokens (allowed: 0 to {})",
                len as i64 - 1
            ))),
        }
    }

    pub fn value(&self, logits: &[f32]) -> f32 {
        match self {
            Metric::Logprob { target, .. } => {
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let lse = logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln() + max;
                logits[*target as usize] - lse
            }
            Metric::LogitDiff { a, b, .. } => logits[*a as usize] - logits[*b as usize],
            Metric::LogitsDot { weights, .. } => {
                weights.iter().zip(logits).map(|(w, x)| w * x).sum()
            }
        }
    }
}
