//! Metrics: one scalar of the final logits at one position of a prompt. Gradients
//! differentiate a metric; activation patching measures it on patched runs.

use serde::Deserialize;

use crate::error::{MsError, Result};

/// A scalar of the logits at one position (a prompt's last token unless `position` is given).
/// Serde-tagged, as the bindings receive it: `{"kind": "logprob", "target": 7042}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Metric {
    /// `log_softmax(logits)[target]`.
    Logprob {
        target: u32,
        #[serde(default)]
        position: Option<usize>,
    },
    /// `logits[a] - logits[b]`.
    LogitDiff {
        a: u32,
        b: u32,
        #[serde(default)]
        position: Option<usize>,
    },
    /// `weights · logits` (`weights`: `[vocab]`), a linear function of the logits chosen by
    /// the caller.
    LogitsDot {
        weights: Vec<f32>,
        #[serde(default)]
        position: Option<usize>,
    },
}

impl Metric {
    /// Parses the JSON spec the bindings pass.
    pub fn from_json(spec: &str) -> Result<Self> {
        serde_json::from_str(spec).map_err(|e| {
            MsError::invalid(format!(
                "bad metric {spec:.200}: {e}; allowed: {{\"kind\": \"logprob\", \"target\": id}}, \
                 {{\"kind\": \"logit_diff\", \"a\": id, \"b\": id}}, \
                 {{\"kind\": \"logits_dot\", \"weights\": [vocab floats]}}, each with an optional \"position\""
            ))
        })
    }

    /// Checks the metric against a vocabulary of `vocab` tokens.
    pub fn check(&self, vocab: usize) -> Result<()> {
        let id_ok = |what: &str, id: u32| {
            if (id as usize) < vocab {
                Ok(())
            } else {
                Err(MsError::invalid(format!(
                    "metric {what} token id {id} is out of range: the vocabulary has {vocab} tokens"
                )))
            }
        };
        match self {
            Metric::Logprob { target, .. } => id_ok("target", *target),
            Metric::LogitDiff { a, b, .. } => {
                id_ok("a", *a)?;
                id_ok("b", *b)
            }
            Metric::LogitsDot { weights, .. } => {
                if weights.len() != vocab {
                    return Err(MsError::shape(format!(
                        "logits_dot weights have {} entries, the vocabulary has {vocab}",
                        weights.len()
                    )));
                }
                match weights.iter().position(|w| !w.is_finite()) {
                    Some(i) => Err(MsError::data(format!(
                        "logits_dot weight {i} is {} (weights must be finite)",
                        weights[i]
                    ))),
                    None => Ok(()),
                }
            }
        }
    }

    fn given_position(&self) -> Option<usize> {
        match self {
            Metric::Logprob { position, .. }
            | Metric::LogitDiff { position, .. }
            | Metric::LogitsDot { position, .. } => *position,
        }
    }

    /// The position the metric reads in a prompt of `len` tokens.
    pub fn position(&self, len: usize) -> Result<usize> {
        if len == 0 {
            return Err(MsError::invalid(
                "a metric needs a prompt of at least one token",
            ));
        }
        match self.given_position() {
            None => Ok(len - 1),
            Some(p) if p < len => Ok(p),
            Some(p) => Err(MsError::invalid(format!(
                "metric position {p} is beyond the prompt, which has {len} tokens (positions 0..{})",
                len - 1
            ))),
        }
    }

    /// The metric of one logits row `[vocab]`.
    pub fn value(&self, logits: &[f32]) -> f32 {
        match self {
            Metric::Logprob { target, .. } => logits[*target as usize] - log_sum_exp(logits) as f32,
            Metric::LogitDiff { a, b, .. } => logits[*a as usize] - logits[*b as usize],
            Metric::LogitsDot { weights, .. } => weights
                .iter()
                .zip(logits)
                .map(|(&w, &l)| w as f64 * l as f64)
                .sum::<f64>() as f32,
        }
    }

