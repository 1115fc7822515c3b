//! GFN4Retention (Liu et al., KDD 2024): cross-session retention as a
//! generative flow network over a session's requests.
//!
//! A session is a trajectory s₁ → … → s_T of user states; each step the
//! **actor** (forward policy P_F) proposes the 7 ranking-fusion weights the
//! cross-session environment ranks items by, a **state flow** F(s) and a
//! **backward policy** P_B(s_t | s_{t+1}) are learned beside it, and the
//! **detailed-balance** residual of every transition
//!
//! ```text
//! log F(s) + log(P_F(a|s) + b_f) − log F(s') − log(P_B(s|s') + b_b) − α · r^ζ
//! ```
//!
//! is driven to zero, with log F(s') replaced by log(R + b_r) at the step that
//! ends the session, R = 1/(return day + 0.005) the retention reward: the
//! flow then factorises as F_R(s_t) · exp(α Σ_{j<t} r_j^ζ), so trajectories
//! are preferred in proportion to retention × the exponentiated immediate
//! feedback (r: the request's immediate reward; r^ζ keeps its sign for
//! negative rewards). Squared residuals are weighted by `tn_balance` (ending
//! steps) and 1 − `tn_balance` (the others), offset by `b_z`, averaged and
//! scaled by `lambda`; the reference's constants are the defaults except
//! `b_z` (0.1 there: an offset inside the square biases every flow).
//!
//! - **Actor**: a Transformer layer over the user's recent history (the
//!   simulator's item encodings plus a map of each record's 7 responses and a
//!   learned position), its last token with the environment's user state
//!   through an MLP to tanh-bounded weights μ; exploration adds N(0, σ²),
//!   and P_F is that Gaussian's density of the taken action (the reference
//!   sums per-dimension densities of a shifted mean; ours is the joint
//!   density).
//! - **Flow**: an MLP of the user state → log F. **Backward policy**: an MLP
//!   of (s', a, s) → 0.001 + 0.999 · sigmoid.
//! - **Learning to rank**: on each shown slate, the actor's fusion scores
//!   Σ_b μ_b P_b(item) are fitted to the items' realised rewards (ListNet: a
//!   softmax cross-entropy between the two), weight `rank_weight`.
//!
//! Online like the kuaisim agents: each rank plays its users into its own
//! replay buffer and learns from minibatches of it; the buffer and the
//! environment are per-rank checkpoint state, so a resumed run continues
//! exactly.

use kiln_kuaisim::agents::{counter_gaussian, counter_uniform, gather_cross, load_replay_env_state, mlp, play_cross_with, replay_env_state, Replay};
use kiln_kuaisim::env::{Action, Env, EnvConfig, Level, Simulator};
use kiln_kuaisim::layers::{causal_mask, EncoderLayer};
use kiln_kuaisim::NB;
use kiln_worker::rng::splitmix;
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const NAME: &str = "retention.gfn4retention";

/// The `[algorithm]` table of `retention.gfn4retention`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GfnJob {
    /// A simulator exported from a trained `kuaisim.response` job.
    pub simulator: PathBuf,
    /// The cross-session environment (`retention.model = "cumulative"` is
    /// the paper's cumulative-influence variant).
    #[serde(default = "cross_session")]
    pub env: EnvConfig,
    #[serde(default = "hidden")]
    pub hidden: Vec<i64>,
    /// Attention heads of the actor's history layer (must divide the
    /// simulator's encoding width).
    #[serde(default = "heads")]
    pub heads: i64,
    /// σ of the exploration noise and of P_F.
    #[serde(default = "noise")]
    pub noise: f64,
    /// The immediate feedback's weight α and exponent ζ in the balance.
    #[serde(default = "one")]
    pub alpha: f64,
    #[serde(default = "one")]
    pub zeta: f64,
    /// Offsets inside the logs of P_F, P_B and R (the reference: 1 each),
    /// and added to each residual before squaring.
    #[serde(default = "one")]
    pub b_f: f64,
    #[serde(default = "one")]
    pub b_b: f64,
    #[serde(default = "one")]
    pub b_r: f64,
    #[serde(default)]
    pub b_z: f64,
    /// Weight of the session-ending residuals (the others get 1 − it).
    #[serde(default = "half")]
    pub tn_balance: f64,
    /// Scale of the balance loss.
    #[serde(default = "half")]
    pub lambda: f64,
    #[serde(default = "rank_weight")]
    pub rank_weight: f64,
    /// The actor's learning rate relative to the job's (the reference: 2e-5
    /// against the flows' 1e-4).
    #[serde(default = "actor_lr")]
    pub actor_lr_scale: f64,
    #[serde(default = "buffer")]
    pub buffer: usize,
    /// Steps of uniform random weights before the actor acts and learning starts.
    #[serde(default = "start")]
    pub start_steps: u64,
    /// User-episodes each evaluation plays per rank.
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

