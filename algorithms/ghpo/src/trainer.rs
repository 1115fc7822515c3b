//! The GHPO crate's trainers as kiln algorithms: `ghpo.sft`, supervised
//! warm-up of a small Qwen2 from scratch on the leveled arithmetic problems,
//! and `ghpo.grpo` / `ghpo.ghpo`, reinforcement learning from that warm-up
//! with verifiable rewards, without and with adaptive hints — the three
//! reproduction jobs. Evaluation is greedy generation on held-out problems of
//! every level, scored by the verifier (accuracy per level) and the format
//! reward.

use crate::data::{Arithmetic, LEVELS};
use crate::generate::{generate, SamplingParams};
use crate::model::{positions_from_mask, Qwen2, Qwen2Config};
use crate::reward::{accuracy_reward, format_reward};
use crate::tokenizer::{PromptFormat, Template, Tokenizer};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

pub static ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "ghpo.sft",
        summary: "Supervised warm-up of a small Qwen2 from scratch on leveled arithmetic word problems (GHPO's first job)",
        validate,
        build,
    },
    AlgorithmEntry {
        name: "ghpo.grpo",
        summary: "GRPO with verifiable math rewards (accuracy + format) from a warm-up checkpoint",
        validate: validate_rl,
        build: build_grpo,
    },
    AlgorithmEntry {
        name: "ghpo.ghpo",
        summary: "GHPO: GRPO with adaptive hints (25/50/75 % of the worked solution) for groups with no correct answer",
        validate: validate_rl,
        build: build_ghpo,
    },
];

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
    /// Seed of the problem generator and of the tokenizer's training corpus:
    /// the warm-up and the RL jobs that start from it must share it.
    pub data_seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            model: ModelSpec::default(),
            vocab_size: 384,
            train_levels: vec![1],
            eval_levels: vec![1, 2, 3, 4, 5],
            eval_problems: 32,
            max_new_tokens: 40,
            data_seed: 0,
        }
    }
}

impl SftConfig {
    fn from_value(v: &toml::Value) -> Result<SftConfig, ConfigError> {
        let c: SftConfig = parse_config(v)?;
        check_levels(&c.train_levels, &c.eval_levels)?;
        if c.vocab_size < 300 || c.vocab_size > 65536 {
            return Err(ConfigError::new("vocab_size", "must be between 300 (bytes and special tokens) and 65536"));
        }
        if c.max_new_tokens == 0 {
            return Err(ConfigError::new("max_new_tokens", "must be at least 1"));
        }
        Ok(c)
    }
}

