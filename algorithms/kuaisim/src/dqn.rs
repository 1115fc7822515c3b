//! `llmsim.dqn`: DQN against the LLM-powered user simulator, as the
//! reference trains Stable-Baselines3's DQN on its `UserSim` (an MLP of
//! 64-64, γ = 0.975, a replay buffer, a hard-copied target network): the
//! state is the user and their last `history` (item, reward) pairs (user
//! and items through learned embeddings), the action one of all items, the
//! reward the simulator's engagement.
//!
//! Data-parallel: each rank plays its own users into its own replay buffer
//! (per-rank checkpoint state, with its environment); gradients are
//! all-reduced; the target network is the same on every rank and saved
//! with each checkpoint.

use crate::agents::{load_targets, mlp, targets_state, with_weights, Replay};
use crate::llm_env::{LlmEnv, LlmEnvConfig, World, WorldSpec};
use kiln_worker::rng::{splitmix, unit};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;
use tch::{nn, nn::Module, Device, Kind, Tensor};

const NAME: &str = "llmsim.dqn";

pub const ENTRY: AlgorithmEntry = AlgorithmEntry {
    name: NAME,
    summary: "DQN against the LLM-powered user simulator (keyword, embedding and SASRec voters in a 2-of-3 ensemble): one item per step, engagement as reward",
    validate,
    build,
};

/// The `[algorithm]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DqnJob {
    pub world: WorldSpec,
    #[serde(default)]
    pub env: LlmEnvConfig,
    /// (item, reward) pairs the state holds.
    #[serde(default = "history")]
    pub history: usize,
    #[serde(default = "hidden")]
    pub hidden: Vec<usize>,
    #[serde(default = "item_dim")]
    pub item_dim: usize,
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Replay capacity per rank.
    #[serde(default = "buffer")]
    pub buffer: usize,
    /// Steps over which ε falls from 1 to `final_epsilon`.
    #[serde(default = "explore_steps")]
    pub explore_steps: u64,
    #[serde(default = "final_epsilon")]
    pub final_epsilon: f64,
    /// The target network is copied from the online one every this many steps.
    #[serde(default = "target_every")]
    pub target_every: u64,
    /// Users in the evaluation (episodes of `env.eval_steps`, 11 as the reference evaluates).
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

fn history() -> usize {
    2
}
fn hidden() -> Vec<usize> {
    vec![64, 64]
}
fn item_dim() -> usize {
    16
}
fn gamma() -> f64 {
    0.975
}
fn buffer() -> usize {
    50_000
}
fn explore_steps() -> u64 {
    500
}
fn final_epsilon() -> f64 {
    0.05
}
fn target_every() -> u64 {
    100
}
fn eval_users() -> usize {
    64
}

impl DqnJob {
    pub fn from_value(v: &toml::Value) -> Result<DqnJob, ConfigError> {
        let job: DqnJob = parse_config(v)?;
        if job.history == 0 || job.item_dim == 0 || job.hidden.contains(&0) {
            return Err(ConfigError::new("history", "history, item_dim and the hidden widths must be >= 1"));
        }
        if !(0.0..1.0).contains(&job.gamma) {
            return Err(ConfigError::new("gamma", "must be in [0, 1)"));
        }
        job.env.check().map_err(|m| ConfigError::new("env", m))?;
        if job.env.slate != 1 {
            return Err(ConfigError::new("env.slate", "DQN picks one item per step: slate = 1 (the request-level agents, such as kuaisim.cf, show slates)"));
        }
        if job.buffer == 0 || job.target_every == 0 || job.eval_users == 0 {
            return Err(ConfigError::new("buffer", "buffer, target_every and eval_users must be >= 1"));
        }
        if !(0.0..=1.0).contains(&job.final_epsilon) {
            return Err(ConfigError::new("final_epsilon", "must be in [0, 1]"));
        }
        Ok(job)
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    DqnJob::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = DqnJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    Ok(Box::new(DqnTrainer::new(job, ctx)?))
}

pub struct DqnTrainer {
    vs: nn::VarStore,
    user: nn::Embedding,
    item: nn::Embedding,
    net: nn::Sequential,
    targets: Vec<(String, Tensor)>,
    world: Rc<World>,
    env: LlmEnv,
    replay: Replay,
    job: DqnJob,
    seed: u64,
    global_batch: usize,
    device: Device,
}

impl DqnTrainer {
    pub fn new(job: DqnJob, ctx: &BuildContext) -> Result<DqnTrainer, WorkerError> {
        let world = Rc::new(World::load(&job.world, job.env.start, ctx.device).map_err(|e| WorkerError::algo(NAME, format!("world: {e}")))?);
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let user = nn::embedding(&root / "user", world.users() as i64, job.item_dim as i64, Default::default());
        let item = nn::embedding(&root / "item", world.items() as i64 + 1, job.item_dim as i64, Default::default());
        let mut dims = vec![((job.history + 1) * job.item_dim + job.history) as i64];
        dims.extend(job.hidden.iter().map(|&h| h as i64));
        dims.push(world.items() as i64);
        let net = mlp(&(&root / "q"), &dims);
        let targets = kiln_worker::sorted_variables(&vs).into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        // Each rank plays its own users.
        let seed = splitmix(ctx.seed ^ splitmix(ctx.rank as u64 + 1));
        let env = LlmEnv::new(world.clone(), job.env, seed);
        let replay = Replay::new(job.buffer, 1 + 2 * job.history as i64, 1, 1, ctx.device);
        Ok(DqnTrainer { vs, user, item, net, targets, world, env, replay, job, seed: ctx.seed, global_batch: ctx.global_batch, device: ctx.device })
    }

