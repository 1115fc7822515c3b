//! `ghpo.sft`: supervised warm-up of a small Qwen2 from scratch on the leveled
//! arithmetic problems (the reproduction's first job): cross-entropy on the
//! worked solution and end-of-text, the prompt as context.

use super::policy::{prompt_format, ModelSpec, Policy};
use super::problems::{Order, Problems};
use super::check_levels;
use crate::data::Arithmetic;
use crate::model::positions_from_mask;
use crate::tokenizer::Template;
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

const NAME: &str = "ghpo.sft";

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
    /// "chatml", or a format string with `{user}` (default "{user}\n").
    pub prompt_template: Option<String>,
    pub system_prompt: Option<String>,
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
            prompt_template: None,
            system_prompt: None,
        }
    }
}

/// The from-scratch prompt: the problem, a newline, then the answer.
pub fn scratch_template() -> Template {
    Template::Custom("{user}\n".into())
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
        prompt_format(c.prompt_template.as_deref(), c.system_prompt.as_deref(), scratch_template())?;
        Ok(c)
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    SftConfig::from_value(v).map(|_| ())
}

pub fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let err = |m: String| WorkerError::algo(NAME, m);
    let cfg = SftConfig::from_value(v).map_err(|m| err(m.to_string()))?;
    let prompt = prompt_format(cfg.prompt_template.as_deref(), cfg.system_prompt.as_deref(), scratch_template()).map_err(|m| err(m.to_string()))?;
    let gen = Arithmetic { seed: cfg.data_seed };
    let policy = Policy::scratch(&cfg.model, cfg.vocab_size, &gen, ctx.seed, ctx.device, prompt).map_err(err)?;
    let problems = Problems::Generated { gen, train_levels: cfg.train_levels.clone(), eval_levels: cfg.eval_levels.clone(), eval_per_level: cfg.eval_problems };
    Ok(Box::new(SftTrainer { cfg, policy, problems, global_batch: ctx.global_batch }))
}

pub struct SftTrainer {
    cfg: SftConfig,
    policy: Policy,
    problems: Problems,
    global_batch: usize,
}

impl SftTrainer {
    fn encode(&self, text: &str) -> Result<Vec<i64>, WorkerError> {
        self.policy.encode(text).map_err(|e| WorkerError::algo(NAME, e))
    }
}

impl Algorithm for SftTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.policy.model.named_parameters()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let step_start = ctx.step * self.global_batch as u64;
        let first = ctx.rank_offset(self.global_batch) as usize;
        let eos = self.policy.pad;
        // Every sample of the step as (token ids, prompt length). Prompt tokens
        // are context; the loss is on the solution and EOS only.
        let problems = self.problems.train(step_start, self.global_batch, ctx.step, 1, Order::Mixed, 0);
        let all = problems
            .iter()
            .map(|p| {
                let prompt = self.policy.prompt_ids(&p.problem, 0).map_err(|e| WorkerError::algo(NAME, e))?;
                let mut ids = prompt.clone();
                ids.extend(self.encode(&p.solution)?);
                ids.push(eos);
                Ok((ids, prompt.len()))
            })
            .collect::<Result<Vec<_>, WorkerError>>()?;
        // The loss is a mean over every target token of the global step (not of
        // this rank's share), so N ranks compute what one rank would. Data is a
        // pure function of the sample index, so each rank can count them all.
        let global_targets: usize = all.iter().map(|(ids, prompt_len)| ids.len() - prompt_len).sum();
        let rows = &all[first..first + per];
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
        if len as i64 > self.policy.model.cfg.max_position_embeddings {
            return Err(WorkerError::algo(NAME, format!("a training sample of {len} tokens exceeds the model's context of {}", self.policy.model.cfg.max_position_embeddings)));
        }
        let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for (row, prompt_len) in rows {
            for t in 0..len {
                ids.push(row.get(t).copied().unwrap_or(eos));
                mask.push(i64::from(t < row.len()));
                // Label of position t is token t + 1.
                labels.push(if t + 1 < row.len() && t + 1 >= *prompt_len { row[t + 1] } else { -100 });
            }
        }
        let device = self.policy.device;
        let shape = [rows.len() as i64, len as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let labels = Tensor::from_slice(&labels).view([-1]).to_device(device);
        let logits = self.policy.model.forward(&ids, &positions_from_mask(&mask), &mask, None);
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
        self.policy.evaluate(ctx, &self.problems.eval(), self.cfg.max_new_tokens, NAME)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        self.policy.export(dir).map_err(|e| WorkerError::algo(NAME, e))
    }
}