fn cross_session() -> EnvConfig {
    EnvConfig::new(Level::CrossSession)
}
fn hidden() -> Vec<i64> {
    vec![128]
}
fn heads() -> i64 {
    2
}
fn noise() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn rank_weight() -> f64 {
    0.1
}
fn actor_lr() -> f64 {
    0.2
}
fn buffer() -> usize {
    100_000
}
fn start() -> u64 {
    100
}
fn eval_users() -> usize {
    64
}

impl GfnJob {
    pub fn from_value(v: &toml::Value) -> Result<GfnJob, ConfigError> {
        let job: GfnJob = parse_config(v)?;
        job.env.check().map_err(|m| ConfigError::new("env", m))?;
        if job.env.level != Level::CrossSession {
            return Err(ConfigError::new("env.level", "GFN4Retention optimises retention across sessions: level = \"cross-session\""));
        }
        if job.hidden.is_empty() || job.hidden.iter().any(|&h| h < 1) || job.heads < 1 || job.buffer == 0 || job.eval_users == 0 {
            return Err(ConfigError::new("hidden", "hidden widths, heads, buffer and eval_users must be at least 1"));
        }
        if !(job.noise > 0.0 && job.noise.is_finite()) {
            return Err(ConfigError::new("noise", "must be a positive number (it is P_F's standard deviation)"));
        }
        for (k, v) in [("b_f", job.b_f), ("b_b", job.b_b), ("b_r", job.b_r)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(ConfigError::new(k, "must be a finite number >= 0"));
            }
        }
        if !(0.0..=1.0).contains(&job.tn_balance) || !(job.lambda > 0.0) || !(job.actor_lr_scale > 0.0) || ![job.alpha, job.zeta, job.b_z, job.rank_weight].iter().all(|x| x.is_finite()) || job.zeta <= 0.0 || job.rank_weight < 0.0 {
            return Err(ConfigError::new("tn_balance", "tn_balance in [0, 1], lambda > 0, actor_lr_scale > 0, zeta > 0, rank_weight >= 0, alpha and b_z finite"));
        }
        Ok(job)
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    GfnJob::from_value(v).map(|_| ())
}

pub fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = GfnJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    let sim = Simulator::load_for(&job.simulator, &job.env, ctx.device).map_err(|e| WorkerError::algo(NAME, format!("simulator: {e}")))?;
    if sim.model.enc_dim() % job.heads != 0 {
        return Err(WorkerError::algo(NAME, format!("heads = {} must divide the simulator's encoding width {}", job.heads, sim.model.enc_dim())));
    }
    Ok(Box::new(Gfn::new(job, Arc::new(sim), ctx)?))
}

/// The balance's constants, apart from the networks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    pub alpha: f64,
    pub zeta: f64,
    pub b_f: f64,
    pub b_b: f64,
    pub b_r: f64,
    pub b_z: f64,
    pub tn_balance: f64,
    pub lambda: f64,
}

/// log(e^x + b), exact for b = 0.
fn log_plus(x: &Tensor, b: f64) -> Tensor {
    if b == 0.0 {
        x.shallow_clone()
    } else {
        (x.exp() + b).log()
    }
}

/// Each transition's detailed-balance residual `[B]` from log F(s), log
/// P_F(a|s), log F(s'), log P_B(s|s') (all `[B]`), the immediate reward r,
/// the retention reward R and whether the step ended the session (`ends`, 0
/// or 1): at an ending step log F(s') is replaced by log(R + b_r).
pub fn db_residual(log_f: &Tensor, log_pf: &Tensor, log_f_next: &Tensor, log_pb: &Tensor, r: &Tensor, retention: &Tensor, ends: &Tensor, c: &Balance) -> Tensor {
    let feedback = r.sign() * r.abs().pow_tensor_scalar(c.zeta) * c.alpha;
    // Selected, not blended: log R is −∞ where no session ended and b_r = 0.
    let target = (retention + c.b_r).log();
    let next = target.where_self(&ends.gt(0.5), log_f_next);
    log_f + log_plus(log_pf, c.b_f) - next - log_plus(log_pb, c.b_b) - feedback
}

