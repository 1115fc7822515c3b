//! DT4IER (Zhao et al., SIGIR 2024): a decision transformer that generates
//! the next recommended list from the user's past requests, conditioned on a
//! two-part return-to-go — immediate feedback and retention.
//!
//! - **Trajectories** are generated from the simulator's cross-session
//!   environment by a behaviour policy of constant fusion weights drawn per
//!   user-episode (so returns range from poor to good): per request the state
//!   is the user's last `state_len` items, the action the shown list, the
//!   rewards the request's immediate reward and, when it ends a session, the
//!   retention reward 1 / return day; the return-to-go sums them from the
//!   step on. Trajectories are split by user into training and test sets.
//! - **User reward weights**: an MLP of the user's encoding → softmax (w_s,
//!   w_l), trained to maximise w_s·R_s + w_l·R_l − λ|w_s·R_s − w_l·R_l| on
//!   the user's standardised returns (the imbalance penalty, λ =
//!   `imbalance`); the weights (×2, so equal weights change nothing) scale
//!   the return-to-go before it is embedded. Off with `reward_weights = false`.
//! - **Tokens**: states and actions through GRU encoders over their item
//!   embeddings; the return-to-go through the soft-binned "meta-embedding"
//!   encoder — a map to `bins` logits (with a residual layer), softmax, times
//!   `bins` meta-embeddings made from a fixed grid of return values.
//! - **GPT blocks** (pre-norm, causal, GELU) over interleaved (R, s, a)
//!   tokens of the last `context` requests, with a learned timestep and
//!   token-type embedding.
//! - **Decoder**: a GRU over the previous item (teacher forcing in training,
//!   greedy among the items not yet in the list when generating), its input
//!   and initial state from the transformer's output at the state token,
//!   scoring every item with the (tied) item embeddings.
//! - **Loss**: the lists' cross-entropy **plus the contrastive term on action
//!   embeddings** the paper describes (its code computes it but never adds
//!   it): an InfoNCE that pulls the action embedding predicted under the true
//!   return-to-go toward the taken action's and away from those predicted
//!   under `negatives` other prompts (the batch's returns rolled), cosine
//!   similarities at temperature `temperature`, weight `contrastive_weight`
//!   (0 switches it off).
//!
//! Metrics on the test users' trajectories: HR@k, NDCG@k, precision and
//! recall of the generated list against the shown one; and the retention
//! outcome when generated lists are played back in the simulator, the
//! return-to-go prompt starting at a high training return and decreasing by
//! what each request earned (`play_return_day`, `play_retention`,
//! `play_avg_reward`).

use kiln_kuaisim::agents::{gather_cross, mlp, CrossReport};
use kiln_kuaisim::env::{Action, Env, EnvConfig, Level, Simulator};
use kiln_kuaisim::layers::causal_mask;
use kiln_worker::rng::{splitmix, unit, EpochStream};
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Reduction, Tensor};

const NAME: &str = "retention.dt4ier";

/// The `[algorithm]` table of `retention.dt4ier`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DtJob {
    pub simulator: PathBuf,
    /// The cross-session environment the trajectories come from (and the
    /// playback).
    #[serde(default = "cross_session")]
    pub env: EnvConfig,
    /// User-episodes generated (each `sessions` × `initial_temper` requests).
    #[serde(default = "episodes")]
    pub episodes: usize,
    /// Share of the users whose trajectories are the test set.
    #[serde(default = "test_share")]
    pub test_share: f64,
    #[serde(default = "state_len")]
    pub state_len: usize,
    /// Requests the transformer reads.
    #[serde(default = "context")]
    pub context: usize,
    #[serde(default = "width")]
    pub width: i64,
    #[serde(default = "layers")]
    pub layers: i64,
    #[serde(default = "heads")]
    pub heads: i64,
    #[serde(default = "dropout")]
    pub dropout: f64,
    #[serde(default = "bins")]
    pub bins: i64,
    #[serde(default = "yes")]
    pub reward_weights: bool,
    #[serde(default = "imbalance")]
    pub imbalance: f64,
    #[serde(default = "contrastive")]
    pub contrastive_weight: f64,
    #[serde(default = "negatives")]
    pub negatives: usize,
    #[serde(default = "temperature")]
    pub temperature: f64,
    /// User-episodes the playback evaluation plays per rank (0: none).
    #[serde(default = "play")]
    pub eval_users: usize,
    /// The playback's starting prompt: this quantile of the training
    /// trajectories' returns, per part.
    #[serde(default = "quantile")]
    pub target_quantile: f64,
}

fn cross_session() -> EnvConfig {
    EnvConfig::new(Level::CrossSession)
}
fn episodes() -> usize {
    256
}
fn test_share() -> f64 {
    0.2
}
fn state_len() -> usize {
    10
}
fn context() -> usize {
    10
}
fn width() -> i64 {
    64
}
fn layers() -> i64 {
    2
}
fn heads() -> i64 {
    4
}
fn dropout() -> f64 {
    0.1
}
fn bins() -> i64 {
    100
}
fn yes() -> bool {
    true
}
fn imbalance() -> f64 {
    0.5
}
fn contrastive() -> f64 {
    0.1
}
fn negatives() -> usize {
    4
}
fn temperature() -> f64 {
    0.07
}
fn play() -> usize {
    32
}
fn quantile() -> f64 {
    0.9
}

