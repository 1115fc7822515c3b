//! `metric.dml`: an embedding network trained with a contrastive, triplet or
//! proxy loss under a learned Bregman divergence or a fixed one, scored by
//! retrieval on held-out samples (Recall@k, MAP@R).
//!
//! Batches are class-balanced (P classes × `per_class` samples, the usual
//! sampler for pair and triplet losses), drawn as a pure function of (seed,
//! step, micro-step, rank) so resumed and uninterrupted runs see the same data.

use crate::data::{self, DataSpec, Dataset, Split};
use crate::divergence::{unit, Divergence, DivergenceKind, PhiConfig};
use crate::losses::{self, LossKind};
use crate::retrieval::Retrieval;
use kiln_worker::rng::{shuffled, splitmix};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn, nn::Module, Device, Kind, Tensor};

const NAME: &str = "metric.dml";

pub const ENTRY: AlgorithmEntry = AlgorithmEntry {
    name: NAME,
    summary: "Deep metric learning with a learned Bregman divergence (input-convex φ, ∇φ by double backward) or fixed squared-Euclidean / cosine; contrastive, triplet or Proxy-NCA loss; Recall@k and MAP@R on held-out samples",
    validate,
    build,
};

/// The embedding network: an MLP on standardised inputs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    #[serde(default = "emb_hidden")]
    pub hidden: Vec<usize>,
    #[serde(default = "emb_dim")]
    pub dim: usize,
    /// Put embeddings (and proxies) on the unit sphere, as most deep
    /// metric learning does; the divergence then compares directions.
    #[serde(default = "yes")]
    pub normalize: bool,
}

fn emb_hidden() -> Vec<usize> {
    vec![128]
}

fn emb_dim() -> usize {
    32
}

fn yes() -> bool {
    true
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig { hidden: emb_hidden(), dim: emb_dim(), normalize: true }
    }
}

/// The `[algorithm]` table of `metric.dml` jobs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricJob {
    pub data: DataSpec,
    #[serde(default)]
    pub divergence: DivergenceKind,
    #[serde(default)]
    pub loss: LossKind,
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    /// φ, for `divergence = "bregman"`.
    #[serde(default)]
    pub phi: PhiConfig,
    /// Margin of the contrastive and triplet losses. Default: 0.2 for the
    /// triplet loss, 0.5 for the contrastive loss (divergences of unit
    /// vectors under ‖x − y‖² lie in [0, 4]).
    pub margin: Option<f64>,
    /// Softmax temperature of the proxy loss.
    #[serde(default = "temperature")]
    pub temperature: f64,
    /// Samples per class in a rank's batch.
    #[serde(default = "per_class")]
    pub per_class: usize,
    /// Learning-rate multiplier of the class proxies (Proxy-NCA trains them faster).
    #[serde(default = "one")]
    pub proxy_lr_scale: f64,
    /// The k of the reported Recall@k.
    #[serde(default = "ks")]
    pub recall_at: Vec<usize>,
}

fn temperature() -> f64 {
    0.1
}

fn per_class() -> usize {
    4
}

fn one() -> f64 {
    1.0
}

fn ks() -> Vec<usize> {
    vec![1, 2, 4, 8]
}

impl MetricJob {
    pub fn from_value(v: &toml::Value) -> Result<MetricJob, ConfigError> {
        let job: MetricJob = parse_config(v)?;
        job.data.check().map_err(|m| ConfigError::new("data", m))?;
        job.phi.check().map_err(|(k, m)| ConfigError::new(format!("phi.{k}"), m))?;
        if job.embedding.dim == 0 || job.embedding.hidden.contains(&0) {
            return Err(ConfigError::new("embedding", "layer widths and `dim` must be >= 1"));
        }
        if job.margin.is_some_and(|m| !(m >= 0.0 && m.is_finite())) {
            return Err(ConfigError::new("margin", "must be a finite number >= 0"));
        }
        if !(job.temperature > 0.0 && job.temperature.is_finite()) {
            return Err(ConfigError::new("temperature", "must be > 0"));
        }
        if job.per_class < 2 {
            return Err(ConfigError::new("per_class", "must be >= 2: pair and triplet losses need two samples of a class"));
        }
        if !(job.proxy_lr_scale > 0.0 && job.proxy_lr_scale.is_finite()) {
            return Err(ConfigError::new("proxy_lr_scale", "must be > 0"));
        }
        if job.recall_at.is_empty() || job.recall_at.contains(&0) {
            return Err(ConfigError::new("recall_at", "give one or more k >= 1"));
        }
        Ok(job)
    }

