//! `llmsim.sasrec`: the simulator's statistical voter, the paper code's
//! SASRec — a causal Transformer over the user's last `maxlen` items (d =
//! 32, 1 head, 2 layers, FFN 32, no dropout); the user's embedding joins
//! the last position's output, a linear map (64 → 32) meets the candidate's
//! embedding elementwise, and a linear map (32 → 1) gives the logit of
//! "liked" (rating ≥ `positive_at`). BCE, leave-one-out: each user's last
//! interaction is the test set, the one before it the validation set.

use crate::layers::{causal_mask, EncoderLayer};
use crate::metrics::{auc, logloss};
use crate::table::read_columns;
use kiln_worker::rng::EpochStream;
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{nn, nn::Module, Device, Kind, Tensor};

const NAME: &str = "llmsim.sasrec";

pub const ENTRY: AlgorithmEntry = AlgorithmEntry {
    name: NAME,
    summary: "The LLM user simulator's statistical voter: SASRec over a user's recent items with a user embedding, predicting whether a candidate is liked (leave-one-out AUC, precision)",
    validate,
    build,
};

/// The `[algorithm]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SasrecJob {
    /// CSV/TSV/JSONL with a header: user, item, rating, timestamp.
    pub interactions: PathBuf,
    #[serde(default = "user_col")]
    pub user_column: String,
    #[serde(default = "item_col")]
    pub item_column: String,
    #[serde(default = "rating_col")]
    pub rating_column: String,
    #[serde(default = "time_col")]
    pub time_column: String,
    #[serde(default = "positive_at")]
    pub positive_at: f64,
    #[serde(default = "maxlen")]
    pub maxlen: usize,
    #[serde(default = "dim")]
    pub dim: usize,
    #[serde(default = "layers")]
    pub layers: usize,
}

fn user_col() -> String {
    "user_id".into()
}
fn item_col() -> String {
    "item_id".into()
}
fn rating_col() -> String {
    "rating".into()
}
fn time_col() -> String {
    "timestamp".into()
}
fn positive_at() -> f64 {
    4.0
}
fn maxlen() -> usize {
    5
}
fn dim() -> usize {
    32
}
fn layers() -> usize {
    2
}