/// Both level lists must be non-empty and within the generator's levels.
fn check_levels(train: &[u8], eval: &[u8]) -> Result<(), ConfigError> {
    for (key, levels) in [("train_levels", train), ("eval_levels", eval)] {
        if levels.is_empty() || levels.iter().any(|l| !LEVELS.contains(l)) {
            return Err(ConfigError::new(key, format!("must list levels between {} and {}", LEVELS.start(), LEVELS.end())));
        }
    }
    Ok(())
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

/// What every GHPO-crate trainer starts from: the generated problems, the
/// tokenizer trained on them, the prompt format and the model.
pub struct Setup {
    pub model: Qwen2,
    pub tokenizer: Tokenizer,
    pub prompt: PromptFormat,
    pub data: Arithmetic,
    pub eos: i64,
    pub device: Device,
}

impl Setup {
    pub fn new(spec: &ModelSpec, vocab_size: usize, data_seed: u64, init_seed: u64, device: Device) -> Result<Setup, String> {
        let data = Arithmetic { seed: data_seed };
        // The same corpus on every rank, so every rank trains the same tokenizer.
        let corpus: Vec<String> = LEVELS
            .flat_map(|l| (0..400).map(move |i| (l, i)))
            .map(|(l, i)| {
                let p = data.problem(l, i);
                format!("{}\n{}", p.problem, p.solution)
            })
            .collect();
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), vocab_size).map_err(|e| e.to_string())?;
        let eos = tokenizer.token_id("<|endoftext|>").ok_or("the tokenizer has no <|endoftext|>")?;
        let qcfg: Qwen2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": tokenizer.vocab_size(),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "rope_theta": spec.rope_theta,
            "max_position_embeddings": 512,
            "tie_word_embeddings": true,
            "eos_token_id": eos,
        }))
        .map_err(|e| e.to_string())?;
        tch::manual_seed(init_seed as i64);
        let model = Qwen2::new(qcfg, device, Kind::Float)?;
        let prompt = PromptFormat { template: Template::Custom("{user}\n".into()), system: None };
        Ok(Setup { model, tokenizer, prompt, data, eos, device })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }

    /// Copies parameters from a safetensors file (a kiln checkpoint's
    /// `model.safetensors`, or a Hugging Face model file) by name.
    pub fn init_from(&mut self, path: &std::path::Path) -> Result<(), String> {
        crate::model::io::load_weights(&self.model, &[path.to_path_buf()], path).map_err(|e| e.to_string())
    }

    /// Greedy accuracy per level and the format rate on held-out problems,
    /// split over the ranks and summed.
    pub fn evaluate(&self, ctx: &StepContext, levels: &[u8], n: usize, max_new_tokens: usize, algo: &str) -> Result<BTreeMap<String, f64>, WorkerError> {
        let _g = tch::no_grad_guard();
        let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
        let params = SamplingParams { temperature: 0.0, max_new_tokens, eos_ids: vec![self.eos], ..Default::default() };
        let mut sums = Vec::new();
        for &level in levels {
            let problems: Vec<_> = (lo..hi).map(|i| self.data.problem(level, HELD_OUT + i as u64)).collect();
            let prompts = problems
                .iter()
                .map(|p| self.encode(&self.prompt.render(&p.problem)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| WorkerError::algo(algo, e))?;
            let outs = generate(&self.model, &prompts, self.eos, &params);
            let (mut correct, mut formatted) = (0.0, 0.0);
            for (p, c) in problems.iter().zip(&outs) {
                let text = self.tokenizer.decode(&c.tokens, true).map_err(|e| WorkerError::algo(algo, e))?;
                correct += accuracy_reward(&text, &p.answer).unwrap_or(0.0);
                formatted += format_reward(text.trim_end());
            }
            sums.push(correct);
            sums.push(formatted);
        }
        let mut t = Tensor::from_slice(&sums);
        ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
        let sums = Vec::<f64>::try_from(&t).map_err(|e| WorkerError::algo(algo, e))?;
        let mut out = BTreeMap::new();
        let mut fmt = 0.0;
        for (i, &level) in levels.iter().enumerate() {
            out.insert(format!("accuracy_l{level}"), sums[2 * i] / n as f64);
            fmt += sums[2 * i + 1];
        }
        out.insert("format".into(), fmt / (n * levels.len()) as f64);
        Ok(out)
    }
}

pub struct SftTrainer {
    cfg: SftConfig,
    s: Setup,
    global_batch: usize,
}

impl SftTrainer {
    pub fn new(cfg: SftConfig, ctx: &BuildContext) -> Result<SftTrainer, String> {
        let s = Setup::new(&cfg.model, cfg.vocab_size, cfg.data_seed, ctx.seed, ctx.device)?;
        Ok(SftTrainer { cfg, s, global_batch: ctx.global_batch })
    }

    fn encode(&self, text: &str) -> Result<Vec<i64>, WorkerError> {
        self.s.encode(text).map_err(|e| WorkerError::algo("ghpo.sft", e))
    }
}