/// The balance loss: λ · mean over transitions of the squared, offset
/// residuals, weighted by `tn_balance` at session ends and 1 − it elsewhere.
pub fn db_loss(residual: &Tensor, ends: &Tensor, c: &Balance) -> Tensor {
    let w: Tensor = ends * c.tn_balance + (1.0 - ends) * (1.0 - c.tn_balance);
    let squared: Tensor = (residual + c.b_z).square();
    let kind = squared.kind();
    (squared * w).mean(kind) * c.lambda
}

pub struct Gfn {
    vs: nn::VarStore,
    position: Tensor,
    response: nn::Linear,
    layer: EncoderLayer,
    head: nn::Sequential,
    flow: nn::Sequential,
    backward: nn::Sequential,
    sim: Arc<Simulator>,
    env: Env,
    replay: Replay,
    balance: Balance,
    seed: u64,
    eval_seed: u64,
    batch: usize,
    job: GfnJob,
    global_batch: usize,
    device: Device,
}

impl Gfn {
    pub fn new(job: GfnJob, sim: Arc<Simulator>, ctx: &BuildContext) -> Result<Gfn, WorkerError> {
        let seed = splitmix(ctx.seed ^ splitmix(0x6F4 + ctx.rank as u64));
        let env = Env::new(sim.clone(), job.env.clone(), seed).map_err(|e| WorkerError::algo(NAME, e))?;
        let e = sim.model.enc_dim();
        let s = 3 * e;
        let h = sim.history as i64;
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let with = |input: i64, out: i64| [&[input], job.hidden.as_slice(), &[out]].concat();
        let k = job.env.slate as i64;
        let gfn = Gfn {
            position: root.var("actor_position", &[h, e], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            response: nn::linear(&root / "actor_response", NB as i64, e, Default::default()),
            layer: EncoderLayer::new(&(&root / "actor_layer"), e, job.heads, 2 * e, 0.0),
            head: mlp(&(&root / "actor_head"), &with(e + s, NB as i64)),
            flow: mlp(&(&root / "flow"), &with(s, 1)),
            backward: mlp(&(&root / "backward"), &[2 * s + NB as i64, 32, 1]),
            // State: [user state | history ids | responses | real]; action:
            // [weights | the slate's probabilities | its item rewards].
            replay: Replay::new(job.buffer, s + h * (NB as i64 + 2), NB as i64 + k * (NB as i64 + 1), 2, ctx.device),
            balance: Balance { alpha: job.alpha, zeta: job.zeta, b_f: job.b_f, b_b: job.b_b, b_r: job.b_r, b_z: job.b_z, tn_balance: job.tn_balance, lambda: job.lambda },
            batch: (ctx.global_batch / ctx.world_size.max(1)).max(1),
            eval_seed: splitmix(ctx.seed ^ 0xE7A1),
            global_batch: ctx.global_batch,
            device: ctx.device,
            vs,
            sim,
            env,
            seed,
            job,
        };
        Ok(gfn)
    }

    /// The environment's users as agent states `[B, 3e + H·9]`.
    fn features(env: &Env) -> Tensor {
        Self::features_with(env, &env.user_state())
    }

    /// [`Gfn::features`] with the users' state already at hand (a step returns it).
    fn features_with(env: &Env, user_state: &Tensor) -> Tensor {
        let o = env.observation();
        let b = o.history.size()[0];
        Tensor::cat(&[user_state.shallow_clone(), o.history.to_kind(Kind::Float), o.history_response.view([b, -1]), o.real.to_kind(Kind::Float)], 1)
    }

    /// The user state part `[B, 3e]` of agent states.
    fn user_state(&self, f: &Tensor) -> Tensor {
        f.narrow(1, 0, 3 * self.sim.model.enc_dim())
    }

    /// The actor's mean weights `[B, 7]` (tanh-bounded).
    fn mean(&self, f: &Tensor) -> Tensor {
        let (b, e, h) = (f.size()[0], self.sim.model.enc_dim(), self.sim.history as i64);
        let s = 3 * e;
        let ids = f.narrow(1, s, h).round().to_kind(Kind::Int64);
        let resp = f.narrow(1, s + h, h * NB as i64).view([b, h, NB as i64]);
        let real = f.narrow(1, s + h * (NB as i64 + 1), h).gt(0.5);
        let items = self.sim.items.index_select(0, &ids.reshape([-1])).view([b, h, e]).detach();
        let tokens = items + self.response.forward(&resp) + &self.position;
        let x = self.layer.forward(&tokens, &causal_mask(&real), false).select(1, h - 1);
        self.head.forward(&Tensor::cat(&[x, self.user_state(f)], 1)).tanh()
    }

    /// log of the N(μ, σ²) density of actions `a` `[B, 7]`, summed over weights.
    fn log_pf(&self, mean: &Tensor, a: &Tensor) -> Tensor {
        let s = self.job.noise;
        ((a - mean) / s).square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float) * -0.5 - NB as f64 * (s * (2.0 * std::f64::consts::PI).sqrt()).ln()
    }

