//! Recommendation agents trained online against the simulator, as kiln jobs.
//!
//! **DDPG** and **TD3** with a replay buffer, soft target networks and
//! standard (1 − done) bootstrapping (the reference masks terminals the wrong
//! way round; not copied), at two levels. Whole session: KuaiSim's
//! hyper-action policy — the actor maps the user state to a vector in the
//! item-encoding space, the slate is the top items by dot product with it.
//! Cross session: the actor outputs the 7 ranking-fusion weights and the
//! reward is the retention reward −return_day/10 when a session ends (plus an
//! optional share of the immediate reward). The agent's state is the user
//! state the environment exposes.
//!
//! Data-parallel: each rank simulates its own users (its own seed) into its
//! own replay buffer and samples its own minibatch; gradients are averaged by
//! the training loop, so every rank holds the same networks. The replay
//! buffer and the environment are per-rank state in checkpoints, the target
//! networks algorithm state, so a resumed run continues exactly.

use crate::env::{Action, Env, EnvConfig, Level, Simulator};
use crate::llm_env::WorldSpec;
use crate::request::{EnvState, Place, RequestEnv, Simulated};
use kiln_worker::rng::{splitmix, unit};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

/// Transitions (s, a, r, s', done) in a ring of fixed capacity.
pub struct Replay {
    pub capacity: usize,
    pub len: usize,
    pub next: usize,
    state: Tensor,
    action: Tensor,
    reward: Tensor,
    next_state: Tensor,
    done: Tensor,
}

impl Replay {
    /// `rewards`: reward components per transition (RLUR keeps two).
    pub fn new(capacity: usize, state: i64, action: i64, rewards: i64, device: Device) -> Replay {
        let z = |w: i64| Tensor::zeros([capacity as i64, w], (Kind::Float, device));
        Replay { capacity, len: 0, next: 0, state: z(state), action: z(action), reward: z(rewards), next_state: z(state), done: z(1) }
    }

    pub fn push(&mut self, s: &Tensor, a: &Tensor, r: &Tensor, s2: &Tensor, done: &Tensor) {
        let _g = tch::no_grad_guard();
        let n = s.size()[0] as usize;
        let idx: Vec<i64> = (0..n).map(|k| ((self.next + k) % self.capacity) as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.state.device());
        let _ = self.state.index_copy_(0, &idx, s);
        let _ = self.action.index_copy_(0, &idx, a);
        let _ = self.reward.index_copy_(0, &idx, &r.view([n as i64, -1]));
        let _ = self.next_state.index_copy_(0, &idx, s2);
        let _ = self.done.index_copy_(0, &idx, &done.view([-1, 1]));
        self.next = (self.next + n) % self.capacity;
        self.len = (self.len + n).min(self.capacity);
    }

    /// Mean and standard deviation of the stored rewards' first component
    /// (0 and 1 while empty).
    pub fn reward_stats(&self) -> (f64, f64) {
        if self.len < 2 {
            return (0.0, 1.0);
        }
        let r = self.reward.narrow(0, 0, self.len as i64).select(1, 0);
        (r.mean(Kind::Float).double_value(&[]), r.std(true).double_value(&[]).max(1e-6))
    }

    /// `n` transitions drawn uniformly by the counter `key`.
    pub fn sample(&self, n: usize, key: u64) -> [Tensor; 5] {
        let idx: Vec<i64> = (0..n as u64).map(|k| (splitmix(key ^ splitmix(k)) % self.len.max(1) as u64) as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.state.device());
        [&self.state, &self.action, &self.reward, &self.next_state, &self.done].map(|t| t.index_select(0, &idx))
    }

    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        let used = self.len as i64;
        vec![
            ("replay.meta".into(), Tensor::from_slice(&[self.len as i64, self.next as i64, self.capacity as i64])),
            ("replay.state".into(), self.state.narrow(0, 0, used).copy()),
            ("replay.action".into(), self.action.narrow(0, 0, used).copy()),
            ("replay.reward".into(), self.reward.narrow(0, 0, used).copy()),
            ("replay.next_state".into(), self.next_state.narrow(0, 0, used).copy()),
            ("replay.done".into(), self.done.narrow(0, 0, used).copy()),
        ]
    }

    pub fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let get = |k: &str| named.get(k).ok_or_else(|| format!("the checkpoint's replay buffer has no {k}"));
        let meta = Vec::<i64>::try_from(get("replay.meta")?).map_err(|e| e.to_string())?;
        if meta.len() != 3 || meta[2] as usize != self.capacity {
            return Err(format!("the checkpoint's replay buffer holds {meta:?} (len, next, capacity); this job's capacity is {}", self.capacity));
        }
        let _g = tch::no_grad_guard();
        let (len, dev) = (meta[0], self.state.device());
        for (k, t) in [("replay.state", &mut self.state), ("replay.action", &mut self.action), ("replay.reward", &mut self.reward), ("replay.next_state", &mut self.next_state), ("replay.done", &mut self.done)] {
            let src = get(k)?;
            if src.size()[0] != len || src.size()[1] != t.size()[1] {
                return Err(format!("the checkpoint's {k} has shape {:?}", src.size()));
            }
            t.narrow(0, 0, len).copy_(&src.to_device(dev));
        }
        self.len = len as usize;
        self.next = meta[1] as usize;
        Ok(())
    }
}

/// `f`'s result with `weights` (name → tensor, a target network) swapped
/// into `vs` for its duration, without gradients. Swap before building any
/// graph that must be differentiated: the swap changes the live weights in place.
pub fn with_weights<T>(vs: &nn::VarStore, weights: &[(String, Tensor)], f: impl FnOnce() -> T) -> T {
    let _g = tch::no_grad_guard();
    let vars = vs.variables();
    let live: Vec<(Tensor, Tensor)> = weights.iter().filter_map(|(n, t)| vars.get(n).map(|v| (v.shallow_clone(), t.shallow_clone()))).collect();
    let saved: Vec<Tensor> = live.iter().map(|(v, _)| v.copy()).collect();
    for (v, t) in &live {
        v.shallow_clone().copy_(t);
    }
    let out = f();
    for ((v, _), s) in live.iter().zip(&saved) {
        v.shallow_clone().copy_(s);
    }
    out
}

/// A target network as checkpoint state (`target.<name>`).
pub fn targets_state(targets: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    targets.iter().map(|(n, t)| (format!("target.{n}"), t.copy())).collect()
}

/// Takes back what [`targets_state`] wrote.
pub fn load_targets(targets: &mut [(String, Tensor)], state: Vec<(String, Tensor)>, device: Device) -> Result<(), String> {
    let map: BTreeMap<String, Tensor> = state.into_iter().collect();
    for (n, t) in targets.iter_mut() {
        let saved = map.get(&format!("target.{n}")).ok_or_else(|| format!("the checkpoint has no target network tensor {n}"))?;
        *t = saved.to_device(device);
    }
    Ok(())
}

/// An online agent's per-rank checkpoint state: its replay buffer and its
/// environment.
pub fn replay_env_state<E: EnvState + ?Sized>(replay: &Replay, env: &E) -> Vec<(String, Tensor)> {
    let mut v = replay.to_named();
    v.extend(env.to_named());
    v
}

/// Takes back what [`replay_env_state`] wrote (nothing to do for a run that
/// saved none).
pub fn load_replay_env_state<E: EnvState + ?Sized>(replay: &mut Replay, env: &mut E, state: Vec<(String, Tensor)>) -> Result<(), String> {
    if state.is_empty() {
        return Ok(());
    }
    let map: BTreeMap<String, Tensor> = state.into_iter().collect();
    replay.load(&map)?;
    env.load(&map)
}

