//! ListCVAE (Jiang et al. 2019) for request-level list recommendation, as
//! KuaiSim benchmarks it: a conditional VAE over whole slates, conditioned on
//! the user state and the slate's reward; at serving time it is asked for a
//! slate of a *target* reward.
//!
//! - **Condition**: LayerNorm(a linear map of the reward to `c_dim`), the
//!   reward standardised by the replay buffer's rewards (ours: raw rewards
//!   vary too little against the map's bias to survive the LayerNorm, and the
//!   decoder then ignores them).
//! - **Encoder** q(z | slate, c, s): an MLP over the slate's item encodings
//!   (concatenated in order), the condition and the user state → mean and
//!   log-variance of z (LayerNorm'd, as the reference does).
//! - **Prior** p(z | c, s): an MLP of the condition and the state.
//! - **Decoder**: an MLP of (z, c, s) → one vector per slate position; each
//!   position's item distribution is a softmax over every item of its dot
//!   product with the item's features (KuaiSim's item encodings, or the LLM
//!   world's analysis features: [`crate::request`]; over the whole pool —
//!   the reference samples 100 negatives, we take the exact softmax).
//! - **Loss**: the ELBO — the positions' cross-entropy plus β · KL(q ‖ p).
//! - **Acting**: z drawn from the prior at the target reward (unset: the
//!   buffer's mean + 2 standard deviations); position by
//!   position, among the items not yet in the slate, a draw from its
//!   distribution while training (a uniform item with probability ε), its
//!   most likely item when evaluated.
//!
//! Trained online like the other agents: each rank plays its own users into
//! its own replay buffer of (state, slate, reward) and learns from
//! minibatches of it; the buffer and environment are per-rank checkpoint
//! state.

use crate::agents::{buffer, counter_gaussian, counter_uniform, epsilon, eval_users, gather_request, load_replay_env_state, mlp, play_request, replay_env_state, start, Replay};
use crate::llm_env::WorldSpec;
use crate::request::{Place, RequestEnv, Simulated};
use kiln_worker::rng::splitmix;
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

const NAME: &str = "kuaisim.listcvae";

/// The `[algorithm]` table of `kuaisim.listcvae`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListCvaeJob {
    /// A KuaiSim simulator (a `kuaisim.response` export)...
    pub simulator: Option<PathBuf>,
    /// ... or the LLM-powered user simulator.
    pub world: Option<WorldSpec>,
    /// The simulator's settings (KuaiSim: at the request level, the default).
    pub env: Option<toml::Value>,
    #[serde(default = "c_dim")]
    pub c_dim: i64,
    #[serde(default = "z_dim")]
    pub z_dim: i64,
    #[serde(default = "prior_hidden")]
    pub prior_hidden: Vec<i64>,
    #[serde(default = "coder_hidden")]
    pub encoder_hidden: Vec<i64>,
    #[serde(default = "coder_hidden")]
    pub decoder_hidden: Vec<i64>,
    /// Weight of the KL term.
    #[serde(default = "beta")]
    pub beta: f64,
    /// The slate reward asked for when acting (the environment's L-reward
    /// scale: the mean over the slate of each item's weighted responses);
    /// unset, two standard deviations above the replay buffer's mean reward.
    #[serde(default)]
    pub target_reward: Option<f64>,
    #[serde(default = "epsilon")]
    pub epsilon: f64,
    #[serde(default = "buffer")]
    pub buffer: usize,
    /// Steps of acting before learning starts.
    #[serde(default = "start")]
    pub start_steps: u64,
    #[serde(default = "eval_users")]
    pub eval_users: usize,
}

fn c_dim() -> i64 {
    16
}
fn z_dim() -> i64 {
    32
}
fn prior_hidden() -> Vec<i64> {
    vec![128]
}
fn coder_hidden() -> Vec<i64> {
    vec![256]
}
fn beta() -> f64 {
    1.0
}