    pub fn margin(&self) -> f64 {
        self.margin.unwrap_or(match self.loss {
            LossKind::Contrastive => 0.5,
            _ => 0.2,
        })
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    MetricJob::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = MetricJob::from_value(v).map_err(|m| WorkerError::algo(NAME, m))?;
    Ok(Box::new(MetricTrainer::new(job, ctx)?))
}

/// The embedding MLP.
pub struct Embedder {
    layers: nn::Sequential,
    normalize: bool,
}

impl Embedder {
    pub fn new(p: &nn::Path, input: usize, cfg: &EmbeddingConfig) -> Embedder {
        let mut layers = nn::seq();
        let mut width = input as i64;
        for (k, &h) in cfg.hidden.iter().enumerate() {
            layers = layers.add(nn::linear(p / format!("l{k}"), width, h as i64, Default::default())).add_fn(|x| x.relu());
            width = h as i64;
        }
        layers = layers.add(nn::linear(p / "out", width, cfg.dim as i64, Default::default()));
        Embedder { layers, normalize: cfg.normalize }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let e = self.layers.forward(x);
        if self.normalize {
            unit(&e)
        } else {
            e
        }
    }
}

pub struct MetricTrainer {
    vs: nn::VarStore,
    embedder: Embedder,
    divergence: Divergence,
    /// One row per training class, for `loss = "proxy"`.
    proxies: Option<Tensor>,
    /// Every sample, standardised by the training split's mean and std.
    x: Tensor,
    data: Dataset,
    split: Split,
    /// Per training class (in `train_classes` order): its training rows.
    by_class: Vec<Vec<usize>>,
    /// Dataset class → training-class index (proxy index), if it trains.
    train_class: Vec<Option<usize>>,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// The `input_` retrieval metrics, computed at the first evaluation.
    input_scores: Option<Vec<(String, f64)>>,
    job: MetricJob,
    global_batch: usize,
    device: Device,
}

impl MetricTrainer {
    pub fn new(job: MetricJob, ctx: &BuildContext) -> Result<MetricTrainer, WorkerError> {
        let err = |m: String| WorkerError::algo(NAME, m);
        let data = data::load(&job.data).map_err(|e| err(format!("data: {e}")))?;
        let split = data::split(&data, &job.data).map_err(|e| err(format!("data: {e}")))?;
        let per = ctx.global_batch / (ctx.world_size * ctx.micro_steps).max(1);
        if per % job.per_class != 0 || per < 2 * job.per_class {
            return Err(err(format!("each rank's batch is {per} samples (train.global_batch {} over {} rank(s) × {} micro-step(s)); it must be a multiple of per_class = {} with two classes or more", ctx.global_batch, ctx.world_size, ctx.micro_steps, job.per_class)));
        }
        let (mean, std) = standardisation(&data, &split.train);
        let mut x = data.x.clone();
        for row in x.chunks_exact_mut(data.dim) {
            for ((v, m), s) in row.iter_mut().zip(&mean).zip(&std) {
                *v = (*v - m) / s;
            }
        }
        let x = Tensor::from_slice(&x).view([data.len() as i64, data.dim as i64]).to_device(ctx.device);
        let mut train_class = vec![None; data.classes.len()];
        let mut by_class: Vec<Vec<usize>> = Vec::new();
        for &i in &split.train {
            let c = *train_class[data.y[i]].get_or_insert_with(|| {
                by_class.push(Vec::new());
                by_class.len() - 1
            });
            by_class[c].push(i);
        }
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let embedder = Embedder::new(&(&root / "embed"), data.dim, &job.embedding);
        let divergence = Divergence::new(job.divergence, &root, job.embedding.dim, &job.phi);
        let proxies = (job.loss == LossKind::Proxy).then(|| root.randn("proxies", &[by_class.len() as i64, job.embedding.dim as i64], 0.0, 1.0));
        Ok(MetricTrainer { vs, embedder, divergence, proxies, x, data, split, by_class, train_class, mean, std, input_scores: None, job, global_batch: ctx.global_batch, device: ctx.device })
    }

