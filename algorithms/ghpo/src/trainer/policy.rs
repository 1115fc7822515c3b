//! The policy a GHPO-crate trainer trains: a Qwen2 with its tokenizer, prompt
//! format and end-of-text ids — created from scratch (with a byte-level BPE
//! trained on the generated problems) or loaded from a Hugging Face folder —
//! and what is done with it outside the update: greedy evaluation, weight
//! snapshots, export as a Hugging Face folder.

use crate::data::{Arithmetic, LEVELS};
use crate::generate::{generate, SamplingParams};
use crate::ghpo::Problem;
use crate::model::{io, Qwen2, Qwen2Config};
use crate::reward::{accuracy_reward, format_reward};
use crate::tokenizer::{PromptFormat, Template, Tokenizer};
use kiln_worker::{ConfigError, StepContext, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The model to create from scratch.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub rope_theta: f64,
    /// The context: prompt plus completion must fit.
    pub max_position_embeddings: i64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            hidden_size: 64,
            intermediate_size: 192,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rope_theta: 10000.0,
            max_position_embeddings: 512,
        }
    }
}

/// The prompt format of the spec's `prompt_template` ("chatml", or a format
/// string with `{user}` and optionally `{system}`) and `system_prompt`.
pub fn prompt_format(template: Option<&str>, system: Option<&str>, default: Template) -> Result<PromptFormat, ConfigError> {
    let template = match template {
        None => default,
        Some("chatml") => Template::ChatMl,
        Some(t) if t.contains("{user}") => Template::Custom(t.to_string()),
        Some(_) => return Err(ConfigError::new("prompt_template", "must be \"chatml\" or a format string containing {user} (and optionally {system})")),
    };
    Ok(PromptFormat { template, system: system.map(str::to_string) })
}

pub struct Policy {
    pub model: Qwen2,
    pub tokenizer: Tokenizer,
    pub prompt: PromptFormat,
    /// Tokens that end a completion.
    pub eos: Vec<i64>,
    /// Padding id (the first end-of-text id unless the config names one).
    pub pad: i64,
    pub device: Device,
}