impl ListCvaeJob {
    pub fn from_value(v: &toml::Value) -> Result<(ListCvaeJob, Place), ConfigError> {
        let job: ListCvaeJob = parse_config(v)?;
        let place = Place::request(&job.simulator, &job.world, &job.env, "ListCVAE generates single slates")?;
        let widths = [job.prior_hidden.as_slice(), &job.encoder_hidden, &job.decoder_hidden].concat();
        if job.c_dim < 1 || job.z_dim < 1 || widths.iter().any(|&h| h < 1) {
            return Err(ConfigError::new("c_dim", "c_dim, z_dim and every hidden width must be at least 1"));
        }
        if !(job.beta >= 0.0 && job.beta.is_finite()) || !job.target_reward.unwrap_or(0.0).is_finite() || !(0.0..=1.0).contains(&job.epsilon) || job.buffer == 0 || job.eval_users == 0 {
            return Err(ConfigError::new("beta", "beta >= 0, a finite target_reward, epsilon in [0, 1], buffer and eval_users >= 1"));
        }
        Ok((job, place))
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    ListCvaeJob::from_value(v).map(|_| ())
}

pub fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let (job, place) = ListCvaeJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    let world = Simulated::load(&place, ctx.device).map_err(|e| WorkerError::algo(NAME, e))?;
    Ok(Box::new(ListCvae::new(job, world, ctx)?))
}

pub struct ListCvae {
    vs: nn::VarStore,
    cond: nn::Linear,
    cond_norm: nn::LayerNorm,
    z_norm: nn::LayerNorm,
    encoder: nn::Sequential,
    prior: nn::Sequential,
    decoder: nn::Sequential,
    world: Simulated,
    env: Box<dyn RequestEnv>,
    replay: Replay,
    seed: u64,
    eval_seed: u64,
    /// This rank's minibatch.
    batch: usize,
    job: ListCvaeJob,
    global_batch: usize,
    device: Device,
}

impl ListCvae {
    pub fn new(job: ListCvaeJob, world: Simulated, ctx: &BuildContext) -> Result<ListCvae, WorkerError> {
        let seed = splitmix(ctx.seed ^ splitmix(0xC7AE + ctx.rank as u64));
        let env = world.env(seed).map_err(|e| WorkerError::algo(NAME, e))?;
        let (e, s, k) = (world.item_dim(), world.state_dim(), world.slate() as i64);
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let dims = |input: i64, hidden: &[i64], out: i64| [&[input], hidden, &[out]].concat();
        let (c, z) = (job.c_dim, job.z_dim);
        let cvae = ListCvae {
            cond: nn::linear(&root / "cond", 1, c, Default::default()),
            cond_norm: nn::layer_norm(&root / "cond_norm", vec![c], Default::default()),
            z_norm: nn::layer_norm(&root / "z_norm", vec![z], Default::default()),
            encoder: mlp(&(&root / "encoder"), &dims(k * e + c + s, &job.encoder_hidden, 2 * z)),
            prior: mlp(&(&root / "prior"), &dims(c + s, &job.prior_hidden, 2 * z)),
            decoder: mlp(&(&root / "decoder"), &dims(z + c + s, &job.decoder_hidden, k * e)),
            replay: Replay::new(job.buffer, s, k, 1, ctx.device),
            batch: (ctx.global_batch / ctx.world_size.max(1)).max(1),
            eval_seed: splitmix(ctx.seed ^ 0xE7A1),
            global_batch: ctx.global_batch,
            device: ctx.device,
            vs,
            world,
            env,
            seed,
            job,
        };
        Ok(cvae)
    }

    /// The condition `[B, c_dim]` for slate rewards `reward` `[B]`, standardised
    /// by the replay buffer's rewards (raw rewards of a few units vary too
    /// little against the map's bias to survive its LayerNorm).
    fn condition(&self, reward: &Tensor) -> Tensor {
        let (mean, std) = self.replay.reward_stats();
        let z = (reward.to_kind(Kind::Float) - mean) / std;
        self.cond_norm.forward(&self.cond.forward(&z.unsqueeze(1)))
    }

    /// (mean, log-variance) of z from an MLP's `[B, 2·z]` output.
    fn gaussian_params(&self, out: &Tensor) -> (Tensor, Tensor) {
        let b = out.size()[0];
        let o = self.z_norm.forward(&out.view([b, 2, self.job.z_dim]));
        (o.select(1, 0), o.select(1, 1))
    }