/// An MLP with ReLU between layers (`dims`: input, hidden..., output).
pub fn mlp(p: &nn::Path, dims: &[i64]) -> nn::Sequential {
    let mut s = nn::seq();
    for (i, w) in dims.windows(2).enumerate() {
        s = s.add(nn::linear(p / format!("l{i}"), w[0], w[1], Default::default()));
        if i + 2 < dims.len() {
            s = s.add_fn(|x| x.relu());
        }
    }
    s
}

/// The `[algorithm]` table of the whole-session agents.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentJob {
    /// A simulator exported from a trained `kuaisim.response` job.
    pub simulator: PathBuf,
    /// The environment (its level is the agent's; `batch` users per rank).
    #[serde(default = "whole_session")]
    pub env: EnvConfig,
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Soft target update rate.
    #[serde(default = "tau")]
    pub tau: f64,
    /// The actor's learning rate relative to the critic's (the job's).
    #[serde(default = "actor_lr")]
    pub actor_lr_scale: f64,
    /// Exploration: Gaussian noise on the hyper-action.
    #[serde(default = "noise")]
    pub noise: f64,
    #[serde(default = "buffer")]
    pub buffer: usize,
    /// Steps of random actions before the policy acts (and learning starts).
    #[serde(default = "start")]
    pub start_steps: u64,
    #[serde(default = "hidden")]
    pub hidden: Vec<i64>,
    /// TD3: actor and target updates every this many steps; target policy noise and its clip.
    #[serde(default = "delay")]
    pub policy_delay: u64,
    #[serde(default = "target_noise")]
    pub target_noise: f64,
    #[serde(default = "noise_clip")]
    pub noise_clip: f64,
    /// Sessions (users leaving) each evaluation plays, per rank (cross
    /// session: user-episodes).
    #[serde(default = "eval_users")]
    pub eval_users: usize,
    /// Cross session: weight of the immediate reward added to the retention reward.
    #[serde(default)]
    pub immediate_weight: f64,
    /// RLUR: the actor's weights on the retention and immediate critics
    /// (λ_T, λ_I), and the RND bonus's weight on the retention reward (0: off).
    #[serde(default = "one")]
    pub retention_lambda: f64,
    #[serde(default = "small")]
    pub immediate_lambda: f64,
    #[serde(default)]
    pub rnd_weight: f64,
    /// HAC: the inverse module's loss weight and the behaviour (click BCE) loss's.
    #[serde(default = "inverse_weight")]
    pub inverse_weight: f64,
    #[serde(default = "one")]
    pub behaviour_weight: f64,
}

fn inverse_weight() -> f64 {
    0.1
}

fn one() -> f64 {
    1.0
}
fn small() -> f64 {
    1e-3
}

fn whole_session() -> EnvConfig {
    EnvConfig::new(Level::WholeSession)
}
fn gamma() -> f64 {
    0.9
}
fn tau() -> f64 {
    0.01
}
fn actor_lr() -> f64 {
    0.1
}
fn noise() -> f64 {
    0.1
}
pub(crate) fn buffer() -> usize {
    100_000
}
pub(crate) fn start() -> u64 {
    100
}
pub(crate) fn hidden() -> Vec<i64> {
    vec![256, 64]
}
fn delay() -> u64 {
    2
}
fn target_noise() -> f64 {
    0.2
}
fn noise_clip() -> f64 {
    0.5
}
pub(crate) fn eval_users() -> usize {
    64
}

impl AgentJob {
    pub fn from_value(v: &toml::Value) -> Result<AgentJob, ConfigError> {
        let job: AgentJob = parse_config(v)?;
        job.env.check().map_err(|m| ConfigError::new("env", m))?;
        if job.env.level == Level::Request {
            return Err(ConfigError::new("env.level", "DDPG and TD3 play whole sessions or cross sessions: level = \"whole-session\" or \"cross-session\""));
        }
        if !job.immediate_weight.is_finite() {
            return Err(ConfigError::new("immediate_weight", "must be a finite number"));
        }
        if !(0.0..1.0).contains(&job.gamma) || !(0.0..=1.0).contains(&job.tau) || !(job.actor_lr_scale > 0.0) || !(job.noise >= 0.0) {
            return Err(ConfigError::new("gamma", "gamma in [0, 1), tau in [0, 1], actor_lr_scale > 0 and noise >= 0"));
        }
        if job.buffer == 0 || job.hidden.is_empty() || job.hidden.iter().any(|&h| h < 1) || job.policy_delay == 0 || job.eval_users == 0 {
            return Err(ConfigError::new("buffer", "buffer, hidden widths, policy_delay and eval_users must be at least 1"));
        }
        Ok(job)
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    AgentJob::from_value(v).map(|_| ())
}

/// Which actor-critic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Ddpg,
    Td3,
    /// Advantage actor-critic: on-policy, a Gaussian policy and a state-value critic.
    A2c,
    /// RLUR (cross session): TD3-style, with a retention critic and an
    /// immediate-reward critic, and an optional RND exploration bonus.
    Rlur,
    /// HAC (whole session): DDPG whose critic sees the action the chosen items
    /// amount to (an inverse module maps their encodings back to the
    /// hyper-action space) and whose actor also learns the clicks (BCE).
    Hac,
}

macro_rules! agent {
    ($name:literal, $variant:expr, $summary:literal) => {
        AlgorithmEntry { name: $name, summary: $summary, validate, build: |v, ctx| build($name, $variant, v, ctx) }
    };
}

pub const ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "kuaisim.random",
        summary: "The random baseline at any KuaiSim level (random slates or fusion weights in [-1, 1]); trains nothing, evaluates with the level's protocol",
        validate: validate_random,
        build: build_random,
    },
    AlgorithmEntry {
        name: "kuaisim.cf",
        summary: "Greedy CF scorer for request-level list recommendation against a KuaiSim simulator (user tower · item encoding, trained online, epsilon-greedy)",
        validate: validate_cf,
        build: build_cf,
    },
    AlgorithmEntry {
        name: "kuaisim.listcvae",
        summary: "ListCVAE for request-level list recommendation against a KuaiSim simulator: a conditional VAE over whole slates, asked for a target reward",
        validate: crate::listcvae::validate,
        build: crate::listcvae::build,
    },
    AlgorithmEntry {
        name: "kuaisim.cem",
        summary: "CEM over ranking-fusion weights for cross-session retention against a KuaiSim simulator (population, elites, mitigation)",
        validate: validate_cem,
        build: build_cem,
    },
    agent!("kuaisim.a2c", Variant::A2c, "A2C recommendation agent against a KuaiSim simulator: on-policy Gaussian actor and state-value critic, whole or cross sessions"),
    agent!("kuaisim.rlur", Variant::Rlur, "RLUR cross-session retention agent against a KuaiSim simulator: retention and immediate critics, fusion-weight actor, optional RND bonus"),
    agent!("kuaisim.hac", Variant::Hac, "HAC (hyper-actor critic) whole-session recommendation agent against a KuaiSim simulator: inverse module, behaviour loss on clicks"),
    agent!("kuaisim.ddpg", Variant::Ddpg, "DDPG recommendation agent against a KuaiSim simulator: whole sessions (hyper-action, dot-product slate) or cross sessions (ranking-fusion weights, retention reward)"),
    agent!("kuaisim.td3", Variant::Td3, "TD3 recommendation agent against a KuaiSim simulator (twin critics, delayed actor, target smoothing), whole or cross sessions"),
];

fn build(name: &'static str, variant: Variant, v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = AgentJob::from_value(v).map_err(|m| WorkerError::algo(name, m))?;
    let sim = Simulator::load_for(&job.simulator, &job.env, ctx.device).map_err(|e| WorkerError::algo(name, format!("simulator: {e}")))?;
    Ok(Box::new(ActorCritic::new(name, variant, job, sim, ctx)?))
}

