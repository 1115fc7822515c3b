//! The GRPO objective, as pure functions of tensors, shared by GRPO and GHPO:
//! group-normalised advantages, per-token log-probabilities of completions,
//! the clipped ratio loss with an optional KL to a reference policy, and the
//! three ways of aggregating token losses. GHPO's difficulty test lives here
//! too, since it reads the same group rewards.
//!
//! Rewards arrive gathered from every rank (a prompt's G completions may have
//! been generated on different ranks), in group order: completions
//! `g*G .. (g+1)*G` answer prompt g.

use crate::model::{positions_from_mask, Qwen2};
use tch::{Kind, Tensor};

/// How token losses become one number (the names TRL uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossAggregation {
    /// Sum over all completion tokens of the batch / their count (TRL `bnpo`,
    /// the reference GHPO run's default).
    TokenMean,
    /// Mean over each sequence's tokens, then over sequences (TRL `grpo`).
    SeqMeanTokenMean,
    /// Sum / (batch × max completion length) (Dr. GRPO: no length bias).
    DrGrpo { max_completion_len: usize },
}

/// (r − mean_g) / (std_g + eps) within each group of `group` rewards, with the
/// unbiased std (torch's default); `scale = false` leaves out the division.
/// NaN rewards (the verifier could not read the gold answer) count as 0 for
/// the statistics and get advantage 0.
pub fn group_advantages(rewards: &[f64], group: usize, eps: f64, scale: bool) -> Vec<f64> {
    assert!(group > 0 && rewards.len() % group == 0, "rewards must come in whole groups of {group}");
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let vals: Vec<f64> = g.iter().map(|r| if r.is_nan() { 0.0 } else { *r }).collect();
        let mean = vals.iter().sum::<f64>() / group as f64;
        let std = if group > 1 {
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (group - 1) as f64).sqrt()
        } else {
            0.0
        };
        for (r, v) in g.iter().zip(&vals) {
            let a = if scale { (v - mean) / (std + eps) } else { v - mean };
            out.push(if r.is_nan() { 0.0 } else { a });
        }
    }
    out
}

/// GHPO's difficulty test: a group is too hard when every accuracy reward in it
/// is ≤ 0. A NaN never is (`NaN <= 0` is false), so a group with an
/// unreadable gold answer is never hinted.
pub fn too_hard(accuracy: &[f64], group: usize) -> Vec<bool> {
    accuracy.chunks(group).map(|g| g.iter().all(|r| *r <= 0.0)).collect()
}

/// Log-probabilities `[batch, completion]` of the completion tokens under
/// `model` at `temperature`. `ids` `[batch, prompt + completion]` is
/// left-padded prompts followed by right-padded completions; `mask` marks real
/// tokens; the completion starts at column `prompt_len`.
pub fn completion_logprobs(model: &Qwen2, ids: &Tensor, mask: &Tensor, prompt_len: i64, temperature: f64) -> Tensor {
    let total = ids.size()[1];
    let logits = model.forward(ids, &positions_from_mask(mask), mask, None);
    // Position t predicts token t + 1.
    let pred = logits.narrow(1, prompt_len - 1, total - prompt_len).to_kind(Kind::Float) / temperature.max(1e-6);
    let targets = ids.narrow(1, prompt_len, total - prompt_len);
    pred.log_softmax(-1, Kind::Float).gather(2, &targets.unsqueeze(-1), false).squeeze_dim(-1)
}

/// Settings of the clipped objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipParams {
    pub eps_low: f64,
    pub eps_high: f64,
    /// Weight of the k3 KL estimate to the reference policy (0: none).
    pub beta: f64,
}

