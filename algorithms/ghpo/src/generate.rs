//! Batched sampling from a [`Qwen2`] with a KV cache: temperature and top-p,
//! a token budget, EOS ids and stop sequences, left padding, and per-token
//! log-probabilities of what was sampled.
//!
//! Deterministic under a seed: the random numbers come from a counter-based
//! generator of (seed, row, step), not from torch's global generator, so the
//! same prompts in the same order give the same completions whatever else runs
//! in the process. Rows that finish leave the batch (their cache rows dropped).

use kiln_worker::rng::{splitmix, unit};
use crate::model::{positions_from_mask, KvCache, Qwen2};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of most likely tokens whose mass
    /// reaches `top_p` (1.0: all tokens).
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Any of these ends a completion (and is part of it).
    pub eos_ids: Vec<i64>,
    /// Token sequences that end a completion when it ends with one of them
    /// (the stop strings of a prompt template, tokenized).
    pub stop_sequences: Vec<Vec<i64>>,
    pub seed: u64,
    /// Per prompt, the key its random numbers are drawn under (default: its
    /// index). A trainer passes each completion's slot in the global batch,
    /// so a completion does not depend on which rank samples it.
    pub row_keys: Vec<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, max_new_tokens: 64, eos_ids: vec![], stop_sequences: vec![], seed: 0, row_keys: vec![] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

/// One completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub tokens: Vec<i64>,
    /// log p(token | prefix) under the sampling temperature (before top-p),
    /// the quantity a policy-gradient ratio is taken of.
    pub logprobs: Vec<f64>,
    pub finish: Finish,
}

/// Left-pads `prompts` with `pad`: ids and mask `[batch, longest]`.
pub fn left_pad(prompts: &[Vec<i64>], pad: i64) -> (Tensor, Tensor) {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * len);
    let mut mask = Vec::with_capacity(prompts.len() * len);
    for p in prompts {
        ids.extend(std::iter::repeat_n(pad, len - p.len()).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, len - p.len()).chain(std::iter::repeat_n(1, p.len())));
    }
    let shape = [prompts.len() as i64, len as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
}

/// A uniform number in [0, 1) from the (seed, row, step) counter, each part
/// mixed in turn so no two counters collide in any simple way.
fn uniform(seed: u64, row: u64, step: u64) -> f64 {
    unit(splitmix(splitmix(splitmix(seed) ^ row) ^ step))
}

/// Picks one token per row of `logits` `[rows, vocab]` given one uniform number
/// per row: greedy at temperature 0, else inverse-CDF sampling over the top-p
/// nucleus. Returns (tokens, their log-probabilities at the temperature).
pub fn sample(logits: &Tensor, temperature: f64, top_p: f64, u: &[f64]) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let scaled = if temperature > 0.0 { &logits / temperature } else { logits.shallow_clone() };
    let logp = scaled.log_softmax(-1, Kind::Float);
    let tokens = if temperature <= 0.0 {
        logits.argmax(-1, true)
    } else {
        let probs = logp.exp();
        let (sorted, order) = probs.sort(-1, true);
        let before = sorted.cumsum(-1, Kind::Float) - &sorted;
        // Keep tokens while the mass before them is below top_p (the first always).
        let kept = sorted.masked_fill(&before.ge(top_p), 0.0);
        let cum = kept.cumsum(-1, Kind::Float);
        let total = cum.narrow(1, cum.size()[1] - 1, 1);
        let u = Tensor::from_slice(u).to_kind(Kind::Float).to_device(logits.device()).unsqueeze(1) * total;
        // The first token whose cumulative mass exceeds u.
        let at = u.searchsorted(&cum, false, true, "right", None::<Tensor>).clamp_max(cum.size()[1] - 1);
        order.gather(1, &at, false)
    };
    let lp = logp.gather(1, &tokens, false).squeeze_dim(1);
    (tokens.squeeze_dim(1), lp)
}

