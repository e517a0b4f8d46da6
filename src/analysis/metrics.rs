//! Metrics, written to agree exactly with scikit-learn's definitions.

use ndarray::{ArrayView1, ArrayView2};

use crate::error::{MsError, Result};

pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> Result<f64> {
    super::check::same_rows(y_true.len(), y_pred.len(), "y_pred")?;
    if y_true.is_empty() {
        return Err(MsError::data("accuracy of an empty set"));
    }
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y_true.len() as f64)
}

/// Mean of per-class recall over the classes present in `y_true`.
pub fn balanced_accuracy(y_true: &[usize], y_pred: &[usize]) -> Result<f64> {
    super::check::same_rows(y_true.len(), y_pred.len(), "y_pred")?;
    let k = y_true.iter().chain(y_pred).max().map_or(0, |m| m + 1);
    let cm = confusion_matrix(y_true, y_pred, k);
    let recalls: Vec<f64> = (0..k)
        .filter(|&c| cm[c].iter().sum::<usize>() > 0)
        .map(|c| cm[c][c] as f64 / cm[c].iter().sum::<usize>() as f64)
        .collect();
    if recalls.is_empty() {
        return Err(MsError::data("balanced accuracy of an empty set"));
    }
    Ok(recalls.iter().sum::<f64>() / recalls.len() as f64)
}

/// `cm[true][pred]` counts.
pub fn confusion_matrix(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut cm = vec![vec![0usize; n_classes]; n_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        if t < n_classes && p < n_classes {
            cm[t][p] += 1;
        }
    }
    cm
}

/// Area under the ROC curve for binary labels (1 = positive), via the Mann-Whitney statistic
/// with average ranks for ties — identical to scikit-learn's `roc_auc_score`.
pub fn auroc(y_true: &[usize], scores: &[f64]) -> Result<f64> {
    super::check::same_rows(y_true.len(), scores.len(), "scores")?;
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(MsError::data("AUROC: scores contain NaN or inf"));
    }
    let n_pos = y_true.iter().filter(|&&y| y == 1).count();
    let n_neg = y_true.iter().filter(|&&y| y == 0).count();
    if n_pos + n_neg != y_true.len() {
        return Err(MsError::data("AUROC needs binary labels 0 and 1"));
    }
    if n_pos == 0 || n_neg == 0 {
        return Err(MsError::data(
            "AUROC is undefined when only one class is present in y_true",
        ));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if y_true[k] == 1 {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

/// Coefficient of determination of each target column.
pub fn r2_per_target(y_true: &ArrayView2<f64>, y_pred: &ArrayView2<f64>) -> Result<Vec<f64>> {
    if y_true.shape() != y_pred.shape() {
        return Err(MsError::shape(format!(
            "R²: y_true {:?} and y_pred {:?} differ in shape",
            y_true.shape(),
            y_pred.shape()
        )));
    }
    Ok((0..y_true.ncols())
        .map(|j| r2(&y_true.column(j), &y_pred.column(j)))
        .collect())
}

pub fn r2(y: &ArrayView1<f64>, p: &ArrayView1<f64>) -> f64 {
    let mean = y.mean().unwrap_or(0.0);
    let ss_res: f64 = y.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - mean) * (a - mean)).sum();
    if ss_tot == 0.0 {
        if ss_res == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - ss_res / ss_tot
    }
}

const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle (haversine) distance in km between (lat, lon) points in degrees.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Proximity error (Gurnee & Tegmark 2023): for each entity, the fraction of the other
/// entities whose *prediction* lies closer to the entity's true position than its own
/// prediction does. Euclidean distance in the target space. 0 is perfect; 0.5 is chance.
pub fn proximity_error(y_true: &ArrayView2<f64>, y_pred: &ArrayView2<f64>) -> Result<Vec<f64>> {
    if y_true.shape() != y_pred.shape() || y_true.nrows() < 2 {
        return Err(MsError::shape(format!(
            "proximity error needs equal shapes with at least 2 rows, got {:?} and {:?}",
            y_true.shape(),
            y_pred.shape()
        )));
    }
    let n = y_true.nrows();
    let dist = |a: ArrayView1<f64>, b: ArrayView1<f64>| -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
    };
    Ok((0..n)
        .map(|i| {
            let own = dist(y_true.row(i), y_pred.row(i));
            let closer = (0..n)
                .filter(|&j| j != i && dist(y_true.row(i), y_pred.row(j)) < own)
                .count();
            closer as f64 / (n - 1) as f64
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn auroc_with_ties() {
        // sklearn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.75
        assert!((auroc(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]).unwrap() - 0.75).abs() < 1e-12);
        assert!((auroc(&[0, 1, 0, 1], &[0.5, 0.5, 0.5, 0.5]).unwrap() - 0.5).abs() < 1e-12);
        assert!(auroc(&[1, 1], &[0.1, 0.2]).is_err());
    }

    #[test]
    fn r2_and_distance() {
        let y = array![[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]];
        let r = r2_per_target(&y.view(), &y.view()).unwrap();
        assert_eq!(r, vec![1.0, 1.0]);
        // Paris -> London is about 344 km.
        let d = great_circle_km((48.8566, 2.3522), (51.5074, -0.1278));
        assert!((d - 343.5).abs() < 2.0, "{d}");
    }

    #[test]
    fn proximity_perfect_and_swapped() {
        let y = array![[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]];
        assert_eq!(proximity_error(&y.view(), &y.view()).unwrap(), vec![0.0; 3]);
        let swapped = array![[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]];
        let e = proximity_error(&y.view(), &swapped.view()).unwrap();
        assert_eq!(e[0], 0.5);
        assert_eq!(e[2], 0.0);
    }

    #[test]
    fn balanced_accuracy_weights_classes() {
        let b = balanced_accuracy(&[0, 0, 0, 1], &[0, 0, 0, 0]).unwrap();
        assert!((b - 0.5).abs() < 1e-12);
    }
}