/// The GRPO loss of a batch, and the mean KL (0 without a reference).
///
/// Per token: −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(exp(ref−logp) −
/// (ref−logp) − 1), with ρ = exp(logp − old_logp); `mask` `[batch, len]` marks
/// completion tokens (1 up to and including EOS).
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    clip: ClipParams,
    agg: LossAggregation,
) -> (Tensor, Tensor) {
    let mask = mask.to_kind(Kind::Float);
    let adv = advantages.to_kind(Kind::Float).unsqueeze(1);
    let ratio = (logp - old_logp).exp();
    let clipped = ratio.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high);
    let mut per_token = -(&ratio * &adv).min_other(&(&clipped * &adv));
    let mut kl_mean = Tensor::from(0.0f32);
    if let Some(r) = ref_logp.filter(|_| clip.beta != 0.0) {
        let d = r - logp;
        let kl = d.exp() - &d - 1.0;
        kl_mean = (&kl * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0);
        per_token = per_token + kl * clip.beta;
    }
    let masked = &per_token * &mask;
    let loss = match agg {
        LossAggregation::TokenMean => masked.sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0),
        LossAggregation::SeqMeanTokenMean => {
            (masked.sum_dim_intlist(1, false, Kind::Float) / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0)).mean(Kind::Float)
        }
        LossAggregation::DrGrpo { max_completion_len } => {
            masked.sum(Kind::Float) / (mask.size()[0] as f64 * max_completion_len.max(1) as f64)
        }
    };
    (loss, kl_mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn advantages_are_normalised_per_group_with_the_unbiased_std() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], 4, 1e-4, true);
        // Group 1: mean 0.5, unbiased std sqrt(1/3).
        let s = (1.0f64 / 3.0).sqrt();
        assert!(close(a[0], 0.5 / (s + 1e-4)) && close(a[1], -0.5 / (s + 1e-4)));
        // Group 2 is constant: no signal.
        assert!(a[4..].iter().all(|x| *x == 0.0));
        let unscaled = group_advantages(&[1.0, 0.0], 2, 1e-4, false);
        assert_eq!(unscaled, vec![0.5, -0.5]);
        let nan = group_advantages(&[f64::NAN, 1.0], 2, 1e-4, false);
        assert_eq!(nan[0], 0.0);
        assert!(close(nan[1], 0.5));
    }

    #[test]
    fn a_group_is_too_hard_only_when_all_its_answers_are_wrong() {
        assert_eq!(too_hard(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, f64::NAN, 0.0], 2), vec![true, false, true, false]);
    }

    fn t(rows: &[&[f64]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64]).to_kind(Kind::Float)
    }

    const CLIP: ClipParams = ClipParams { eps_low: 0.2, eps_high: 0.2, beta: 0.0 };

    #[test]
    fn on_policy_the_loss_is_minus_the_mean_advantage_and_aggregations_differ_as_they_should() {
        let logp = t(&[&[-1.0, -2.0, -3.0], &[-0.5, -0.5, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0]]);
        let adv = Tensor::from_slice(&[2.0f64, -1.0]);
        let (tm, _) = grpo_loss(&logp, &logp, None, &adv, &mask, CLIP, LossAggregation::TokenMean);
        // ρ = 1: tokens give −A: (−2·3 + 1·1) / 4 tokens.
        assert!(close(tm.double_value(&[]), -5.0 / 4.0));
        let (sm, _) = grpo_loss(&logp, &logp, None, &adv, &mask, CLIP, LossAggregation::SeqMeanTokenMean);
        assert!(close(sm.double_value(&[]), (-2.0 + 1.0) / 2.0));
        let (dr, _) = grpo_loss(&logp, &logp, None, &adv, &mask, CLIP, LossAggregation::DrGrpo { max_completion_len: 4 });
        assert!(close(dr.double_value(&[]), -5.0 / 8.0));
    }

    #[test]
    fn the_ratio_is_clipped_on_the_side_that_would_overshoot() {
        let old = t(&[&[0.0], &[0.0]]);
        let new = t(&[&[f64::ln(1.5)], &[f64::ln(1.5)]]);
        let mask = t(&[&[1.0], &[1.0]]);
        // Positive advantage: ρ = 1.5 is capped at 1.2 → loss −1.2·A.
        let (l, _) = grpo_loss(&new, &old, None, &Tensor::from_slice(&[1.0f64, 1.0]), &mask, CLIP, LossAggregation::TokenMean);
        assert!(close(l.double_value(&[]), -1.2));
        // Negative advantage: min(1.5·(−1), 1.2·(−1)) = −1.5 → loss 1.5 (no clipping benefit).
        let (l, _) = grpo_loss(&new, &old, None, &Tensor::from_slice(&[-1.0f64, -1.0]), &mask, CLIP, LossAggregation::TokenMean);
        assert!(close(l.double_value(&[]), 1.5));
    }

    #[test]
    fn the_kl_term_is_the_k3_estimate_weighted_by_beta() {
        let logp = t(&[&[-1.0, -2.0]]);
        let reference = t(&[&[-1.5, -2.0]]);
        let mask = t(&[&[1.0, 1.0]]);
        let zero = Tensor::from_slice(&[0.0f64]);
        let clip = ClipParams { beta: 0.1, ..CLIP };
        let (l, kl) = grpo_loss(&logp, &logp, Some(&reference), &zero, &mask, clip, LossAggregation::TokenMean);
        let d = -0.5f64;
        let k3 = d.exp() - d - 1.0;
        assert!(close(kl.double_value(&[]), k3 / 2.0));
        assert!(close(l.double_value(&[]), 0.1 * k3 / 2.0));
    }

    #[test]
    fn on_policy_the_gradient_is_the_advantage_weighted_score() {
        let x = Tensor::from_slice(&[0.3f64, -0.2, 0.1]).to_kind(Kind::Float).set_requires_grad(true);
        let logp = x.log_softmax(0, Kind::Float).unsqueeze(0);
        let mask = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
        let (loss, _) = grpo_loss(&logp, &logp.detach(), None, &Tensor::from_slice(&[1.0f64]), &mask, CLIP, LossAggregation::TokenMean);
        loss.backward();
        // The loss is −(1/3)·Σ_i logp_i, and ∂/∂x_j Σ_i logp_i = 1 − 3·p_j.
        let p = x.softmax(0, Kind::Float);
        let want = (p * 3.0 - 1.0) / 3.0;
        let diff = (x.grad() - want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }
}
