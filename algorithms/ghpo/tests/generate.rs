//! Generation on a small random Qwen2: the cached, batched, left-padded
//! sampler against plain full forward passes, determinism under a seed, and the
//! stopping rules.

use kiln_ghpo::generate::{generate, left_pad, Finish, SamplingParams};
use kiln_ghpo::grpo::completion_logprobs;
use kiln_ghpo::model::{positions_from_mask, Qwen2, Qwen2Config};
use tch::{Device, Kind, Tensor};

fn model() -> Qwen2 {
    tch::manual_seed(3);
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.5
    }))
    .unwrap();
    Qwen2::new(cfg, Device::Cpu, Kind::Float).unwrap()
}

/// Log-softmax of the next token after `seq`, by a full forward pass (no cache,
/// no padding).
fn next_logp(m: &Qwen2, seq: &[i64], temperature: f64) -> Tensor {
    let ids = Tensor::from_slice(seq).unsqueeze(0);
    let mask = Tensor::ones([1, seq.len() as i64], (Kind::Int64, Device::Cpu));
    let logits = tch::no_grad(|| m.forward(&ids, &positions_from_mask(&mask), &mask, None));
    (logits.select(1, seq.len() as i64 - 1).squeeze_dim(0) / temperature).log_softmax(-1, Kind::Float)
}

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![1, 2, 3, 4, 5], vec![7, 8], vec![11, 12, 13]]
}

#[test]
fn greedy_decoding_matches_full_forward_argmax_for_every_row() {
    let m = model();
    let p = SamplingParams { temperature: 0.0, max_new_tokens: 8, ..Default::default() };
    let out = generate(&m, &prompts(), 0, &p);
    for (prompt, c) in prompts().iter().zip(&out) {
        assert_eq!(c.tokens.len(), 8);
        assert_eq!(c.finish, Finish::Length);
        let mut seq = prompt.clone();
        for (&t, &lp) in c.tokens.iter().zip(&c.logprobs) {
            let logp = next_logp(&m, &seq, 1.0);
            assert_eq!(logp.argmax(-1, false).int64_value(&[]), t, "row {prompt:?}");
            assert!((logp.double_value(&[t]) - lp).abs() < 1e-4);
            seq.push(t);
        }
    }
}

#[test]
fn sampled_logprobs_are_those_of_the_tempered_model() {
    let m = model();
    let p = SamplingParams { temperature: 0.7, max_new_tokens: 6, seed: 11, ..Default::default() };
    for (prompt, c) in prompts().iter().zip(generate(&m, &prompts(), 0, &p)) {
        let mut seq = prompt.clone();
        for (&t, &lp) in c.tokens.iter().zip(&c.logprobs) {
            let want = next_logp(&m, &seq, 0.7).double_value(&[t]);
            assert!((want - lp).abs() < 1e-4, "{want} vs {lp}");
            seq.push(t);
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_completions_and_another_seed_others() {
    let m = model();
    let p = SamplingParams { temperature: 1.0, max_new_tokens: 12, seed: 5, ..Default::default() };
    let a = generate(&m, &prompts(), 0, &p);
    let b = generate(&m, &prompts(), 0, &p);
    assert_eq!(a, b);
    let c = generate(&m, &prompts(), 0, &SamplingParams { seed: 6, ..p.clone() });
    assert_ne!(a.iter().map(|c| &c.tokens).collect::<Vec<_>>(), c.iter().map(|c| &c.tokens).collect::<Vec<_>>());
    // A nucleus this small is the argmax.
    let tiny = generate(&m, &prompts(), 0, &SamplingParams { top_p: 1e-9, ..p.clone() });
    let greedy = generate(&m, &prompts(), 0, &SamplingParams { temperature: 0.0, ..p });
    assert_eq!(tiny.iter().map(|c| &c.tokens).collect::<Vec<_>>(), greedy.iter().map(|c| &c.tokens).collect::<Vec<_>>());
}

#[test]
fn eos_and_stop_sequences_end_rows_while_others_go_on() {
    let m = model();
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 10, ..Default::default() };
    let free = generate(&m, &prompts(), 0, &greedy);
    // Make row 1's third greedy token an EOS: it stops there (EOS included); the
    // other rows are unaffected unless they produce it too.
    let eos = free[1].tokens[2];
    let out = generate(&m, &prompts(), 0, &SamplingParams { eos_ids: vec![eos], ..greedy.clone() });
    for (f, o) in free.iter().zip(&out) {
        match f.tokens.iter().position(|&t| t == eos) {
            Some(i) => {
                assert_eq!(o.tokens, f.tokens[..=i].to_vec());
                assert_eq!(o.finish, Finish::Eos);
            }
            None => assert_eq!(o.tokens, f.tokens),
        }
    }
    let stop = free[0].tokens[3..5].to_vec();
    let out = generate(&m, &prompts(), 0, &SamplingParams { stop_sequences: vec![stop.clone()], ..greedy });
    // It stops the first time the text ends with the stop sequence (a random
    // model may produce it before position 5).
    let first = (stop.len()..=5).find(|&j| free[0].tokens[..j].ends_with(&stop)).unwrap();
    assert_eq!(out[0].tokens, free[0].tokens[..first].to_vec());
    assert_eq!(out[0].finish, Finish::Stop);
    assert!(out[0].tokens.ends_with(&stop));
}

#[test]
fn training_logprobs_of_a_padded_batch_equal_the_sampling_logprobs() {
    let m = model();
    let p = SamplingParams { temperature: 0.9, max_new_tokens: 6, seed: 2, eos_ids: vec![7], ..Default::default() };
    let prompts = prompts();
    let out = generate(&m, &prompts, 0, &p);
    // Left-padded prompts, then right-padded completions, as the trainer builds them.
    let (pids, pmask) = left_pad(&prompts, 0);
    let longest = out.iter().map(|c| c.tokens.len()).max().unwrap();
    let mut cids = Vec::new();
    let mut cmask = Vec::new();
    for c in &out {
        cids.extend(c.tokens.iter().copied().chain(std::iter::repeat_n(0, longest - c.tokens.len())));
        cmask.extend(std::iter::repeat_n(1i64, c.tokens.len()).chain(std::iter::repeat_n(0, longest - c.tokens.len())));
    }
    let shape = [prompts.len() as i64, longest as i64];
    let ids = Tensor::cat(&[pids, Tensor::from_slice(&cids).view(shape)], 1);
    let mask = Tensor::cat(&[pmask.shallow_clone(), Tensor::from_slice(&cmask).view(shape)], 1);
    let lp = tch::no_grad(|| completion_logprobs(&m, &ids, &mask, pmask.size()[1], 0.9));
    for (i, c) in out.iter().enumerate() {
        for (j, &want) in c.logprobs.iter().enumerate() {
            let got = lp.double_value(&[i as i64, j as i64]);
            assert!((got - want).abs() < 1e-4, "row {i} token {j}: {got} vs {want}");
        }
    }
}