impl DtJob {
    pub fn from_value(v: &toml::Value) -> Result<DtJob, ConfigError> {
        let job: DtJob = parse_config(v)?;
        job.env.check().map_err(|m| ConfigError::new("env", m))?;
        if job.env.level != Level::CrossSession {
            return Err(ConfigError::new("env.level", "DT4IER's trajectories span sessions: level = \"cross-session\""));
        }
        if job.episodes < 2 || !(job.test_share > 0.0 && job.test_share < 1.0) {
            return Err(ConfigError::new("episodes", "at least 2 episodes and a test_share in (0, 1)"));
        }
        if job.state_len == 0 || job.context == 0 || job.width < 1 || job.layers < 1 || job.heads < 1 || job.width % job.heads != 0 || job.bins < 2 {
            return Err(ConfigError::new("width", "state_len, context, layers >= 1, heads dividing width, bins >= 2"));
        }
        if !(0.0..1.0).contains(&job.dropout) || !(job.imbalance >= 0.0) || !(job.contrastive_weight >= 0.0) || !(job.temperature > 0.0) || !(0.0..=1.0).contains(&job.target_quantile) {
            return Err(ConfigError::new("dropout", "dropout in [0, 1), imbalance >= 0, contrastive_weight >= 0, temperature > 0, target_quantile in [0, 1]"));
        }
        Ok(job)
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    DtJob::from_value(v).map(|_| ())
}

pub fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = DtJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    let sim = Simulator::load_for(&job.simulator, &job.env, ctx.device).map_err(|e| WorkerError::algo(NAME, format!("simulator: {e}")))?;
    Ok(Box::new(Dt4ier::new(job, Arc::new(sim), ctx)?))
}

/// One user-episode: per request its state, action and the two rewards.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    pub user: i64,
    /// The user's encoding at the start (the reward-weight network's input).
    pub features: Vec<f32>,
    /// `[T][state_len]` item ids (0 padding), `[T][slate]` item ids.
    pub states: Vec<Vec<i64>>,
    pub actions: Vec<Vec<i64>>,
    /// `[T]` (immediate, retention) rewards.
    pub rewards: Vec<[f32; 2]>,
}

impl Trajectory {
    /// Return-to-go `[T]`: the rewards summed from each step on.
    pub fn returns_to_go(&self) -> Vec<[f32; 2]> {
        let mut out = vec![[0f32; 2]; self.rewards.len()];
        let mut acc = [0f32; 2];
        for (t, r) in self.rewards.iter().enumerate().rev() {
            acc = [acc[0] + r[0], acc[1] + r[1]];
            out[t] = acc;
        }
        out
    }
}

/// The last `n` items of each slot's history `[B][n]` (left-padded with 0).
fn recent(env: &Env, n: usize) -> Vec<Vec<i64>> {
    let o = env.observation();
    let h = o.history.size()[1] as usize;
    let ids = Vec::<i64>::try_from(o.history.reshape([-1]).to_device(Device::Cpu)).unwrap_or_default();
    ids.chunks(h.max(1)).map(|row| if n <= h { row[h - n..].to_vec() } else { [vec![0; n - h], row.to_vec()].concat() }).collect()
}