    /// log P_B(s | s') `[B]`.
    fn log_pb(&self, s: &Tensor, a: &Tensor, s2: &Tensor) -> Tensor {
        (self.backward.forward(&Tensor::cat(&[s2, a, s], 1)).squeeze_dim(1).sigmoid() * 0.999 + 0.001).log()
    }

    fn log_flow(&self, s: &Tensor) -> Tensor {
        self.flow.forward(s).squeeze_dim(1)
    }
}

impl Algorithm for Gfn {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn lr_scales(&self) -> Vec<(String, f64)> {
        self.parameters().into_iter().filter(|(n, _)| n.starts_with("actor")).map(|(n, _)| (n, self.job.actor_lr_scale)).collect()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let step = ctx.step;
        let f = Self::features(&self.env);
        let b = f.size()[0];
        let a = tch::no_grad(|| {
            if step < self.job.start_steps {
                counter_uniform(self.seed, 7, step, (b * NB as i64) as usize, self.device).view([b, NB as i64]) * 2.0 - 1.0
            } else {
                (self.mean(&f) + counter_gaussian(self.seed, 8, step, &[b, NB as i64], self.device) * self.job.noise).clamp(-1.0, 1.0)
            }
        });
        let out = self.env.step(&Action::Fusion(a.shallow_clone())).map_err(|e| WorkerError::algo(NAME, e))?;
        // The step's user state is the environment's now (no user is replaced
        // mid-episode at this level): not computed again.
        let f2 = Self::features_with(&self.env, &out.user_state);
        let days: Vec<f32> = out.return_day.iter().map(|&d| d as f32).collect();
        let days = Tensor::from_slice(&days).to_device(self.device);
        let ends = days.gt(0.0).to_kind(Kind::Float);
        let retention = (days + 0.005).reciprocal() * &ends;
        let stored = Tensor::cat(&[a, out.probs.reshape([b, -1]), out.item_reward.shallow_clone()], 1);
        self.replay.push(&f, &stored, &Tensor::stack(&[out.reward.shallow_clone(), retention], 1), &f2, &ends);
        if out.done.iter().all(|&d| d) {
            self.env.reset();
        }
        let mut scalars = BTreeMap::new();
        scalars.insert("env_reward".into(), out.reward.mean(Kind::Float).double_value(&[]));
        if step < self.job.start_steps || self.replay.len < self.batch {
            return Ok(StepOutput { loss: 0.0, samples: b as usize, scalars });
        }
        let [s, act, r, s2, ends] = self.replay.sample(self.batch, splitmix(self.seed ^ step));
        let ends = ends.squeeze_dim(1);
        let a = act.narrow(1, 0, NB as i64);
        let k = self.job.env.slate as i64;
        let mean = self.mean(&s);
        let (us, us2) = (self.user_state(&s), self.user_state(&s2));
        let log_f = self.log_flow(&us);
        let residual = db_residual(&log_f, &self.log_pf(&mean, &a), &self.log_flow(&us2), &self.log_pb(&us, &a, &us2), &r.select(1, 0), &r.select(1, 1), &ends, &self.balance);
        let balance = db_loss(&residual, &ends, &self.balance);
        // ListNet on the shown slate: the actor's fusion scores against the items' rewards.
        let probs = act.narrow(1, NB as i64, k * NB as i64).view([-1, k, NB as i64]);
        let item_reward = act.narrow(1, NB as i64 * (k + 1), k);
        let scores = probs.matmul(&mean.unsqueeze(-1)).squeeze_dim(-1);
        let rank = -(item_reward.softmax(-1, Kind::Float) * scores.log_softmax(-1, Kind::Float)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float);
        let loss = &balance + &rank * self.job.rank_weight;
        loss.f_backward()?;
        scalars.insert("balance".into(), balance.double_value(&[]));
        scalars.insert("rank".into(), rank.double_value(&[]));
        scalars.insert("log_flow".into(), log_f.mean(Kind::Float).double_value(&[]));
        Ok(StepOutput { loss: loss.double_value(&[]), samples: self.batch, scalars })
    }

