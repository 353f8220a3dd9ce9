//! Evaluation metrics for click models, and the codistillation paper's prediction churn.

use crate::{bail, Result};

/// Mean log-loss of probabilities `p` against 0/1 labels (probabilities clamped to [1e-15, 1 - 1e-15]).
pub fn log_loss(p: &[f32], y: &[f32]) -> f64 {
    let n = p.len().max(1) as f64;
    p.iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(1e-15, 1.0 - 1e-15);
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / n
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann-Whitney U with mid-ranks). NaN if one class is absent.
pub fn auc(score: &[f32], y: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let (mut rank_sum, mut pos) = (0.0, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if y[k] > 0.5 {
                rank_sum += mid;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = score.len() - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Mean prediction over mean label: 1 is calibrated on average. NaN (undefined) without a
/// positive label.
pub fn calibration(p: &[f32], y: &[f32]) -> f64 {
    let mp = p.iter().map(|&v| v as f64).sum::<f64>();
    let my = y.iter().map(|&v| v as f64).sum::<f64>();
    if my > 0.0 {
        mp / my
    } else {
        f64::NAN
    }
}

/// A metric for people to read: `prec` decimals, or "n/a" where it is undefined (AUC with one
/// class in the labels, calibration without a positive).
pub fn show(x: f64, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:.prec$}")
    } else {
        "n/a".into()
    }
}

/// Prediction churn (Anil et al. 2018, section 4): mean absolute difference of two models'
/// predicted probabilities on the same examples.
pub fn churn(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        bail!(Shape, "churn needs two equal, non-empty prediction lists, got {} and {}", a.len(), b.len());
    }
    Ok(a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_with_half_ties() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0., 0., 1., 1.]), 0.75);
        assert_eq!(auc(&[0.5, 0.5], &[0., 1.]), 0.5);
        assert!(auc(&[0.5, 0.6], &[1., 1.]).is_nan());
    }

    /// Against references written the slow, obvious way on random data with many ties: AUC over
    /// every (positive, negative) pair, ties counting one half; log-loss, calibration and churn by
    /// their definitions in f64; and the clamp at both ends (a certain, wrong prediction costs
    /// -ln(1e-15), never infinity).
    #[test]
    fn metrics_match_brute_force_references() {
        let mut rng = crate::Rng::new(9);
        for n in [2usize, 7, 40, 301] {
            let p: Vec<f32> = (0..n).map(|_| (rng.below(9) as f32 + 0.5) / 10.0).collect(); // 9 levels: ties
            let y: Vec<f32> = (0..n)
                .map(|i| {
                    if i == 0 {
                        1.0
                    } else if i == 1 {
                        0.0
                    } else {
                        rng.below(2) as f32
                    }
                })
                .collect();
            let q: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
            let (mut wins, mut pairs) = (0.0, 0.0);
            for i in (0..n).filter(|&i| y[i] == 1.0) {
                for j in (0..n).filter(|&j| y[j] == 0.0) {
                    pairs += 1.0;
                    wins += if p[i] > p[j] {
                        1.0
                    } else if p[i] == p[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            assert!((auc(&p, &y) - wins / pairs).abs() < 1e-12, "n {n}: AUC {} against {}", auc(&p, &y), wins / pairs);
            let ll: f64 = p.iter().zip(&y).map(|(&p, &y)| if y == 1.0 { -(p as f64).ln() } else { -(1.0 - p as f64).ln() }).sum::<f64>() / n as f64;
            assert!((log_loss(&p, &y) - ll).abs() < 1e-12);
            let cal = p.iter().map(|&v| v as f64).sum::<f64>() / y.iter().map(|&v| v as f64).sum::<f64>();
            assert!((calibration(&p, &y) - cal).abs() < 1e-12);
            let ch = p.iter().zip(&q).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / n as f64;
            assert!((churn(&p, &q).unwrap() - ch).abs() < 1e-12);
        }
        let floor = -(1e-15f64).ln();
        // 1 - (1 - 1e-15) is 1.0000000000000000777e-15 in f64: 8e-4 off the floor; a wrong clamp gives infinity.
        assert!((log_loss(&[1.0], &[0.0]) - floor).abs() < 2e-3, "{}", log_loss(&[1.0], &[0.0]));
        assert!((log_loss(&[0.0], &[1.0]) - floor).abs() < 1e-6, "{}", log_loss(&[0.0], &[1.0]));
        assert!(log_loss(&[1.0, 0.0], &[1.0, 0.0]) < 1e-12);
        // Swapping the labels turns the AUC into its complement.
        let y = [0.0, 1.0, 1.0, 0.0, 1.0];
        let p = [0.1, 0.7, 0.3, 0.3, 0.9];
        let flipped: Vec<f32> = y.iter().map(|v| 1.0 - v).collect();
        assert!((auc(&p, &y) + auc(&p, &flipped) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_loss_calibration_and_churn() {
        assert!((log_loss(&[0.5, 0.5], &[0., 1.]) - 2f64.ln()).abs() < 1e-12);
        assert!(log_loss(&[0.0], &[1.0]).is_finite());
        assert!((calibration(&[0.2, 0.4], &[0., 1.]) - 0.6).abs() < 1e-7);
        assert!(calibration(&[0.2, 0.4], &[0., 0.]).is_nan());
        assert_eq!((show(0.123456, 3), show(f64::NAN, 3), show(f64::INFINITY, 2)), ("0.123".into(), "n/a".into(), "n/a".into()));
        assert!((churn(&[0.1, 0.9], &[0.3, 0.6]).unwrap() - 0.25).abs() < 1e-7);
        assert!(churn(&[0.1], &[]).is_err());
    }
}