/// Plays `episodes` user-episodes (rounded up to the batch) with constant
/// fusion weights drawn per user-episode from N(0, 1), recording them.
pub fn generate(sim: &Arc<Simulator>, cfg: &EnvConfig, episodes: usize, state_len: usize, seed: u64) -> Result<Vec<Trajectory>, String> {
    let b = cfg.batch;
    let mut out = Vec::new();
    let mut round = 0u64;
    while out.len() < episodes {
        let mut env = Env::new(sim.clone(), cfg.clone(), splitmix(seed ^ splitmix(round)))?;
        let gauss = |k: u64| {
            let key = splitmix(seed ^ splitmix(0x57 ^ round.wrapping_mul(0x1_0000_0001) ^ k));
            let (u1, u2) = (unit(key).max(1e-12), unit(splitmix(key)));
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        let weights: Vec<f32> = (0..(b * 7) as u64).map(gauss).collect();
        let w = Tensor::from_slice(&weights).view([b as i64, 7]).to_device(sim.device);
        let users = Vec::<i64>::try_from(env.observation().user.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        let e = sim.model.enc_dim();
        let enc = env.user_state().narrow(1, 2 * e, e).to_device(Device::Cpu).contiguous();
        let enc = Vec::<f32>::try_from(enc.reshape([-1])).map_err(|e| e.to_string())?;
        let mut trajs: Vec<Trajectory> = (0..b).map(|i| Trajectory { user: users[i], features: enc[i * e as usize..(i + 1) * e as usize].to_vec(), states: vec![], actions: vec![], rewards: vec![] }).collect();
        loop {
            let states = recent(&env, state_len);
            let s = env.step(&Action::Fusion(w.shallow_clone()))?;
            let slate = Vec::<i64>::try_from(s.slate.to_device(Device::Cpu).reshape([-1])).map_err(|e| e.to_string())?;
            let reward = Vec::<f32>::try_from(s.reward.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
            let k = s.slate.size()[1] as usize;
            for (i, t) in trajs.iter_mut().enumerate() {
                t.states.push(states[i].clone());
                t.actions.push(slate[i * k..(i + 1) * k].to_vec());
                let day = s.return_day[i];
                t.rewards.push([reward[i], if day > 0 { 1.0 / day as f32 } else { 0.0 }]);
            }
            if s.done.iter().all(|&d| d) {
                break;
            }
        }
        out.extend(trajs);
        round += 1;
    }
    out.truncate(episodes);
    Ok(out)
}

/// A pre-norm GPT block: x + attention(LN(x)); x + MLP(LN(x)) with GELU.
struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    dropout: f64,
}

impl Block {
    fn new(p: &nn::Path, w: i64, heads: i64, dropout: f64) -> Block {
        Block {
            ln1: nn::layer_norm(p / "ln1", vec![w], Default::default()),
            qkv: nn::linear(p / "qkv", w, 3 * w, Default::default()),
            proj: nn::linear(p / "proj", w, w, Default::default()),
            ln2: nn::layer_norm(p / "ln2", vec![w], Default::default()),
            fc1: nn::linear(p / "fc1", w, 4 * w, Default::default()),
            fc2: nn::linear(p / "fc2", 4 * w, w, Default::default()),
            heads,
            dropout,
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, t, w) = x.size3().unwrap_or((0, 0, 0));
        let dh = w / self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)).view([b, t, 3, self.heads, dh]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let att = (q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt() + mask).softmax(-1, Kind::Float).dropout(self.dropout, train);
        let y = att.matmul(&v).transpose(1, 2).contiguous().view([b, t, w]);
        let x = x + self.proj.forward(&y).dropout(self.dropout, train);
        let m = self.fc2.forward(&self.fc1.forward(&self.ln2.forward(&x)).gelu("none"));
        &x + m.dropout(self.dropout, train)
    }
}

/// A batch of windows: `[B, L, state_len]` states, `[B, L, k]` actions, `[B,
/// L, 2]` returns-to-go, `[B, L]` timesteps and real flags, `[B, e]` user
/// features and `[B, 2]` the trajectories' whole returns.
pub struct Windows {
    pub states: Tensor,
    pub actions: Tensor,
    pub rtg: Tensor,
    pub timesteps: Tensor,
    pub real: Tensor,
    pub features: Tensor,
    pub returns: Tensor,
}

pub struct Dt4ier {
    vs: nn::VarStore,
    item: nn::Embedding,
    state_gru: nn::GRU,
    action_gru: nn::GRU,
    rtg_in: nn::Linear,
    rtg_res: nn::Linear,
    meta: nn::Linear,
    grid: Tensor,
    timestep: nn::Embedding,
    token_type: Tensor,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    dec_init: nn::Linear,
    decoder: nn::GRU,
    act_proj: nn::Linear,
    weight_net: nn::Sequential,
    sim: Arc<Simulator>,
    train: Vec<Trajectory>,
    test: Vec<Trajectory>,
    /// Standardisation of returns-to-go (mean, std per part).
    rtg_mean: [f32; 2],
    rtg_std: [f32; 2],
    /// The playback's starting prompt.
    target: [f32; 2],
    stream: EpochStream,
    steps_per_traj: usize,
    seed: u64,
    job: DtJob,
    global_batch: usize,
    device: Device,
}

impl Dt4ier {
    pub fn new(job: DtJob, sim: Arc<Simulator>, ctx: &BuildContext) -> Result<Dt4ier, WorkerError> {
        // Every rank generates the same trajectories (a seed of the job's).
        let trajs = generate(&sim, &job.env, job.episodes, job.state_len, splitmix(ctx.seed ^ 0xD7)).map_err(|e| WorkerError::algo(NAME, e))?;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for t in trajs {
            // Split by user: a user's episodes stay together.
            let u = unit(splitmix(ctx.seed ^ 0x7E57 ^ splitmix(t.user as u64)));
            if u < job.test_share {
                test.push(t);
            } else {
                train.push(t);
            }
        }
        if train.is_empty() || test.is_empty() {
            return Err(WorkerError::algo(NAME, format!("{} training and {} test trajectories: raise episodes or change test_share", train.len(), test.len())));
        }
        let all: Vec<[f32; 2]> = train.iter().flat_map(|t| t.returns_to_go()).collect();
        let stat = |d: usize| {
            let n = all.len() as f32;
            let m = all.iter().map(|r| r[d]).sum::<f32>() / n;
            let v = all.iter().map(|r| (r[d] - m).powi(2)).sum::<f32>() / n;
            (m, v.sqrt().max(1e-6))
        };
        let ((m0, s0), (m1, s1)) = (stat(0), stat(1));
        let mut starts: Vec<[f32; 2]> = train.iter().map(|t| t.returns_to_go()[0]).collect();
        let q = |d: usize, starts: &mut Vec<[f32; 2]>| {
            starts.sort_by(|a, b| a[d].total_cmp(&b[d]));
            starts[((starts.len() - 1) as f64 * job.target_quantile).round() as usize][d]
        };
        let target = [q(0, &mut starts), q(1, &mut starts)];
        let steps_per_traj = train[0].rewards.len();
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let (w, n) = (job.width, sim.item_count() as i64 + 2);
        let rnn = nn::RNNConfig { batch_first: true, ..Default::default() };
        let e = sim.model.enc_dim();
        // The meta-embeddings' fixed grid: returns from −3 to 3 standard deviations, both parts together.
        let grid = Tensor::linspace(-3.0, 3.0, job.bins, (Kind::Float, ctx.device)).unsqueeze(1).repeat([1, 2]);
        let dt = Dt4ier {
            item: nn::embedding(&root / "item", n, w, Default::default()),
            state_gru: nn::gru(&root / "state_gru", w, w, rnn),
            action_gru: nn::gru(&root / "action_gru", w, w, rnn),
            rtg_in: nn::linear(&root / "rtg_in", 2, job.bins, Default::default()),
            rtg_res: nn::linear(&root / "rtg_res", job.bins, job.bins, Default::default()),
            meta: nn::linear(&root / "meta", 2, w, Default::default()),
            grid,
            timestep: nn::embedding(&root / "timestep", steps_per_traj as i64 + 1, w, Default::default()),
            token_type: root.var("token_type", &[3, w], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            blocks: (0..job.layers).map(|l| Block::new(&(&root / format!("block{l}")), w, job.heads, job.dropout)).collect(),
            ln_f: nn::layer_norm(&root / "ln_f", vec![w], Default::default()),
            dec_init: nn::linear(&root / "dec_init", w, w, Default::default()),
            decoder: nn::gru(&root / "decoder", 2 * w, w, rnn),
            act_proj: nn::linear(&root / "act_proj", w, w, Default::default()),
            weight_net: mlp(&(&root / "weight_net"), &[e, 64, 32, 2]),
            stream: EpochStream::new(train.len() * steps_per_traj, ctx.seed),
            rtg_mean: [m0, m1],
            rtg_std: [s0, s1],
            seed: splitmix(ctx.seed ^ 0xD7A1),
            global_batch: ctx.global_batch,
            device: ctx.device,
            vs,
            sim,
            train,
            test,
            target,
            steps_per_traj,
            job,
        };
        Ok(dt)
    }

    /// Windows of `context` requests ending at `(trajectory, step)` pairs.
    fn windows(&self, trajs: &[Trajectory], ends: &[(usize, usize)]) -> Windows {
        self.windows_of(trajs, ends, false)
    }

    /// [`Dt4ier::windows`]; with `stored`, each step's `rewards` entry is its
    /// return-to-go as given (the playback's prompts).
    fn windows_of(&self, trajs: &[Trajectory], ends: &[(usize, usize)], stored: bool) -> Windows {
        let (l, sl) = (self.job.context, self.job.state_len);
        let k = trajs[0].actions[0].len();
        let b = ends.len();
        let (mut st, mut ac, mut rt, mut ts, mut re) = (vec![0i64; b * l * sl], vec![0i64; b * l * k], vec![0f32; b * l * 2], vec![0i64; b * l], vec![false; b * l]);
        let mut feats: Vec<f32> = Vec::new();
        let mut returns: Vec<f32> = Vec::new();
        for (i, &(j, end)) in ends.iter().enumerate() {
            let t = &trajs[j];
            let rtg = if stored { t.rewards.clone() } else { t.returns_to_go() };
            let first = (end + 1).saturating_sub(l);
            let off = l - (end + 1 - first);
            for (p, step) in (first..=end).enumerate() {
                let slot = i * l + off + p;
                st[slot * sl..(slot + 1) * sl].copy_from_slice(&t.states[step]);
                ac[slot * k..(slot + 1) * k].copy_from_slice(&t.actions[step]);
                rt[slot * 2] = rtg[step][0];
                rt[slot * 2 + 1] = rtg[step][1];
                ts[slot] = step as i64 + 1;
                re[slot] = true;
            }
            feats.extend(&t.features);
            returns.extend(t.returns_to_go().first().copied().unwrap_or([0.0; 2]));
        }
        let d = self.device;
        let (b, l) = (b as i64, l as i64);
        Windows {
            states: Tensor::from_slice(&st).view([b, l, sl as i64]).to_device(d),
            actions: Tensor::from_slice(&ac).view([b, l, k as i64]).to_device(d),
            rtg: Tensor::from_slice(&rt).view([b, l, 2]).to_device(d),
            timesteps: Tensor::from_slice(&ts).view([b, l]).to_device(d),
            real: Tensor::from_slice(&re).view([b, l]).to_device(d),
            features: Tensor::from_slice(&feats).view([b, -1]).to_device(d),
            returns: Tensor::from_slice(&returns).view([b, 2]).to_device(d),
        }
    }

    /// The users' reward weights `[B, 2]` (summing to 2; ones when off).
    fn reward_weights(&self, features: &Tensor) -> Tensor {
        if self.job.reward_weights {
            self.weight_net.forward(features).softmax(-1, Kind::Float) * 2.0
        } else {
            Tensor::ones([features.size()[0], 2], (Kind::Float, self.device))
        }
    }

    /// Standardised, weighted returns-to-go `[B, L, 2]`.
    fn prompt(&self, rtg: &Tensor, weights: &Tensor) -> Tensor {
        let m = Tensor::from_slice(&self.rtg_mean).to_device(self.device);
        let s = Tensor::from_slice(&self.rtg_std).to_device(self.device);
        ((rtg * weights.detach().unsqueeze(1)) - m) / s
    }

    /// GRU encoding `[..., w]` of item lists `[..., n]`.
    fn encode_list(&self, gru: &nn::GRU, ids: &Tensor) -> Tensor {
        let shape = ids.size();
        let n = shape[shape.len() - 1];
        let flat = ids.reshape([-1, n]);
        let (_, h) = gru.seq(&self.item.forward(&flat));
        let mut out = shape[..shape.len() - 1].to_vec();
        out.push(self.job.width);
        h.0.select(0, h.0.size()[0] - 1).view(out.as_slice())
    }

    /// The soft-binned meta-embedding of prompts `[B, L, 2]` → `[B, L, w]`.
    fn encode_rtg(&self, prompt: &Tensor) -> Tensor {
        let h = self.rtg_in.forward(prompt).leaky_relu();
        let p = (&h + self.rtg_res.forward(&h)).softmax(-1, Kind::Float);
        p.matmul(&self.meta.forward(&self.grid))
    }

    /// The transformer's outputs at the state tokens `[B, L, w]`.
    fn hidden(&self, w: &Windows, prompt: &Tensor, train: bool) -> Tensor {
        let (b, l) = (w.real.size()[0], w.real.size()[1]);
        let time = self.timestep.forward(&w.timesteps);
        let r = self.encode_rtg(prompt) + &time + self.token_type.get(0);
        let s = self.encode_list(&self.state_gru, &w.states) + &time + self.token_type.get(1);
        let a = self.encode_list(&self.action_gru, &w.actions) + &time + self.token_type.get(2);
        let x = Tensor::stack(&[r, s, a], 2).view([b, 3 * l, self.job.width]).dropout(self.job.dropout, train);
        let real = w.real.unsqueeze(2).expand([b, l, 3], false).reshape([b, 3 * l]);
        let mask = causal_mask(&real);
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &mask, train);
        }
        self.ln_f.forward(&x).view([b, l, 3, self.job.width]).select(2, 1)
    }

    /// Teacher-forced item logits `[N, k, items + 2]` for actions `[N, k]`
    /// given conditioning vectors `[N, w]`.
    fn decode_logits(&self, h: &Tensor, actions: &Tensor) -> Tensor {
        let (n, k) = (actions.size()[0], actions.size()[1]);
        let bos = Tensor::full([n, 1], self.sim.item_count() as i64 + 1, (Kind::Int64, self.device));
        let prev = Tensor::cat(&[bos, actions.narrow(1, 0, k - 1)], 1);
        let input = Tensor::cat(&[self.item.forward(&prev), h.unsqueeze(1).expand([n, k, self.job.width], false)], 2);
        let h0 = self.dec_init.forward(h).tanh().unsqueeze(0);
        let (out, _) = self.decoder.seq_init(&input, &nn::GRUState(h0));
        out.matmul(&self.item.ws.transpose(0, 1))
    }

    /// Greedy lists `[N, k]` of distinct real items given `[N, w]`.
    fn generate_lists(&self, h: &Tensor, k: i64) -> Tensor {
        let n = h.size()[0];
        let vocab = self.sim.item_count() as i64 + 2;
        let mut taken = Tensor::zeros([n, vocab], (Kind::Bool, self.device));
        // Padding and BOS are never generated.
        let _ = taken.narrow(1, 0, 1).fill_(1);
        let _ = taken.narrow(1, vocab - 1, 1).fill_(1);
        let mut state = nn::GRUState(self.dec_init.forward(h).tanh().unsqueeze(0));
        let mut prev = Tensor::full([n], vocab - 1, (Kind::Int64, self.device));
        let mut picks = Vec::new();
        for _ in 0..k {
            let input = Tensor::cat(&[self.item.forward(&prev), h.shallow_clone()], 1);
            state = self.decoder.step(&input, &state);
            let logits = state.0.select(0, 0).matmul(&self.item.ws.transpose(0, 1)).masked_fill(&taken, f64::NEG_INFINITY);
            let pick = logits.argmax(-1, false);
            taken = taken.scatter_value(1, &pick.unsqueeze(1), 1);
            picks.push(pick.shallow_clone());
            prev = pick;
        }
        Tensor::stack(&picks, 1)
    }

    /// The list loss and the contrastive term for windows `w`.
    fn losses(&self, w: &Windows, train: bool, step: u64) -> (Tensor, Tensor, Tensor) {
        let weights = self.reward_weights(&w.features);
        let h = self.hidden(w, &self.prompt(&w.rtg, &weights), train);
        let (b, l, k) = (w.actions.size()[0], w.actions.size()[1], w.actions.size()[2]);
        let real = w.real.reshape([-1]);
        let idx = real.nonzero().squeeze_dim(1);
        let hs = h.reshape([b * l, -1]).index_select(0, &idx);
        let acts = w.actions.reshape([b * l, k]).index_select(0, &idx);
        let logits = self.decode_logits(&hs, &acts);
        let ce = logits.reshape([-1, logits.size()[2]]).cross_entropy_loss::<&Tensor>(&acts.reshape([-1]), None, Reduction::Mean, -100, 0.0);
        let contrastive = if self.job.contrastive_weight > 0.0 && self.job.negatives > 0 && b > 1 {
            let anchor = self.act_proj.forward(&hs);
            let positive = self.encode_list(&self.action_gru, &acts);
            let t = self.job.temperature;
            let cos = |a: &Tensor, c: &Tensor| Tensor::cosine_similarity(a, c, -1, 1e-8) / t;
            let mut logits = vec![cos(&anchor, &positive)];
            for m in 1..=self.job.negatives as i64 {
                // Another prompt: the returns-to-go of the sample m places on.
                let shift = (m + (step as i64 % (b - 1).max(1))) % b;
                let shift = if shift == 0 { 1 } else { shift };
                let other = w.rtg.roll([shift], [0]);
                let h2 = self.hidden(w, &self.prompt(&other, &weights), train);
                let neg = self.act_proj.forward(&h2.reshape([b * l, -1]).index_select(0, &idx));
                logits.push(cos(&anchor, &neg));
            }
            let logits = Tensor::stack(&logits, 1);
            logits.log_softmax(1, Kind::Float).select(1, 0).mean(Kind::Float) * -1.0
        } else {
            Tensor::zeros([], (Kind::Float, self.device))
        };
        // The reward-weight network: the user's balanced, standardised returns.
        let ret = w.returns.shallow_clone();
        let m = Tensor::from_slice(&self.rtg_mean).to_device(self.device);
        let s = Tensor::from_slice(&self.rtg_std).to_device(self.device);
        let z = (ret - m) / s;
        let ws = weights / 2.0;
        let parts = &ws * &z;
        let objective = parts.sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - (parts.select(1, 0) - parts.select(1, 1)).abs() * self.job.imbalance;
        let weight_loss = if self.job.reward_weights { -objective.mean(Kind::Float) } else { Tensor::zeros([], (Kind::Float, self.device)) };
        (ce, contrastive, weight_loss)
    }

    /// HR@k, NDCG@k, precision and recall of generated lists against the
    /// test trajectories' shown lists, at the window ends `ends`.
    fn list_metrics(&self, ends: &[(usize, usize)]) -> Result<[f64; 5], tch::TchError> {
        let mut tot = [0f64; 5];
        for chunk in ends.chunks(128) {
            let w = self.windows(&self.test, chunk);
            let weights = self.reward_weights(&w.features);
            let h = tch::no_grad(|| self.hidden(&w, &self.prompt(&w.rtg, &weights), false));
            let l = h.size()[1];
            let last = h.select(1, l - 1);
            let k = w.actions.size()[2];
            let lists = tch::no_grad(|| self.generate_lists(&last, k));
            let pred = Vec::<i64>::try_from(lists.reshape([-1]).to_device(Device::Cpu))?;
            let truth = Vec::<i64>::try_from(w.actions.select(1, l - 1).reshape([-1]).to_device(Device::Cpu))?;
            let k = k as usize;
            for (p, t) in pred.chunks(k).zip(truth.chunks(k)) {
                let hits: Vec<bool> = p.iter().map(|x| t.contains(x)).collect();
                let n = hits.iter().filter(|&&h| h).count() as f64;
                let dcg: f64 = hits.iter().enumerate().filter(|(_, &h)| h).map(|(j, _)| 1.0 / ((j + 2) as f64).log2()).sum();
                let mut distinct = t.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                let idcg: f64 = (0..distinct.len().min(k)).map(|j| 1.0 / ((j + 2) as f64).log2()).sum();
                tot[0] += (n > 0.0) as u8 as f64;
                tot[1] += dcg / idcg.max(1e-12);
                tot[2] += n / k as f64;
                tot[3] += n / distinct.len().max(1) as f64;
                tot[4] += 1.0;
            }
        }
        Ok(tot)
    }
}