    /// Per slate position, logits `[B, k, items]` over the pool (item j at index j − 1).
    fn logits(&self, z: &Tensor, c: &Tensor, state: &Tensor) -> Tensor {
        let b = state.size()[0];
        let e = self.world.item_dim();
        let out = self.decoder.forward(&Tensor::cat(&[z, c, state], 1)).view([b, self.world.slate() as i64, e]);
        let items = self.world.items().narrow(0, 1, self.world.item_count() as i64);
        out.matmul(&items.transpose(0, 1)) / e as f64
    }

    /// Slates `[B, k]` asked for at the target reward: z from the prior; each
    /// position the most likely item, or (exploring) a draw from its
    /// distribution, uniform with probability ε. Draws keyed by (tag, step).
    fn act(&self, state: &Tensor, tag: u64, step: u64, explore: bool) -> Tensor {
        tch::no_grad(|| {
            let b = state.size()[0];
            let target = self.job.target_reward.unwrap_or_else(|| {
                let (mean, std) = self.replay.reward_stats();
                mean + 2.0 * std
            });
            let c = self.condition(&Tensor::full([b], target, (Kind::Float, self.device)));
            let (mu, logvar) = self.gaussian_params(&self.prior.forward(&Tensor::cat(&[&c, state], 1)));
            let z = &mu + (&logvar * 0.5).exp() * counter_gaussian(self.seed, tag, step, &mu.size(), self.device);
            let logits = self.logits(&z, &c, state);
            // Exploring, Gumbel noise on the logits: the argmax is then a draw from the softmax.
            let logits = if explore {
                let u = counter_uniform(self.seed, tag + 2, step, logits.numel(), self.device).clamp(1e-7, 1.0 - 1e-7).view(logits.size().as_slice());
                logits - (-u.log()).log()
            } else {
                logits
            };
            let slate = distinct_argmax(&logits);
            if !explore {
                return slate;
            }
            let k = slate.size()[1];
            let pool = self.world.item_count() as f64;
            let coin = counter_uniform(self.seed, tag + 3, step, (b * k) as usize, self.device).view([b, k]);
            let random = (counter_uniform(self.seed, tag + 4, step, (b * k) as usize, self.device).view([b, k]) * pool).floor().clamp(0.0, pool - 1.0).to_kind(Kind::Int64) + 1;
            slate.where_self(&coin.ge(self.job.epsilon), &random)
        })
    }

    /// The negative ELBO of slates `a` `[B, k]` with rewards `r` `[B]` for states `s`.
    fn loss(&self, s: &Tensor, a: &Tensor, r: &Tensor, step: u64) -> (Tensor, f64, f64) {
        let b = s.size()[0];
        let c = self.condition(r);
        let ids = a.to_kind(Kind::Int64);
        let enc = self.world.items().index_select(0, &ids.reshape([-1])).view([b, -1]);
        let (mu, logvar) = self.gaussian_params(&self.encoder.forward(&Tensor::cat(&[&enc, &c, s], 1)));
        let (pmu, plogvar) = self.gaussian_params(&self.prior.forward(&Tensor::cat(&[&c, s], 1)));
        let z = &mu + (&logvar * 0.5).exp() * counter_gaussian(self.seed, 21, step, &mu.size(), self.device);
        let logits = self.logits(&z, &c, s);
        let n = logits.size()[2];
        let rec = logits.view([-1, n]).cross_entropy_loss::<&Tensor>(&(ids.reshape([-1]) - 1), None, Reduction::Mean, -100, 0.0);
        let kl = gaussian_kl(&mu, &logvar, &pmu, &plogvar).mean(Kind::Float);
        let (rv, kv) = (rec.double_value(&[]), kl.double_value(&[]));
        (rec + kl * self.job.beta, rv, kv)
    }
}

/// Item ids `[B, k]` from per-position scores `[B, k, items]`: position by
/// position the best item not already in the slate (a slate shows distinct
/// items; the reference decodes positions independently and may repeat one).
pub fn distinct_argmax(scores: &Tensor) -> Tensor {
    let (b, k) = (scores.size()[0], scores.size()[1]);
    let mut taken = Tensor::zeros([b, scores.size()[2]], (Kind::Bool, scores.device()));
    let mut picks = Vec::with_capacity(k as usize);
    for j in 0..k.min(scores.size()[2]) {
        let pick = scores.select(1, j).masked_fill(&taken, f64::NEG_INFINITY).argmax(-1, true);
        taken = taken.scatter_value(1, &pick, 1);
        picks.push(pick);
    }
    Tensor::cat(&picks, 1) + 1
}

