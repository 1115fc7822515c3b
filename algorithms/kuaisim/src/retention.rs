//! The learned retention model (KuaiSim's `KRUserRetention`): from a user's
//! past sessions, the distribution of the number of days until they come
//! back, and the job `kuaisim.retention` that trains it on a log.
//!
//! - **Sessions**: a log's user-days; each session is encoded by the response
//!   model's user state at its last record (its history: the user's last
//!   records through that one), as the reference's `generate_session_data.py`
//!   does, plus the session's own summary — each behaviour's rate over its
//!   impressions — which the reference lacks: the end state reads a window
//!   of recent records that a long session overflows and whose last records
//!   are the ones that made the user stop. (Not the session's length: the
//!   environment's sessions have a fixed length, `initial_temper` × slate,
//!   unlike the log's.) Its label
//!   is the day gap to the user's next session, clipped to
//!   1..=`max_return_day` (a longer absence counts as the last class).
//! - **Model**: each session is a token — a linear map of its encoding to
//!   `enc_dim` plus a learned position, concatenated with an embedding of the
//!   gap that *preceded* it (0: unknown, the user's first session) — so the
//!   causal Transformer over a user's last `context` sessions never sees the
//!   gap it predicts; LayerNorm and an MLP map the last position to
//!   `max_return_day` logits. Trained with cross-entropy on the logits (the
//!   reference applies it to softmax outputs, a double softmax; not copied).
//! - **Splits**: a label is in the split of the next session's first record,
//!   so the log's per-user time split carries over (validation and test gaps
//!   are the latest ones).
//!
//! The cross-session environment draws return days from it with
//! `retention.model = "learned"` ([`crate::env`]).