impl Algorithm for Dt4ier {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let start = ctx.first_sample(self.global_batch);
        let ends: Vec<(usize, usize)> = self.stream.rows(start, per).into_iter().map(|r| (r / self.steps_per_traj, r % self.steps_per_traj)).collect();
        let w = self.windows(&self.train, &ends);
        let (ce, contrastive, weight_loss) = self.losses(&w, true, ctx.step);
        let loss = &ce + &contrastive * self.job.contrastive_weight + &weight_loss;
        loss.f_backward()?;
        let mut scalars = BTreeMap::new();
        scalars.insert("ce".into(), ce.double_value(&[]));
        scalars.insert("contrastive".into(), contrastive.double_value(&[]));
        scalars.insert("weight_objective".into(), -weight_loss.double_value(&[]));
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        // The test trajectories' full windows, shared out over ranks.
        let t = self.steps_per_traj;
        let ends: Vec<(usize, usize)> = (0..self.test.len()).flat_map(|i| (self.job.context.min(t) - 1..t).step_by(self.job.context.max(1)).map(move |s| (i, s))).collect();
        let (lo, hi) = (ends.len() * ctx.rank / ctx.world_size, ends.len() * (ctx.rank + 1) / ctx.world_size);
        let mine = self.list_metrics(&ends[lo..hi])?;
        let all = ctx.comm.all_gather_f32(&mine.map(|x| x as f32))?;
        let mut tot = [0f64; 5];
        for c in all.chunks_exact(5) {
            for (a, b) in tot.iter_mut().zip(c) {
                *a += *b as f64;
            }
        }
        let n = tot[4].max(1.0);
        let k = self.job.env.slate;
        let mut out = BTreeMap::new();
        out.insert(format!("hr@{k}"), tot[0] / n);
        out.insert(format!("ndcg@{k}"), tot[1] / n);
        out.insert("precision".into(), tot[2] / n);
        out.insert("recall".into(), tot[3] / n);
        if self.job.eval_users > 0 {
            for (key, v) in self.playback(ctx)? {
                out.insert(format!("play_{key}"), v);
            }
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}

impl Dt4ier {
    /// A fresh episode record per slot of `env` (the users' features; no steps yet).
    fn fresh_episode(&self, env: &Env) -> Result<Vec<Trajectory>, WorkerError> {
        let e = self.sim.model.enc_dim();
        let enc = Vec::<f32>::try_from(env.user_state().narrow(1, 2 * e, e).to_device(Device::Cpu).contiguous().reshape([-1]))?;
        let e = e as usize;
        Ok((0..self.job.env.batch).map(|i| Trajectory { user: 0, features: enc[i * e..(i + 1) * e].to_vec(), states: vec![], actions: vec![], rewards: vec![] }).collect())
    }