impl Algorithm for SftTrainer {
    fn name(&self) -> &str {
        "ghpo.sft"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.s.model.named_parameters()
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
            let p = self.s.data.problem(level, k / levels.len() as u64);
            let prompt = self.encode(&self.s.prompt.render(&p.problem))?;
            let mut ids = prompt.clone();
            ids.extend(self.encode(&p.solution)?);
            ids.push(self.s.eos);
            Ok((ids, prompt.len()))
        };
        // The loss is a mean over every target token of the global step (not of
        // this rank's share), so N ranks compute what one rank would. Data is a
        // pure function of the sample index, so each rank can count them all.
        let all = (step_start..step_start + self.global_batch as u64).map(sample).collect::<Result<Vec<_>, _>>()?;
        let global_targets: usize = all.iter().map(|(ids, prompt_len)| ids.len() - prompt_len).sum();
        let first = (start - step_start) as usize;
        let rows = &all[first..first + per];
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
        let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for (row, prompt_len) in rows {
            for t in 0..len {
                ids.push(row.get(t).copied().unwrap_or(self.s.eos));
                mask.push(i64::from(t < row.len()));
                // Label of position t is token t + 1.
                labels.push(if t + 1 < row.len() && t + 1 >= *prompt_len { row[t + 1] } else { -100 });
            }
        }
        let shape = [rows.len() as i64, len as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(self.s.device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(self.s.device);
        let labels = Tensor::from_slice(&labels).view([-1]).to_device(self.s.device);
        let logits = self.s.model.forward(&ids, &positions_from_mask(&mask), &mask, None);
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
        self.s.evaluate(ctx, &self.cfg.eval_levels, self.cfg.eval_problems, self.cfg.max_new_tokens, "ghpo.sft")
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}

/// `ghpo.grpo` and `ghpo.ghpo`: reinforcement learning with verifiable rewards
/// from a warm-up checkpoint, plain GRPO or with GHPO's adaptive hints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    pub model: ModelSpec,
    pub vocab_size: usize,
    pub data_seed: u64,
    /// Warm-up weights: a kiln checkpoint's `model.safetensors` (same model
    /// and `vocab_size`); none starts from random weights.
    pub init: Option<std::path::PathBuf>,
    pub train_levels: Vec<u8>,
    pub eval_levels: Vec<u8>,
    pub eval_problems: usize,
    /// Completions per prompt (G).
    pub group_size: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub eps_low: f64,
    pub eps_high: f64,
    /// "token-mean", "seq-mean-token-mean" or "dr-grpo".
    pub loss: String,
    /// Weight of the format reward (the accuracy reward weighs 1).
    pub format_weight: f64,
    /// GHPO: hint fractions tried in turn for groups with no correct answer.
    pub hint_ratios: Vec<f64>,
    /// GHPO: hints only from this optimizer step on.
    pub start_hint_step: u64,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            model: ModelSpec::default(),
            vocab_size: 384,
            data_seed: 0,
            init: None,
            train_levels: vec![1, 2, 3],
            eval_levels: vec![1, 2, 3, 4, 5],
            eval_problems: 32,
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 40,
            eps_low: 0.2,
            eps_high: 0.2,
            loss: "token-mean".into(),
            format_weight: 0.5,
            hint_ratios: crate::ghpo::HINT_STAGES.to_vec(),
            start_hint_step: 0,
        }
    }
}

impl RlConfig {
    fn from_value(v: &toml::Value) -> Result<RlConfig, ConfigError> {
        let c: RlConfig = parse_config(v)?;
        check_levels(&c.train_levels, &c.eval_levels)?;
        if c.group_size < 2 {
            return Err(ConfigError::new("group_size", "must be at least 2 (advantages compare completions of one prompt)"));
        }
        if c.hint_ratios.iter().any(|r| !(0.0..=1.0).contains(r) || *r == 0.0) {
            return Err(ConfigError::new("hint_ratios", "must be fractions in (0, 1]"));
        }
        c.aggregation()?;
        Ok(c)
    }

    fn aggregation(&self) -> Result<crate::grpo::LossAggregation, ConfigError> {
        use crate::grpo::LossAggregation::*;
        Ok(match self.loss.as_str() {
            "token-mean" => TokenMean,
            "seq-mean-token-mean" => SeqMeanTokenMean,
            "dr-grpo" => DrGrpo { max_completion_len: self.max_new_tokens },
            other => return Err(ConfigError::new("loss", format!("'{other}' is not one of token-mean, seq-mean-token-mean, dr-grpo"))),
        })
    }
}