use crate::env::Simulator;
use crate::layers::{causal_mask, EncoderLayer};
use crate::log::Logs;
use crate::response::{histories, ResponseModel};
use kiln_recsys::metrics::auc;
use kiln_worker::rng::EpochStream;
use kiln_worker::{parse_config, Algorithm, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

/// Files of an exported retention model (`kiln export` of a `kuaisim.retention` job).
pub const WEIGHTS: &str = "retention.safetensors";
pub const META: &str = "retention.json";

/// Width of a session's summary: the 7 behaviour rates.
pub const SUMMARY: usize = crate::NB;

/// The summary of a session with `count` impressions whose responses sum to `sums`.
pub fn summary(sums: &[f64; crate::NB], count: usize) -> [f32; SUMMARY] {
    let mut out = [0f32; SUMMARY];
    for (o, s) in out.iter_mut().zip(sums) {
        *o = (s / count.max(1) as f64) as f32;
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Width of the projected session encoding and of the gap embedding
    /// (tokens are twice this).
    pub enc_dim: i64,
    pub layers: i64,
    pub heads: i64,
    pub ffn: i64,
    pub hidden: i64,
    pub dropout: f64,
    /// Classes: return after 1..=max_return_day days.
    pub max_return_day: usize,
    /// Past sessions the model reads (the most recent).
    pub context: usize,
}

impl Default for RetentionConfig {
    /// The reference's values (`KRUserRetention`: enc 32, 2 layers, 4 heads,
    /// FFN 64, MLP 128, 10 days).
    fn default() -> Self {
        RetentionConfig { enc_dim: 32, layers: 2, heads: 4, ffn: 64, hidden: 128, dropout: 0.1, max_return_day: 10, context: 16 }
    }
}

impl RetentionConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (k, v) in [("enc_dim", self.enc_dim), ("layers", self.layers), ("heads", self.heads), ("ffn", self.ffn), ("hidden", self.hidden)] {
            if !(1..=1 << 16).contains(&v) {
                return Err((k, "must be between 1 and 65536".into()));
            }
        }
        if (2 * self.enc_dim) % self.heads != 0 {
            return Err(("heads", format!("must divide the token width 2·enc_dim = {}", 2 * self.enc_dim)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("dropout", "must be in [0, 1)".into()));
        }
        if !(1..=365).contains(&self.max_return_day) {
            return Err(("max_return_day", "must be between 1 and 365".into()));
        }
        if !(1..=1024).contains(&self.context) {
            return Err(("context", "must be between 1 and 1024".into()));
        }
        Ok(())
    }
}

pub struct RetentionModel {
    proj: nn::Linear,
    position: Tensor,
    gap: nn::Embedding,
    layers: Vec<EncoderLayer>,
    norm: nn::LayerNorm,
    head: nn::SequentialT,
    cfg: RetentionConfig,
}

impl RetentionModel {
    /// For session encodings of width `state_dim` (the response model's 3·enc)
    /// followed by their [`SUMMARY`].
    pub fn new(p: &nn::Path, state_dim: i64, cfg: &RetentionConfig) -> RetentionModel {
        let e = cfg.enc_dim;
        let dropout = cfg.dropout;
        let h = p / "head";
        RetentionModel {
            proj: nn::linear(p / "proj", state_dim + SUMMARY as i64, e, Default::default()),
            position: p.var("position", &[cfg.context as i64, e], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            gap: nn::embedding(p / "gap", cfg.max_return_day as i64 + 1, e, Default::default()),
            layers: (0..cfg.layers).map(|l| EncoderLayer::new(&(p / format!("layer{l}")), 2 * e, cfg.heads, cfg.ffn, cfg.dropout)).collect(),
            norm: nn::layer_norm(p / "norm", vec![2 * e], Default::default()),
            head: nn::seq_t()
                .add(nn::linear(&h / "l1", 2 * e, cfg.hidden, Default::default()))
                .add_fn(|x| x.relu())
                .add_fn_t(move |x, train| x.dropout(dropout, train))
                .add(nn::linear(&h / "out", cfg.hidden, cfg.max_return_day as i64, Default::default())),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &RetentionConfig {
        &self.cfg
    }

    /// Logits `[B, max_return_day]` of the return day after each row's last
    /// session, from `[B, L, state + SUMMARY]` encodings, `[B, L]` preceding gaps (0
    /// unknown) and `[B, L]` real flags, left-padded, L ≤ `context`.
    pub fn logits(&self, enc: &Tensor, gap: &Tensor, real: &Tensor, train: bool) -> Tensor {
        let l = enc.size()[1];
        let pos = self.position.narrow(0, self.cfg.context as i64 - l, l);
        let gap = gap.clamp(0, self.cfg.max_return_day as i64);
        let mut x = Tensor::cat(&[self.proj.forward(enc) + pos, self.gap.forward(&gap)], -1).dropout(self.cfg.dropout, train);
        let mask = causal_mask(real);
        for layer in &self.layers {
            x = layer.forward(&x, &mask, train);
        }
        self.head.forward_t(&self.norm.forward(&x.select(1, l - 1)), train)
    }

    /// The model exported to `dir` by `kiln export` of a `kuaisim.retention`
    /// job, for session encodings of width `state_dim`.
    pub fn load(dir: &Path, state_dim: i64, device: Device) -> Result<(RetentionModel, nn::VarStore), String> {
        let meta_path = dir.join(META);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e} (export a trained kuaisim.retention job there with kiln export)", meta_path.display()))?;
        #[derive(Deserialize)]
        struct Meta {
            model: RetentionConfig,
            state_dim: i64,
        }
        let meta: Meta = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        if meta.state_dim != state_dim {
            return Err(format!("{}: the retention model reads session encodings of width {}, this simulator's are {state_dim} (train it on this simulator)", meta_path.display(), meta.state_dim));
        }
        let mut vs = nn::VarStore::new(device);
        let model = RetentionModel::new(&vs.root(), state_dim, &meta.model);
        vs.load(dir.join(WEIGHTS)).map_err(|e| format!("{}: {e}", dir.join(WEIGHTS).display()))?;
        vs.freeze();
        Ok((model, vs))
    }
}

/// A log's sessions, per user in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sessions {
    /// Per session: its last record, its day, the gap (days) since the user's
    /// previous session (0: none), and the split of its label (the next
    /// session's first record; `None` for a user's last session).
    pub end: Vec<usize>,
    pub day: Vec<i32>,
    pub gap_before: Vec<i64>,
    pub label_split: Vec<Option<u8>>,
    /// The return-day label (1..=max) of sessions with a next one (else 0).
    pub label: Vec<i64>,
    /// Each session's [`summary`].
    pub summary: Vec<[f32; SUMMARY]>,
    /// Sessions of user u (re-indexed) are `starts[u - 1]..starts[u]`.
    pub starts: Vec<usize>,
}

impl Sessions {
    /// The sessions of `logs` made of records for which `keep` holds (the
    /// environment uses only training records), gaps clipped to `max_day`.
    pub fn of(logs: &Logs, max_day: usize, keep: impl Fn(usize) -> bool) -> Sessions {
        Self::of_users(logs, 1..=logs.users.len(), max_day, keep)
    }

    /// The same for some users only (their sessions in the order given).
    pub fn of_users(logs: &Logs, users: impl IntoIterator<Item = usize>, max_day: usize, keep: impl Fn(usize) -> bool) -> Sessions {
        let mut s = Sessions { end: vec![], day: vec![], gap_before: vec![], label_split: vec![], label: vec![], summary: vec![], starts: vec![0] };
        let clip = |g: i32| (g.max(1) as i64).min(max_day as i64);
        let (mut sums, mut count) = ([0f64; crate::NB], 0usize);
        for u in users {
            let first = s.end.len();
            let mut last_session = None;
            for r in (logs.starts[u - 1]..logs.starts[u]).filter(|&r| keep(r)) {
                if last_session == Some(logs.session[r]) {
                    if let Some(e) = s.end.last_mut() {
                        *e = r;
                    }
                    for (a, &b) in sums.iter_mut().zip(&logs.response[r]) {
                        *a += b as f64;
                    }
                    count += 1;
                    if let Some(x) = s.summary.last_mut() {
                        *x = summary(&sums, count);
                    }
                    continue;
                }
                sums = logs.response[r].map(|b| b as f64);
                count = 1;
                // A new session: the previous one's label is this gap.
                if s.end.len() > first {
                    let k = s.end.len() - 1;
                    s.label[k] = clip(logs.day[r] - s.day[k]);
                    s.label_split[k] = Some(logs.split[r]);
                }
                let gap = if s.end.len() > first { clip(logs.day[r] - s.day[s.end.len() - 1]) } else { 0 };
                s.end.push(r);
                s.day.push(logs.day[r]);
                s.gap_before.push(gap);
                s.label_split.push(None);
                s.label.push(0);
                s.summary.push(summary(&sums, count));
                last_session = Some(logs.session[r]);
            }
            s.starts.push(s.end.len());
        }
        s
    }

    pub fn len(&self) -> usize {
        self.end.len()
    }

    pub fn is_empty(&self) -> bool {
        self.end.is_empty()
    }

    /// The ordinal (1-based, among the users these sessions were made of)
    /// of session `k`'s user.
    pub fn user_of(&self, k: usize) -> usize {
        self.starts.partition_point(|&s| s <= k)
    }

    /// The sessions a prediction after session `k` reads: the user's, up to
    /// `context` of them, ending with `k`.
    pub fn window(&self, k: usize, context: usize) -> std::ops::Range<usize> {
        let first = self.starts[self.user_of(k) - 1];
        (k + 1).saturating_sub(context).max(first)..k + 1
    }
}

/// Session encodings `[n, 3·enc + SUMMARY]` of sessions `ks`: the response
/// model's user state after each session's last record (the history: the
/// user's `h` records through it; a user's training records come first, so
/// sessions of training records see only those), then the session's summary.
pub fn session_states(model: &ResponseModel, logs: &Logs, s: &Sessions, ks: &[usize], h: usize, device: Device) -> Tensor {
    let mut parts = Vec::new();
    for chunk in ks.chunks(256) {
        let users: Vec<i64> = chunk.iter().map(|&k| logs.user[s.end[k]] as i64).collect();
        let ranges: Vec<std::ops::Range<usize>> = chunk.iter().map(|&k| logs.history(s.end[k], h - 1).start..s.end[k] + 1).collect();
        let (user, hist, resp, real) = histories(logs, &users, &ranges, h, device);
        let sums: Vec<f32> = chunk.iter().flat_map(|&k| s.summary[k]).collect();
        let sums = Tensor::from_slice(&sums).view([chunk.len() as i64, SUMMARY as i64]).to_device(device);
        parts.push(Tensor::cat(&[tch::no_grad(|| model.state(&user, &hist, &resp, &real, false)), sums], 1));
    }
    if parts.is_empty() {
        return Tensor::zeros([0, 3 * model.enc_dim() + SUMMARY as i64], (Kind::Float, device));
    }
    Tensor::cat(&parts, 0)
}

/// The `[algorithm]` table of `kuaisim.retention`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionJob {
    /// A simulator exported from a trained `kuaisim.response` job: its log is
    /// the training data and its response model encodes the sessions.
    pub simulator: PathBuf,
    #[serde(default)]
    pub model: RetentionConfig,
}

impl RetentionJob {
    pub fn from_value(v: &toml::Value) -> Result<RetentionJob, ConfigError> {
        let job: RetentionJob = parse_config(v)?;
        job.model.check().map_err(|(k, m)| ConfigError::new(format!("model.{k}"), m))?;
        Ok(job)
    }
}

pub fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    RetentionJob::from_value(v).map(|_| ())
}