/// KL(N(mu, e^logvar) ‖ N(pmu, e^plogvar)) per row `[B]` of diagonal
/// Gaussians `[B, z]`.
pub fn gaussian_kl(mu: &Tensor, logvar: &Tensor, pmu: &Tensor, plogvar: &Tensor) -> Tensor {
    ((plogvar - logvar) + (logvar.exp() + (mu - pmu).square()) / plogvar.exp() - 1.0).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) * 0.5
}

impl Algorithm for ListCvae {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let step = ctx.step;
        let state = self.env.user_state();
        let b = state.size()[0];
        let slate = self.act(&state, 10, step, true);
        let out = self.env.show(&slate).map_err(|e| WorkerError::algo(NAME, e))?;
        let none = Tensor::zeros([b], (Kind::Float, self.device));
        self.replay.push(&state, &slate.to_kind(Kind::Float), &out.reward, &state, &none);
        let mut scalars = BTreeMap::new();
        scalars.insert("env_reward".into(), out.reward.mean(Kind::Float).double_value(&[]));
        if step < self.job.start_steps || self.replay.len < self.batch {
            return Ok(StepOutput { loss: 0.0, samples: b as usize, scalars });
        }
        let [s, a, r, _, _] = self.replay.sample(self.batch, splitmix(self.seed ^ step));
        let (loss, rec, kl) = self.loss(&s, &a, &r.squeeze_dim(1), step);
        loss.f_backward()?;
        scalars.insert("reconstruction".into(), rec);
        scalars.insert("kl".into(), kl);
        Ok(StepOutput { loss: loss.double_value(&[]), samples: self.batch, scalars })
    }

    /// The request-level protocol on a separate, seeded environment: slates
    /// asked for at the target reward, each position its most likely item.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut env = self.world.eval_env(splitmix(self.eval_seed ^ ctx.rank as u64)).map_err(|e| WorkerError::algo(NAME, e))?;
        let t = std::cell::Cell::new(0u64);
        let r = play_request(env.as_mut(), self.job.eval_users, |s| {
            t.set(t.get() + 1);
            self.act(s, 30, t.get(), false)
        })
        .map_err(|e| WorkerError::algo(NAME, e))?;
        gather_request(ctx, &r)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        replay_env_state(&self.replay, self.env.as_ref())
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        load_replay_env_state(&mut self.replay, self.env.as_mut(), state).map_err(|e| WorkerError::algo(NAME, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kl_term_matches_the_closed_form_on_hand_made_gaussians() {
        let t = |v: &[f32]| Tensor::from_slice(v).view([1, v.len() as i64]);
        let kl = |mu: &[f32], lv: &[f32], pmu: &[f32], plv: &[f32]| gaussian_kl(&t(mu), &t(lv), &t(pmu), &t(plv)).double_value(&[0]);
        assert!(kl(&[0.3, 1.0], &[-0.2, 0.5], &[0.3, 1.0], &[-0.2, 0.5]).abs() < 1e-6, "equal Gaussians");
        // N(1, 1) against N(0, 1): 1/2 per dimension.
        assert!((kl(&[1.0, 1.0], &[0.0, 0.0], &[0.0, 0.0], &[0.0, 0.0]) - 1.0).abs() < 1e-6);
        // Variance e against 1: (1/2)(−1 + e − 1).
        assert!((kl(&[0.0], &[1.0], &[0.0], &[0.0]) - 0.5 * (std::f64::consts::E - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn decoded_slates_hold_distinct_items_best_first() {
        // Both positions prefer item 3 (index 2); the second gets its next best, item 2.
        let scores = Tensor::from_slice(&[0.5f32, 0.1, 0.9, 0.2, 0.4, 0.8]).view([1, 2, 3]);
        assert_eq!(Vec::<i64>::try_from(distinct_argmax(&scores).reshape([-1])).unwrap(), vec![3, 2]);
    }
}
