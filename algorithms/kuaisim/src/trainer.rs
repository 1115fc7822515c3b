//! The registry entries of the simulator's models (`kuaisim.retention` lives
//! in [`crate::retention`]), and `kuaisim.response`: trains the user response
//! model on a processed log, data-parallel, with per-behaviour AUC and
//! log-loss on the validation and test splits (gathered across ranks, so
//! exact).

use crate::log::{self, LogSpec, Logs};
use crate::response::{Batch, ResponseConfig, ResponseModel};
use crate::{BEHAVIOURS, NB};
use kiln_recsys::metrics::{auc, logloss};
use kiln_worker::rng::EpochStream;
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// The registry entries this crate provides.
pub const ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "kuaisim.response",
        summary: "KuaiSim's user response model: 7 behaviours from a causal Transformer over the user's history, on KuaiRand-layout logs",
        validate,
        build,
    },
    AlgorithmEntry {
        name: "kuaisim.retention",
        summary: "KuaiSim's learned retention model: the return day after a session from a causal Transformer over the user's past sessions (encoded by a trained simulator)",
        validate: crate::retention::validate,
        build: crate::retention::build,
    },
    crate::dqn::ENTRY,
];

/// The `[algorithm]` table of `kuaisim.response` jobs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseJob {
    /// The log and how to process it.
    pub data: LogSpec,
    #[serde(default)]
    pub model: ResponseConfig,
    /// Weight each behaviour's negatives by its positive/negative ratio on
    /// the training split (the reference's imbalance correction).
    #[serde(default = "yes")]
    pub reweight: bool,
    /// Coefficient of the mean squared id embedding (user and item) added to the loss.
    #[serde(default)]
    pub l2: f64,
}

fn yes() -> bool {
    true
}