/// The actor-critic agents (DDPG, TD3, A2C).
pub struct ActorCritic {
    name: &'static str,
    variant: Variant,
    /// RLUR's RND: a trained predictor of a fixed random network's output;
    /// its error on the next state is the novelty bonus.
    rnd: Option<(nn::Sequential, nn::Sequential)>,
    inverse: Option<nn::Sequential>,
    job: AgentJob,
    sim: Arc<Simulator>,
    env: Env,
    eval_seed: u64,
    vs: nn::VarStore,
    actor: nn::Sequential,
    critics: Vec<nn::Sequential>,
    /// Target copies: same names as the live networks, not trained.
    targets: Vec<(String, Tensor)>,
    replay: Replay,
    seed: u64,
    /// This rank's minibatch, and the job's global batch.
    batch: usize,
    global_batch: usize,
    device: Device,
}

impl ActorCritic {
    fn new(name: &'static str, variant: Variant, job: AgentJob, sim: Simulator, ctx: &BuildContext) -> Result<ActorCritic, WorkerError> {
        let td3 = matches!(variant, Variant::Td3 | Variant::Rlur);
        if variant == Variant::Hac && job.env.level != Level::WholeSession {
            return Err(WorkerError::algo(name, "HAC recommends slates within sessions: set [algorithm.env] level = \"whole-session\""));
        }
        if variant == Variant::Rlur && job.env.level != Level::CrossSession {
            return Err(WorkerError::algo(name, "RLUR optimises retention across sessions: set [algorithm.env] level = \"cross-session\""));
        }
        let sim = Arc::new(sim);
        let seed = splitmix(ctx.seed ^ splitmix(0xA9E47 + ctx.rank as u64));
        let env = Env::new(sim.clone(), job.env.clone(), seed).map_err(|e| WorkerError::algo(name, e))?;
        let s = 3 * sim.model.enc_dim();
        let a = if job.env.level == Level::CrossSession { crate::NB as i64 } else { sim.model.enc_dim() };
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let mut dims = vec![s];
        dims.extend(&job.hidden);
        dims.push(a);
        let actor = mlp(&(&root / "actor"), &dims);
        // A2C's critic values the state alone.
        let mut cdims = vec![if variant == Variant::A2c { s } else { s + a }];
        cdims.extend(&job.hidden);
        cdims.push(1);
        // RLUR: critic 0 values retention, critic 1 the immediate reward.
        let critics = (0..if td3 { 2 } else { 1 }).map(|k| mlp(&(&root / format!("critic{k}")), &cdims)).collect();
        let rnd = (variant == Variant::Rlur && job.rnd_weight > 0.0).then(|| {
            let target = mlp(&(&root / "rnd_target"), &[s, 64, 32]);
            for (n, mut t) in vs.variables() {
                if n.starts_with("rnd_target") {
                    t = t.set_requires_grad(false);
                    let _ = t;
                }
            }
            (mlp(&(&root / "rnd_predictor"), &[s, 64, 32]), target)
        });
        let targets = vs.variables().into_iter().filter(|(n, _)| !n.starts_with("rnd")).map(|(n, t)| (n, t.detach().copy())).collect::<BTreeMap<_, _>>().into_iter().collect();
        // HAC's inverse module: the chosen items' mean encoding → a hyper-action.
        let inverse = (variant == Variant::Hac).then(|| mlp(&(&root / "inverse"), &[a, job.hidden[0], a]));
        // HAC also remembers the slate and its clicks: [hyper | item ids | clicks].
        let stored = if variant == Variant::Hac { a + 2 * job.env.slate as i64 } else { a };
        let replay = Replay::new(job.buffer, s, stored, if variant == Variant::Rlur { 2 } else { 1 }, ctx.device);
        let per = ctx.global_batch / ctx.world_size.max(1);
        Ok(ActorCritic { name, variant, rnd, inverse, eval_seed: splitmix(ctx.seed ^ 0xE7A1), job, sim, env, vs, actor, critics, targets, replay, seed, batch: per.max(1), global_batch: ctx.global_batch, device: ctx.device })
    }

    /// The action as the environment takes it.
    fn env_action(&self, a: &Tensor) -> Action {
        match self.job.env.level {
            Level::CrossSession => Action::Fusion(a.shallow_clone()),
            _ => Action::Slate(self.slate(a)),
        }
    }

    /// The policy's action `[B, enc]` (hyper-action) or `[B, 7]` (fusion weights), tanh-bounded.
    fn act(&self, state: &Tensor) -> Tensor {
        self.actor.forward(state).tanh()
    }

    /// The slate: top items by dot product with the hyper-action.
    fn slate(&self, hyper: &Tensor) -> Tensor {
        let items = self.sim.items.narrow(0, 1, self.sim.item_count() as i64);
        let k = self.job.env.slate as i64;
        hyper.matmul(&items.transpose(0, 1)).topk(k, -1, true, true).1 + 1
    }

    fn td3(&self) -> bool {
        self.variant == Variant::Td3
    }

    /// Adds the gradient of `loss` with respect to the actor's parameters
    /// (only) to their gradients.
    fn actor_backward(&self, loss: &Tensor) -> Result<(), tch::TchError> {
        let actor: Vec<Tensor> = self.parameters().into_iter().filter(|(n, _)| n.starts_with("actor")).map(|(_, t)| t).collect();
        let grads = Tensor::f_run_backward(&[loss], &actor, false, false)?;
        let _g = tch::no_grad_guard();
        for (p, g) in actor.iter().zip(grads) {
            let mut pg = p.grad();
            let _ = pg.f_add_(&g)?;
        }
        Ok(())
    }

    /// The reward the agent learns from: the immediate reward, or (cross
    /// session) −return_day/10 at session ends plus `immediate_weight` × it.
    fn learning_reward(&self, out: &crate::env::Step, scalars: &mut BTreeMap<String, f64>) -> Tensor {
        match self.job.env.level {
            Level::CrossSession => {
                let ret: Vec<f32> = out.return_day.iter().map(|&d| -(d as f32) / 10.0).collect();
                let ends = out.return_day.iter().filter(|&&d| d > 0).count();
                if ends > 0 {
                    scalars.insert("return_day".into(), out.return_day.iter().sum::<usize>() as f64 / ends as f64);
                }
                Tensor::from_slice(&ret).to_device(self.device) + &out.reward * self.job.immediate_weight
            }
            _ => out.reward.shallow_clone(),
        }
    }

