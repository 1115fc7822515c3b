//! Ranking and calibration metrics.

/// Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, with tied
/// scores sharing their average rank. `None` when only one class is present.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(std::cmp::Ordering::Equal));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels[..n].iter().filter(|&&y| y > 0.5).count() as f64;
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    Some((rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean binary cross-entropy of probabilities.
pub fn logloss(probs: &[f32], labels: &[f32]) -> f64 {
    let n = probs.len().min(labels.len()).max(1);
    probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        let y = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &y), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &y), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &y), Some(0.5));
        // One positive outranks one of two negatives: 0.5.
        assert_eq!(auc(&[0.1, 0.3, 0.2], &[0.0, 0.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    }

    #[test]
    fn logloss_is_small_for_confident_right_answers() {
        assert!(logloss(&[0.99, 0.01], &[1.0, 0.0]) < 0.02);
        assert!(logloss(&[0.01, 0.99], &[1.0, 0.0]) > 4.0);
    }
}
