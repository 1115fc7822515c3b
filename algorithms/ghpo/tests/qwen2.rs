//! The Qwen2 model against `transformers`' own implementation (run from the
//! project's `.venv`, installed by scripts/setup.sh), and against itself: the KV
//! cache, left padding, saving and loading, bf16.

use kiln_ghpo::model::io::{self, ModelError};
use kiln_ghpo::model::{positions_from_mask, KvCache, Qwen2, Qwen2Config};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python(args: &[&str]) {
    let py = root().join(".venv/bin/python");
    let out = Command::new(&py)
        .arg(root().join("scripts/qwen2_reference.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh: it installs torch and transformers)", py.display()));
    assert!(out.status.success(), "reference script failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn logits(model: &Qwen2, ids: &Tensor, mask: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, &positions_from_mask(mask), mask, None)).to_kind(Kind::Float)
}

/// Largest difference over the positions that are real tokens.
fn diff_on(mask: &Tensor, a: &Tensor, b: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1);
    (a - b).abs().masked_fill(&keep.logical_not(), 0.0).max().double_value(&[])
}

fn against_reference(tied: bool, sharded: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    python(&["make", d, if tied { "tied" } else { "untied" }, if sharded { "sharded" } else { "single" }]);
    if sharded {
        assert!(dir.path().join("model.safetensors.index.json").exists(), "the reference wrote shards");
    }
    let model = io::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.cfg.tie_word_embeddings, tied);
    let e = tensors(&dir.path().join("expected.safetensors"));
    let ours = logits(&model, &e["ids"], &e["mask"]);
    let d = diff_on(&e["mask"], &ours, &e["logits"]);
    assert!(d < 2e-5, "logits differ from transformers by {d}");
}

#[test]
fn logits_match_transformers_untied_single_file() {
    against_reference(false, false);
}

#[test]
fn logits_match_transformers_tied_and_sharded() {
    against_reference(true, true);
}

fn tiny(tied: bool) -> Qwen2 {
    tch::manual_seed(1);
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "rope_theta": 1000000.0,
        "tie_word_embeddings": tied, "eos_token_id": 60
    }))
    .unwrap();
    Qwen2::new(cfg, Device::Cpu, Kind::Float).unwrap()
}

#[test]
fn our_files_load_in_transformers_and_give_the_same_logits() {
    let model = tiny(false);
    let dir = tempfile::tempdir().unwrap();
    io::save(&model, dir.path(), Some(8 * 1024)).unwrap();
    assert!(dir.path().join("model.safetensors.index.json").exists());
    let ids = Tensor::from_slice2(&[[0i64, 3, 4, 5, 9], [7, 8, 9, 10, 11]]);
    let mask = Tensor::from_slice2(&[[0i64, 1, 1, 1, 1], [1, 1, 1, 1, 1]]);
    let batch = dir.path().join("batch.safetensors");
    Tensor::write_safetensors(&[("ids", &ids), ("mask", &mask)], &batch).unwrap();
    let out = dir.path().join("theirs.safetensors");
    python(&["logits", dir.path().to_str().unwrap(), batch.to_str().unwrap(), out.to_str().unwrap()]);
    let theirs = &tensors(&out)["logits"];
    let d = diff_on(&mask, &logits(&model, &ids, &mask), theirs);
    assert!(d < 2e-5, "transformers reads our folder differently: {d}");
    // And back: our loader gives the same model.
    let again = io::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let d = (logits(&again, &ids, &mask) - logits(&model, &ids, &mask)).abs().max().double_value(&[]);
    assert_eq!(d, 0.0, "a save/load round trip is exact");
}

