//! The GHPO crate's trainers as kiln algorithms. So far `ghpo.sft`: supervised
//! warm-up of a small Qwen2, from scratch, on the leveled arithmetic problems —
//! the first of the three reproduction jobs (warm-up, then GRPO and GHPO from
//! it). Evaluation is greedy generation on held-out problems of every level,
//! scored by the verifier (accuracy per level) and the format reward.

use crate::data::{Arithmetic, LEVELS};
use crate::generate::{generate, SamplingParams};
use crate::model::{positions_from_mask, Qwen2, Qwen2Config};
use crate::reward::{accuracy_reward, format_reward};
use crate::tokenizer::{PromptFormat, Template, Tokenizer};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

pub static ENTRIES: &[AlgorithmEntry] = &[AlgorithmEntry {
    name: "ghpo.sft",
    summary: "Supervised warm-up of a small Qwen2 from scratch on leveled arithmetic word problems (GHPO's first job)",
    validate,
    build,
}];

/// The model to create (from scratch).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub rope_theta: f64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec { hidden_size: 64, intermediate_size: 192, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rope_theta: 10000.0 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    pub model: ModelSpec,
    /// Size of the byte-level BPE trained on generated problems.
    pub vocab_size: usize,
    /// Levels trained on (1–5).
    pub train_levels: Vec<u8>,
    /// Levels evaluated (held-out problems).
    pub eval_levels: Vec<u8>,
    /// Held-out problems per evaluated level.
    pub eval_problems: usize,
    pub max_new_tokens: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig { model: ModelSpec::default(), vocab_size: 384, train_levels: vec![1], eval_levels: vec![1, 2, 3, 4, 5], eval_problems: 32, max_new_tokens: 40 }
    }
}

impl SftConfig {
    fn from_value(v: &toml::Value) -> Result<SftConfig, ConfigError> {
        let c: SftConfig = parse_config(v)?;
        for (key, levels) in [("train_levels", &c.train_levels), ("eval_levels", &c.eval_levels)] {
            if levels.is_empty() || levels.iter().any(|l| !LEVELS.contains(l)) {
                return Err(ConfigError::new(key, format!("must list levels between {} and {}", LEVELS.start(), LEVELS.end())));
            }
        }
        if c.vocab_size < 300 || c.vocab_size > 65536 {
            return Err(ConfigError::new("vocab_size", "must be between 300 (bytes and special tokens) and 65536"));
        }
        if c.max_new_tokens == 0 {
            return Err(ConfigError::new("max_new_tokens", "must be at least 1"));
        }
        Ok(c)
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    SftConfig::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let cfg = SftConfig::from_value(v).map_err(|m| WorkerError::algo("ghpo.sft", m))?;
    Ok(Box::new(SftTrainer::new(cfg, ctx).map_err(|m| WorkerError::algo("ghpo.sft", m))?))
}

/// Problem indices at or above this are held out for evaluation.
const HELD_OUT: u64 = 1 << 40;

pub struct SftTrainer {
    cfg: SftConfig,
    model: Qwen2,
    tokenizer: Tokenizer,
    prompt: PromptFormat,
    data: Arithmetic,
    eos: i64,
    global_batch: usize,
    device: Device,
}

impl SftTrainer {
    pub fn new(cfg: SftConfig, ctx: &BuildContext) -> Result<SftTrainer, String> {
        let data = Arithmetic { seed: ctx.seed };
        // The same corpus on every rank, so every rank trains the same tokenizer.
        let corpus: Vec<String> = LEVELS
            .flat_map(|l| (0..400).map(move |i| (l, i)))
            .map(|(l, i)| {
                let p = data.problem(l, i);
                format!("{}\n{}", p.problem, p.solution)
            })
            .collect();
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), cfg.vocab_size).map_err(|e| e.to_string())?;
        let eos = tokenizer.token_id("<|endoftext|>").ok_or("the tokenizer has no <|endoftext|>")?;
        let m = &cfg.model;
        let qcfg: Qwen2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": tokenizer.vocab_size(),
            "hidden_size": m.hidden_size,
            "intermediate_size": m.intermediate_size,
            "num_hidden_layers": m.num_hidden_layers,
            "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_key_value_heads,
            "rope_theta": m.rope_theta,
            "max_position_embeddings": 512,
            "tie_word_embeddings": true,
            "eos_token_id": eos,
        }))
        .map_err(|e| e.to_string())?;
        tch::manual_seed(ctx.seed as i64);
        let model = Qwen2::new(qcfg, ctx.device, Kind::Float)?;
        let prompt = PromptFormat { template: Template::Custom("{user}\n".into()), system: None };
        Ok(SftTrainer { cfg, model, tokenizer, prompt, data, eos, global_batch: ctx.global_batch, device: ctx.device })
    }

    fn encode(&self, text: &str) -> Result<Vec<i64>, WorkerError> {
        self.tokenizer.encode(text).map_err(|e| WorkerError::algo("ghpo.sft", e))
    }
}

