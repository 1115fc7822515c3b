//! `ghpo.grpo` and `ghpo.ghpo`: reinforcement learning with verifiable rewards,
//! plain GRPO or with GHPO's adaptive hints, from a warm-up checkpoint or a
//! Hugging Face model folder, on generated or JSONL problems, mixed or as a
//! curriculum.
//!
//! A batch is `global_batch` completion slots (slot k answers group k / G)
//! split evenly over the ranks, so a group may span ranks; rewards are
//! gathered so advantages are taken over whole groups. Each batch serves
//! `updates_per_batch` (μ) optimizer steps: the first update's policy is the
//! "old" policy of the clipped ratio. A checkpoint inside a batch's updates
//! carries that policy's weights (the algorithm state), and a resumed run
//! regenerates the batch from them — the same rollouts, since generation is a
//! pure function of (weights, seed, step, slot).

use super::policy::{check_weights, copy_weights, kind_of, prompt_format, ModelSpec, Policy};
use super::problems::{JsonlSpec, Order, Problems};
use super::sft::scratch_template;
use super::check_levels;
use crate::data::{splitmix, Arithmetic};
use crate::generate::{generate, left_pad, Completion, SamplingParams};
use crate::ghpo::{adaptive_hints, hint_fractions, HINT_STAGES};
use crate::grpo::{completion_logprobs, group_advantages, grpo_loss, ClipParams, LossAggregation};
use crate::model::Qwen2;
use crate::reward::{accuracy_reward, format_reward};
use crate::tokenizer::{with_hint, Template};
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// A Hugging Face folder (config.json, weights, tokenizer.json) to start
    /// from; without it the policy is created from scratch (`model`,
    /// `vocab_size`) on the generated problems.
    pub model_dir: Option<PathBuf>,
    /// "f32" or "bf16": the policy's parameter type.
    pub dtype: String,
    pub model: Option<ModelSpec>,
    pub vocab_size: Option<usize>,
    /// Weights to copy in by name: a kiln checkpoint's `model.safetensors`
    /// (e.g. the warm-up's) or a Hugging Face weights file.
    pub init: Option<PathBuf>,
    /// "chatml", or a format string with `{user}` (and `{system}`). Default:
    /// "chatml" for a model folder, "{user}\n" from scratch.
    pub prompt_template: Option<String>,
    pub system_prompt: Option<String>,
    /// Problems from JSONL files; without it, from the arithmetic generator.
    pub data: Option<JsonlSpec>,
    pub data_seed: u64,
    pub train_levels: Vec<u8>,
    pub eval_levels: Vec<u8>,
    /// Held-out problems per level (generator) or in all (files; 0: all).
    pub eval_problems: usize,
    /// "mixed" or "curriculum" (easy to hard).
    pub order: String,
    /// Completions per prompt (G).
    pub group_size: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Weight of the KL to the initial policy (0: no reference model).
    pub beta: f64,
    /// Optimizer steps per batch of rollouts (μ).
    pub updates_per_batch: usize,
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
            model_dir: None,
            dtype: "f32".into(),
            model: None,
            vocab_size: None,
            init: None,
            prompt_template: None,
            system_prompt: None,
            data: None,
            data_seed: 0,
            train_levels: vec![1, 2, 3],
            eval_levels: vec![1, 2, 3, 4, 5],
            eval_problems: 32,
            order: "mixed".into(),
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 40,
            eps_low: 0.2,
            eps_high: 0.2,
            beta: 0.0,
            updates_per_batch: 1,
            loss: "token-mean".into(),
            format_weight: 0.5,
            hint_ratios: HINT_STAGES.to_vec(),
            start_hint_step: 0,
        }
    }
}