impl Policy {
    /// A fresh model and a byte-level BPE of `vocab_size` trained on the
    /// generator's problems — the same corpus on every rank, so every rank
    /// trains the same tokenizer. Weights come from torch's generator seeded
    /// with `init_seed`.
    pub fn scratch(spec: &ModelSpec, vocab_size: usize, data: &Arithmetic, init_seed: u64, device: Device, prompt: PromptFormat) -> Result<Policy, String> {
        let corpus: Vec<String> = LEVELS
            .flat_map(|l| (0..400).map(move |i| (l, i)))
            .map(|(l, i)| {
                let p = data.problem(l, i);
                format!("{}\n{}", p.problem, p.solution)
            })
            .collect();
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), vocab_size).map_err(|e| e.to_string())?;
        let eos = tokenizer.token_id("<|endoftext|>").ok_or("the tokenizer has no <|endoftext|>")?;
        let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": tokenizer.vocab_size(),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "rope_theta": spec.rope_theta,
            "max_position_embeddings": spec.max_position_embeddings,
            "tie_word_embeddings": true,
            "eos_token_id": eos,
            "bos_token_id": eos,
        }))
        .map_err(|e| e.to_string())?;
        tch::manual_seed(init_seed as i64);
        let model = Qwen2::new(cfg, device, Kind::Float)?;
        Ok(Policy { model, tokenizer, prompt, eos: vec![eos], pad: eos, device })
    }

    /// A Hugging Face folder: `config.json`, the weights (single file or
    /// sharded index) and `tokenizer.json`, which must fit the model's
    /// vocabulary. End-of-text ids: `generation_config.json`'s `eos_token_id`
    /// (one or a list), else config.json's plus `<|im_end|>` and
    /// `<|endoftext|>` where the tokenizer has them.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device, prompt: PromptFormat) -> Result<Policy, String> {
        let model = io::load(dir, device, kind).map_err(|e| e.to_string())?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(format!("{}: no tokenizer.json (the policy's tokenizer must come with the model)", dir.display()));
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;
        if tokenizer.vocab_size() as i64 > model.cfg.vocab_size {
            return Err(format!(
                "{}: tokenizer.json has {} tokens but the model's vocab_size is {}: they do not belong together",
                dir.display(),
                tokenizer.vocab_size(),
                model.cfg.vocab_size
            ));
        }
        // As transformers' generate() does: generation_config.json's ids when
        // the folder has them, else config.json's plus the usual end tokens.
        let ids_of = |v: Option<&serde_json::Value>| -> Vec<i64> {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
                _ => vec![],
            }
        };
        let gen_path = dir.join("generation_config.json");
        let gen: serde_json::Value = match std::fs::read_to_string(&gen_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", gen_path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        let mut eos = ids_of(gen.get("eos_token_id"));
        if eos.is_empty() {
            eos = ids_of(model.cfg.extra.get("eos_token_id"));
            for t in ["<|im_end|>", "<|endoftext|>"] {
                if let Some(id) = tokenizer.token_id(t) {
                    if !eos.contains(&id) {
                        eos.push(id);
                    }
                }
            }
        }
        let Some(&first) = eos.first() else {
            return Err(format!("{}: no end-of-text token (no eos_token_id in config.json, no <|im_end|> or <|endoftext|> in tokenizer.json)", dir.display()));
        };
        if let Some(bad) = eos.iter().find(|&&e| e < 0 || e >= model.cfg.vocab_size) {
            return Err(format!("{}: eos_token_id {bad} is outside the vocabulary of {}", dir.display(), model.cfg.vocab_size));
        }
        let pad = gen.get("pad_token_id").or(model.cfg.extra.get("pad_token_id")).and_then(|v| v.as_i64()).filter(|p| (0..model.cfg.vocab_size).contains(p)).unwrap_or(first);
        Ok(Policy { model, tokenizer, prompt, eos, pad, device })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }

    /// The prompt's token ids for a user message, refused when prompt and
    /// `max_new_tokens` do not fit in the model's context.
    pub fn prompt_ids(&self, message: &str, max_new_tokens: usize) -> Result<Vec<i64>, String> {
        let ids = self.encode(&self.prompt.render(message))?;
        let context = self.model.cfg.max_position_embeddings;
        if (ids.len() + max_new_tokens) as i64 > context {
            let start: String = message.chars().take(60).collect();
            return Err(format!(
                "a prompt of {} tokens plus max_new_tokens = {max_new_tokens} exceeds the model's context of {context} (max_position_embeddings); \
                 shorten the problems or lower max_new_tokens. The prompt starts: {start:?}",
                ids.len()
            ));
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[i64]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Copies of the parameters, by name.
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        let _g = tch::no_grad_guard();
        self.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
    }

    /// Sets the parameters to `weights` (names and shapes must match).
    pub fn set_weights(&self, weights: &[(String, Tensor)]) -> Result<(), String> {
        copy_weights(&self.model, weights)
    }

    /// Greedy accuracy and the format rate on `problems`, split over the ranks
    /// and summed: `accuracy`, `format`, and `accuracy_l{n}` for each level
    /// present.
    pub fn evaluate(&self, ctx: &StepContext, problems: &[Problem], max_new_tokens: usize, algo: &str) -> Result<BTreeMap<String, f64>, WorkerError> {
        let _g = tch::no_grad_guard();
        let n = problems.len();
        let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
        let mine = &problems[lo..hi];
        let levels: Vec<u8> = problems.iter().map(|p| p.level).filter(|l| *l > 0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let params = SamplingParams { temperature: 0.0, max_new_tokens, eos_ids: self.eos.clone(), ..Default::default() };
        let prompts = mine.iter().map(|p| self.prompt_ids(&p.problem, max_new_tokens)).collect::<Result<Vec<_>, _>>().map_err(|e| WorkerError::algo(algo, e))?;
        let outs = generate(&self.model, &prompts, self.pad, &params);
        // Sums: correct, formatted, then correct and count per level.
        let mut sums = vec![0.0; 2 + 2 * levels.len()];
        for (p, c) in mine.iter().zip(&outs) {
            let text = self.decode(&c.tokens);
            let correct = accuracy_reward(&text, &p.answer).unwrap_or(0.0);
            sums[0] += correct;
            sums[1] += format_reward(text.trim_end());
            if let Some(i) = levels.iter().position(|l| *l == p.level) {
                sums[2 + 2 * i] += correct;
                sums[3 + 2 * i] += 1.0;
            }
        }
        let mut t = Tensor::from_slice(&sums);
        ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
        let sums = Vec::<f64>::try_from(&t).map_err(|e| WorkerError::algo(algo, e))?;
        let mut out = BTreeMap::new();
        out.insert("accuracy".into(), sums[0] / n.max(1) as f64);
        out.insert("format".into(), sums[1] / n.max(1) as f64);
        for (i, level) in levels.iter().enumerate() {
            out.insert(format!("accuracy_l{level}"), sums[2 + 2 * i] / sums[3 + 2 * i].max(1.0));
        }
        Ok(out)
    }

    /// Writes a Hugging Face folder: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and `generation_config.json` (end-of-text and padding
    /// ids), loadable by `transformers` and by [`Policy::from_dir`].
    pub fn export(&self, dir: &Path) -> Result<(), String> {
        io::save(&self.model, dir, None).map_err(|e| e.to_string())?;
        self.tokenizer.save(&dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
        let gen = serde_json::json!({ "eos_token_id": self.eos, "pad_token_id": self.pad });
        let path = dir.join("generation_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&gen).unwrap_or_default()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Copies `weights` into `model`'s parameters by name and shape (every
/// parameter must be there, nothing else may be).
pub fn copy_weights(model: &Qwen2, weights: &[(String, Tensor)]) -> Result<(), String> {
    let _g = tch::no_grad_guard();
    for (p, w) in check_weights(model, weights)? {
        p.shallow_clone().copy_(&w.to_kind(p.kind()).to_device(p.device()));
    }
    Ok(())
}

/// Pairs each parameter of `model` with its tensor in `weights`, checking
/// names and shapes.
pub fn check_weights<'a>(model: &Qwen2, weights: &'a [(String, Tensor)]) -> Result<Vec<(Tensor, &'a Tensor)>, String> {
    let params = model.named_parameters();
    if params.len() != weights.len() {
        return Err(format!("{} tensors for a model of {} parameters", weights.len(), params.len()));
    }
    let by_name: BTreeMap<&str, &Tensor> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    params
        .into_iter()
        .map(|(name, p)| {
            let w = *by_name.get(name.as_str()).ok_or_else(|| format!("no tensor for parameter {name}"))?;
            if p.size() != w.size() {
                return Err(format!("tensor {name} has shape {:?}, the parameter {:?}", w.size(), p.size()));
            }
            Ok((p, w))
        })
        .collect()
}

/// `dtype` of the spec as a torch kind.
pub fn kind_of(dtype: &str) -> Result<Kind, ConfigError> {
    match dtype {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(ConfigError::new("dtype", format!("'{other}' is not one of f32, bf16"))),
    }
}
