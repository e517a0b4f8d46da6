//! A per-layer probe sweep in one call: a logistic probe per (layer, target) pair, fitted on
//! the training rows and scored on the training and held-out rows, with the pairs side by
//! side on the rayon pool. Every layer is read in place (float32 or float64), so sweeping a
//! `[layers, n, d]` stack copies nothing (the binary case; see `logistic.rs`).

use rayon::prelude::*;

use super::logistic::{LogisticModel, LogisticParams};
use super::rows::{Feature, RowSet};
use crate::error::{MsError, Result};
use crate::progress::Progress;

/// Class indices of every sample (`0..n_classes`) and the fit's settings, for one target.
pub struct SweepTarget {
    pub labels: Vec<usize>,
    pub n_classes: usize,
    pub params: LogisticParams,
}

/// Accuracy of one (layer, target) probe; `test` is NaN when there are no held-out rows.
#[derive(Debug, Clone, Copy)]
pub struct SweepScore {
    pub train: f64,
    pub test: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// `layers[l]` is a row-major `[n, d]` matrix; `train` and `test` index its rows. Returns the
/// scores as `[layer][target]`; `progress` counts the probes fitted.
pub fn logistic_sweep<T: Feature>(
    layers: &[&[T]],
    d: usize,
    targets: &[SweepTarget],
    train: &[usize],
    test: &[usize],
    progress: &Progress,
) -> Result<Vec<Vec<SweepScore>>> {
    for t in targets {
        if let Some(&bad) = train.iter().chain(test).find(|&&i| i >= t.labels.len()) {
            return Err(MsError::invalid(format!(
                "split index {bad} out of range for {} labels",
                t.labels.len()
            )));
        }
    }
    for (l, data) in layers.iter().enumerate() {
        let n = targets.first().map_or(0, |t| t.labels.len());
        if data.len() != n * d {
            return Err(MsError::shape(format!(
                "layer {l} has {} values, expected {n} rows x {d} features",
                data.len()
            )));
        }
    }
    let jobs: Vec<(usize, usize)> = (0..layers.len())
        .flat_map(|l| (0..targets.len()).map(move |t| (l, t)))
        .collect();
    progress.start(jobs.len() as u64);
    let scores = jobs
        .par_iter()
        .map(|&(l, t)| {
            let score = score_one(layers[l], d, &targets[t], train, test, l)?;
            progress.advance(1);
            Ok(score)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(scores
        .chunks(targets.len().max(1))
        .map(|c| c.to_vec())
        .collect())
}

fn score_one<T: Feature>(
    data: &[T],
    d: usize,
    target: &SweepTarget,
    train: &[usize],
    test: &[usize],
    layer: usize,
) -> Result<SweepScore> {
    let what = format!("layer {layer}");
    let train_rows = RowSet::new(data, d, train)?;
    let test_rows = RowSet::new(data, d, test)?;
    train_rows.check_finite(&what)?;
    if !test.is_empty() {
        test_rows.check_finite(&what)?;
    }
    let pick = |rows: &[usize]| -> Vec<usize> { rows.iter().map(|&i| target.labels[i]).collect() };
    let (y_train, y_test) = (pick(train), pick(test));
    let model = LogisticModel::fit_rows(&train_rows, &y_train, target.n_classes, &target.params)
        .map_err(|e| e.context(&what))?;
    let test_acc = if test.is_empty() {
        f64::NAN
    } else {
        model.accuracy_rows(&test_rows, &y_test)?
    };
    Ok(SweepScore {
        train: model.accuracy_rows(&train_rows, &y_train)?,
        test: test_acc,
        iterations: model.iterations,
        converged: model.converged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn float32_and_float64_layers_score_alike_and_signal_beats_noise() {
        let (n, d) = (400, 8);
        let mut rng = StdRng::seed_from_u64(3);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        // Layer 0 is noise; layer 1 carries the label on feature 0 (offset and scaled, so
        // that the implicit standardization is exercised).
        let noise: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
        let signal: Vec<f32> = noise
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (row, col) = (i / d, i % d);
                if col == 0 {
                    100.0 + 50.0 * (v + labels[row] as f32)
                } else {
                    v
                }
            })
            .collect();
        let target = SweepTarget {
            labels,
            n_classes: 2,
            params: LogisticParams {
                c: 1.0,
                max_iter: 100,
                tol: 1e-6,
                standardize: true,
                class_weight: None,
                cancel: Default::default(),
            },
        };
        let (train, test): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 5 != 0);
        let f32_scores = logistic_sweep(
            &[&noise, &signal],
            d,
            std::slice::from_ref(&target),
            &train,
            &test,
            &Progress::default(),
        )
        .unwrap();
        let as_f64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (noise64, signal64) = (as_f64(&noise), as_f64(&signal));
        let f64_scores = logistic_sweep(
            &[&noise64, &signal64],
            d,
            &[target],
            &train,
            &test,
            &Progress::default(),
        )
        .unwrap();
        for (a, b) in f32_scores.iter().zip(&f64_scores) {
            assert_eq!(a[0].train, b[0].train);
            assert_eq!(a[0].test, b[0].test);
        }
        assert!(f32_scores[1][0].test > 0.95, "{:?}", f32_scores[1]);
        assert!(f32_scores[0][0].test < 0.7, "{:?}", f32_scores[0]);
    }
}