    /// One A2C step on the batch just played: advantage
    /// A = r + γ(1 − done)V(s′) − V(s); critic loss A², actor loss
    /// −log π(a|s)·A (A held fixed), π Gaussian around the actor's output
    /// with standard deviation `noise`.
    fn a2c_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let state = self.env.user_state();
        let b = state.size()[0];
        let a_dim = self.replay.action.size()[1];
        let mu = self.act(&state);
        let sigma = self.job.noise.max(1e-3);
        let a = (mu.detach() + self.gaussian(8, ctx.step, &[b, a_dim]) * sigma).detach();
        let out = self.env.step(&self.env_action(&a)).map_err(|e| WorkerError::algo(self.name, e))?;
        let mut scalars = BTreeMap::new();
        let r = self.learning_reward(&out, &mut scalars).view([-1, 1]);
        let done = Tensor::from_slice(&out.done.iter().map(|&d| d as u8 as f32).collect::<Vec<_>>()).to_device(self.device).view([-1, 1]);
        if self.job.env.level == Level::CrossSession && out.done.iter().any(|&d| d) {
            self.env.reset();
        }
        let v = self.critics[0].forward(&state);
        let v2 = tch::no_grad(|| self.critics[0].forward(&out.user_state));
        let adv = &r + (done.ones_like() - &done) * v2 * self.job.gamma - &v;
        let critic_loss = adv.square().mean(Kind::Float);
        critic_loss.f_backward()?;
        let log_pi = -((&a - &mu).square().sum_dim_intlist([1i64].as_slice(), true, Kind::Float)) / (2.0 * sigma * sigma);
        let actor_loss = -(log_pi * adv.detach()).mean(Kind::Float);
        self.actor_backward(&actor_loss)?;
        scalars.insert("env_reward".into(), out.reward.mean(Kind::Float).double_value(&[]));
        scalars.insert("critic_loss".into(), critic_loss.double_value(&[]));
        scalars.insert("actor_loss".into(), actor_loss.double_value(&[]));
        Ok(StepOutput { loss: critic_loss.double_value(&[]) + actor_loss.double_value(&[]), samples: b as usize, scalars })
    }

    fn q(&self, k: usize, s: &Tensor, a: &Tensor) -> Tensor {
        self.critics[k].forward(&Tensor::cat(&[s, a], -1))
    }

    /// A network's output with the target weights swapped in.
    fn with_targets<T>(&self, f: impl FnOnce(&Self) -> T) -> T {
        with_weights(&self.vs, &self.targets, || f(self))
    }

    fn uniform(&self, tag: u64, step: u64, n: usize) -> Tensor {
        counter_uniform(self.seed, tag, step, n, self.device)
    }

    fn gaussian(&self, tag: u64, step: u64, shape: &[i64]) -> Tensor {
        counter_gaussian(self.seed, tag, step, shape, self.device)
    }
}