fn validate_rl(v: &toml::Value) -> Result<(), ConfigError> {
    RlConfig::from_value(v).map(|_| ())
}

fn build_grpo(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build_rl("ghpo.grpo", false, v, ctx)
}

fn build_ghpo(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build_rl("ghpo.ghpo", true, v, ctx)
}

fn build_rl(name: &'static str, hints: bool, v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let cfg = RlConfig::from_value(v).map_err(|m| WorkerError::algo(name, m))?;
    let groups = ctx.global_batch / cfg.group_size;
    if ctx.global_batch % cfg.group_size != 0 || groups % ctx.world_size != 0 {
        return Err(WorkerError::algo(
            name,
            format!(
                "train.global_batch ({}) must be a whole number of groups of {} completions, and the groups must split evenly over {} rank(s)",
                ctx.global_batch, cfg.group_size, ctx.world_size
            ),
        ));
    }
    if ctx.micro_steps != 1 {
        return Err(WorkerError::algo(name, "train.micro_steps must be 1 (a step's rollouts are scored together)"));
    }
    let mut s = Setup::new(&cfg.model, cfg.vocab_size, cfg.data_seed, ctx.seed, ctx.device).map_err(|m| WorkerError::algo(name, m))?;
    if let Some(p) = &cfg.init {
        s.init_from(p).map_err(|m| WorkerError::algo(name, m))?;
    }
    Ok(Box::new(RlTrainer { name, hints, cfg, s, global_batch: ctx.global_batch }))
}

pub struct RlTrainer {
    name: &'static str,
    hints: bool,
    cfg: RlConfig,
    s: Setup,
    global_batch: usize,
}