impl SasrecJob {
    pub fn from_value(v: &toml::Value) -> Result<SasrecJob, ConfigError> {
        let job: SasrecJob = parse_config(v)?;
        if job.maxlen == 0 || job.dim == 0 || job.layers == 0 {
            return Err(ConfigError::new("maxlen", "maxlen, dim and layers must be >= 1"));
        }
        Ok(job)
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    SasrecJob::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = SasrecJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    Ok(Box::new(SasrecTrainer::new(job, ctx)?))
}

/// Interactions grouped by user in time order; samples index into them.
pub struct Interactions {
    /// Per user: (item, liked) in time order.
    pub users: Vec<Vec<(i64, f32)>>,
    pub items: usize,
    pub item_names: Vec<String>,
    pub user_names: Vec<String>,
}

/// A sample: user u's interaction k (its history is the interactions before).
type Sample = (usize, usize);

pub fn read(job: &SasrecJob) -> Result<Interactions, String> {
    let cols = [job.user_column.as_str(), job.item_column.as_str(), job.rating_column.as_str(), job.time_column.as_str()];
    let c = read_columns(std::slice::from_ref(&job.interactions), &cols).map_err(|e| e.to_string())?;
    for k in cols {
        if !c.has(k) {
            return Err(format!("{}: no column '{k}' (columns: {}); set the matching *_column key", c.describe(), c.names().join(", ")));
        }
    }
    let (users, user_names) = c.codes(&job.user_column).map(|(a, b)| (a.to_vec(), b.to_vec())).unwrap_or_default();
    let (items, item_names) = c.codes(&job.item_column).map(|(a, b)| (a.to_vec(), b.to_vec())).unwrap_or_default();
    let num = |k: &str, r: usize| -> Result<f64, String> {
        let t = c.text(k, r).unwrap_or("");
        t.parse::<f64>().map_err(|_| {
            let (p, line) = c.place(r);
            format!("{p}: line {line}: {k} '{t}' is not a number")
        })
    };
    let mut rows: Vec<(u32, f64, usize, i64, f32)> = Vec::with_capacity(c.rows());
    for r in 0..c.rows() {
        rows.push((users[r], num(&job.time_column, r)?, r, items[r] as i64 + 1, if num(&job.rating_column, r)? >= job.positive_at { 1.0 } else { 0.0 }));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut per: Vec<Vec<(i64, f32)>> = vec![Vec::new(); user_names.len()];
    for (u, _, _, i, y) in rows {
        per[u as usize].push((i, y));
    }
    Ok(Interactions { users: per, items: item_names.len(), item_names, user_names })
}

pub struct Sasrec {
    item: nn::Embedding,
    user: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<EncoderLayer>,
    join: nn::Linear,
    out: nn::Linear,
    maxlen: usize,
}

impl Sasrec {
    pub fn new(p: &nn::Path, users: usize, items: usize, job: &SasrecJob) -> Sasrec {
        let d = job.dim as i64;
        Sasrec {
            item: nn::embedding(p / "item", items as i64 + 1, d, Default::default()),
            user: nn::embedding(p / "user", users as i64, d, Default::default()),
            pos: nn::embedding(p / "pos", job.maxlen as i64, d, Default::default()),
            blocks: (0..job.layers).map(|l| EncoderLayer::new(&(p / format!("block{l}")), d, 1, d, 0.0)).collect(),
            join: nn::linear(p / "join", 2 * d, d, Default::default()),
            out: nn::linear(p / "out", d, 1, Default::default()),
            maxlen: job.maxlen,
        }
    }

    /// Logits for (user, left-padded history `[B, maxlen]` of item ids, 0 = none, candidate).
    pub fn forward(&self, users: &Tensor, history: &Tensor, candidates: &Tensor) -> Tensor {
        let real = history.gt(0);
        let pos = Tensor::arange(self.maxlen as i64, (Kind::Int64, history.device()));
        let mut x = history.apply(&self.item) + pos.apply(&self.pos).unsqueeze(0);
        let mask = causal_mask(&real);
        for b in &self.blocks {
            x = b.forward(&x, &mask, false);
        }
        let last = x.select(1, self.maxlen as i64 - 1);
        let z = Tensor::cat(&[last, users.apply(&self.user)], 1).apply(&self.join) * candidates.apply(&self.item);
        self.out.forward(&z).squeeze_dim(1)
    }
}

pub struct SasrecTrainer {
    vs: nn::VarStore,
    model: Sasrec,
    data: Interactions,
    /// Samples of the three splits (train, validation, test).
    splits: [Vec<Sample>; 3],
    stream: EpochStream,
    job: SasrecJob,
    global_batch: usize,
    device: Device,
}

impl SasrecTrainer {
    pub fn new(job: SasrecJob, ctx: &BuildContext) -> Result<SasrecTrainer, WorkerError> {
        let data = read(&job).map_err(|e| WorkerError::algo(NAME, format!("data: {e}")))?;
        let mut splits: [Vec<Sample>; 3] = Default::default();
        for (u, seq) in data.users.iter().enumerate() {
            let n = seq.len();
            for k in 0..n {
                let split = if n >= 3 && k == n - 1 { 2 } else if n >= 3 && k == n - 2 { 1 } else { 0 };
                splits[split].push((u, k));
            }
        }
        if splits[0].is_empty() || splits[2].is_empty() {
            return Err(WorkerError::algo(NAME, "data: no user has 3 or more interactions, so there is no leave-one-out test set"));
        }
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let model = Sasrec::new(&vs.root(), data.users.len(), data.items, &job);
        let stream = EpochStream::new(splits[0].len(), ctx.seed);
        Ok(SasrecTrainer { vs, model, data, splits, stream, job, global_batch: ctx.global_batch, device: ctx.device })
    }

    fn batch(&self, samples: &[Sample]) -> (Tensor, Tensor, Tensor, Tensor) {
        let m = self.job.maxlen;
        let (mut users, mut hist, mut cand, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(u, k) in samples {
            let seq = &self.data.users[u];
            users.push(u as i64);
            let past: Vec<i64> = seq[k.saturating_sub(m)..k].iter().map(|x| x.0).collect();
            hist.extend(std::iter::repeat(0).take(m - past.len()).chain(past));
            cand.push(seq[k].0);
            y.push(seq[k].1);
        }
        let n = samples.len() as i64;
        let t = |v: &[i64]| Tensor::from_slice(v).to_device(self.device);
        (t(&users), t(&hist).view([n, m as i64]), t(&cand), Tensor::from_slice(&y).to_device(self.device))
    }
}

impl Algorithm for SasrecTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let start = ctx.first_sample(self.global_batch);
        let samples: Vec<Sample> = self.stream.rows(start, per).into_iter().map(|k| self.splits[0][k]).collect();
        let (u, h, c, y) = self.batch(&samples);
        let loss = self.model.forward(&u, &h, &c).f_binary_cross_entropy_with_logits::<&Tensor>(&y, None, None, tch::Reduction::Mean)?;
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars: BTreeMap::new() })
    }

    /// AUC, log-loss, precision (of p ≥ ½) and accuracy on the validation
    /// (plain keys) and test (`test_`) interactions, gathered over ranks.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut out = BTreeMap::new();
        for (prefix, split) in [("", 1), ("test_", 2)] {
            let s = &self.splits[split];
            let (lo, hi) = (s.len() * ctx.rank / ctx.world_size, s.len() * (ctx.rank + 1) / ctx.world_size);
            let mut mine = Vec::new();
            for chunk in s[lo..hi].chunks(1024) {
                let (u, h, c, y) = self.batch(chunk);
                let p = self.model.forward(&u, &h, &c).sigmoid();
                mine.extend(Vec::<f32>::try_from(Tensor::stack(&[p, y], 1).to_device(Device::Cpu).reshape([-1]))?);
            }
            let all = ctx.comm.all_gather_f32(&mine)?;
            let (p, y): (Vec<f32>, Vec<f32>) = all.chunks_exact(2).map(|r| (r[0], r[1])).unzip();
            let said = p.iter().filter(|&&x| x >= 0.5).count();
            let hits = p.iter().zip(&y).filter(|(&x, &t)| x >= 0.5 && t > 0.5).count();
            let right = p.iter().zip(&y).filter(|(&x, &t)| (x >= 0.5) == (t > 0.5)).count();
            out.insert(format!("{prefix}auc"), auc(&p, &y).unwrap_or(f64::NAN));
            out.insert(format!("{prefix}logloss"), logloss(&p, &y));
            out.insert(format!("{prefix}precision"), if said > 0 { hits as f64 / said as f64 } else { f64::NAN });
            out.insert(format!("{prefix}accuracy"), right as f64 / p.len().max(1) as f64);
            out.insert(format!("{prefix}positive_rate"), y.iter().sum::<f32>() as f64 / y.len().max(1) as f64);
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// `sasrec.safetensors` and `sasrec.json` (the settings and the user and item names, in embedding order).
    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        self.vs.save(dir.join("sasrec.safetensors")).map_err(|e| err(format!("writing the weights: {e}")))?;
        let meta = serde_json::json!({ "job": self.job, "users": self.data.user_names, "items": self.data.item_names });
        std::fs::write(dir.join("sasrec.json"), serde_json::to_string(&meta).unwrap_or_default()).map_err(|e| err(format!("writing sasrec.json: {e}")))
    }
}