    /// The cross-session protocol with the actor's mean weights on a
    /// separate, seeded environment: `return_day`, `retention`, `avg_reward`,
    /// and `log_flow` (the mean log F of the states met).
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut env = Env::new(self.sim.clone(), self.job.env.clone(), splitmix(self.eval_seed ^ ctx.rank as u64)).map_err(|e| WorkerError::algo(NAME, e))?;
        let (mut sum, mut n) = (0.0f64, 0usize);
        let r = play_cross_with(&mut env, self.job.eval_users, |env| {
            let f = Self::features(env);
            tch::no_grad(|| {
                let lf = self.log_flow(&self.user_state(&f));
                sum += lf.sum(Kind::Float).double_value(&[]);
                n += lf.size()[0] as usize;
                Action::Fusion(self.mean(&f))
            })
        })
        .map_err(|e| WorkerError::algo(NAME, e))?;
        let mut out = gather_cross(ctx, &r)?;
        let all = ctx.comm.all_gather_f32(&[sum as f32, n as f32])?;
        let (s, c) = all.chunks_exact(2).fold((0.0, 0.0), |acc, x| (acc.0 + x[0] as f64, acc.1 + x[1] as f64));
        out.insert("log_flow".into(), s / c.max(1.0));
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        replay_env_state(&self.replay, &self.env)
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        load_replay_env_state(&mut self.replay, &mut self.env, state).map_err(|e| WorkerError::algo(NAME, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn the_detailed_balance_loss_equals_a_hand_computation() {
        let c = Balance { alpha: 2.0, zeta: 0.5, b_f: 1.0, b_b: 1.0, b_r: 1.0, b_z: 0.1, tn_balance: 0.3, lambda: 0.5 };
        // Two transitions: the first inside a session, the second ending it
        // with a return after 2 days (its log F(s') is ignored).
        let retention = 1.0 / 2.005;
        let res = db_residual(&t(&[0.5, 1.0]), &t(&[2f64.ln(), 3f64.ln()]), &t(&[0.2, 9.9]), &t(&[0.5f64.ln(), 0.25f64.ln()]), &t(&[0.4, -1.0]), &t(&[0.0, retention]), &t(&[0.0, 1.0]), &c);
        let r0 = 0.5 + 3f64.ln() - 0.2 - 1.5f64.ln() - 2.0 * 0.4f64.sqrt();
        let r1 = 1.0 + 4f64.ln() - (retention + 1.0).ln() - 1.25f64.ln() + 2.0;
        let got = Vec::<f64>::try_from(&res).unwrap();
        assert!((got[0] - r0).abs() < 1e-9 && (got[1] - r1).abs() < 1e-9, "{got:?} vs {r0}, {r1}");
        let loss = db_loss(&res, &t(&[0.0, 1.0]), &c).double_value(&[]);
        let want = 0.5 * ((r0 + 0.1).powi(2) * 0.7 + (r1 + 0.1).powi(2) * 0.3) / 2.0;
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        // Without offsets the residual is the exact log-space balance.
        let exact = Balance { b_f: 0.0, b_b: 0.0, b_r: 0.0, b_z: 0.0, alpha: 1.0, zeta: 1.0, ..c };
        let res = db_residual(&t(&[0.5]), &t(&[-1.0]), &t(&[0.7]), &t(&[-2.0]), &t(&[0.3]), &t(&[0.0]), &t(&[0.0]), &exact);
        assert!((res.double_value(&[0]) - (0.5 - 1.0 - 0.7 + 2.0 - 0.3)).abs() < 1e-9);
        // A flow that already balances every transition costs nothing.
        assert!(db_loss(&Tensor::zeros([3], (Kind::Double, Device::Cpu)), &t(&[0.0, 1.0, 0.0]), &exact).double_value(&[]).abs() < 1e-12);
    }
}
