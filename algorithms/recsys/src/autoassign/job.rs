//! `recsys.autoassign`: the CTR model, the identity agent (actor and
//! critic) and the test-then-train loop over the stream's chunks.
//!
//! A chunk starts at its first optimizer step: the ids of the chunk before
//! are counted, the policy decides which ids hold rows, the chunk is scored
//! before any training on it (exact over ranks: every rank scores its share
//! and the scores are gathered), and the critic's examples are the chunk's
//! ids with their state, action and negative log-loss. The steps of the
//! chunk then train on it. Everything a chunk start decides is the same on
//! every rank and is saved with each checkpoint ([`Algorithm::state`]).

use super::identity::{Field, STATE};
use super::stream::{self, Stream};
use super::{AutoAssignJob, Policy};
use crate::metrics::{auc, logloss};
use kiln_worker::rng::{fnv1a, shuffled, splitmix, unit};
use kiln_worker::{Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

const NAME: &str = "recsys.autoassign";
const SIDE: i64 = 8;
/// The agent's input: state features, a side-feature embedding, the field.
const AGENT_IN: i64 = STATE as i64 + SIDE + 1;
const FIELDS: [&str; 2] = ["user", "item"];

pub const ENTRY: AlgorithmEntry = AlgorithmEntry {
    name: NAME,
    summary: "AutoAssign+: streaming CTR with new ids, an actor-critic identity agent assigning shared-embedding mixtures or exclusive rows under a memory budget; full-table, hashing and frequency-threshold baselines; test-then-train AUC on new and old ids",
    validate,
    build,
};

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    AutoAssignJob::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = AutoAssignJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    Ok(Box::new(AutoAssignTrainer::new(job, ctx)?))
}

fn layers(p: &nn::Path, input: i64, hidden: &[i64], out: i64) -> nn::Sequential {
    let mut s = nn::seq();
    let mut w = input;
    for (k, &h) in hidden.iter().enumerate() {
        s = s.add(nn::linear(p / format!("l{k}"), w, h, Default::default())).add_fn(|x| x.relu());
        w = h;
    }
    s.add(nn::linear(p / "out", w, out, Default::default()))
}

/// The identity agent.
struct Agent {
    side: [nn::Embedding; 2],
    /// Actor: mixture logits over the K shared embeddings.
    mix: nn::Sequential,
    /// Actor: the priority of a row of one's own (a logit).
    priority: nn::Sequential,
    /// Critic: Q(state, row) → the log-loss a row is expected to save.
    critic: nn::Sequential,
}

/// The critic's examples, per field: the decisions of a chunk start about
/// every id seen so far, rewarded when the next chunk is scored.
#[derive(Default, Clone)]
struct Examples {
    ids: Vec<u32>,
    /// `[ids, STATE]`, as of the chunk start, before the decision.
    states: Vec<f32>,
    /// 1: the decision gave (or left) the id a row.
    actions: Vec<f32>,
    /// The log-loss its row saved over the id's interactions in the next
    /// chunk, against its mixture (0 without a row or without interactions).
    rewards: Vec<f32>,
}

/// Per scored chunk: auc, logloss, auc_new, auc_old, user rows, item rows,
/// bytes, share of new interactions, and the AUC of the generator's true
/// click probabilities (the ceiling; NaN for a log).
const HISTORY: [&str; 9] = ["auc", "logloss", "auc_new", "auc_old", "rows_user", "rows_item", "bytes", "new_share", "oracle_auc"];

pub struct AutoAssignTrainer {
    vs: nn::VarStore,
    job: AutoAssignJob,
    stream: Stream,
    /// Per field: the exclusive table and (agent, threshold) the shared rows.
    table: [Tensor; 2],
    shared: Option<[Tensor; 2]>,
    side: [nn::Embedding; 2],
    mlp: nn::Sequential,
    agent: Option<Agent>,
    fields: [Field; 2],
    /// Decisions of the last chunk start, awaiting the next chunk's score.
    pending: [Examples; 2],
    /// Decisions of the chunk start before, rewarded: what the critic trains on.
    examples: [Examples; 2],
    history: Vec<[f64; 9]>,
    steps_per_chunk: u64,
    global_batch: usize,
    seed: u64,
    device: Device,
}

