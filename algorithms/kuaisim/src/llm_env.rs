//! The LLM-powered user simulator as an environment (Zhang et al., AAAI
//! 2025; the reference's gymnasium `UserSim`): a batch of users, each
//! starting from their first `start` real interactions; an action is one
//! item per user; the reward is the simulator's engagement — the 2-of-3
//! ensemble of the keyword, embedding and SASRec voters of
//! `kiln_recsys::llmsim` on the user's history so far; an episode ends with
//! probability `terminate` per step, or after `max_steps`. A finished slot
//! draws a new user. Draws are counter-based, so a restored environment
//! continues exactly.
//!
//! It lives beside KuaiSim's environments and shares their conventions
//! (batched users, item ids 1..=items, per-rank checkpoint state through
//! `to_named`/`load`), so agents written for them carry over.

use kiln_recsys::llmsim::analysis::read_analyses;
use kiln_recsys::llmsim::embed::SentenceEncoder;
use kiln_recsys::llmsim::evaluate::{Panel, SasrecVoter};
use kiln_recsys::llmsim::sasrec::{read, SasrecJob};
use kiln_recsys::llmsim::voters::ensemble;
use kiln_worker::rng::{splitmix, unit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// `[algorithm.world]`: what the simulator is built from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    /// User, item, rating, timestamp (CSV/TSV/JSONL with a header).
    pub interactions: PathBuf,
    /// Item analyses (`kiln llmsim analyse --out`).
    pub analysis: PathBuf,
    /// A sentence-transformers folder for the embedding voter (absent: it never votes yes).
    pub embedder: Option<PathBuf>,
    /// `kiln export` of an `llmsim.sasrec` job (absent: it never votes yes).
    pub sasrec: Option<PathBuf>,
    #[serde(default = "positive_at")]
    pub positive_at: f64,
}

fn positive_at() -> f64 {
    4.0
}

/// The users, items and voters, shared by every environment of a process.
pub struct World {
    pub panel: Panel,
    /// Users with at least `start` interactions (those that can start an episode).
    starters: Vec<usize>,
}

impl World {
    pub fn load(spec: &WorldSpec, start: usize) -> Result<World, String> {
        let job: SasrecJob = serde_json::from_value(serde_json::json!({ "interactions": spec.interactions, "positive_at": spec.positive_at })).map_err(|e| e.to_string())?;
        let encoder = spec.embedder.as_ref().map(|dir| SentenceEncoder::load(dir, Device::Cpu).map_err(|e| e.to_string())).transpose()?;
        let sasrec = spec.sasrec.as_ref().map(|d| SasrecVoter::load(d)).transpose()?;
        let panel = Panel::new(read(&job)?, &read_analyses(&spec.analysis)?, encoder.as_ref(), sasrec)?;
        if panel.analysed() == 0 {
            return Err(format!("{}: no analysis of any item in {} (are they of the same items?)", spec.analysis.display(), spec.interactions.display()));
        }
        let users = &panel.data.users;
        let starters: Vec<usize> = (0..users.len()).filter(|&u| users[u].len() >= start).collect();
        if starters.is_empty() {
            return Err(format!("{}: no user has {start} interactions to start from", spec.interactions.display()));
        }
        Ok(World { panel, starters })
    }

    pub fn items(&self) -> usize {
        self.panel.data.items
    }

    pub fn users(&self) -> usize {
        self.panel.data.users.len()
    }

    /// The ensemble's verdict on `item` (1-based) for `user` after `history`
    /// ((item, liked) pairs); `coin` for an item without an analysis or a
    /// user without history.
    pub fn engaged(&self, user: usize, history: &[(i64, f32)], item: i64, coin: bool) -> bool {
        self.panel.verdict(user, history, item).map_or(coin, |v| ensemble(v.votes, !history.is_empty(), coin))
    }
}

/// Episode settings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmEnvConfig {
    /// Users per rank.
    #[serde(default = "batch")]
    pub batch: usize,
    /// Real interactions an episode starts from.
    #[serde(default = "start")]
    pub start: usize,
    /// Probability that an episode ends after a step.
    #[serde(default = "terminate")]
    pub terminate: f64,
    /// Steps after which an episode ends (0: no limit).
    #[serde(default)]
    pub max_steps: usize,
}

fn batch() -> usize {
    16
}
fn start() -> usize {
    2
}
fn terminate() -> f64 {
    0.025
}

impl Default for LlmEnvConfig {
    fn default() -> Self {
        LlmEnvConfig { batch: batch(), start: start(), terminate: terminate(), max_steps: 0 }
    }
}

pub struct LlmEnv {
    world: Rc<World>,
    cfg: LlmEnvConfig,
    seed: u64,
    t: u64,
    drawn: u64,
    user: Vec<usize>,
    history: Vec<Vec<(i64, f32)>>,
    steps: Vec<usize>,
}

fn draw(seed: u64, tag: u64, a: u64, b: u64) -> f64 {
    unit(splitmix(seed ^ splitmix(tag << 56 ^ splitmix(a ^ (b << 32)))))
}

impl LlmEnv {
    pub fn new(world: Rc<World>, cfg: LlmEnvConfig, seed: u64) -> LlmEnv {
        let mut env = LlmEnv { world, cfg, seed, t: 0, drawn: 0, user: vec![0; cfg.batch], history: vec![Vec::new(); cfg.batch], steps: vec![0; cfg.batch] };
        for k in 0..cfg.batch {
            env.arrive(k);
        }
        env
    }