    /// d metric / d logits for one logits row: `[vocab]`.
    pub fn grad_logits(&self, logits: &[f32]) -> Vec<f32> {
        match self {
            Metric::Logprob { target, .. } => {
                // d/dz (z_t - lse(z)) = onehot(t) - softmax(z)
                let lse = log_sum_exp(logits);
                let mut g: Vec<f32> = logits
                    .iter()
                    .map(|&z| -((z as f64 - lse).exp() as f32))
                    .collect();
                g[*target as usize] += 1.0;
                g
            }
            Metric::LogitDiff { a, b, .. } => {
                let mut g = vec![0f32; logits.len()];
                g[*a as usize] += 1.0;
                g[*b as usize] -= 1.0;
                g
            }
            Metric::LogitsDot { weights, .. } => weights.clone(),
        }
    }
}

/// `log Σ exp(z)`, in f64 for a vocabulary of 10^5 terms.
fn log_sum_exp(z: &[f32]) -> f64 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.5, -0.25, 3.0, 0.5, -2.0]
    }

    /// Central differences of `value`, in f64 steps on an f32 function (loose bound).
    fn numeric_grad(m: &Metric, z: &[f32]) -> Vec<f32> {
        let h = 1e-2f32;
        (0..z.len())
            .map(|i| {
                let (mut up, mut down) = (z.to_vec(), z.to_vec());
                up[i] += h;
                down[i] -= h;
                (m.value(&up) - m.value(&down)) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn parses_the_three_kinds() {
        let m = Metric::from_json(r#"{"kind": "logprob", "target": 2}"#).unwrap();
        assert_eq!(
            m,
            Metric::Logprob {
                target: 2,
                position: None
            }
        );
        let m =
            Metric::from_json(r#"{"kind": "logit_diff", "a": 1, "b": 2, "position": 3}"#).unwrap();
        assert_eq!(m.position(5).unwrap(), 3);
        assert!(Metric::from_json(r#"{"kind": "logits_dot", "weights": [1.0, 2.0]}"#).is_ok());
        let err = Metric::from_json(r#"{"kind": "prob", "target": 2}"#).unwrap_err();
        assert!(err.to_string().contains("logit_diff"), "{err}");
        assert!(Metric::from_json(r#"{"kind": "logprob", "target": 2, "extra": 1}"#).is_err());
    }

    #[test]
    fn logprob_is_a_log_probability() {
        let m = Metric::Logprob {
            target: 2,
            position: None,
        };
        let z = logits();
        let p: f64 = z.iter().map(|&v| (v as f64).exp()).sum();
        let expected = (3.0f64.exp() / p).ln();
        assert!((m.value(&z) as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let z = logits();
        let mut w = vec![0.5f32; z.len()];
        w[1] = -1.0;
        for m in [
            Metric::Logprob {
                target: 3,
                position: None,
            },
            Metric::LogitDiff {
                a: 0,
                b: 4,
                position: None,
            },
            Metric::LogitsDot {
                weights: w,
                position: None,
            },
        ] {
            let analytic = m.grad_logits(&z);
            for (a, n) in analytic.iter().zip(numeric_grad(&m, &z)) {
                assert!((a - n).abs() < 1e-3, "{m:?}: {a} vs {n}");
            }
        }
    }

    #[test]
    fn bad_metrics_are_refused() {
        let m = Metric::Logprob {
            target: 9,
            position: Some(4),
        };
        assert!(m.check(5).unwrap_err().to_string().contains("out of range"));
        let err = m.position(3).unwrap_err().to_string();
        assert!(
            err.contains("beyond the prompt") && err.contains("3 tokens"),
            "{err}"
        );
        let dot = Metric::LogitsDot {
            weights: vec![1.0, f32::NAN],
            position: None,
        };
        assert!(matches!(dot.check(3), Err(MsError::Shape(_))));
        assert!(matches!(dot.check(2), Err(MsError::Data(_))));
    }
}