pub fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = RetentionJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    let sim = Simulator::load(&job.simulator, ctx.device).map_err(|e| WorkerError::algo(NAME, format!("simulator: {e}")))?;
    Ok(Box::new(RetentionTrainer::new(job, sim, ctx)?))
}

const NAME: &str = "kuaisim.retention";

pub struct RetentionTrainer {
    vs: nn::VarStore,
    model: RetentionModel,
    sessions: Sessions,
    /// `[sessions + 1, state]`: row 0 zeros (padding), session k at k + 1.
    states: Tensor,
    /// Sessions with a training label, and the stream over them.
    train: Vec<usize>,
    stream: EpochStream,
    /// Cross-entropy of the training labels' marginal distribution on each
    /// split (what a model that ignores the sessions scores).
    prior: Vec<f64>,
    job: RetentionJob,
    global_batch: usize,
    device: Device,
}

impl RetentionTrainer {
    pub fn new(job: RetentionJob, sim: Simulator, ctx: &BuildContext) -> Result<RetentionTrainer, WorkerError> {
        let max = job.model.max_return_day;
        let sessions = Sessions::of(&sim.logs, max, |_| true);
        let train: Vec<usize> = (0..sessions.len()).filter(|&k| sessions.label_split[k] == Some(0)).collect();
        if train.is_empty() {
            return Err(WorkerError::algo(NAME, "the simulator's log has no user with two sessions (days) in its training split: nothing to learn return days from"));
        }
        let all: Vec<usize> = (0..sessions.len()).collect();
        let states = session_states(&sim.model, &sim.logs, &sessions, &all, sim.history, ctx.device);
        let states = Tensor::cat(&[states.zeros_like().narrow(0, 0, 1), states], 0);
        let mut counts = vec![1.0f64; max];
        for &k in &train {
            counts[(sessions.label[k] - 1) as usize] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        let prior = counts.iter().map(|c| c / total).collect();
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let model = RetentionModel::new(&vs.root(), 3 * sim.model.enc_dim(), &job.model);
        let stream = EpochStream::new(train.len(), ctx.seed);
        Ok(RetentionTrainer { vs, model, sessions, states, train, stream, prior, job, global_batch: ctx.global_batch, device: ctx.device })
    }

    /// The model's inputs and labels for predictions after sessions `ks`.
    fn batch(&self, ks: &[usize]) -> (Tensor, Tensor, Tensor, Tensor) {
        let l = self.job.model.context;
        let mut idx = vec![0i64; ks.len() * l];
        let mut gap = vec![0i64; ks.len() * l];
        for (i, &k) in ks.iter().enumerate() {
            let w = self.sessions.window(k, l);
            let off = l - w.len();
            for (j, s) in w.enumerate() {
                idx[i * l + off + j] = s as i64 + 1;
                gap[i * l + off + j] = self.sessions.gap_before[s];
            }
        }
        let (b, l) = (ks.len() as i64, l as i64);
        let idx = Tensor::from_slice(&idx).to_device(self.device);
        let enc = self.states.index_select(0, &idx).view([b, l, -1]);
        let real = idx.gt(0).view([b, l]);
        let gap = Tensor::from_slice(&gap).view([b, l]).to_device(self.device);
        let labels = Tensor::from_slice(&ks.iter().map(|&k| self.sessions.label[k] - 1).collect::<Vec<_>>()).to_device(self.device);
        (enc, gap, real, labels)
    }
}

impl Algorithm for RetentionTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let start = ctx.first_sample(self.global_batch);
        let ks: Vec<usize> = self.stream.rows(start, per).into_iter().map(|i| self.train[i]).collect();
        let (enc, gap, real, labels) = self.batch(&ks);
        let logits = self.model.logits(&enc, &gap, &real, true);
        let loss = logits.f_cross_entropy_loss::<&Tensor>(&labels, None, Reduction::Mean, -100, 0.0)?;
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars: BTreeMap::new() })
    }

    /// On the validation (plain keys) and test (`test_`) labels, over every
    /// rank's gathered predictions: `nll` (mean cross-entropy) beside
    /// `prior_nll` (the training marginal's), `accuracy`, `next_day_auc` (P(1
    /// day) against a next-day return), `mae_day` (|expected − actual| days)
    /// and `return_day` (the actual mean, for orientation).
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut out = BTreeMap::new();
        let days = Tensor::arange_start(1, self.job.model.max_return_day as i64 + 1, (Kind::Float, self.device));
        for (prefix, split) in [("", 1u8), ("test_", 2u8)] {
            let ks: Vec<usize> = (0..self.sessions.len()).filter(|&k| self.sessions.label_split[k] == Some(split)).collect();
            if ks.is_empty() {
                continue;
            }
            let (lo, hi) = (ks.len() * ctx.rank / ctx.world_size, ks.len() * (ctx.rank + 1) / ctx.world_size);
            let mut mine: Vec<f32> = Vec::new();
            for chunk in ks[lo..hi].chunks(512) {
                let (enc, gap, real, labels) = self.batch(chunk);
                let logp = tch::no_grad(|| self.model.logits(&enc, &gap, &real, false).log_softmax(-1, Kind::Float));
                let nll = -logp.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
                let p = logp.exp();
                let correct = p.argmax(1, false).eq_tensor(&labels).to_kind(Kind::Float);
                let expected = p.matmul(&days);
                let day = labels.to_kind(Kind::Float) + 1.0;
                let prior = Tensor::from_slice(&self.prior.iter().map(|&x| -(x.ln()) as f32).collect::<Vec<_>>()).to_device(self.device).index_select(0, &labels);
                let rows = Tensor::stack(&[p.select(1, 0), nll, correct, expected, day, prior], 1).to_device(Device::Cpu).contiguous();
                mine.extend(Vec::<f32>::try_from(rows.reshape([-1]))?);
            }
            let all = ctx.comm.all_gather_f32(&mine)?;
            let rows: Vec<&[f32]> = all.chunks_exact(6).collect();
            let n = rows.len().max(1) as f64;
            let mean = |c: usize| rows.iter().map(|r| r[c] as f64).sum::<f64>() / n;
            out.insert(format!("{prefix}nll"), mean(1));
            out.insert(format!("{prefix}prior_nll"), mean(5));
            out.insert(format!("{prefix}accuracy"), mean(2));
            out.insert(format!("{prefix}mae_day"), rows.iter().map(|r| (r[3] - r[4]).abs() as f64).sum::<f64>() / n);
            out.insert(format!("{prefix}return_day"), mean(4));
            let p: Vec<f32> = rows.iter().map(|r| r[0]).collect();
            let y: Vec<f32> = rows.iter().map(|r| (r[4] == 1.0) as u8 as f32).collect();
            if let Some(a) = auc(&p, &y) {
                out.insert(format!("{prefix}next_day_auc"), a);
            }
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// The model for the cross-session environment: its weights
    /// (`retention.safetensors`) and settings (`retention.json`).
    fn export(&self, dir: &Path) -> Result<(), WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        self.vs.save(dir.join(WEIGHTS)).map_err(|e| err(format!("writing the weights: {e}")))?;
        let state_dim = self.states.size()[1] - SUMMARY as i64;
        let meta = serde_json::json!({ "model": self.job.model, "state_dim": state_dim, "simulator": std::fs::canonicalize(&self.job.simulator).unwrap_or_else(|_| self.job.simulator.clone()) });
        std::fs::write(dir.join(META), serde_json::to_string_pretty(&meta).unwrap_or_default()).map_err(|e| err(format!("writing {META}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_carry_their_gaps_labels_and_splits() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = crate::synth::write(d.path(), crate::synth::Shape { users: 30, items: 30, days: 12, ..Default::default() }).unwrap();
        let spec = crate::log::LogSpec { log: vec![log], user_features: None, video_features: None, core: 3, ..Default::default() };
        let logs = crate::log::load(&spec).unwrap();
        let s = Sessions::of(&logs, 10, |_| true);
        for u in 1..=logs.users.len() {
            let ks = s.starts[u - 1]..s.starts[u];
            assert!(!ks.is_empty());
            assert_eq!(s.gap_before[ks.start], 0, "a user's first session has no known gap");
            assert_eq!(s.label_split[ks.end - 1], None, "nor a label after their last");
            for k in ks.start..ks.end - 1 {
                assert_eq!(s.label[k], (s.day[k + 1] - s.day[k]).clamp(1, 10) as i64);
                assert_eq!(s.gap_before[k + 1], s.label[k]);
                assert_eq!(s.label_split[k], Some(logs.split[s.end[k] + 1]), "the split of the next session's first record");
                // The summary: the click rate over the session's records.
                let first = if k == ks.start { logs.starts[u - 1] } else { s.end[k - 1] + 1 };
                let n = s.end[k] + 1 - first;
                let clicks = (first..=s.end[k]).filter(|&r| logs.response[r][0] == 1).count();
                assert!((s.summary[k][0] - clicks as f32 / n as f32).abs() < 1e-6);
                assert_eq!(s.user_of(k), u);
                assert!(s.window(k, 4).len() <= 4 && s.window(k, 4).end == k + 1 && s.window(k, 4).start >= ks.start);
            }
        }
        // Every record of a user's sessions is accounted for: session ends are the day's last records.
        for k in 0..s.len() {
            let r = s.end[k];
            assert!(r + 1 == logs.len() || logs.user[r + 1] != logs.user[r] || logs.day[r + 1] != logs.day[r]);
        }
        assert!(s.label_split.iter().any(|x| *x == Some(1)) && s.label_split.iter().any(|x| *x == Some(0)));
    }

    #[test]
    fn the_model_reads_only_past_sessions_and_gaps() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = RetentionConfig { dropout: 0.0, context: 4, ..Default::default() };
        let m = RetentionModel::new(&vs.root(), 12 - SUMMARY as i64, &cfg);
        let enc = Tensor::randn([2, 4, 12], (Kind::Float, Device::Cpu));
        let gap = Tensor::from_slice(&[0i64, 0, 3, 1, 0, 2, 5, 1]).view([2, 4]);
        let real = Tensor::from_slice(&[false, true, true, true, true, true, true, true]).view([2, 4]);
        let a = m.logits(&enc, &gap, &real, false);
        assert_eq!(a.size(), [2, 10]);
        // The padded position of row 0 does not matter; its last session does.
        let enc2 = enc.copy();
        enc2.get(0).get(0).copy_(&Tensor::randn([12], (Kind::Float, Device::Cpu)));
        assert!((m.logits(&enc2, &gap, &real, false) - &a).abs().max().double_value(&[]) < 1e-5);
        let enc3 = enc.copy();
        enc3.get(0).get(3).copy_(&Tensor::randn([12], (Kind::Float, Device::Cpu)));
        assert!((m.logits(&enc3, &gap, &real, false) - &a).abs().max().double_value(&[]) > 1e-4);
        // Gaps beyond the classes are clipped, not out of range.
        let far = Tensor::from_slice(&[0i64, 0, 99, 1, 0, 2, 5, 1]).view([2, 4]);
        assert!(m.logits(&enc, &far, &real, false).isfinite().all().int64_value(&[]) == 1);
    }
}