impl AutoAssignTrainer {
    pub fn new(job: AutoAssignJob, ctx: &BuildContext) -> Result<AutoAssignTrainer, WorkerError> {
        let err = |m: String| WorkerError::algo(NAME, m);
        let stream = stream::load(&job.stream).map_err(|e| err(format!("stream: {e}")))?;
        let longest = stream.chunks.iter().map(|r| r.len()).max().unwrap_or(0) as u64;
        let steps_per_chunk = if job.steps_per_chunk > 0 { job.steps_per_chunk } else { longest.div_ceil(ctx.global_batch as u64).max(1) };
        let most = steps_per_chunk * stream.chunks.len() as u64;
        if ctx.steps > most {
            return Err(err(format!("train.steps = {} runs past the stream: {} chunks × {steps_per_chunk} steps per chunk = {most}; lower train.steps or raise steps_per_chunk", ctx.steps, stream.chunks.len())));
        }
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let d = job.dim as i64;
        let ids = [stream.users(), stream.items()];
        let rows: Vec<usize> = ids.iter().map(|&n| if job.policy == Policy::Full { n } else { job.budget_rows }).collect();
        let table = [0, 1].map(|f| (&root / FIELDS[f]).var("table", &[rows[f] as i64, d], nn::Init::Randn { mean: 0.0, stdev: 0.05 }));
        let k = match job.policy {
            Policy::AutoAssign => Some(job.shared as i64),
            Policy::Threshold => Some(1),
            _ => None,
        };
        let shared = k.map(|k| [0, 1].map(|f| (&root / FIELDS[f]).var("shared", &[k, d], nn::Init::Randn { mean: 0.0, stdev: 0.05 })));
        let sides = [stream.user_sides.max(1) as i64, stream.item_sides.max(1) as i64];
        let side = [0, 1].map(|f| nn::embedding(&root / FIELDS[f] / "side", sides[f], d, Default::default()));
        let hidden: Vec<i64> = job.hidden.iter().map(|&h| h as i64).collect();
        let mlp = layers(&(&root / "mlp"), 4 * d, &hidden, 1);
        let agent = (job.policy == Policy::AutoAssign).then(|| {
            let a = &root / "agent";
            Agent {
                side: [0, 1].map(|f| nn::embedding(&a / format!("{}_side", FIELDS[f]), sides[f], SIDE, Default::default())),
                mix: layers(&(&a / "mix"), AGENT_IN, &[32], job.shared as i64),
                priority: layers(&(&a / "priority"), AGENT_IN, &[32], 1),
                critic: layers(&(&a / "critic"), AGENT_IN + 1, &[64], 1),
            }
        });
        if agent.is_some() {
            // Rows are granted as the critic finds them worth it: priorities start low (σ(−2) ≈ 0.12).
            let _g = tch::no_grad_guard();
            if let Some(mut b) = vs.variables().get("agent.priority.out.bias").map(|b| b.shallow_clone()) {
                let _ = b.fill_(-2.0);
            }
        }
        let fields = [Field::new(ids[0], rows[0]), Field::new(ids[1], rows[1])];
        Ok(AutoAssignTrainer { vs, job, stream, table, shared, side, mlp, agent, fields, pending: Default::default(), examples: Default::default(), history: Vec::new(), steps_per_chunk, global_batch: ctx.global_batch, seed: ctx.seed, device: ctx.device })
    }

    fn ids_of(&self, f: usize, rows: &[usize]) -> Vec<u32> {
        let col = if f == 0 { &self.stream.user } else { &self.stream.item };
        rows.iter().map(|&r| col[r]).collect()
    }