impl RlConfig {
    fn from_value(v: &toml::Value) -> Result<RlConfig, ConfigError> {
        let c: RlConfig = parse_config(v)?;
        check_levels(&c.train_levels, &c.eval_levels)?;
        if c.model_dir.is_some() && (c.model.is_some() || c.vocab_size.is_some()) {
            return Err(ConfigError::new("model_dir", "comes with its own architecture and tokenizer: leave out model and vocab_size"));
        }
        if c.group_size < 2 {
            return Err(ConfigError::new("group_size", "must be at least 2 (advantages compare completions of one prompt)"));
        }
        if c.hint_ratios.iter().any(|r| !(0.0..=1.0).contains(r) || *r == 0.0) {
            return Err(ConfigError::new("hint_ratios", "must be fractions in (0, 1]"));
        }
        if c.updates_per_batch == 0 {
            return Err(ConfigError::new("updates_per_batch", "must be at least 1"));
        }
        if c.beta < 0.0 || !c.beta.is_finite() {
            return Err(ConfigError::new("beta", "must be 0 (no KL) or positive"));
        }
        if c.max_new_tokens == 0 {
            return Err(ConfigError::new("max_new_tokens", "must be at least 1"));
        }
        if !(c.top_p > 0.0 && c.top_p <= 1.0) || c.temperature <= 0.0 {
            return Err(ConfigError::new("temperature", "must be positive, with top_p in (0, 1] (rollouts are sampled)"));
        }
        kind_of(&c.dtype)?;
        Order::parse(&c.order)?;
        if let Some(d) = &c.data {
            d.fields()?;
        }
        let default = if c.model_dir.is_some() { Template::ChatMl } else { scratch_template() };
        prompt_format(c.prompt_template.as_deref(), c.system_prompt.as_deref(), default)?;
        c.aggregation()?;
        Ok(c)
    }

    fn aggregation(&self) -> Result<LossAggregation, ConfigError> {
        use LossAggregation::*;
        Ok(match self.loss.as_str() {
            "token-mean" => TokenMean,
            "seq-mean-token-mean" => SeqMeanTokenMean,
            "dr-grpo" => DrGrpo { max_completion_len: self.max_new_tokens },
            other => return Err(ConfigError::new("loss", format!("'{other}' is not one of token-mean, seq-mean-token-mean, dr-grpo"))),
        })
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    RlConfig::from_value(v).map(|_| ())
}

pub fn build_grpo(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build("ghpo.grpo", false, v, ctx)
}

pub fn build_ghpo(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build("ghpo.ghpo", true, v, ctx)
}

fn build(name: &'static str, hints: bool, v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let err = |m: String| WorkerError::algo(name, m);
    let cfg = RlConfig::from_value(v).map_err(|m| err(m.to_string()))?;
    if ctx.global_batch % cfg.group_size != 0 || ctx.global_batch % ctx.world_size != 0 {
        return Err(err(format!(
            "train.global_batch ({}) must be a whole number of groups of {} completions, and split evenly over {} rank(s)",
            ctx.global_batch, cfg.group_size, ctx.world_size
        )));
    }
    if ctx.micro_steps != 1 {
        return Err(err("train.micro_steps must be 1 (a batch's rollouts are scored together)".into()));
    }
    let order = Order::parse(&cfg.order).map_err(|m| err(m.to_string()))?;
    let gen = Arithmetic { seed: cfg.data_seed };
    let policy = match &cfg.model_dir {
        Some(dir) => {
            let prompt = prompt_format(cfg.prompt_template.as_deref(), cfg.system_prompt.as_deref(), Template::ChatMl).map_err(|m| err(m.to_string()))?;
            let kind = kind_of(&cfg.dtype).map_err(|m| err(m.to_string()))?;
            Policy::from_dir(dir, kind, ctx.device, prompt).map_err(err)?
        }
        None => {
            let prompt = prompt_format(cfg.prompt_template.as_deref(), cfg.system_prompt.as_deref(), scratch_template()).map_err(|m| err(m.to_string()))?;
            let spec = cfg.model.clone().unwrap_or_default();
            let mut policy = Policy::scratch(&spec, cfg.vocab_size.unwrap_or(384), &gen, ctx.seed, ctx.device, prompt).map_err(err)?;
            let kind = kind_of(&cfg.dtype).map_err(|m| err(m.to_string()))?;
            if kind != Kind::Float {
                policy.model.vs.set_kind(kind);
            }
            policy
        }
    };
    if let Some(p) = &cfg.init {
        crate::model::io::load_weights(&policy.model, std::slice::from_ref(p), p).map_err(|e| err(e.to_string()))?;
    }
    let problems = match &cfg.data {
        Some(spec) => Problems::files(spec, cfg.eval_problems, order).map_err(err)?,
        None => Problems::Generated { gen, train_levels: cfg.train_levels.clone(), eval_levels: cfg.eval_levels.clone(), eval_per_level: cfg.eval_problems },
    };
    // Every prompt of a file set, and a sample of each generated level, with
    // the longest hint, must fit in the context: refused here, not mid-run.
    let longest_hint = if hints { cfg.hint_ratios.iter().copied().fold(0.0, f64::max) } else { 0.0 };
    let sample: Vec<crate::ghpo::Problem> = match &problems {
        Problems::Files { train, .. } => train.clone(),
        Problems::Generated { gen, train_levels, .. } => train_levels.iter().flat_map(|&l| (0..64).map(move |i| gen.problem(l, i))).collect(),
    };
    for p in &sample {
        policy.prompt_ids(&with_hint(&p.problem, &p.solution, longest_hint), cfg.max_new_tokens).map_err(err)?;
    }
    let reference = if cfg.beta > 0.0 {
        let r = Qwen2::new(policy.model.cfg.clone(), ctx.device, policy.model.kind()).map_err(err)?;
        copy_weights(&r, &policy.model.named_parameters()).map_err(err)?;
        Some(r)
    } else {
        None
    };
    Ok(Box::new(RlTrainer {
        name,
        hints,
        order,
        cfg,
        policy,
        reference,
        problems,
        global_batch: ctx.global_batch,
        steps: ctx.steps,
        batch: None,
        snapshot: None,
        next_step: 0,
    }))
}

/// One batch of rollouts, this rank's share, as the updates need it.
struct Batch {
    /// The step whose policy sampled it.
    start: u64,
    ids: Tensor,
    mask: Tensor,
    prompt_len: i64,
    completion_mask: Tensor,
    advantages: Tensor,
    /// Log-probs under the sampling policy (filled by the batch's first update).
    old_logp: Option<Tensor>,
    ref_logp: Option<Tensor>,
    /// Completion tokens of the whole batch (all ranks), for token-mean.
    global_tokens: f64,
    scalars: BTreeMap<String, f64>,
}

pub struct RlTrainer {
    name: &'static str,
    hints: bool,
    order: Order,
    cfg: RlConfig,
    policy: Policy,
    /// The frozen initial policy of the KL term.
    reference: Option<Qwen2>,
    problems: Problems,
    global_batch: usize,
    steps: u64,
    batch: Option<Batch>,
    /// The weights that sampled the current batch, kept while it has updates left.
    snapshot: Option<Vec<(String, Tensor)>>,
    next_step: u64,
}

impl RlTrainer {
    fn err(&self, e: impl std::fmt::Display) -> WorkerError {
        WorkerError::algo(self.name, e.to_string())
    }