#[test]
fn the_kv_cache_gives_the_full_forward_pass_logits() {
    for tied in [false, true] {
        let model = tiny(tied);
        let ids = Tensor::from_slice2(&[[0i64, 0, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3]]);
        let mask = Tensor::from_slice2(&[[0i64, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]);
        let full = logits(&model, &ids, &mask);
        let mut cache = KvCache::default();
        let pos = positions_from_mask(&mask);
        let prompt = 4;
        let mut steps = vec![tch::no_grad(|| {
            model.forward(&ids.narrow(1, 0, prompt), &pos.narrow(1, 0, prompt), &mask.narrow(1, 0, prompt), Some(&mut cache))
        })];
        for t in prompt..7 {
            steps.push(tch::no_grad(|| {
                model.forward(&ids.narrow(1, t, 1), &pos.narrow(1, t, 1), &mask.narrow(1, 0, t + 1), Some(&mut cache))
            }));
        }
        assert_eq!(cache.len(), 7);
        let incremental = Tensor::cat(&steps, 1);
        let d = diff_on(&mask, &full, &incremental);
        assert!(d < 1e-5, "cached decoding differs by {d} (tied = {tied})");
    }
}

#[test]
fn left_padding_does_not_change_a_sequence() {
    let model = tiny(false);
    let alone = logits(&model, &Tensor::from_slice2(&[[3i64, 4, 5]]), &Tensor::from_slice2(&[[1i64, 1, 1]]));
    let padded = logits(&model, &Tensor::from_slice2(&[[0i64, 0, 3, 4, 5]]), &Tensor::from_slice2(&[[0i64, 0, 1, 1, 1]]));
    let d = (alone - padded.narrow(1, 2, 3)).abs().max().double_value(&[]);
    assert!(d < 1e-5, "padding leaked into the sequence: {d}");
}

#[test]
fn bf16_runs_close_to_f32() {
    let model = tiny(false);
    let dir = tempfile::tempdir().unwrap();
    io::save(&model, dir.path(), None).unwrap();
    let half = io::load(dir.path(), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(half.kind(), Kind::BFloat16);
    let ids = Tensor::from_slice2(&[[1i64, 2, 3, 4]]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let (a, b) = (logits(&model, &ids, &mask), logits(&half, &ids, &mask));
    let d = (a - b).abs().max().double_value(&[]);
    assert!(d.is_finite() && d < 0.05, "bf16 logits differ by {d}");
}

#[test]
fn broken_folders_are_refused_with_the_file_and_the_reason() {
    let model = tiny(false);
    let dir = tempfile::tempdir().unwrap();
    let err = |r: Result<Qwen2, ModelError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(io::load(dir.path(), Device::Cpu, Kind::Float)).contains("config.json"));
    io::save(&model, dir.path(), None).unwrap();
    // A config that disagrees with the weights.
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"intermediate_size\": 48", "\"intermediate_size\": 50")).unwrap();
    let e = err(io::load(dir.path(), Device::Cpu, Kind::Float));
    assert!(e.contains("layers.0.mlp.down_proj.weight has shape [32, 48], the config says [32, 50]"), "{e}");
    std::fs::write(&cfg, text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")).unwrap();
    let e = err(io::load(dir.path(), Device::Cpu, Kind::Float));
    assert!(e.contains("lacks") && e.contains("layers.2"), "{e}");
    std::fs::write(&cfg, text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1")).unwrap();
    let e = err(io::load(dir.path(), Device::Cpu, Kind::Float));
    assert!(e.contains("layers.1") && e.contains("not a Qwen2 parameter"), "{e}");
    std::fs::write(&cfg, text.replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"")).unwrap();
    assert!(err(io::load(dir.path(), Device::Cpu, Kind::Float)).contains("gelu"));
    std::fs::write(&cfg, "{ not json").unwrap();
    assert!(err(io::load(dir.path(), Device::Cpu, Kind::Float)).contains("config.json"));
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    python(&["make", d, "untied", "single"]);
    let model = io::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let prompts = vec![vec![5i64, 6, 7, 8, 9], vec![1, 2], vec![40, 41, 42]];
    let (ids, mask) = kiln_ghpo::generate::left_pad(&prompts, 0);
    let batch = dir.path().join("batch.safetensors");
    Tensor::write_safetensors(&[("ids", &ids), ("mask", &mask)], &batch).unwrap();
    let out = dir.path().join("greedy.safetensors");
    python(&["greedy", d, batch.to_str().unwrap(), "12", out.to_str().unwrap()]);
    let theirs = &tensors(&out)["tokens"];
    let params = kiln_ghpo::generate::SamplingParams { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
    let ours = kiln_ghpo::generate::generate(&model, &prompts, 0, &params);
    for (i, c) in ours.iter().enumerate() {
        let want = Vec::<i64>::try_from(&theirs.get(i as i64)).unwrap();
        assert_eq!(c.tokens, want, "row {i}");
    }
}

#[test]
fn the_grpo_loss_equals_a_plain_pytorch_computation_for_every_aggregation() {
    use kiln_ghpo::grpo::{grpo_loss, ClipParams, LossAggregation};
    tch::manual_seed(9);
    let (b, t) = (3, 5);
    let logp = -Tensor::rand([b, t], (Kind::Double, Device::Cpu)) * 3.0;
    let old = &logp + (Tensor::rand([b, t], (Kind::Double, Device::Cpu)) - 0.5) * 0.8;
    let reference = &logp + (Tensor::rand([b, t], (Kind::Double, Device::Cpu)) - 0.5);
    let adv = Tensor::from_slice(&[1.3f64, -0.7, 0.2]);
    let mask = Tensor::from_slice2(&[[1.0f64, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]]);
    let params = Tensor::from_slice(&[0.2f64, 0.28, 0.04]);
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    Tensor::write_safetensors(
        &[("logp", &logp), ("old_logp", &old), ("ref_logp", &reference), ("advantages", &adv), ("mask", &mask), ("params", &params)],
        &inputs,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    python(&["grpo-loss", inputs.to_str().unwrap(), out.to_str().unwrap()]);
    let theirs = tensors(&out);
    let clip = ClipParams { eps_low: 0.2, eps_high: 0.28, beta: 0.04 };
    for (name, agg) in [
        ("token_mean", LossAggregation::TokenMean),
        ("seq_mean_token_mean", LossAggregation::SeqMeanTokenMean),
        ("dr_grpo", LossAggregation::DrGrpo { max_completion_len: t as usize }),
    ] {
        let (ours, _) = grpo_loss(&logp, &old, Some(&reference), &adv, &mask, clip, agg);
        let (a, b) = (ours.double_value(&[]), theirs[name].double_value(&[0]));
        assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
    }
}