    /// Slot `k` gets the next drawn user, with their first `start` interactions.
    fn arrive(&mut self, k: usize) {
        let s = &self.world.starters;
        let u = s[(splitmix(self.seed ^ splitmix(self.drawn + 1)) % s.len() as u64) as usize];
        self.drawn += 1;
        self.user[k] = u;
        self.history[k] = self.world.panel.data.users[u][..self.cfg.start].to_vec();
        self.steps[k] = 0;
    }

    /// Each slot's user and last `h` (item, reward) pairs, left-padded with
    /// (0, 0): `[B, 1 + 2h]` (the user, the items, then the rewards), as the
    /// reference's observation holds the user id and the history.
    pub fn observation(&self, h: usize) -> Tensor {
        let mut v = Vec::with_capacity(self.cfg.batch * (1 + 2 * h));
        for (hist, &u) in self.history.iter().zip(&self.user) {
            v.push(u as f32);
            let last = &hist[hist.len().saturating_sub(h)..];
            let pad = h - last.len();
            v.extend(std::iter::repeat(0.0).take(pad).chain(last.iter().map(|x| x.0 as f32)));
            v.extend(std::iter::repeat(0.0).take(pad).chain(last.iter().map(|x| x.1)));
        }
        Tensor::from_slice(&v).view([self.cfg.batch as i64, 1 + 2 * h as i64])
    }

    /// One item per slot (1..=items): the rewards and which episodes ended
    /// (those slots hold new users afterwards).
    pub fn step(&mut self, items: &[i64]) -> Result<(Vec<f32>, Vec<bool>), String> {
        if items.len() != self.cfg.batch || items.iter().any(|&i| i < 1 || i > self.world.items() as i64) {
            return Err(format!("an action is {} item ids in 1..={}", self.cfg.batch, self.world.items()));
        }
        let (mut rewards, mut done) = (Vec::new(), Vec::new());
        for (k, &item) in items.iter().enumerate() {
            let coin = draw(self.seed, 1, self.t, k as u64) < 0.5;
            let r = if self.world.engaged(self.user[k], &self.history[k], item, coin) { 1.0 } else { 0.0 };
            self.history[k].push((item, r));
            self.steps[k] += 1;
            let end = (self.cfg.max_steps > 0 && self.steps[k] >= self.cfg.max_steps) || draw(self.seed, 2, self.t, k as u64) < self.cfg.terminate;
            rewards.push(r);
            done.push(end);
            if end {
                self.arrive(k);
            }
        }
        self.t += 1;
        Ok((rewards, done))
    }

    /// The environment as tensors, for per-rank checkpoint state.
    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        let lens: Vec<i64> = self.history.iter().map(|h| h.len() as i64).collect();
        let items: Vec<i64> = self.history.iter().flatten().map(|x| x.0).collect();
        let rewards: Vec<f32> = self.history.iter().flatten().map(|x| x.1).collect();
        let meta = [self.t as i64, self.drawn as i64];
        vec![
            ("llm_env.meta".into(), Tensor::from_slice(&meta)),
            ("llm_env.user".into(), Tensor::from_slice(&self.user.iter().map(|&u| u as i64).collect::<Vec<_>>())),
            ("llm_env.steps".into(), Tensor::from_slice(&self.steps.iter().map(|&s| s as i64).collect::<Vec<_>>())),
            ("llm_env.lens".into(), Tensor::from_slice(&lens)),
            ("llm_env.items".into(), Tensor::from_slice(&items)),
            ("llm_env.rewards".into(), Tensor::from_slice(&rewards)),
        ]
    }

    pub fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let get = |k: &str| named.get(k).ok_or_else(|| format!("the checkpoint's environment has no {k}")).map(|t| t.to_device(Device::Cpu));
        let ints = |k: &str| -> Result<Vec<i64>, String> { Vec::<i64>::try_from(get(k)?.to_kind(Kind::Int64)).map_err(|e| e.to_string()) };
        let (meta, user, steps, lens, items) = (ints("llm_env.meta")?, ints("llm_env.user")?, ints("llm_env.steps")?, ints("llm_env.lens")?, ints("llm_env.items")?);
        let rewards: Vec<f32> = Vec::try_from(get("llm_env.rewards")?).map_err(|e: tch::TchError| e.to_string())?;
        if user.len() != self.cfg.batch || meta.len() != 2 || lens.iter().sum::<i64>() as usize != items.len() || items.len() != rewards.len() {
            return Err(format!("the checkpoint's environment holds {} users; this job's batch is {}", user.len(), self.cfg.batch));
        }
        let mut at = 0usize;
        self.history = lens
            .iter()
            .map(|&n| {
                let h: Vec<(i64, f32)> = (at..at + n as usize).map(|j| (items[j], rewards[j])).collect();
                at += n as usize;
                h
            })
            .collect();
        self.user = user.iter().map(|&u| u as usize).collect();
        self.steps = steps.iter().map(|&s| s as usize).collect();
        self.t = meta[0] as u64;
        self.drawn = meta[1] as u64;
        Ok(())
    }
}