    /// Samples, scores and (GHPO) hints the batch that begins at step `start`.
    fn rollout(&self, ctx: &StepContext, start: u64) -> Result<Batch, WorkerError> {
        let t0 = Instant::now();
        let g = self.cfg.group_size;
        let n_groups = self.global_batch / g;
        let per = self.global_batch / ctx.world_size;
        let mine = ctx.rank * per..(ctx.rank + 1) * per;
        let batch_index = start / self.cfg.updates_per_batch as u64;
        let problems = self.problems.train(batch_index * n_groups as u64, n_groups, start, self.steps, self.order, ctx.seed ^ self.cfg.data_seed);
        let stages: Vec<f64> = if self.hints && start >= self.cfg.start_hint_step { self.cfg.hint_ratios.clone() } else { vec![] };
        let policy = &self.policy;
        let max_new = self.cfg.max_new_tokens;

        let mut prompt_of: HashMap<String, Vec<i64>> = HashMap::new();
        let mut round = 0u64;
        let mut generate_round = |todo: &[(usize, String)]| -> Result<Vec<Completion>, WorkerError> {
            round += 1;
            let mut rows = Vec::with_capacity(todo.len());
            for (_, m) in todo {
                if !prompt_of.contains_key(m) {
                    let ids = policy.prompt_ids(m, max_new).map_err(|e| self.err(e))?;
                    prompt_of.insert(m.clone(), ids);
                }
                rows.push(prompt_of[m].clone());
            }
            let params = SamplingParams {
                temperature: self.cfg.temperature,
                top_p: self.cfg.top_p,
                max_new_tokens: max_new,
                eos_ids: policy.eos.clone(),
                stop_sequences: vec![],
                seed: splitmix(splitmix(ctx.seed) ^ batch_index) ^ round,
                row_keys: todo.iter().map(|t| t.0 as u64).collect(),
            };
            Ok(generate(&policy.model, &rows, policy.pad, &params))
        };
        let fw = self.cfg.format_weight;
        let score = |p: &crate::ghpo::Problem, c: &Completion| {
            let text = policy.decode(&c.tokens);
            (accuracy_reward(&text, &p.answer).unwrap_or(f64::NAN), fw * format_reward(text.trim_end()))
        };
        let total = self.global_batch;
        let gather = |local: &[(f64, f64)]| -> Result<Vec<(f64, f64)>, WorkerError> {
            // Each rank writes its slots; the sum is every slot (NaN survives: NaN + 0).
            let mut flat = vec![0.0f64; 2 * total];
            for (i, (a, f)) in local.iter().enumerate() {
                flat[2 * (mine.start + i)] = *a;
                flat[2 * (mine.start + i) + 1] = *f;
            }
            let mut t = Tensor::from_slice(&flat);
            ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
            let v = Vec::<f64>::try_from(&t).map_err(|e| self.err(e))?;
            Ok(v.chunks(2).map(|c| (c[0], c[1])).collect())
        };
        let out = {
            let _g = tch::no_grad_guard();
            adaptive_hints(&problems, g, mine.clone(), &stages, &mut generate_round, score, gather)?
        };
        let rollout_s = t0.elapsed().as_secs_f64();

        // Advantages over whole groups of total rewards (accuracy + weighted format).
        let totals: Vec<f64> = out.rewards.iter().map(|(a, f)| if a.is_nan() { f64::NAN } else { a + f }).collect();
        let adv_all = group_advantages(&totals, g, 1e-4, true);
        let zero_adv = adv_all.chunks(g).filter(|a| a.iter().all(|x| *x == 0.0)).count() as f64 / n_groups as f64;
        let adv = &adv_all[mine.clone()];

        // This rank's rows: left-padded (hinted) prompts, then right-padded completions.
        let prompt_rows: Vec<Vec<i64>> = out.slots.iter().map(|s| prompt_of.get(&s.message).cloned().unwrap_or_default()).collect();
        let completions: Vec<&Vec<i64>> = out.slots.iter().map(|s| &s.completion.tokens).collect();
        let (pids, pmask) = left_pad(&prompt_rows, policy.pad);
        let longest = completions.iter().map(|c| c.len()).max().unwrap_or(1).max(1);
        let (mut cids, mut cmask) = (Vec::new(), Vec::new());
        for c in &completions {
            cids.extend(c.iter().copied().chain(std::iter::repeat_n(policy.pad, longest - c.len())));
            cmask.extend(std::iter::repeat_n(1i64, c.len()).chain(std::iter::repeat_n(0, longest - c.len())));
        }
        let device = policy.device;
        let shape = [completions.len() as i64, longest as i64];
        let completion_mask = Tensor::from_slice(&cmask).view(shape).to_device(device);
        let ids = Tensor::cat(&[pids.to_device(device), Tensor::from_slice(&cids).view(shape).to_device(device)], 1);
        let mask = Tensor::cat(&[pmask.to_device(device), completion_mask.shallow_clone()], 1);
        let prompt_len = pids.size()[1];
        let local_tokens: usize = completions.iter().map(|c| c.len()).sum();
        let mut t = Tensor::from_slice(&[local_tokens as f64]);
        ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
        let global_tokens = t.double_value(&[0]);
        let ref_logp = match &self.reference {
            Some(r) => {
                let _g = tch::no_grad_guard();
                Some(completion_logprobs(r, &ids, &mask, prompt_len, self.cfg.temperature))
            }
            None => None,
        };

        let mut scalars = BTreeMap::new();
        let correct: f64 = out.rewards.iter().map(|r| if r.0.is_nan() { 0.0 } else { r.0 }).sum();
        scalars.insert("accuracy".into(), correct / total as f64);
        scalars.insert("zero_adv_groups".into(), zero_adv);
        scalars.insert("response_len".into(), local_tokens as f64 / per.max(1) as f64);
        scalars.insert("rollout_s".into(), rollout_s);
        if self.hints {
            scalars.insert("hint_rounds".into(), out.rounds as f64 - 1.0);
            for (level, share) in std::iter::once(0.0).chain(self.cfg.hint_ratios.iter().copied()).zip(hint_fractions(&out.hints, &self.cfg.hint_ratios)) {
                scalars.insert(format!("hinted_{:02}", (level * 100.0).round() as u32), share);
            }
        }
        Ok(Batch {
            start,
            ids,
            mask,
            prompt_len,
            completion_mask,
            advantages: Tensor::from_slice(adv).to_kind(Kind::Float).to_device(device),
            old_logp: None,
            ref_logp,
            global_tokens,
            scalars,
        })
    }
}

impl Algorithm for RlTrainer {
    fn name(&self) -> &str {
        self.name
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.policy.model.named_parameters()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let mu = self.cfg.updates_per_batch as u64;
        let start = ctx.step - ctx.step % mu;
        let mut fresh = false;
        if self.batch.as_ref().map(|b| b.start) != Some(start) {
            fresh = true;
            if ctx.step == start {
                if mu > 1 {
                    self.snapshot = Some(self.policy.snapshot());
                }
                self.batch = Some(self.rollout(ctx, start)?);
            } else {
                // Resumed inside a batch's updates: sample it again from the
                // weights that sampled it, and take the old log-probs from them.
                let Some(snap) = self.snapshot.take() else {
                    return Err(self.err(format!(
                        "resuming at step {} inside the batch begun at step {start}, but the checkpoint does not hold that batch's policy",
                        ctx.step
                    )));
                };
                let current = self.policy.snapshot();
                self.policy.set_weights(&snap).map_err(|e| self.err(e))?;
                let rolled = self.rollout(ctx, start).map(|mut b| {
                    let _g = tch::no_grad_guard();
                    b.old_logp = Some(completion_logprobs(&self.policy.model, &b.ids, &b.mask, b.prompt_len, self.cfg.temperature));
                    b
                });
                self.policy.set_weights(&current).map_err(|e| self.err(e))?;
                self.snapshot = Some(snap);
                self.batch = Some(rolled?);
            }
        }
        let t0 = Instant::now();
        let Some(b) = self.batch.as_mut() else { return Err(WorkerError::algo(self.name, "no batch")) };
        let logp = completion_logprobs(&self.policy.model, &b.ids, &b.mask, b.prompt_len, self.cfg.temperature);
        // The batch's first update is on the policy that sampled it: ratio 1.
        let old = b.old_logp.get_or_insert_with(|| logp.detach()).shallow_clone();
        let clip = ClipParams { eps_low: self.cfg.eps_low, eps_high: self.cfg.eps_high, beta: self.cfg.beta };
        let agg = self.cfg.aggregation().map_err(|e| WorkerError::algo(self.name, e.to_string()))?;
        let (mut loss, kl) = grpo_loss(&logp, &old, b.ref_logp.as_ref(), &b.advantages, &b.completion_mask, clip, agg);
        if agg == LossAggregation::TokenMean {
            // A mean over the whole batch's tokens, not this rank's: the loop
            // averages gradients over ranks, so scale by local share × ranks.
            let local = b.completion_mask.sum(Kind::Float).double_value(&[]).max(1.0);
            loss *= local * ctx.world_size as f64 / b.global_tokens.max(1.0);
        }
        loss.backward();
        let mut scalars = b.scalars.clone();
        if !fresh {
            scalars.insert("rollout_s".into(), 0.0);
        }
        scalars.insert("update_s".into(), t0.elapsed().as_secs_f64());
        if self.cfg.beta > 0.0 {
            scalars.insert("kl".into(), kl.double_value(&[]));
        }
        let samples = b.completion_mask.size()[0] as usize;
        self.next_step = ctx.step + 1;
        if self.next_step % mu == 0 {
            self.snapshot = None;
        }
        Ok(StepOutput { loss: loss.double_value(&[]), samples, scalars })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        self.policy.evaluate(ctx, &self.problems.eval(), self.cfg.max_new_tokens, self.name)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        // Only needed between the updates of one batch.
        match &self.snapshot {
            Some(s) if self.next_step % self.cfg.updates_per_batch as u64 != 0 => s.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
            _ => Vec::new(),
        }
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        if state.is_empty() {
            self.snapshot = None;
            return Ok(());
        }
        // Checked now, not at the first step: a wrong snapshot is a bad checkpoint.
        check_weights(&self.policy.model, &state).map_err(|e| self.err(format!("the checkpoint's batch policy: {e}")))?;
        self.snapshot = Some(state);
        Ok(())
    }

    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        self.policy.export(dir).map_err(|e| self.err(e))
    }
}