    fn side_codes(&self, f: usize, ids: &[u32]) -> Tensor {
        let sides = if f == 0 { &self.stream.user_side } else { &self.stream.item_side };
        Tensor::from_slice(&ids.iter().map(|&i| sides[i as usize] as i64).collect::<Vec<_>>()).to_device(self.device)
    }

    fn long(&self, v: &[i64]) -> Tensor {
        Tensor::from_slice(v).to_device(self.device)
    }

    /// The agent's input for `ids` of field `f` with state features `states`.
    fn agent_input(&self, agent: &Agent, f: usize, ids: &[u32], states: &[f32]) -> Tensor {
        let n = ids.len() as i64;
        let s = Tensor::from_slice(states).view([n, STATE as i64]).to_device(self.device);
        let flag = Tensor::full([n, 1], f as f64, (Kind::Float, self.device));
        Tensor::cat(&[s, self.side_codes(f, ids).apply(&agent.side[f]), flag], 1)
    }

    /// The mixture of shared embeddings the agent gives `ids` (`[n, d]`).
    fn mixture(&self, agent: &Agent, shared: &Tensor, f: usize, ids: &[u32], chunk: usize) -> Tensor {
        let input = self.agent_input(agent, f, ids, &self.fields[f].state(ids, chunk));
        input.apply(&agent.mix).softmax(-1, Kind::Float).matmul(shared)
    }

    /// Hash bucket of an id (the hashing trick).
    fn bucket(&self, f: usize, id: u32) -> i64 {
        let b = id.to_le_bytes();
        (fnv1a(&[f as u8, b[0], b[1], b[2], b[3]]) % self.job.budget_rows as u64) as i64
    }

    /// Embeddings of `ids` of field `f` under the policy (`[n, d]`);
    /// `shared_only`: as if no id held a row (the counterfactual the
    /// agent's reward compares with).
    fn represent(&self, f: usize, ids: &[u32], chunk: usize, shared_only: bool) -> Tensor {
        let field = &self.fields[f];
        match self.job.policy {
            Policy::Hashing => self.table[f].index_select(0, &self.long(&ids.iter().map(|&i| self.bucket(f, i)).collect::<Vec<_>>())),
            Policy::Full => self.table[f].index_select(0, &self.long(&ids.iter().map(|&i| field.slot[i as usize].max(0)).collect::<Vec<_>>())),
            Policy::Threshold | Policy::AutoAssign => {
                let slots: Vec<i64> = ids.iter().map(|&i| if shared_only { -1 } else { field.slot[i as usize] }).collect();
                let own = Tensor::from_slice(&slots.iter().map(|&s| if s >= 0 { 1f32 } else { 0.0 }).collect::<Vec<_>>()).to_device(self.device).unsqueeze(1);
                let rows = self.table[f].index_select(0, &self.long(&slots.iter().map(|&s| s.max(0)).collect::<Vec<_>>()));
                let shared = match &self.shared {
                    Some(s) => &s[f],
                    None => return rows,
                };
                let mix = match &self.agent {
                    Some(agent) => self.mixture(agent, shared, f, ids, chunk),
                    None => shared.get(0).unsqueeze(0).expand([ids.len() as i64, -1], false),
                };
                &own * rows + (own.neg() + 1.0) * mix
            }
        }
    }

    /// CTR logits of stream interactions `rows` during `chunk`
    /// (`shared_only`: field f's ids represented by their mixtures alone).
    fn forward(&self, rows: &[usize], chunk: usize, shared_only: Option<usize>) -> Tensor {
        let (u, i) = (self.ids_of(0, rows), self.ids_of(1, rows));
        let (eu, ei) = (self.represent(0, &u, chunk, shared_only == Some(0)), self.represent(1, &i, chunk, shared_only == Some(1)));
        let (su, si) = (self.side_codes(0, &u).apply(&self.side[0]), self.side_codes(1, &i).apply(&self.side[1]));
        let x = Tensor::cat(&[&eu, &su, &ei, &si], 1);
        x.apply(&self.mlp).squeeze_dim(1) + (eu * ei).sum_dim_intlist(1i64, false, Kind::Float)
    }