/// `n` uniforms in [0, 1) keyed by (seed, tag, step): drawn on the host, so a
/// run replays on any device.
pub fn counter_uniform(seed: u64, tag: u64, step: u64, n: usize, device: Device) -> Tensor {
    let v: Vec<f32> = (0..n as u64).map(|k| unit(splitmix(seed ^ splitmix(tag ^ splitmix(step.wrapping_mul(0x1_0000_0001) ^ k)))) as f32).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Standard normals of `shape` keyed by (seed, tag, step) (Box–Muller over
/// [`counter_uniform`] draws of tags `tag` and `tag + 1`).
pub fn counter_gaussian(seed: u64, tag: u64, step: u64, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let u1 = counter_uniform(seed, tag, step, n as usize, device).clamp_min(1e-7);
    let u2 = counter_uniform(seed, tag + 1, step, n as usize, device);
    ((u1.log() * -2.0).sqrt() * (u2 * (2.0 * std::f64::consts::PI)).cos()).view(shape)
}

impl Algorithm for ActorCritic {
    fn name(&self) -> &str {
        self.name
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn lr_scales(&self) -> Vec<(String, f64)> {
        self.parameters().into_iter().filter(|(n, _)| n.starts_with("actor")).map(|(n, _)| (n, self.job.actor_lr_scale)).collect()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        if self.variant == Variant::A2c {
            return self.a2c_step(ctx);
        }
        let step = ctx.step;
        // Targets follow the networks as they are after the previous update.
        if step > 0 && (!self.td3() || step % self.job.policy_delay == 0) {
            let _g = tch::no_grad_guard();
            let vars = self.vs.variables();
            for (n, t) in &mut self.targets {
                if let Some(v) = vars.get(n) {
                    *t = &*t * (1.0 - self.job.tau) + v * self.job.tau;
                }
            }
        }
        // Act in this rank's environment and remember what happened.
        let state = self.env.user_state();
        let b = state.size()[0];
        let a_dim = if self.variant == Variant::Hac { self.sim.model.enc_dim() } else { self.replay.action.size()[1] };
        let hyper = tch::no_grad(|| {
            if step < self.job.start_steps {
                self.uniform(7, step, (b * a_dim) as usize).view([b, a_dim]) * 2.0 - 1.0
            } else {
                (self.act(&state) + self.gaussian(8, step, &[b, a_dim]) * self.job.noise).clamp(-1.0, 1.0)
            }
        });
        let out = self.env.step(&self.env_action(&hyper)).map_err(|e| WorkerError::algo(self.name, e))?;
        let done = Tensor::from_slice(&out.done.iter().map(|&d| d as u8 as f32).collect::<Vec<_>>()).to_device(self.device);
        let mut scalars = BTreeMap::new();
        let reward = self.learning_reward(&out, &mut scalars);
        let reward = if self.variant == Variant::Rlur {
            // [retention (+ novelty), immediate]
            let mut retention = reward - &out.reward * self.job.immediate_weight;
            if let Some((pred, target)) = &self.rnd {
                let bonus = tch::no_grad(|| (pred.forward(&out.user_state) - target.forward(&out.user_state)).square().mean_dim([1i64].as_slice(), false, Kind::Float));
                scalars.insert("rnd_bonus".into(), bonus.mean(Kind::Float).double_value(&[]));
                retention = retention + bonus * self.job.rnd_weight;
            }
            Tensor::stack(&[retention, out.reward.shallow_clone()], 1)
        } else {
            reward
        };
        let stored = if self.variant == Variant::Hac {
            Tensor::cat(&[hyper.shallow_clone(), out.slate.to_kind(Kind::Float), out.responses.select(2, 0)], 1)
        } else {
            hyper.shallow_clone()
        };
        self.replay.push(&state, &stored, &reward, &out.user_state, &done);
        if self.job.env.level == Level::CrossSession && out.done.iter().any(|&d| d) {
            // Every user's episode ends together: the next step starts new ones.
            self.env.reset();
        }
        scalars.insert("env_reward".into(), out.reward.mean(Kind::Float).double_value(&[]));
        scalars.insert("leave_rate".into(), out.done.iter().filter(|&&d| d).count() as f64 / b as f64);
        if step < self.job.start_steps || self.replay.len < self.batch {
            return Ok(StepOutput { loss: 0.0, samples: b as usize, scalars });
        }
        // One update from this rank's minibatch.
        let [s, a, r, s2, d] = self.replay.sample(self.batch, splitmix(self.seed ^ step));
        // HAC: the critic sees the action the chosen items amount to.
        let mut hac_extra: Option<(Tensor, Tensor)> = None;
        let a = match &self.inverse {
            Some(inverse) => {
                let e = self.sim.model.enc_dim();
                let k = self.job.env.slate as i64;
                let hyper = a.narrow(1, 0, e);
                let ids = a.narrow(1, e, k).to_kind(Kind::Int64);
                let clicks = a.narrow(1, e + k, k);
                let items = self.sim.items.index_select(0, &ids.reshape([-1])).view([-1, k, e]);
                let effect = inverse.forward(&items.mean_dim([1i64].as_slice(), false, Kind::Float)).tanh();
                let inverse_loss = effect.mse_loss(&hyper, Reduction::Mean) * self.job.inverse_weight;
                inverse_loss.f_backward()?;
                scalars.insert("inverse_loss".into(), inverse_loss.double_value(&[]));
                hac_extra = Some((items, clicks));
                effect.detach()
            }
            None => a,
        };
        let target = self.with_targets(|me| {
            let mut a2 = me.act(&s2);
            if me.td3() {
                let eps = (me.gaussian(9, step, &a2.size()) * me.job.target_noise).clamp(-me.job.noise_clip, me.job.noise_clip);
                a2 = (a2 + eps).clamp(-1.0, 1.0);
            }
            if me.variant == Variant::Rlur {
                // Each critic bootstraps its own reward component.
                let q2 = Tensor::cat(&[me.q(0, &s2, &a2), me.q(1, &s2, &a2)], 1);
                return &r + (d.ones_like() - &d) * q2 * me.job.gamma;
            }
            let q2 = (0..me.critics.len()).map(|k| me.q(k, &s2, &a2)).reduce(|x, y| x.minimum(&y)).unwrap_or_else(|| r.zeros_like());
            &r + (d.ones_like() - &d) * q2 * me.job.gamma
        });
        let critic_loss = if self.variant == Variant::Rlur {
            self.q(0, &s, &a).mse_loss(&target.narrow(1, 0, 1), Reduction::Mean) + self.q(1, &s, &a).mse_loss(&target.narrow(1, 1, 1), Reduction::Mean)
        } else {
            (0..self.critics.len()).map(|k| self.q(k, &s, &a).mse_loss(&target, Reduction::Mean)).reduce(|x, y| x + y).unwrap_or_else(|| Tensor::zeros([], (Kind::Float, self.device)))
        };
        if let Some((pred, target)) = &self.rnd {
            let rnd_loss = (pred.forward(&s) - tch::no_grad(|| target.forward(&s))).square().mean(Kind::Float);
            rnd_loss.f_backward()?;
        }
        critic_loss.f_backward()?;
        let mut loss = critic_loss.double_value(&[]);
        scalars.insert("critic_loss".into(), loss);
        if !self.td3() || step % self.job.policy_delay == 0 {
            // The actor's gradient goes to the actor only.
            let pi = self.act(&s);
            let mut actor_loss = if self.variant == Variant::Rlur {
                -(self.q(0, &s, &pi) * self.job.retention_lambda + self.q(1, &s, &pi) * self.job.immediate_lambda).mean(Kind::Float)
            } else {
                -self.q(0, &s, &pi).mean(Kind::Float)
            };
            if let Some((items, clicks)) = &hac_extra {
                // The behaviour loss: the hyper-action's dot score predicts each shown item's click.
                let logits = items.matmul(&pi.unsqueeze(-1)).squeeze_dim(-1);
                let bce = logits.binary_cross_entropy_with_logits::<Tensor>(clicks, None, None, Reduction::Mean);
                scalars.insert("behaviour_loss".into(), bce.double_value(&[]));
                actor_loss = actor_loss + bce * self.job.behaviour_weight;
            }
            self.actor_backward(&actor_loss)?;
            let al = actor_loss.double_value(&[]);
            scalars.insert("actor_loss".into(), al);
            loss += al;
        }
        Ok(StepOutput { loss, samples: b as usize, scalars })
    }

    /// Plays whole sessions with the policy (no exploration) on a separate,
    /// seeded environment until `eval_users` users per rank have left:
    /// depth (steps before leaving), reward per request, total reward per
    /// session, coverage and ILD, over every rank's sessions.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut env = Env::new(self.sim.clone(), self.job.env.clone(), splitmix(self.eval_seed ^ ctx.rank as u64)).map_err(|e| WorkerError::algo(self.name, e))?;
        match self.job.env.level {
            Level::CrossSession => {
                let report = play_cross(&mut env, self.job.eval_users, |s| tch::no_grad(|| self.act(s))).map_err(|e| WorkerError::algo(self.name, e))?;
                gather_cross(ctx, &report)
            }
            _ => {
                let report = play(&mut env, self.job.eval_users, |s| tch::no_grad(|| self.slate(&self.act(s)))).map_err(|e| WorkerError::algo(self.name, e))?;
                gather_report(ctx, &report)
            }
        }
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        targets_state(&self.targets)
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        load_targets(&mut self.targets, state, self.device).map_err(|e| WorkerError::algo(self.name, e))
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        replay_env_state(&self.replay, &self.env)
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        load_replay_env_state(&mut self.replay, &mut self.env, state).map_err(|e| WorkerError::algo(self.name, e))
    }
}

/// Totals of whole sessions played: sessions ended, their steps, rewards,
/// and per-step coverage and ILD sums.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    pub sessions: f64,
    pub steps: f64,
    pub reward: f64,
    pub session_reward: f64,
    pub coverage: f64,
    pub ild: f64,
    pub env_steps: f64,
}

/// Plays `env` with `policy` (user state → slate) until `users` users have left.
pub fn play(env: &mut Env, users: usize, policy: impl Fn(&Tensor) -> Tensor) -> Result<Report, String> {
    let b = env.config().batch;
    let mut depth = vec![0.0f64; b];
    let mut total = vec![0.0f64; b];
    let mut rep = Report::default();
    let mut guard = 0usize;
    while (rep.sessions as usize) < users {
        guard += 1;
        if guard > 100_000 {
            return Err("evaluation: users never leave (check initial_temper)".into());
        }
        let s = env.user_state();
        let out = env.step(&Action::Slate(policy(&s)))?;
        let r = Vec::<f32>::try_from(out.reward.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        rep.coverage += out.coverage as f64;
        rep.ild += out.ild;
        rep.env_steps += 1.0;
        for slot in 0..b {
            depth[slot] += 1.0;
            total[slot] += r[slot] as f64;
            if out.done[slot] {
                rep.sessions += 1.0;
                rep.steps += depth[slot];
                rep.reward += total[slot];
                rep.session_reward += total[slot];
                depth[slot] = 0.0;
                total[slot] = 0.0;
            }
        }
    }
    Ok(rep)
}

/// Each total summed over ranks.
fn sum_over_ranks<const N: usize>(ctx: &StepContext, mine: [f64; N]) -> Result<[f64; N], WorkerError> {
    let all = ctx.comm.all_gather_f32(&mine.map(|x| x as f32))?;
    let mut t = [0f64; N];
    for chunk in all.chunks_exact(N) {
        for (a, b) in t.iter_mut().zip(chunk) {
            *a += *b as f64;
        }
    }
    Ok(t)
}

/// The report summed over ranks, as metrics.
pub fn gather_report(ctx: &StepContext, r: &Report) -> Result<BTreeMap<String, f64>, WorkerError> {
    let t = sum_over_ranks(ctx, [r.sessions, r.steps, r.reward, r.session_reward, r.coverage, r.ild, r.env_steps])?;
    let mut out = BTreeMap::new();
    out.insert("depth".into(), t[1] / t[0].max(1.0));
    out.insert("avg_reward".into(), t[2] / t[1].max(1.0));
    out.insert("total_reward".into(), t[3] / t[0].max(1.0));
    out.insert("coverage".into(), t[4] / t[6].max(1.0));
    out.insert("ild".into(), t[5] / t[6].max(1.0));
    Ok(out)
}

/// Totals of cross-session user-episodes played: episodes, session ends,
/// their return days, next-day returns, and immediate rewards per request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CrossReport {
    pub episodes: f64,
    pub ends: f64,
    pub return_days: f64,
    pub next_day: f64,
    pub reward: f64,
    pub requests: f64,
}

/// Plays `env` (cross session) with `policy` (user state → fusion weights
/// `[B, 7]`) until `episodes` user-episodes per slot batch have ended.
pub fn play_cross(env: &mut Env, episodes: usize, policy: impl Fn(&Tensor) -> Tensor) -> Result<CrossReport, String> {
    play_cross_with(env, episodes, |env| Action::Fusion(policy(&env.user_state())))
}

/// [`play_cross`] for policies that read more of the environment than the
/// user state (their histories), or act with slates.
pub fn play_cross_with(env: &mut Env, episodes: usize, mut policy: impl FnMut(&Env) -> Action) -> Result<CrossReport, String> {
    let mut rep = CrossReport::default();
    let mut guard = 0usize;
    while (rep.episodes as usize) < episodes {
        guard += 1;
        if guard > 1_000_000 {
            return Err("evaluation: episodes never end".into());
        }
        let action = policy(env);
        let out = env.step(&action)?;
        rep.reward += out.reward.sum(Kind::Float).double_value(&[]);
        rep.requests += out.done.len() as f64;
        for &d in out.return_day.iter().filter(|&&d| d > 0) {
            rep.ends += 1.0;
            rep.return_days += d as f64;
            rep.next_day += (d == 1) as u8 as f64;
        }
        let ended = out.done.iter().filter(|&&d| d).count();
        if ended > 0 {
            rep.episodes += ended as f64;
            env.reset();
        }
    }
    Ok(rep)
}

/// The cross-session report summed over ranks, as metrics: `return_day`
/// (mean days until the next session, lower is better), `retention` (share
/// of sessions followed by a next-day return) and `avg_reward` per request.
pub fn gather_cross(ctx: &StepContext, r: &CrossReport) -> Result<BTreeMap<String, f64>, WorkerError> {
    let t = sum_over_ranks(ctx, [r.episodes, r.ends, r.return_days, r.next_day, r.reward, r.requests])?;
    let mut out = BTreeMap::new();
    out.insert("return_day".into(), t[2] / t[1].max(1.0));
    out.insert("retention".into(), t[3] / t[1].max(1.0));
    out.insert("avg_reward".into(), t[4] / t[5].max(1.0));
    Ok(out)
}

/// The `[algorithm]` table of `kuaisim.cem`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CemJob {
    pub simulator: PathBuf,
    #[serde(default = "cross_session")]
    pub env: EnvConfig,
    /// Candidate fusion-weight vectors per iteration (over all ranks).
    #[serde(default = "population")]
    pub population: usize,
    /// Share of the population kept as elites (the reference's top-p 20%).
    #[serde(default = "elite")]
    pub elite: f64,
    /// Mitigation: the new distribution is α · old + (1 − α) · the elites'.
    #[serde(default = "alpha")]
    pub alpha: f64,
    #[serde(default = "init_std")]
    pub init_std: f64,
    /// A floor on each weight's standard deviation (keeps exploring).
    #[serde(default = "min_std")]
    pub min_std: f64,
    /// User-episodes each evaluation plays per rank.
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

fn cross_session() -> EnvConfig {
    EnvConfig::new(Level::CrossSession)
}
fn population() -> usize {
    16
}
fn elite() -> f64 {
    0.2
}
fn alpha() -> f64 {
    0.1
}
fn init_std() -> f64 {
    0.5
}
fn min_std() -> f64 {
    0.05
}

impl CemJob {
    pub fn from_value(v: &toml::Value) -> Result<CemJob, ConfigError> {
        let job: CemJob = parse_config(v)?;
        job.env.check().map_err(|m| ConfigError::new("env", m))?;
        if job.env.level != Level::CrossSession {
            return Err(ConfigError::new("env.level", "CEM searches ranking-fusion weights for cross sessions: level = \"cross-session\""));
        }
        if job.population < 2 || !(job.elite > 0.0 && job.elite <= 1.0) || !(0.0..1.0).contains(&job.alpha) || !(job.init_std > 0.0) || !(job.min_std >= 0.0) || job.eval_users == 0 {
            return Err(ConfigError::new("population", "population >= 2, elite in (0, 1], alpha in [0, 1), init_std > 0, min_std >= 0, eval_users >= 1"));
        }
        Ok(job)
    }
}

fn validate_cem(v: &toml::Value) -> Result<(), ConfigError> {
    CemJob::from_value(v).map(|_| ())
}

fn build_cem(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = CemJob::from_value(v).map_err(|m| WorkerError::algo("kuaisim.cem", m))?;
    let sim = Simulator::load_for(&job.simulator, &job.env, ctx.device).map_err(|e| WorkerError::algo("kuaisim.cem", format!("simulator: {e}")))?;
    let nb = crate::NB;
    Ok(Box::new(Cem { mean: vec![0.0; nb], std: vec![job.init_std; nb], seed: splitmix(ctx.seed ^ 0xCE11), sim: Arc::new(sim), job, device: ctx.device }))
}

/// The cross-entropy method over the 7 fusion weights: each step draws a
/// population from N(mean, std²) (the same on every rank), each rank plays
/// its share of the candidates for one user-episode batch each, the scores
/// (−mean return day) are gathered, and every rank moves the distribution
/// toward the elites. No gradients: the distribution is algorithm state.
pub struct Cem {
    mean: Vec<f64>,
    std: Vec<f64>,
    seed: u64,
    sim: Arc<Simulator>,
    job: CemJob,
    device: Device,
}

impl Cem {
    fn candidate(&self, step: u64, i: usize) -> Vec<f64> {
        self.mean
            .iter()
            .zip(&self.std)
            .enumerate()
            .map(|(k, (m, s))| {
                let key = splitmix(self.seed ^ splitmix(step.wrapping_mul(0x1_0000_0001) ^ splitmix((i * 16 + k) as u64)));
                let (u1, u2) = (unit(key).max(1e-12), unit(splitmix(key)));
                m + s * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    }

    /// Plays `episodes` user-episodes with constant weights `w`.
    fn score(&self, w: &[f64], seed: u64, episodes: usize) -> Result<CrossReport, String> {
        let mut env = Env::new(self.sim.clone(), self.job.env.clone(), seed)?;
        let b = self.job.env.batch as i64;
        let wt = Tensor::from_slice(&w.iter().map(|&x| x as f32).collect::<Vec<_>>()).to_device(self.device).unsqueeze(0).expand([b, -1], false);
        play_cross(&mut env, episodes, |_| wt.shallow_clone())
    }
}

impl Algorithm for Cem {
    fn name(&self) -> &str {
        "kuaisim.cem"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let err = |e: String| WorkerError::algo("kuaisim.cem", e);
        let n = self.job.population;
        let mut mine = Vec::new();
        for i in (ctx.rank..n).step_by(ctx.world_size) {
            let w = self.candidate(ctx.step, i);
            let r = self.score(&w, splitmix(self.seed ^ splitmix(ctx.step ^ ((i as u64) << 32))), self.job.env.batch).map_err(err)?;
            mine.extend([i as f32, (-(r.return_days / r.ends.max(1.0))) as f32]);
        }
        let all = ctx.comm.all_gather_f32(&mine)?;
        let mut scored: Vec<(usize, f64)> = all.chunks_exact(2).map(|c| (c[0] as usize, c[1] as f64)).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let k = ((n as f64 * self.job.elite).ceil() as usize).clamp(1, n);
        let elites: Vec<Vec<f64>> = scored[..k].iter().map(|(i, _)| self.candidate(ctx.step, *i)).collect();
        let a = self.job.alpha;
        for d in 0..self.mean.len() {
            let m = elites.iter().map(|e| e[d]).sum::<f64>() / k as f64;
            let v = elites.iter().map(|e| (e[d] - m).powi(2)).sum::<f64>() / k as f64;
            self.mean[d] = a * self.mean[d] + (1.0 - a) * m;
            self.std[d] = (a * self.std[d] + (1.0 - a) * v.sqrt()).max(self.job.min_std);
        }
        let mut scalars = BTreeMap::new();
        scalars.insert("elite_return_day".into(), -scored[..k].iter().map(|s| s.1).sum::<f64>() / k as f64);
        scalars.insert("population_return_day".into(), -scored.iter().map(|s| s.1).sum::<f64>() / scored.len().max(1) as f64);
        Ok(StepOutput { loss: -scored[0].1, samples: n, scalars })
    }

    /// The distribution's mean weights played on a separate, seeded environment.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let r = self.score(&self.mean, splitmix(self.seed ^ 0xE7A1 ^ ctx.rank as u64), self.job.eval_users).map_err(|e| WorkerError::algo("kuaisim.cem", e))?;
        let mut out = gather_cross(ctx, &r)?;
        for (k, (m, s)) in self.mean.iter().zip(&self.std).enumerate() {
            out.insert(format!("weight_{}", crate::BEHAVIOURS[k]), *m);
            out.insert(format!("std_{}", crate::BEHAVIOURS[k]), *s);
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.job.population
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("cem.mean".into(), Tensor::from_slice(&self.mean)), ("cem.std".into(), Tensor::from_slice(&self.std))]
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        let map: BTreeMap<String, Tensor> = state.into_iter().collect();
        for (k, dst) in [("cem.mean", &mut self.mean), ("cem.std", &mut self.std)] {
            let t = map.get(k).ok_or_else(|| WorkerError::algo("kuaisim.cem", format!("the checkpoint has no {k}")))?;
            let v = Vec::<f64>::try_from(t)?;
            if v.len() != dst.len() {
                return Err(WorkerError::algo("kuaisim.cem", format!("the checkpoint's {k} has {} weights", v.len())));
            }
            *dst = v;
        }
        Ok(())
    }
}

/// The `[algorithm]` table of `kuaisim.cf`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CfJob {
    /// A KuaiSim simulator (a `kuaisim.response` export)...
    pub simulator: Option<PathBuf>,
    /// ... or the LLM-powered user simulator.
    pub world: Option<WorldSpec>,
    /// The simulator's settings (KuaiSim: at the request level, the default).
    pub env: Option<toml::Value>,
    #[serde(default = "hidden")]
    pub hidden: Vec<i64>,
    /// Exploration: each slate position is a random item with this probability.
    #[serde(default = "epsilon")]
    pub epsilon: f64,
    /// Users (request batches) each evaluation plays per rank.
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

pub(crate) fn epsilon() -> f64 {
    0.1
}

impl CfJob {
    pub fn from_value(v: &toml::Value) -> Result<(CfJob, Place), ConfigError> {
        let job: CfJob = parse_config(v)?;
        let place = Place::request(&job.simulator, &job.world, &job.env, "the CF scorer recommends single requests")?;
        if !(0.0..=1.0).contains(&job.epsilon) || job.hidden.iter().any(|&h| h < 1) || job.eval_users == 0 {
            return Err(ConfigError::new("epsilon", "epsilon in [0, 1], hidden widths >= 1, eval_users >= 1"));
        }
        Ok((job, place))
    }
}

fn validate_cf(v: &toml::Value) -> Result<(), ConfigError> {
    CfJob::from_value(v).map(|_| ())
}

fn build_cf(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let err = |e: String| WorkerError::algo("kuaisim.cf", e);
    let (job, place) = CfJob::from_value(v).map_err(|m| WorkerError::algo("kuaisim.cf", m))?;
    let world = Simulated::load(&place, ctx.device).map_err(err)?;
    let seed = splitmix(ctx.seed ^ splitmix(0xCF + ctx.rank as u64));
    let env = world.env(seed).map_err(err)?;
    tch::manual_seed(ctx.seed as i64);
    let vs = nn::VarStore::new(ctx.device);
    let mut dims = vec![world.state_dim()];
    dims.extend(&job.hidden);
    dims.push(world.item_dim());
    let user = mlp(&(vs.root() / "user"), &dims);
    let bias = vs.root().var("item_bias", &[world.item_count() as i64 + 1], nn::Init::Const(0.0));
    Ok(Box::new(Cf { user, bias, vs, world, env, seed, eval_seed: splitmix(ctx.seed ^ 0xE7A1), job, global_batch: ctx.global_batch, device: ctx.device }))
}

/// A pointwise CF scorer: score(user, item) = ⟨user tower(state), item
/// features⟩ + item bias, fitted online (MSE) to each shown item's feedback
/// (KuaiSim: its positive behaviours but hate; the LLM simulator:
/// engagement); the slate is the top items, each position random with
/// probability ε while training.
pub struct Cf {
    user: nn::Sequential,
    bias: Tensor,
    vs: nn::VarStore,
    world: Simulated,
    env: Box<dyn RequestEnv>,
    seed: u64,
    eval_seed: u64,
    job: CfJob,
    global_batch: usize,
    device: Device,
}

impl Cf {
    /// Scores `[B, items]` (item k at index k − 1).
    fn scores(&self, state: &Tensor) -> Tensor {
        let n = self.world.item_count() as i64;
        self.user.forward(state).matmul(&self.world.items().narrow(0, 1, n).transpose(0, 1)) + self.bias.narrow(0, 1, n)
    }

    fn greedy(&self, state: &Tensor) -> Tensor {
        self.scores(state).topk(self.world.slate() as i64, -1, true, true).1 + 1
    }
}

impl Algorithm for Cf {
    fn name(&self) -> &str {
        "kuaisim.cf"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let state = self.env.user_state();
        let (b, k) = (state.size()[0], self.world.slate() as i64);
        let n = self.world.item_count() as u64;
        let mut slate = Vec::<i64>::try_from(tch::no_grad(|| self.greedy(&state)).reshape([-1]).to_device(Device::Cpu))?;
        for (j, id) in slate.iter_mut().enumerate() {
            let key = splitmix(self.seed ^ splitmix(ctx.step.wrapping_mul(0x1_0000_0001) ^ j as u64));
            if unit(key) < self.job.epsilon {
                *id = 1 + (splitmix(key) % n) as i64;
            }
        }
        let slate = Tensor::from_slice(&slate).view([b, k]).to_device(self.device);
        let out = self.env.show(&slate).map_err(|e| WorkerError::algo("kuaisim.cf", e))?;
        let pred = self.scores(&state).gather(1, &(&slate - 1), false);
        let loss = pred.mse_loss(&out.feedback, Reduction::Mean);
        loss.f_backward()?;
        let mut scalars = BTreeMap::new();
        scalars.insert("env_reward".into(), out.reward.mean(Kind::Float).double_value(&[]));
        Ok(StepOutput { loss: loss.double_value(&[]), samples: b as usize, scalars })
    }

    /// Request-level protocol: greedy slates on a separate, seeded environment
    /// for `eval_users` users per rank (each for `initial_temper` requests,
    /// or the LLM world's `eval_steps`): `avg_l_reward` (an item's reward
    /// averaged over slates), `max_l_reward` (the best slate of each step,
    /// averaged), `coverage`, `ild`.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let err = |e: String| WorkerError::algo("kuaisim.cf", e);
        let mut env = self.world.eval_env(splitmix(self.eval_seed ^ ctx.rank as u64)).map_err(err)?;
        let r = play_request(env.as_mut(), self.job.eval_users, |s| tch::no_grad(|| self.greedy(s))).map_err(err)?;
        gather_request(ctx, &r)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        self.env.to_named()
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        if state.is_empty() {
            return Ok(());
        }
        self.env.load(&state.into_iter().collect()).map_err(|e| WorkerError::algo("kuaisim.cf", e))
    }
}

/// Totals of request-level play: slates, the sum of their L-rewards, the sum
/// over steps of the best slate's, steps, coverage and ILD sums, and the
/// reward-weighted ranking metrics: R-NDCG summed over the slates with any
/// reward (and their count), R-MRR over all slates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestReport {
    pub slates: f64,
    pub l_reward: f64,
    pub max_l_reward: f64,
    pub steps: f64,
    pub coverage: f64,
    pub ild: f64,
    pub r_ndcg: f64,
    pub rewarded_slates: f64,
    pub r_mrr: f64,
}