    /// Generated lists played in a seeded cross-session environment: the
    /// prompt starts at the target return and falls by what each request
    /// earned (the immediate reward, and 1 / return day at a session's end);
    /// the model reads the episode's own last `context` requests.
    fn playback(&self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        let mut env = Env::new(self.sim.clone(), self.job.env.clone(), splitmix(self.seed ^ 0xE7A1 ^ ctx.rank as u64)).map_err(err)?;
        let (b, k) = (self.job.env.batch, self.job.env.slate);
        let mut rep = CrossReport::default();
        // Per slot: the episode so far; its `rewards` hold the prompts given.
        let mut episode = self.fresh_episode(&env)?;
        let mut prompt = vec![self.target; b];
        let mut guard = 0usize;
        while (rep.episodes as usize) < self.job.eval_users {
            guard += 1;
            if guard > 100_000 {
                return Err(err("playback: episodes never end".into()));
            }
            let states = recent(&env, self.job.state_len);
            for (i, t) in episode.iter_mut().enumerate() {
                t.states.push(states[i].clone());
                t.actions.push(vec![0; k]);
                t.rewards.push(prompt[i]);
            }
            let step = episode[0].states.len() - 1;
            let ends: Vec<(usize, usize)> = (0..b).map(|i| (i, step)).collect();
            let w = self.windows_of(&episode, &ends, true);
            let weights = self.reward_weights(&w.features);
            let h = tch::no_grad(|| self.hidden(&w, &self.prompt(&w.rtg, &weights), false));
            let lists = tch::no_grad(|| self.generate_lists(&h.select(1, h.size()[1] - 1), k as i64));
            let ids = Vec::<i64>::try_from(lists.reshape([-1]).to_device(Device::Cpu))?;
            for (i, t) in episode.iter_mut().enumerate() {
                if let Some(a) = t.actions.last_mut() {
                    a.copy_from_slice(&ids[i * k..(i + 1) * k]);
                }
            }
            let out = env.step(&Action::Slate(lists)).map_err(err)?;
            let reward = Vec::<f32>::try_from(out.reward.to_device(Device::Cpu))?;
            for i in 0..b {
                prompt[i][0] -= reward[i];
                rep.reward += reward[i] as f64;
                let d = out.return_day[i];
                if d > 0 {
                    prompt[i][1] -= 1.0 / d as f32;
                    rep.ends += 1.0;
                    rep.return_days += d as f64;
                    rep.next_day += (d == 1) as u8 as f64;
                }
            }
            rep.requests += b as f64;
            if out.done.iter().all(|&d| d) {
                rep.episodes += b as f64;
                env.reset();
                episode = self.fresh_episode(&env)?;
                prompt = vec![self.target; b];
            }
        }
        gather_cross(ctx, &rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_kuaisim::log::{load, LogSpec};
    use kiln_kuaisim::response::{ResponseConfig, ResponseModel};

    /// A small simulator with an untrained response model, and DT4IER on a
    /// few of its trajectories.
    fn tiny(contrastive_weight: f64) -> (Dt4ier, nn::VarStore) {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = kiln_kuaisim::synth::write(d.path(), kiln_kuaisim::synth::Shape { users: 30, items: 20, days: 5, ..Default::default() }).unwrap();
        let logs = load(&LogSpec { log: vec![log], user_features: None, video_features: None, core: 2, ..LogSpec::default() }).unwrap();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ResponseConfig { id_dim: 8, enc_dim: 8, history: 6, dropout: 0.0, ..ResponseConfig::default() };
        let model = ResponseModel::new(&vs.root(), &logs, &cfg);
        let sim = Arc::new(Simulator::new(logs, model, cfg.history, Device::Cpu));
        let env = EnvConfig { batch: 4, initial_temper: Some(3.0), sessions: 2, ..EnvConfig::new(Level::CrossSession) };
        let job = DtJob::from_value(&toml::Value::Table(toml::toml! { simulator = "unused" })).unwrap();
        let job = DtJob { env, episodes: 8, test_share: 0.3, context: 3, state_len: 4, width: 32, dropout: 0.0, eval_users: 4, contrastive_weight, ..job };
        let ctx = BuildContext { device: Device::Cpu, seed: 3, global_batch: 8, rank: 0, world_size: 1, micro_steps: 1, steps: 1 };
        (Dt4ier::new(job, sim, &ctx).unwrap(), vs)
    }

    /// Adam on every training window for `steps` steps; the last list loss.
    fn fit(dt: &Dt4ier, steps: usize) -> f64 {
        let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &dt.vs, 3e-3).unwrap();
        let ends: Vec<(usize, usize)> = (0..dt.train.len()).flat_map(|i| (0..dt.steps_per_traj).map(move |s| (i, s))).collect();
        let w = dt.windows(&dt.train, &ends);
        let mut last = f64::NAN;
        for step in 0..steps {
            let (ce, contrastive, weights) = dt.losses(&w, true, step as u64);
            opt.backward_step(&(&ce + contrastive * dt.job.contrastive_weight + weights));
            last = ce.double_value(&[]);
        }
        last
    }

    #[test]
    fn trajectories_carry_returns_to_go_and_the_model_overfits_a_few() {
        let (dt, _vs) = tiny(0.0);
        let t = &dt.train[0];
        assert_eq!(t.states.len(), 6, "2 sessions of 3 requests");
        assert!(t.actions.iter().all(|a| a.len() == 6 && a.iter().all(|&i| i >= 1)));
        // Retention rewards exactly at session ends, in (0, 1].
        assert!(t.rewards.iter().enumerate().all(|(s, r)| if s % 3 == 2 { r[1] > 0.0 && r[1] <= 1.0 } else { r[1] == 0.0 }));
        let rtg = t.returns_to_go();
        assert!((rtg[0][0] - t.rewards.iter().map(|r| r[0]).sum::<f32>()).abs() < 1e-5 && rtg[5] == t.rewards[5]);
        let loss = fit(&dt, 400);
        assert!(loss < 0.05, "the list loss on a few trajectories stays at {loss}");
    }

    #[test]
    fn the_return_to_go_prompt_changes_the_generated_lists() {
        let (dt, _vs) = tiny(1.0);
        fit(&dt, 300);
        let ends: Vec<(usize, usize)> = (0..dt.train.len()).map(|i| (i, dt.steps_per_traj - 1)).collect();
        let w = dt.windows(&dt.train, &ends);
        let weights = dt.reward_weights(&w.features);
        let lists = |rtg: &Tensor| {
            let h = tch::no_grad(|| dt.hidden(&w, &dt.prompt(rtg, &weights), false));
            dt.generate_lists(&h.select(1, h.size()[1] - 1), 6)
        };
        let low = lists(&(w.rtg.zeros_like() - 5.0));
        let high = lists(&(w.rtg.ones_like() * 50.0));
        assert!(!low.equal(&high), "the same lists under a low and a high prompt");
        // Generated lists hold distinct real items.
        for row in Vec::<i64>::try_from(high.reshape([-1])).unwrap().chunks(6) {
            let mut r = row.to_vec();
            r.sort_unstable();
            r.dedup();
            assert!(r.len() == 6 && r.iter().all(|&i| (1..=dt.sim.item_count() as i64).contains(&i)), "{row:?}");
        }
    }
}