    /// Distinct ids of field `f` in chunk `c`, sorted.
    fn chunk_ids(&self, f: usize, c: usize) -> Vec<u32> {
        let rows: Vec<usize> = self.stream.chunks[c].clone().collect();
        let mut ids = self.ids_of(f, &rows);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A keyed uniform draw for decisions (the same on every rank).
    fn draw(&self, what: u64, c: usize, f: usize, id: u32) -> f64 {
        unit(splitmix(self.seed ^ splitmix(what << 48 ^ (c as u64) << 32 ^ (f as u64) << 31 ^ id as u64)))
    }

    /// Writes `values` (`[n, d]`) into rows `rows` of field `f`'s table.
    fn write_rows(&mut self, f: usize, rows: &[i64], values: &Tensor) {
        let _g = tch::no_grad_guard();
        let idx = self.long(rows);
        let _ = self.table[f].index_copy_(0, &idx, values);
    }

    /// The start of chunk `c`: count chunk c − 1, decide rows, keep the
    /// pre-decision states of the chunk's ids for the critic.
    fn chunk_start(&mut self, c: usize) {
        let _g = tch::no_grad_guard();
        if c > 0 {
            for f in 0..2 {
                let rows: Vec<usize> = self.stream.chunks[c - 1].clone().collect();
                let ids = self.ids_of(f, &rows);
                self.fields[f].observe(&ids, c - 1);
            }
        }
        for f in 0..2 {
            // The agent's examples: every id seen so far, before the decision.
            let seen: Vec<u32> = if self.agent.is_some() { (0..self.fields[f].count.len()).filter(|&i| self.fields[f].count[i] > 0).map(|i| i as u32).collect() } else { Vec::new() };
            let states = self.fields[f].state(&seen, c);
            match self.job.policy {
                Policy::Hashing => {}
                Policy::Full => {
                    for id in self.chunk_ids(f, c) {
                        if self.fields[f].slot[id as usize] < 0 {
                            self.fields[f].assign(id as usize, id as usize);
                        }
                    }
                }
                Policy::Threshold => self.threshold_rows(f, c),
                Policy::AutoAssign => self.agent_rows(f, c),
            }
            let actions = seen.iter().map(|&i| if self.fields[f].slot[i as usize] >= 0 { 1.0 } else { 0.0 }).collect();
            self.examples[f] = std::mem::replace(&mut self.pending[f], Examples { ids: seen, states, actions, rewards: Vec::new() });
        }
    }

    /// Frequent ids get rows; when the budget is full, the least recently
    /// seen owner (not seen in the last chunk) makes room.
    fn threshold_rows(&mut self, f: usize, c: usize) {
        let field = &self.fields[f];
        let mut cands: Vec<usize> = (0..field.count.len()).filter(|&i| field.count[i] >= self.job.threshold && field.slot[i] < 0).collect();
        cands.sort_by_key(|&i| (std::cmp::Reverse(field.count[i]), i));
        let (mut ids, mut rows) = (Vec::new(), Vec::new());
        for id in cands {
            let field = &mut self.fields[f];
            let row = match field.free_row() {
                Some(r) => r,
                None => {
                    let (row, owner) = field.owner.iter().enumerate().map(|(r, &o)| (r, o as usize)).min_by_key(|&(_, o)| (field.last[o], field.count[o], o)).unwrap_or((0, 0));
                    if field.last[owner] >= c as i64 - 1 {
                        break;
                    }
                    row
                }
            };
            field.assign(id, row);
            ids.push(id as u32);
            rows.push(row as i64);
        }
        if !ids.is_empty() {
            // A fresh row, as a table without the threshold would give.
            let fresh: Vec<f32> = ids.iter().flat_map(|&id| (0..self.job.dim).map(move |k| (id, k))).map(|(id, k)| 0.05 * gaussian(self.draw(1, c, f, id), self.draw(2, c, f, id ^ (k as u32) << 24))).collect();
            let fresh = Tensor::from_slice(&fresh).view([ids.len() as i64, self.job.dim as i64]).to_device(self.device);
            self.write_rows(f, &rows, &fresh);
        }
    }

    /// The agent's decisions. The actor says which ids want a row: those
    /// seen so far whose priority passes ½, and with probability `explore`
    /// any other id without one. The critic says what a row is worth,
    /// Q(s, row) − Q(s, shared) − `row_cost`: an owner gives its row back
    /// only when its priority is below ½ and its worth below 0; wanting ids
    /// are served by worth, and a full table evicts its least worthy owner
    /// for an id worth `swap_margin` more. A new row starts from the id's
    /// mixture.
    fn agent_rows(&mut self, f: usize, c: usize) {
        let (Some(agent), Some(shared)) = (&self.agent, &self.shared) else { return };
        let seen: Vec<u32> = (0..self.fields[f].count.len()).filter(|&i| self.fields[f].count[i] > 0).map(|i| i as u32).collect();
        if seen.is_empty() {
            return;
        }
        let input = self.agent_input(agent, f, &seen, &self.fields[f].state(&seen, c));
        let n = seen.len() as i64;
        let p: Vec<f32> = Vec::try_from(input.apply(&agent.priority).sigmoid().view([-1]).to_device(Device::Cpu)).unwrap_or_default();
        let q = |a: f64| Tensor::cat(&[&input, &Tensor::full([n, 1], a, (Kind::Float, self.device))], 1).apply(&agent.critic).view([-1]);
        let worth: Vec<f32> = Vec::try_from((q(1.0) - q(0.0) - self.job.row_cost).to_device(Device::Cpu)).unwrap_or_default();
        let mix = self.mixture(agent, &shared[f], f, &seen, c);
        let ids = self.fields[f].count.len();
        let (mut value, mut want, mut at) = (vec![f32::NEG_INFINITY; ids], vec![false; ids], vec![0usize; ids]);
        for (k, &id) in seen.iter().enumerate() {
            let i = id as usize;
            value[i] = worth.get(k).copied().unwrap_or(0.0);
            at[i] = k;
            // Exploration grants rows, never takes them: an owner's row goes only when the actor and the critic both say so.
            let owner = self.fields[f].slot[i] >= 0;
            let wants = p.get(k).copied().unwrap_or(0.0) > 0.5;
            want[i] = if owner { wants || value[i] > 0.0 } else { wants || self.draw(3, c, f, id) < self.job.explore };
        }
        let field = &mut self.fields[f];
        for &id in &seen {
            if field.slot[id as usize] >= 0 && !want[id as usize] {
                field.evict(id as usize);
            }
        }
        let mut cands: Vec<u32> = seen.iter().copied().filter(|&id| want[id as usize] && field.slot[id as usize] < 0).collect();
        cands.sort_by(|&a, &b| value[b as usize].total_cmp(&value[a as usize]).then(a.cmp(&b)));
        let (mut rows, mut picks) = (Vec::new(), Vec::new());
        for id in cands {
            let row = match field.free_row() {
                Some(r) => r,
                None => {
                    let (row, owner) = field.owner.iter().enumerate().map(|(r, &o)| (r, o as usize)).min_by(|a, b| value[a.1].total_cmp(&value[b.1]).then(a.1.cmp(&b.1))).unwrap_or((0, 0));
                    if value[owner] + self.job.swap_margin as f32 >= value[id as usize] {
                        break;
                    }
                    row
                }
            };
            field.assign(id as usize, row);
            rows.push(row as i64);
            picks.push(at[id as usize] as i64);
        }
        if !rows.is_empty() {
            let start = mix.index_select(0, &self.long(&picks));
            self.write_rows(f, &rows, &start);
        }
    }

    /// Scores chunk `c` before training on it; records the chunk's metrics
    /// and the critic's rewards.
    fn score_chunk(&mut self, c: usize, ctx: &StepContext) -> Result<(), WorkerError> {
        let range = self.stream.chunks[c].clone();
        let n = range.len();
        let (lo, hi) = (range.start + n * ctx.rank / ctx.world_size, range.start + n * (ctx.rank + 1) / ctx.world_size);
        // Per interaction: the prediction, and with the agent, the predictions
        // with the user's and with the item's mixture in place of their rows.
        let views: Vec<Option<usize>> = if self.agent.is_some() { vec![None, Some(0), Some(1)] } else { vec![None] };
        let mut mine: Vec<f32> = Vec::new();
        {
            let _g = tch::no_grad_guard();
            let rows: Vec<usize> = (lo..hi).collect();
            for part in rows.chunks(4096) {
                let p: Vec<Tensor> = views.iter().map(|&v| self.forward(part, c, v).sigmoid()).collect();
                mine.extend(Vec::<f32>::try_from(Tensor::stack(&p, 1).to_device(Device::Cpu).reshape([-1]))?);
            }
        }
        let all = ctx.comm.all_gather_f32(&mine)?;
        let v = views.len();
        let p: Vec<f32> = all.iter().step_by(v).copied().collect();
        let rows: Vec<usize> = range.collect();
        let y: Vec<f32> = rows.iter().map(|&r| self.stream.label[r]).collect();
        let (u, i) = (self.ids_of(0, &rows), self.ids_of(1, &rows));
        let is_new: Vec<bool> = u.iter().zip(&i).map(|(&u, &i)| self.fields[0].count[u as usize] < self.job.cold_count || self.fields[1].count[i as usize] < self.job.cold_count).collect();
        let subset = |new: bool| -> (Vec<f32>, Vec<f32>) { p.iter().zip(&y).zip(&is_new).filter(|(_, &k)| k == new).map(|((&p, &y), _)| (p, y)).unzip() };
        let ((pn, yn), (po, yo)) = (subset(true), subset(false));
        let rows_in_use = |f: usize| if self.job.policy == Policy::Hashing { self.fields[f].rows() } else { self.fields[f].rows_in_use() };
        let shared_rows = self.shared.as_ref().map_or(0, |s| 2 * s[0].size()[0] as usize);
        let bytes = (rows_in_use(0) + rows_in_use(1) + shared_rows) * self.job.dim * 4;
        let nan = f64::NAN;
        let oracle = if self.stream.truth.is_empty() { nan } else { auc(&self.stream.truth[rows[0]..rows[0] + rows.len()], &y).unwrap_or(nan) };
        self.history.push([auc(&p, &y).unwrap_or(nan), logloss(&p, &y), auc(&pn, &yn).unwrap_or(nan), auc(&po, &yo).unwrap_or(nan), rows_in_use(0) as f64, rows_in_use(1) as f64, bytes as f64, pn.len() as f64 / p.len().max(1) as f64, oracle]);
        // Rewards of the decisions before: the log-loss an id's own row saved
        // over its interactions in this chunk, against its mixture.
        if v == 3 {
            let ll = |p: f32, y: f32| {
                let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
                -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
            };
            for (f, ids) in [(0, &u), (1, &i)] {
                let mut saved: BTreeMap<u32, f64> = BTreeMap::new();
                for (k, (&id, &yk)) in ids.iter().zip(&y).enumerate() {
                    *saved.entry(id).or_insert(0.0) += ll(all[k * v + 1 + f], yk) - ll(all[k * v], yk);
                }
                let ex = &mut self.examples[f];
                ex.rewards = ex.ids.iter().map(|id| saved.get(id).copied().unwrap_or(0.0) as f32).collect();
            }
        }
        Ok(())
    }

    /// Critic regression on the last chunk's examples and the actor's DDPG
    /// step through the critic (this rank's share of the examples).
    fn agent_loss(&self, agent: &Agent, ctx: &StepContext, scalars: &mut BTreeMap<String, f64>) -> Result<Tensor, WorkerError> {
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let (mut q_err, mut p_mean, mut n) = (0.0, 0.0, 0.0);
        for f in 0..2 {
            let ex = &self.examples[f];
            let mine: Vec<usize> = (0..ex.ids.len()).filter(|k| k % ctx.world_size == ctx.rank).collect();
            if mine.is_empty() || ex.rewards.len() != ex.ids.len() {
                continue;
            }
            let ids: Vec<u32> = mine.iter().map(|&k| ex.ids[k]).collect();
            let states: Vec<f32> = mine.iter().flat_map(|&k| ex.states[k * STATE..(k + 1) * STATE].iter().copied()).collect();
            let input = self.agent_input(agent, f, &ids, &states);
            let m = ids.len() as i64;
            let action = Tensor::from_slice(&mine.iter().map(|&k| ex.actions[k]).collect::<Vec<_>>()).view([m, 1]).to_device(self.device);
            let reward = Tensor::from_slice(&mine.iter().map(|&k| ex.rewards[k]).collect::<Vec<_>>()).to_device(self.device);
            let q = Tensor::cat(&[&input, &action], 1).apply(&agent.critic).squeeze_dim(1);
            // Huber: a few frequent ids save far more than the rest.
            let critic = q.huber_loss(&reward, tch::Reduction::Mean, 1.0);
            // ∇_θ Q(s, π(s)) = ∂Q/∂a · ∇_θ π(s), with the critic held fixed.
            let p = input.apply(&agent.priority).sigmoid();
            let a = p.detach().set_requires_grad(true);
            let qa = Tensor::cat(&[&input.detach(), &a], 1).apply(&agent.critic);
            let dq = Tensor::f_run_backward(&[qa.sum(Kind::Float)], &[&a], false, false)?.remove(0);
            let actor = -(&p * (dq - self.job.row_cost)).mean(Kind::Float);
            q_err += critic.double_value(&[]);
            p_mean += p.mean(Kind::Float).double_value(&[]);
            n += 1.0;
            total = total + critic + actor;
        }
        if n > 0.0 {
            scalars.insert("critic_mse".into(), q_err / n);
            scalars.insert("priority".into(), p_mean / n);
        }
        Ok(total)
    }
}

/// A standard normal from two uniforms (Box-Muller).
fn gaussian(a: f64, b: f64) -> f32 {
    ((-2.0 * a.max(1e-12).ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
}

impl Algorithm for AutoAssignTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let c = (ctx.step / self.steps_per_chunk) as usize;
        if c >= self.stream.chunks.len() {
            return Err(WorkerError::algo(NAME, format!("step {} is past the stream's {} chunks", ctx.step, self.stream.chunks.len())));
        }
        if ctx.step % self.steps_per_chunk == 0 && ctx.micro_step == 0 {
            self.chunk_start(c);
            self.score_chunk(c, ctx)?;
        }
        let per = ctx.per_rank(self.global_batch);
        let range = self.stream.chunks[c].clone();
        let order = shuffled(range.len(), self.seed ^ splitmix(c as u64 + 1), 0);
        let first = (ctx.step % self.steps_per_chunk) * self.global_batch as u64 + ctx.rank_offset(self.global_batch);
        let rows: Vec<usize> = (0..per as u64).map(|k| range.start + order[((first + k) % range.len() as u64) as usize]).collect();
        let labels = Tensor::from_slice(&rows.iter().map(|&r| self.stream.label[r]).collect::<Vec<_>>()).to_device(self.device);
        let logits = self.forward(&rows, c, None);
        let bce = logits.f_binary_cross_entropy_with_logits::<&Tensor>(&labels, None, None, tch::Reduction::Mean)?;
        let mut scalars = BTreeMap::new();
        scalars.insert("bce".into(), bce.double_value(&[]));
        let loss = match &self.agent {
            Some(agent) => &bce + self.agent_loss(agent, ctx, &mut scalars)?,
            None => bce,
        };
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// The last scored chunk (`chunk`, `auc`, `logloss`, `auc_new`,
    /// `auc_old`, `rows_user`, `rows_item`, `bytes`, `new_share`) and the
    /// prequential means over the chunks scored after the first (`mean_`
    /// keys; the first is scored by an untrained model), `peak_bytes`.
    fn evaluate(&mut self, _ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut out = BTreeMap::new();
        let Some(last) = self.history.last() else { return Ok(out) };
        out.insert("chunk".into(), (self.history.len() - 1) as f64);
        for (k, v) in HISTORY.iter().zip(last) {
            out.insert(k.to_string(), *v);
        }
        let later = &self.history[1.min(self.history.len() - 1)..];
        for (j, k) in HISTORY.iter().enumerate() {
            let vals: Vec<f64> = later.iter().map(|h| h[j]).filter(|v| v.is_finite()).collect();
            out.insert(format!("mean_{k}"), if vals.is_empty() { f64::NAN } else { vals.iter().sum::<f64>() / vals.len() as f64 });
        }
        out.insert("peak_bytes".into(), self.history.iter().map(|h| h[6]).fold(0.0, f64::max));
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// What the chunk starts decided: each field's ids, the critic's
    /// examples and the per-chunk metrics (the same on every rank).
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for f in 0..2 {
            out.extend(self.fields[f].save(FIELDS[f]));
            for (set, ex) in [("examples", &self.examples[f]), ("pending", &self.pending[f])] {
                let name = |k: &str| format!("{}.{set}.{k}", FIELDS[f]);
                out.push((name("ids"), Tensor::from_slice(&ex.ids.iter().map(|&i| i as i64).collect::<Vec<_>>())));
                out.push((name("states"), Tensor::from_slice(&ex.states)));
                out.push((name("actions"), Tensor::from_slice(&ex.actions)));
                out.push((name("rewards"), Tensor::from_slice(&ex.rewards)));
            }
        }
        let flat: Vec<f64> = self.history.iter().flatten().copied().collect();
        out.push(("history".into(), Tensor::from_slice(&flat)));
        out
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        let err = |m: String| WorkerError::algo(NAME, format!("checkpoint state: {m}"));
        let get = |k: &str| state.iter().find(|(n, _)| n == k).map(|(_, t)| t.to_device(Device::Cpu)).ok_or_else(|| err(format!("missing {k}")));
        for f in 0..2 {
            self.fields[f].load(FIELDS[f], &state).map_err(err)?;
            for set in ["examples", "pending"] {
                let name = |k: &str| format!("{}.{set}.{k}", FIELDS[f]);
                let ids: Vec<i64> = Vec::try_from(get(&name("ids"))?)?;
                let ex = Examples { ids: ids.iter().map(|&i| i as u32).collect(), states: Vec::try_from(get(&name("states"))?)?, actions: Vec::try_from(get(&name("actions"))?)?, rewards: Vec::try_from(get(&name("rewards"))?)? };
                if set == "examples" {
                    self.examples[f] = ex;
                } else {
                    self.pending[f] = ex;
                }
            }
        }
        let flat: Vec<f64> = Vec::try_from(get("history")?)?;
        self.history = flat.chunks_exact(HISTORY.len()).map(|h| std::array::from_fn(|k| h[k])).collect();
        Ok(())
    }
}