impl ResponseJob {
    pub fn from_value(v: &toml::Value) -> Result<ResponseJob, ConfigError> {
        let job: ResponseJob = parse_config(v)?;
        job.data.check().map_err(|m| ConfigError::new("data", m))?;
        job.model.check().map_err(|(k, m)| ConfigError::new(format!("model.{k}"), m))?;
        if !(job.l2 >= 0.0 && job.l2.is_finite()) {
            return Err(ConfigError::new("l2", "must be a finite number >= 0"));
        }
        Ok(job)
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    ResponseJob::from_value(v).map(|_| ())
}

fn build(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let job = ResponseJob::from_value(v).map_err(|m| WorkerError::algo("kuaisim.response", m))?;
    Ok(Box::new(ResponseTrainer::new(job, ctx)?))
}

pub struct ResponseTrainer {
    vs: nn::VarStore,
    model: ResponseModel,
    logs: Logs,
    train: Vec<usize>,
    stream: EpochStream,
    /// Per behaviour: the weight of a negative label.
    negative_weight: Tensor,
    job: ResponseJob,
    global_batch: usize,
    device: Device,
}

impl ResponseTrainer {
    pub fn new(job: ResponseJob, ctx: &BuildContext) -> Result<ResponseTrainer, WorkerError> {
        let logs = log::load(&job.data).map_err(|e| WorkerError::algo("kuaisim.response", format!("data: {e}")))?;
        let train = logs.split_records(0);
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let model = ResponseModel::new(&vs.root(), &logs, &job.model);
        let rates = logs.positive_rates();
        let w: Vec<f32> = rates.iter().map(|&p| if job.reweight && p > 0.0 && p < 1.0 { (p / (1.0 - p)) as f32 } else { 1.0 }).collect();
        let stream = EpochStream::new(train.len(), ctx.seed);
        Ok(ResponseTrainer { vs, model, logs, train, stream, negative_weight: Tensor::from_slice(&w).to_device(ctx.device), job, global_batch: ctx.global_batch, device: ctx.device })
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    pub fn model(&self) -> &ResponseModel {
        &self.model
    }

    /// Σ over behaviours of the (weighted) mean BCE on logits.
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
        // Positives weigh 1, negatives their behaviour's weight.
        let w = labels + (labels.ones_like() - labels) * self.negative_weight.unsqueeze(0);
        let per = logits.f_binary_cross_entropy_with_logits::<&Tensor>(labels, Some(&w), None, Reduction::None)?;
        per.f_mean_dim([0i64].as_slice(), false, Kind::Float)?.f_sum(Kind::Float)
    }
}

impl Algorithm for ResponseTrainer {
    fn name(&self) -> &str {
        "kuaisim.response"
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let start = ctx.first_sample(self.global_batch);
        let rows: Vec<usize> = self.stream.rows(start, per).into_iter().map(|k| self.train[k]).collect();
        let b = Batch::from_records(&self.logs, &rows, self.job.model.history, self.device);
        let logits = self.model.forward(&b, true);
        let mut loss = self.loss(&logits, &b.labels)?;
        let mut scalars = BTreeMap::new();
        if self.job.l2 > 0.0 {
            let vars = self.vs.variables();
            let ids: Vec<&Tensor> = ["item.id.weight", "user.id.weight"].iter().filter_map(|k| vars.get(*k)).collect();
            let reg = ids.iter().map(|t| t.square().mean(Kind::Float)).fold(Tensor::zeros([], (Kind::Float, self.device)), |a, x| a + x);
            scalars.insert("l2".into(), reg.double_value(&[]));
            loss += reg * self.job.l2;
        }
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// Per behaviour: AUC and log-loss on the validation split (plain keys)
    /// and the test split (`test_` keys), over every rank's gathered scores;
    /// `mean_auc` over the behaviours with both classes present.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut out = BTreeMap::new();
        for (prefix, split) in [("", 1u8), ("test_", 2u8)] {
            let recs = self.logs.split_records(split);
            if recs.is_empty() {
                continue;
            }
            let (lo, hi) = (recs.len() * ctx.rank / ctx.world_size, recs.len() * (ctx.rank + 1) / ctx.world_size);
            let mut mine: Vec<f32> = Vec::new();
            for chunk in recs[lo..hi].chunks(512) {
                let b = Batch::from_records(&self.logs, chunk, self.job.model.history, self.device);
                let p = self.model.forward(&b, false).sigmoid();
                let rows = Tensor::cat(&[p, b.labels.shallow_clone()], 1).to_device(Device::Cpu).contiguous();
                mine.extend(Vec::<f32>::try_from(rows.reshape([-1]))?);
            }
            let all = ctx.comm.all_gather_f32(&mine)?;
            let rows: Vec<&[f32]> = all.chunks_exact(2 * NB).collect();
            let (mut sum, mut n) = (0.0, 0usize);
            for (b, name) in BEHAVIOURS.iter().enumerate() {
                let p: Vec<f32> = rows.iter().map(|r| r[b]).collect();
                let y: Vec<f32> = rows.iter().map(|r| r[NB + b]).collect();
                if let Some(a) = auc(&p, &y) {
                    out.insert(format!("{prefix}auc_{name}"), a);
                    sum += a;
                    n += 1;
                }
                out.insert(format!("{prefix}logloss_{name}"), logloss(&p, &y));
            }
            out.insert(format!("{prefix}mean_auc"), if n > 0 { sum / n as f64 } else { f64::NAN });
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// The simulator's response model for the environments: its weights
    /// (`response.safetensors`) and what rebuilds it (`simulator.json`: the
    /// model settings and the log spec, paths made absolute).
    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        let err = |e: String| WorkerError::algo("kuaisim.response", e);
        self.vs.save(dir.join(crate::env::WEIGHTS)).map_err(|e| err(format!("writing the weights: {e}")))?;
        let meta = serde_json::json!({ "model": self.job.model, "data": self.job.data.absolute() });
        std::fs::write(dir.join(crate::env::META), serde_json::to_string_pretty(&meta).unwrap_or_default()).map_err(|e| err(format!("writing {}: {e}", crate::env::META)))
    }
}