/// Samples a completion for every prompt.
pub fn generate(model: &Qwen2, prompts: &[Vec<i64>], pad: i64, params: &SamplingParams) -> Vec<Completion> {
    let n = prompts.len();
    let mut out: Vec<Completion> = (0..n).map(|_| Completion { tokens: vec![], logprobs: vec![], finish: Finish::Length }).collect();
    if n == 0 || params.max_new_tokens == 0 {
        return out;
    }
    let device = model.device();
    let (ids, mask) = left_pad(prompts, pad);
    let (ids, mut mask) = (ids.to_device(device), mask.to_device(device));
    let mut positions = positions_from_mask(&mask);
    let mut cache = KvCache::default();
    let _guard = tch::no_grad_guard();
    let logits = model.forward(&ids, &positions, &mask, Some(&mut cache));
    let mut last = logits.select(1, logits.size()[1] - 1);
    // Rows still generating, as indices into `prompts`.
    let mut active: Vec<usize> = (0..n).collect();
    for step in 0..params.max_new_tokens {
        let u: Vec<f64> = active.iter().map(|&r| uniform(params.seed, params.row_keys.get(r).copied().unwrap_or(r as u64), step as u64)).collect();
        let (tokens, lps) = sample(&last, params.temperature, params.top_p, &u);
        let tokens = Vec::<i64>::try_from(&tokens.to_device(Device::Cpu)).unwrap_or_default();
        let lps = Vec::<f64>::try_from(&lps.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default();
        let mut keep = Vec::with_capacity(active.len());
        for (j, &r) in active.iter().enumerate() {
            let (Some(&t), Some(&lp)) = (tokens.get(j), lps.get(j)) else { continue };
            let c = &mut out[r];
            c.tokens.push(t);
            c.logprobs.push(lp);
            if params.eos_ids.contains(&t) {
                c.finish = Finish::Eos;
            } else if params.stop_sequences.iter().any(|s| !s.is_empty() && c.tokens.ends_with(s)) {
                c.finish = Finish::Stop;
            } else {
                keep.push(j);
            }
        }
        if keep.is_empty() || step + 1 == params.max_new_tokens {
            break;
        }
        // Drop finished rows, then feed each remaining row its new token.
        let rows = Tensor::from_slice(&keep.iter().map(|&j| j as i64).collect::<Vec<_>>()).to_device(device);
        if keep.len() != active.len() {
            cache.select(&rows);
            mask = mask.index_select(0, &rows);
            positions = positions.index_select(0, &rows);
        }
        let next: Vec<i64> = keep.iter().map(|&j| tokens[j]).collect();
        active = keep.iter().map(|&j| active[j]).collect();
        let next = Tensor::from_slice(&next).to_device(device).unsqueeze(1);
        positions = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
        mask = Tensor::cat(&[&mask, &Tensor::ones([active.len() as i64, 1], (Kind::Int64, device))], 1);
        let logits = model.forward(&next, &positions, &mask, Some(&mut cache));
        last = logits.select(1, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus_and_inverse_cdf_picks_by_u() {
        let probs = Tensor::from_slice(&[0.2f32, 0.5, 0.3]).view([1, 3]);
        let logits = probs.log();
        // top_p 0.7 keeps 0.5 and 0.3 (renormalised 0.625 / 0.375).
        for (u, want) in [(0.0, 1), (0.6, 1), (0.63, 2), (0.99, 2)] {
            let (t, _) = sample(&logits, 1.0, 0.7, &[u]);
            assert_eq!(t.int64_value(&[0]), want, "u = {u}");
        }
        // All tokens: 0.5 | 0.3 | 0.2 in sorted order.
        for (u, want) in [(0.49, 1), (0.51, 2), (0.79, 2), (0.81, 0)] {
            let (t, lp) = sample(&logits, 1.0, 1.0, &[u]);
            assert_eq!(t.int64_value(&[0]), want, "u = {u}");
            let p = [0.2, 0.5, 0.3][want as usize];
            assert!((lp.double_value(&[0]) - f64::ln(p)).abs() < 1e-6);
        }
        // Greedy ignores u.
        assert_eq!(sample(&logits, 0.0, 1.0, &[0.99]).0.int64_value(&[0]), 1);
    }

    #[test]
    fn uniform_numbers_are_in_range_and_differ_by_row_step_and_seed() {
        let a = uniform(1, 0, 0);
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, uniform(1, 1, 0));
        assert_ne!(a, uniform(1, 0, 1));
        assert_ne!(a, uniform(2, 0, 0));
        assert_eq!(a, uniform(1, 0, 0));
        let mean = (0..10_000).map(|i| uniform(7, i, 3)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn left_padding_lines_prompts_up_on_the_right() {
        let (ids, mask) = left_pad(&[vec![5, 6, 7], vec![9]], 0);
        assert_eq!(Vec::<i64>::try_from(&ids.view([-1])).unwrap(), vec![5, 6, 7, 0, 0, 9]);
        assert_eq!(Vec::<i64>::try_from(&mask.view([-1])).unwrap(), vec![1, 1, 1, 0, 0, 1]);
    }
}