    /// Q-values of every item for observations `[n, 1 + 2h]` (user, items, rewards): `[n, items]`.
    fn q(&self, obs: &Tensor) -> Tensor {
        let h = self.job.history as i64;
        let n = obs.size()[0];
        let user = obs.select(1, 0).to_kind(Kind::Int64).apply(&self.user);
        let items = obs.narrow(1, 1, h).to_kind(Kind::Int64);
        let x = Tensor::cat(&[user, items.apply(&self.item).view([n, -1]), obs.narrow(1, 1 + h, h)], 1);
        self.net.forward(&x)
    }

    /// `f` with the target weights swapped in.
    fn with_targets<T>(&self, f: impl FnOnce(&Self) -> T) -> T {
        with_weights(&self.vs, &self.targets, || f(self))
    }

    /// Greedy items (1-based) for observations, with each replaced by a
    /// uniform item with probability `epsilon` (draws keyed by `key`).
    fn act(&self, obs: &Tensor, epsilon: f64, key: u64) -> Vec<i64> {
        let greedy: Vec<i64> = tch::no_grad(|| Vec::try_from(self.q(&obs.to_device(self.device)).argmax(1, false).to_device(Device::Cpu)).unwrap_or_default());
        let n = self.world.items() as u64;
        greedy.iter().enumerate().map(|(k, &g)| if unit(splitmix(key ^ splitmix(2 * k as u64))) < epsilon { 1 + (splitmix(key ^ splitmix(2 * k as u64 + 1)) % n) as i64 } else { g + 1 }).collect()
    }

    /// Mean engagement per step over `eval_users` users playing `eval_steps`
    /// steps with the greedy policy (or uniform items, ε = 1), on an
    /// environment of its own.
    fn play(&self, epsilon: f64) -> Result<f64, String> {
        let cfg = self.job.env.evaluation(self.job.eval_users);
        let mut env = LlmEnv::new(self.world.clone(), cfg, splitmix(self.seed ^ 0xE7A1));
        let mut total = 0.0;
        for t in 0..cfg.eval_steps as u64 {
            let a = self.act(&env.observation(self.job.history), epsilon, splitmix(self.seed ^ 0x5EED ^ t));
            let (r, _) = env.step(&a)?;
            total += r.iter().sum::<f32>() as f64;
        }
        Ok(total / (cfg.eval_steps * self.job.eval_users) as f64)
    }
}

impl Algorithm for DqnTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        let mut scalars = BTreeMap::new();
        if ctx.micro_step == 0 {
            if ctx.step > 0 && ctx.step % self.job.target_every == 0 {
                let vars = self.vs.variables();
                for (n, t) in &mut self.targets {
                    if let Some(v) = vars.get(n) {
                        *t = v.detach().copy();
                    }
                }
            }
            // One step of every user of this rank, ε-greedy.
            let epsilon = (1.0 - ctx.step as f64 / self.job.explore_steps.max(1) as f64).max(self.job.final_epsilon);
            let obs = self.env.observation(self.job.history);
            let key = splitmix(self.seed ^ splitmix(ctx.step ^ (ctx.rank as u64) << 40));
            let actions = self.act(&obs, epsilon, key);
            let (rewards, done) = self.env.step(&actions).map_err(err)?;
            let next = self.env.observation(self.job.history);
            let n = actions.len() as i64;
            let col = |v: Vec<f32>| Tensor::from_slice(&v).view([n, 1]).to_device(self.device);
            self.replay.push(&obs.to_device(self.device), &col(actions.iter().map(|&a| a as f32).collect()), &col(rewards.clone()), &next.to_device(self.device), &col(done.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect()));
            scalars.insert("engagement".into(), rewards.iter().sum::<f32>() as f64 / rewards.len().max(1) as f64);
            scalars.insert("epsilon".into(), epsilon);
        }
        let per = ctx.per_rank(self.global_batch).max(1);
        let key = splitmix(self.seed ^ 0xD0 ^ splitmix(ctx.step * 64 + (ctx.micro_step * ctx.world_size + ctx.rank) as u64));
        let [s, a, r, s2, d] = self.replay.sample(per, key);
        // The target first: swapping the target weights in and out must not
        // touch weights the online graph has saved.
        // Double DQN: the online network picks the next item, the target network values it.
        let pick = tch::no_grad(|| self.q(&s2).argmax(1, true));
        let next = self.with_targets(|me| me.q(&s2).gather(1, &pick, false).squeeze_dim(1));
        let q = self.q(&s).gather(1, &(a.to_kind(Kind::Int64) - 1), false).squeeze_dim(1);
        let y = r.squeeze_dim(1) + (d.squeeze_dim(1).neg() + 1.0) * next * self.job.gamma;
        let loss = q.smooth_l1_loss(&y.detach(), tch::Reduction::Mean, 1.0);
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// `engagement`: the greedy policy's mean engagement per step over
    /// `eval_users` users' `env.eval_steps`-step episodes; `random_engagement`: uniform
    /// items for the same users (the same on every rank).
    fn evaluate(&mut self, _ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        let mut out = BTreeMap::new();
        out.insert("engagement".into(), self.play(0.0).map_err(err)?);
        out.insert("random_engagement".into(), self.play(1.0).map_err(err)?);
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        targets_state(&self.targets)
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        load_targets(&mut self.targets, state, self.device).map_err(|e| WorkerError::algo(NAME, e))
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        let mut v = self.replay.to_named();
        v.extend(self.env.to_named());
        v
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        if state.is_empty() {
            return Ok(());
        }
        let map: BTreeMap<String, Tensor> = state.into_iter().collect();
        self.replay.load(&map).and_then(|_| self.env.load(&map)).map_err(|e| WorkerError::algo(NAME, e))
    }
}