impl Algorithm for SftTrainer {
    fn name(&self) -> &str {
        "ghpo.sft"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.model.named_parameters()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = self.global_batch / (ctx.world_size * ctx.micro_steps);
        let step_start = ctx.step * self.global_batch as u64;
        let start = step_start + ((ctx.micro_step * ctx.world_size + ctx.rank) * per) as u64;
        // Sample k of the run, as (token ids, prompt length). Prompt tokens are
        // context; the loss is on the solution and EOS only.
        let levels = self.cfg.train_levels.clone();
        let sample = |k: u64| -> Result<(Vec<i64>, usize), WorkerError> {
            let level = levels[(k % levels.len() as u64) as usize];
            let p = self.data.problem(level, k / levels.len() as u64);
            let prompt = self.encode(&self.prompt.render(&p.problem))?;
            let mut ids = prompt.clone();
            ids.extend(self.encode(&p.solution)?);
            ids.push(self.eos);
            Ok((ids, prompt.len()))
        };
        // The loss is a mean over every target token of the global step (not of
        // this rank's share), so N ranks compute what one rank would. Data is a
        // pure function of the sample index, so each rank can count them all.
        let mut global_targets = 0usize;
        for k in step_start..step_start + self.global_batch as u64 {
            let (ids, prompt_len) = sample(k)?;
            global_targets += ids.len() - prompt_len;
        }
        let rows = (start..start + per as u64).map(sample).collect::<Result<Vec<_>, _>>()?;
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
        let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for (row, prompt_len) in &rows {
            for t in 0..len {
                ids.push(row.get(t).copied().unwrap_or(self.eos));
                mask.push(i64::from(t < row.len()));
                // Label of position t is token t + 1.
                labels.push(if t + 1 < row.len() && t + 1 >= *prompt_len { row[t + 1] } else { -100 });
            }
        }
        let shape = [rows.len() as i64, len as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(self.device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(self.device);
        let labels = Tensor::from_slice(&labels).view([-1]).to_device(self.device);
        let logits = self.model.forward(&ids, &positions_from_mask(&mask), &mask, None);
        let v = logits.size()[2];
        let summed = logits.view([-1, v]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Sum, -100, 0.0);
        // The loop averages gradients over ranks and micro-steps: scale back up.
        let scale = (ctx.world_size * ctx.micro_steps) as f64 / global_targets.max(1) as f64;
        let loss = &summed * scale;
        loss.backward();
        let local_targets = labels.ne(-100).sum(Kind::Int64).int64_value(&[]).max(1) as f64;
        Ok(StepOutput { loss: summed.double_value(&[]) / local_targets, samples: rows.len(), scalars: BTreeMap::new() })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let _g = tch::no_grad_guard();
        let n = self.cfg.eval_problems;
        let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
        let params = SamplingParams { temperature: 0.0, max_new_tokens: self.cfg.max_new_tokens, eos_ids: vec![self.eos], ..Default::default() };
        // Per level: (correct, formatted) counts on this rank's share.
        let mut sums = Vec::new();
        for &level in &self.cfg.eval_levels {
            let problems: Vec<_> = (lo..hi).map(|i| self.data.problem(level, HELD_OUT + i as u64)).collect();
            let prompts = problems.iter().map(|p| self.encode(&self.prompt.render(&p.problem))).collect::<Result<Vec<_>, _>>()?;
            let outs = generate(&self.model, &prompts, self.eos, &params);
            let (mut correct, mut formatted) = (0.0, 0.0);
            for (p, c) in problems.iter().zip(&outs) {
                let text = self.tokenizer.decode(&c.tokens, true).map_err(|e| WorkerError::algo("ghpo.sft", e))?;
                correct += accuracy_reward(&text, &p.answer).unwrap_or(0.0);
                formatted += format_reward(text.trim_end());
            }
            sums.push(correct);
            sums.push(formatted);
        }
        let mut t = Tensor::from_slice(&sums);
        ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
        let sums = Vec::<f64>::try_from(&t).map_err(|e| WorkerError::algo("ghpo.sft", e))?;
        let mut out = BTreeMap::new();
        let mut fmt = 0.0;
        for (i, &level) in self.cfg.eval_levels.iter().enumerate() {
            out.insert(format!("accuracy_l{level}"), sums[2 * i] / n as f64);
            fmt += sums[2 * i + 1];
        }
        out.insert("format".into(), fmt / (n * self.cfg.eval_levels.len()) as f64);
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}