    /// This rank's rows for one micro-step: `per / per_class` distinct
    /// classes (repeating only when the batch asks for more classes than
    /// there are), `per_class` distinct samples of each (repeating only in
    /// classes smaller than that).
    pub fn batch_rows(&self, ctx: &StepContext, per: usize) -> Vec<usize> {
        let key = splitmix(ctx.seed ^ splitmix(ctx.step.wrapping_mul(0x9e37_79b9) ^ splitmix(((ctx.micro_step * ctx.world_size + ctx.rank) as u64) << 20)));
        let classes = shuffled(self.by_class.len(), key, 0);
        let mut rows = Vec::with_capacity(per);
        for k in 0..per / self.job.per_class {
            let c = classes[k % classes.len()];
            let members = &self.by_class[c];
            let order = shuffled(members.len(), key ^ splitmix(c as u64 + 1), (k / classes.len()) as u64);
            rows.extend((0..self.job.per_class).map(|m| members[order[m % order.len()]]));
        }
        rows
    }

    fn proxies(&self) -> Option<Tensor> {
        self.proxies.as_ref().map(|p| if self.job.embedding.normalize { unit(p) } else { p.shallow_clone() })
    }

    /// Embeddings of `rows`, in chunks.
    fn embed(&self, rows: &[usize]) -> Tensor {
        let parts: Vec<Tensor> = rows
            .chunks(1024)
            .map(|c| {
                let idx = Tensor::from_slice(&c.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
                self.embedder.forward(&self.x.index_select(0, &idx))
            })
            .collect();
        if parts.is_empty() {
            Tensor::zeros([0, self.job.embedding.dim as i64], (Kind::Float, self.device))
        } else {
            Tensor::cat(&parts, 0)
        }
    }

    /// Standardised inputs of `rows`.
    fn inputs(&self, rows: &[usize]) -> Tensor {
        let idx = Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
        self.x.index_select(0, &idx)
    }

    /// Leave-one-out search among the test samples represented by `embed`
    /// (`dim` wide) under `divergence`: every rank embeds its share, the
    /// rows are gathered, each rank scores its share of the queries against
    /// all items, and the sums are gathered (exact, any world size).
    fn search(&self, ctx: &StepContext, dim: i64, embed: impl Fn(&[usize]) -> Tensor, divergence: &Divergence) -> Result<Vec<(String, f64)>, WorkerError> {
        let test = &self.split.test;
        let (lo, hi) = (test.len() * ctx.rank / ctx.world_size, test.len() * (ctx.rank + 1) / ctx.world_size);
        let mine = embed(&test[lo..hi]).to_device(Device::Cpu).contiguous();
        let mine: Vec<f32> = Vec::try_from(mine.reshape([-1]))?;
        let all = ctx.comm.all_gather_f32(&mine)?;
        let emb = Tensor::from_slice(&all).view([-1, dim]).to_device(self.device);
        let labels: Vec<usize> = test.iter().map(|&i| self.data.y[i]).collect();
        let mut score = Retrieval::new(&self.job.recall_at);
        for start in (lo..hi).step_by(256) {
            let end = (start + 256).min(hi);
            let d = divergence.pairwise(&emb.narrow(0, start as i64, (end - start) as i64), &emb, false)?.to_device(Device::Cpu).contiguous();
            let d: Vec<f32> = Vec::try_from(d.reshape([-1]))?;
            for (k, row) in d.chunks_exact(test.len()).enumerate() {
                score.add(start + k, row, &labels);
            }
        }
        let mut sums: Vec<f32> = score.hits.iter().map(|h| h.1 as f32).collect();
        sums.extend([score.ap_at_r as f32, score.queries as f32]);
        let gathered = ctx.comm.all_gather_f32(&sums)?;
        let mut total = Retrieval::new(&self.job.recall_at);
        for part in gathered.chunks_exact(sums.len()) {
            for (h, v) in total.hits.iter_mut().zip(part) {
                h.1 += *v as f64;
            }
            total.ap_at_r += part[sums.len() - 2] as f64;
            total.queries += part[sums.len() - 1] as usize;
        }
        let mut out = total.metrics();
        out.push(("queries".into(), total.queries as f64));
        Ok(out)
    }
}

/// Per-feature mean and std over `rows` (std 1 for constant features, such
/// as always-blank pixels).
fn standardisation(d: &Dataset, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; d.dim];
    for &i in rows {
        for (m, &v) in mean.iter_mut().zip(d.row(i)) {
            *m += v as f64 / n;
        }
    }
    let mut var = vec![0f64; d.dim];
    for &i in rows {
        for ((s, &v), m) in var.iter_mut().zip(d.row(i)).zip(&mean) {
            *s += (v as f64 - m).powi(2) / n;
        }
    }
    let std = var.iter().map(|v| if v.sqrt() > 1e-6 { v.sqrt() as f32 } else { 1.0 }).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

impl Algorithm for MetricTrainer {
    fn name(&self) -> &str {
        NAME
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn lr_scales(&self) -> Vec<(String, f64)> {
        if self.proxies.is_some() {
            vec![("proxies".into(), self.job.proxy_lr_scale)]
        } else {
            Vec::new()
        }
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let rows = self.batch_rows(ctx, per);
        let labels: Vec<i64> = rows.iter().map(|&i| self.train_class[self.data.y[i]].unwrap_or(0) as i64).collect();
        let labels = Tensor::from_slice(&labels).to_device(self.device);
        let emb = self.embed(&rows);
        let mut scalars = BTreeMap::new();
        let loss = match self.job.loss {
            LossKind::Proxy => {
                let proxies = self.proxies().ok_or_else(|| WorkerError::algo(NAME, "proxy loss without proxies"))?;
                let d = self.divergence.pairwise(&emb, &proxies, true)?;
                losses::proxy_nca(&d, &labels, self.job.temperature)
            }
            kind => {
                let d = self.divergence.pairwise(&emb, &emb, true)?;
                let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0)).to_kind(Kind::Float);
                let off = Tensor::eye(per as i64, (Kind::Float, self.device)).neg() + 1.0;
                let dd = d.detach();
                scalars.insert("d_pos".into(), (&dd * &same * &off).sum(Kind::Float).double_value(&[]) / (&same * &off).sum(Kind::Float).double_value(&[]).max(1.0));
                scalars.insert("d_neg".into(), (&dd * (same.neg() + 1.0)).sum(Kind::Float).double_value(&[]) / (same.neg() + 1.0).sum(Kind::Float).double_value(&[]).max(1.0));
                if kind == LossKind::Contrastive {
                    losses::contrastive(&d, &labels, self.job.margin())
                } else {
                    let (l, active) = losses::triplet(&d, &labels, self.job.margin());
                    scalars.insert("active_triplets".into(), active);
                    l
                }
            }
        };
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// Retrieval on the held-out samples, and once per run the same search
    /// on the standardised inputs under squared Euclidean (`input_` keys:
    /// what the embedding has to beat).
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let dim = self.job.embedding.dim as i64;
        let mut out: BTreeMap<String, f64> = self.search(ctx, dim, |rows| self.embed(rows), &self.divergence)?.into_iter().collect();
        if self.input_scores.is_none() {
            let raw = self.search(ctx, self.data.dim as i64, |rows| self.inputs(rows), &Divergence::SqEuclidean)?;
            self.input_scores = Some(raw.into_iter().filter(|(k, _)| k != "queries").map(|(k, v)| (format!("input_{k}"), v)).collect());
        }
        out.extend(self.input_scores.iter().flatten().cloned());
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// The trained networks (`metric.safetensors`) and what rebuilds and
    /// feeds them (`metric.json`: the job settings and the input standardisation).
    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        let err = |e: String| WorkerError::algo(NAME, e);
        self.vs.save(dir.join("metric.safetensors")).map_err(|e| err(format!("writing the weights: {e}")))?;
        let job = MetricJob { data: self.job.data.absolute(), ..self.job.clone() };
        let meta = serde_json::json!({ "job": job, "input_mean": self.mean, "input_std": self.std, "classes": self.data.classes });
        std::fs::write(dir.join("metric.json"), serde_json::to_string_pretty(&meta).unwrap_or_default()).map_err(|e| err(format!("writing metric.json: {e}")))
    }
}
