//! Metric-learning losses written on a divergence matrix, so the same code
//! trains with the learned Bregman divergence and with the fixed ones.
//!
//! `d[i, j]` is D(sample i, reference j) (see [`crate::divergence`] for the
//! argument order). Pair and triplet losses use the batch as both samples
//! and references; the proxy loss uses learned class proxies as references.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Hadsell et al.: D for positive pairs, max(0, m − D) for negative pairs,
    /// each averaged over its pairs.
    Contrastive,
    /// max(0, D(a, p) − D(a, n) + m) over every valid triplet of the batch,
    /// averaged over the triplets that violate the margin (batch-all).
    #[default]
    Triplet,
    /// Proxy-NCA: cross-entropy of softmax(−D(x, proxy_c) / T) over the
    /// training classes' proxies.
    Proxy,
}

/// `[b, b]` boolean masks: same class (without the diagonal), other class.
fn masks(labels: &Tensor) -> (Tensor, Tensor) {
    let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
    let b = labels.size()[0];
    let eye = Tensor::eye(b, (Kind::Bool, labels.device()));
    (same.logical_and(&eye.logical_not()), same.logical_not())
}

/// Mean of `x` where `mask` holds; 0 (still on the graph) where it never does.
fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind());
    (x * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
}

pub fn contrastive(d: &Tensor, labels: &Tensor, margin: f64) -> Tensor {
    let (pos, neg) = masks(labels);
    masked_mean(d, &pos) + masked_mean(&(d.neg() + margin).relu(), &neg)
}

/// Returns the loss and the fraction of valid triplets that violate the margin.
pub fn triplet(d: &Tensor, labels: &Tensor, margin: f64) -> (Tensor, f64) {
    let (pos, neg) = masks(labels);
    // t[a, p, n] = D(a, p) − D(a, n) + m
    let t = (d.unsqueeze(2) - d.unsqueeze(1) + margin).relu();
    let valid = pos.unsqueeze(2).logical_and(&neg.unsqueeze(1));
    let active = valid.logical_and(&t.gt(1e-12));
    let n_valid = valid.sum(Kind::Float).double_value(&[]);
    let frac = if n_valid > 0.0 { active.sum(Kind::Float).double_value(&[]) / n_valid } else { 0.0 };
    (masked_mean(&t, &active), frac)
}

/// `d`: `[b, classes]` divergences to the proxies; `labels` index the proxies.
pub fn proxy_nca(d: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    (d.neg() / temperature).cross_entropy_for_logits(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], n: i64) -> Tensor {
        Tensor::from_slice(v).view([n, -1])
    }

    #[test]
    fn the_losses_equal_hand_computations() {
        // Samples 0, 1 of class 0, sample 2 of class 1.
        let labels = Tensor::from_slice(&[0i64, 0, 1]);
        let d = t(&[0.0, 0.5, 0.3, 0.2, 0.0, 2.0, 1.0, 0.1, 0.0], 3);
        // Positives (0,1)=0.5 and (1,0)=0.2; negatives 0.3, 2.0, 1.0, 0.1.
        let c = contrastive(&d, &labels, 1.0).double_value(&[]);
        let expect = (0.5 + 0.2) / 2.0 + ((1.0 - 0.3) + 0.0 + 0.0 + (1.0 - 0.1)) / 4.0;
        assert!((c - expect).abs() < 1e-6, "{c} vs {expect}");
        // Triplets (a, p, n): (0, 1, 2): 0.5 − 0.3 + 0.4 = 0.6; (1, 0, 2): 0.2 − 2.0 + 0.4 < 0.
        let (l, frac) = triplet(&d, &labels, 0.4);
        assert!((l.double_value(&[]) - 0.6).abs() < 1e-6 && (frac - 0.5).abs() < 1e-9);
        let dp = t(&[0.0, 2.0, 1.0, 1.0], 2);
        let p = proxy_nca(&dp, &Tensor::from_slice(&[0i64, 1]), 0.5).double_value(&[]);
        let l0 = -(1.0f64 / (1.0 + (-4.0f64).exp())).ln();
        let l1 = -(0.5f64).ln();
        assert!((p - (l0 + l1) / 2.0).abs() < 1e-6, "{p}");
        // No triplet at all: zero, on the graph.
        let (l, _) = triplet(&Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)), &Tensor::from_slice(&[0i64, 1]), 0.1);
        assert_eq!(l.double_value(&[]), 0.0);
    }
}