impl Algorithm for RlTrainer {
    fn name(&self) -> &str {
        self.name
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.s.model.named_parameters()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        use crate::ghpo::{adaptive_hints, hint_fractions};
        use crate::grpo::{completion_logprobs, group_advantages, grpo_loss, ClipParams};
        let err = |e: String| WorkerError::algo(self.name, e);
        let g = self.cfg.group_size;
        let groups = self.global_batch / g / ctx.world_size;
        let levels = &self.cfg.train_levels;
        // This rank's whole groups: prompt q of the run is a pure function of q.
        let first = (ctx.step as usize * ctx.world_size + ctx.rank) * groups;
        let problems: Vec<_> = (first..first + groups)
            .map(|q| self.s.data.problem(levels[q % levels.len()], (q / levels.len()) as u64))
            .collect();
        let stages: Vec<f64> = if self.hints && ctx.step >= self.cfg.start_hint_step { self.cfg.hint_ratios.clone() } else { vec![] };

        // Rollouts: G completions per message; one seed per (step, rank, round).
        let s = &self.s;
        let mut round = 0u64;
        let mut failure: Option<String> = None;
        let mut prompts_of: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
        let finished = {
            let gen = |messages: &[String]| -> Vec<Vec<crate::generate::Completion>> {
                round += 1;
                let mut rows = Vec::new();
                for m in messages {
                    let ids = match s.encode(&s.prompt.render(m)) {
                        Ok(ids) => ids,
                        Err(e) => {
                            failure = Some(e);
                            vec![s.eos]
                        }
                    };
                    prompts_of.insert(m.clone(), ids.clone());
                    rows.extend(std::iter::repeat_n(ids, g));
                }
                let params = SamplingParams {
                    temperature: self.cfg.temperature,
                    top_p: self.cfg.top_p,
                    max_new_tokens: self.cfg.max_new_tokens,
                    eos_ids: vec![s.eos],
                    stop_sequences: vec![],
                    seed: ctx.seed ^ (ctx.step << 20) ^ ((ctx.rank as u64) << 8) ^ round,
                };
                let _g = tch::no_grad_guard();
                let outs = generate(&s.model, &rows, s.eos, &params);
                outs.chunks(g).map(|c| c.to_vec()).collect()
            };
            let fw = self.cfg.format_weight;
            let score = |p: &crate::ghpo::Problem, c: &crate::generate::Completion| {
                let text = s.tokenizer.decode(&c.tokens, true).unwrap_or_default();
                let acc = accuracy_reward(&text, &p.answer).unwrap_or(f64::NAN);
                (acc, fw * format_reward(text.trim_end()))
            };
            let vote = |mine: bool| ctx.comm.any(mine).unwrap_or(mine);
            adaptive_hints(&problems, g, &stages, gen, score, vote)
        };
        if let Some(e) = failure {
            return Err(err(e));
        }

        // Advantages over each group of total rewards (accuracy + weighted format).
        let totals: Vec<f64> = finished.iter().flat_map(|gr| gr.rewards.iter().map(|(a, f)| if a.is_nan() { f64::NAN } else { a + f })).collect();
        let adv = group_advantages(&totals, g, 1e-4, true);
        let zero_adv_groups = adv.chunks(g).filter(|a| a.iter().all(|x| *x == 0.0)).count() as f64 / finished.len().max(1) as f64;

        // Batch: left-padded (hinted) prompts, then right-padded completions.
        let mut prompt_rows = Vec::new();
        let mut completions = Vec::new();
        for gr in &finished {
            let ids = prompts_of.get(&gr.message).cloned().unwrap_or_default();
            for c in &gr.completions {
                prompt_rows.push(ids.clone());
                completions.push(c.tokens.clone());
            }
        }
        let (pids, pmask) = crate::generate::left_pad(&prompt_rows, s.eos);
        let longest = completions.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let (mut cids, mut cmask) = (Vec::new(), Vec::new());
        for c in &completions {
            cids.extend(c.iter().copied().chain(std::iter::repeat_n(s.eos, longest - c.len())));
            cmask.extend(std::iter::repeat_n(1i64, c.len()).chain(std::iter::repeat_n(0, longest - c.len())));
        }
        let shape = [completions.len() as i64, longest as i64];
        let cmask_t = Tensor::from_slice(&cmask).view(shape).to_device(s.device);
        let ids = Tensor::cat(&[pids.to_device(s.device), Tensor::from_slice(&cids).view(shape).to_device(s.device)], 1);
        let mask = Tensor::cat(&[pmask.to_device(s.device), cmask_t.shallow_clone()], 1);
        let logp = completion_logprobs(&s.model, &ids, &mask, pids.size()[1], self.cfg.temperature);
        // μ = 1: the policy that sampled is the one being updated (ratio 1).
        let old = logp.detach();
        let clip = ClipParams { eps_low: self.cfg.eps_low, eps_high: self.cfg.eps_high, beta: 0.0 };
        let agg = self.cfg.aggregation().map_err(|e| err(e.to_string()))?;
        let adv_t = Tensor::from_slice(&adv).to_kind(Kind::Float).to_device(s.device);
        let (loss, _) = grpo_loss(&logp, &old, None, &adv_t, &cmask_t, clip, agg);
        loss.backward();

        let n = totals.len().max(1) as f64;
        let mut scalars = BTreeMap::new();
        let acc: f64 = finished.iter().flat_map(|gr| gr.rewards.iter().map(|r| if r.0.is_nan() { 0.0 } else { r.0 })).sum();
        scalars.insert("accuracy".into(), acc / n);
        scalars.insert("zero_adv_groups".into(), zero_adv_groups);
        scalars.insert("response_len".into(), completions.iter().map(Vec::len).sum::<usize>() as f64 / n);
        if self.hints {
            let levels: Vec<f64> = self.cfg.hint_ratios.clone();
            for (level, share) in std::iter::once(0.0).chain(levels.iter().copied()).zip(hint_fractions(&finished, &levels)) {
                scalars.insert(format!("hinted_{:02}", (level * 100.0).round() as u32), share);
            }
        }
        Ok(StepOutput { loss: loss.double_value(&[]), samples: completions.len(), scalars })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        self.s.evaluate(ctx, &self.cfg.eval_levels, self.cfg.eval_problems, self.cfg.max_new_tokens, self.name)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}