/// R-NDCG of one slate's item rewards in the order shown: Σ r_j / log2(j + 2)
/// over the same sum with the rewards sorted best first (`None` when no item
/// earned anything); R-MRR: 1 / the position of the first rewarded item (0
/// when none). The KuaiSim paper names both without a formula; these are our
/// reading, documented in docs/src/kuaisim.md.
pub fn ranking_metrics(rewards: &[f32]) -> (Option<f64>, f64) {
    let dcg = |r: &[f32]| r.iter().enumerate().map(|(j, &x)| x as f64 / ((j + 2) as f64).log2()).sum::<f64>();
    let mut ideal = rewards.to_vec();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let best = dcg(&ideal);
    let ndcg = (best > 0.0).then(|| dcg(rewards) / best);
    let mrr = rewards.iter().position(|&x| x > 0.0).map_or(0.0, |j| 1.0 / (j + 1) as f64);
    (ndcg, mrr)
}

/// Plays request-level episodes with `policy` (user state → slate) until
/// `users` users have been served.
pub fn play_request(env: &mut dyn RequestEnv, users: usize, policy: impl Fn(&Tensor) -> Tensor) -> Result<RequestReport, String> {
    let mut rep = RequestReport::default();
    let mut served = 0usize;
    let mut guard = 0usize;
    while served < users {
        guard += 1;
        if guard > 1_000_000 {
            return Err("evaluation: users never leave".into());
        }
        let s = env.user_state();
        let out = env.show(&policy(&s))?;
        let r = Vec::<f32>::try_from(out.reward.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        rep.slates += r.len() as f64;
        rep.l_reward += r.iter().map(|&x| x as f64).sum::<f64>();
        rep.max_l_reward += r.iter().copied().fold(f32::MIN, f32::max) as f64;
        rep.steps += 1.0;
        rep.coverage += out.coverage as f64;
        rep.ild += out.ild;
        let items = Vec::<f32>::try_from(out.item_reward.to_device(Device::Cpu).contiguous().reshape([-1])).map_err(|e| e.to_string())?;
        for slate in items.chunks_exact(out.item_reward.size()[1].max(1) as usize) {
            let (ndcg, mrr) = ranking_metrics(slate);
            if let Some(x) = ndcg {
                rep.r_ndcg += x;
                rep.rewarded_slates += 1.0;
            }
            rep.r_mrr += mrr;
        }
        // A finished slot holds a new user afterwards; at KuaiSim's request
        // level the whole batch finishes together.
        served += out.done.iter().filter(|&&d| d).count();
    }
    Ok(rep)
}

pub fn gather_request(ctx: &StepContext, r: &RequestReport) -> Result<BTreeMap<String, f64>, WorkerError> {
    let t = sum_over_ranks(ctx, [r.slates, r.l_reward, r.max_l_reward, r.steps, r.coverage, r.ild, r.r_ndcg, r.rewarded_slates, r.r_mrr])?;
    let mut out = BTreeMap::new();
    out.insert("r_ndcg".into(), t[6] / t[7].max(1.0));
    out.insert("r_mrr".into(), t[8] / t[0].max(1.0));
    out.insert("avg_l_reward".into(), t[1] / t[0].max(1.0));
    out.insert("max_l_reward".into(), t[2] / t[3].max(1.0));
    out.insert("coverage".into(), t[4] / t[3].max(1.0));
    out.insert("ild".into(), t[5] / t[3].max(1.0));
    Ok(out)
}

/// The `[algorithm]` table of `kuaisim.random`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RandomJob {
    /// A KuaiSim simulator, at any level...
    pub simulator: Option<PathBuf>,
    /// ... or the LLM-powered user simulator.
    pub world: Option<WorldSpec>,
    /// The simulator's settings (KuaiSim: required, to name the level).
    pub env: Option<toml::Value>,
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

fn random_job(v: &toml::Value) -> Result<(RandomJob, Place), ConfigError> {
    let job: RandomJob = parse_config(v)?;
    let place = Place::parse(&job.simulator, &job.world, &job.env, None)?;
    if job.eval_users == 0 {
        return Err(ConfigError::new("eval_users", "must be at least 1"));
    }
    Ok((job, place))
}

fn validate_random(v: &toml::Value) -> Result<(), ConfigError> {
    random_job(v).map(|_| ())
}

fn build_random(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let (job, place) = random_job(v).map_err(|m| WorkerError::algo("kuaisim.random", m))?;
    let world = Simulated::load(&place, ctx.device).map_err(|e| WorkerError::algo("kuaisim.random", e))?;
    Ok(Box::new(RandomPolicy { world, seed: splitmix(ctx.seed ^ 0x4A4D), job, global_batch: ctx.global_batch, device: ctx.device }))
}

/// The random policy: each step draws, for every user, a slate of uniform item
/// ids or fusion weights uniform in [−1, 1]. No parameters; `train_step` does
/// nothing but count, so the job's evaluation is the baseline's row in a sweep
/// beside the agents (same protocol, same seeds).
pub struct RandomPolicy {
    world: Simulated,
    seed: u64,
    job: RandomJob,
    global_batch: usize,
    device: Device,
}

impl RandomPolicy {
    fn draw(&self, key: u64, n: usize) -> Vec<f64> {
        (0..n as u64).map(|k| unit(splitmix(self.seed ^ splitmix(key.wrapping_mul(0x1_0000_0001) ^ k)))).collect()
    }
}

impl Algorithm for RandomPolicy {
    fn name(&self) -> &str {
        "kuaisim.random"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn train_step(&mut self, _ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        Ok(StepOutput { loss: 0.0, samples: 0, scalars: BTreeMap::new() })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let err = |e: String| WorkerError::algo("kuaisim.random", e);
        let seed = splitmix(self.seed ^ 0xE7A1 ^ ctx.rank as u64);
        let (b, k, n) = (self.world.batch(), self.world.slate(), self.world.item_count() as f64);
        let t = std::cell::Cell::new(0u64);
        let slate = |_: &Tensor| {
            t.set(t.get() + 1);
            let ids: Vec<i64> = self.draw(t.get(), b * k).into_iter().map(|u| 1 + (u * n) as i64).map(|x| x.min(n as i64)).collect();
            Tensor::from_slice(&ids).view([b as i64, k as i64]).to_device(self.device)
        };
        match &self.world {
            Simulated::KuaiSim { sim, env: cfg } if cfg.level == Level::WholeSession => {
                let mut env = Env::new(sim.clone(), cfg.clone(), seed).map_err(err)?;
                gather_report(ctx, &play(&mut env, self.job.eval_users, slate).map_err(err)?)
            }
            Simulated::KuaiSim { sim, env: cfg } if cfg.level == Level::CrossSession => {
                let mut env = Env::new(sim.clone(), cfg.clone(), seed).map_err(err)?;
                let weights = |_: &Tensor| {
                    t.set(t.get() + 1);
                    let w: Vec<f32> = self.draw(t.get(), b * crate::NB).into_iter().map(|u| (2.0 * u - 1.0) as f32).collect();
                    Tensor::from_slice(&w).view([b as i64, crate::NB as i64]).to_device(self.device)
                };
                gather_cross(ctx, &play_cross(&mut env, self.job.eval_users, weights).map_err(err)?)
            }
            // The request level of either simulator.
            _ => gather_request(ctx, &play_request(self.world.eval_env(seed).map_err(err)?.as_mut(), self.job.eval_users, slate).map_err(err)?),
        }
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}

#[cfg(test)]
mod tests {
    use super::ranking_metrics;

    #[test]
    fn reward_weighted_ranking_metrics_match_a_hand_computation() {
        // Rewards 0, 2, 1 in the order shown: DCG = 2/log2(3) + 1/2, ideal 2 + 1/log2(3).
        let (ndcg, mrr) = ranking_metrics(&[0.0, 2.0, 1.0]);
        let want = (2.0 / 3f64.log2() + 0.5) / (2.0 + 1.0 / 3f64.log2());
        assert!((ndcg.unwrap() - want).abs() < 1e-12 && (mrr - 0.5).abs() < 1e-12);
        // Best first: 1; nothing earned: no R-NDCG, R-MRR 0.
        assert_eq!(ranking_metrics(&[3.0, 1.0, 0.0]), (Some(1.0), 1.0));
        assert_eq!(ranking_metrics(&[0.0, 0.0]), (None, 0.0));
    }
}
