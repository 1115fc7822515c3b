//! The recsys trainer: implements `kiln_worker::Algorithm` for Shared-Bottom and
//! MMoE on the synthetic generator.

use crate::config::RecsysConfig;
use crate::data::{Generator, TASKS};
use crate::metrics::{auc, logloss};
use crate::models::{Arch, Dims, MultiTaskModel};
use kiln_worker::{Algorithm, AlgorithmEntry, BuildContext, StepContext, StepOutput, WorkerError};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// The registry entries this crate provides.
pub const ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "recsys.shared-bottom",
        summary: "Shared-Bottom multi-task CTR model (shared MLP + per-task towers) on the multi-domain generator",
        validate,
        build: build_shared_bottom,
    },
    AlgorithmEntry {
        name: "recsys.mmoe",
        summary: "MMoE multi-task CTR model (shared experts, per-task softmax gates) on the multi-domain generator",
        validate,
        build: build_mmoe,
    },
];

fn validate(v: &toml::Value) -> Result<(), kiln_worker::ConfigError> {
    RecsysConfig::from_value(v).map(|_| ())
}

fn build_shared_bottom(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build("recsys.shared-bottom", Arch::SharedBottom, v, ctx)
}

fn build_mmoe(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    build("recsys.mmoe", Arch::Mmoe, v, ctx)
}

fn build(name: &'static str, arch: Arch, v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let cfg = RecsysConfig::from_value(v).map_err(|m| WorkerError::algo(name, m))?;
    Ok(Box::new(RecsysTrainer::new(name, arch, cfg, ctx)))
}

pub struct RecsysTrainer {
    name: &'static str,
    vs: nn::VarStore,
    model: MultiTaskModel,
    data: Generator,
    cfg: RecsysConfig,
    global_batch: usize,
    device: Device,
}

impl RecsysTrainer {
    pub fn new(name: &'static str, arch: Arch, cfg: RecsysConfig, ctx: &BuildContext) -> Self {
        // Same initial weights on every rank (rank 0's are broadcast anyway).
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let data = Generator::new(ctx.seed, cfg.users, cfg.items, cfg.domains, cfg.dense_features);
        let dims = Dims {
            users: cfg.users as i64,
            items: cfg.items as i64,
            domains: cfg.domains as i64,
            dense: cfg.dense_features as i64,
            embedding: cfg.embedding_dim,
            hidden: cfg.hidden,
            tower_hidden: cfg.tower_hidden,
            experts: cfg.experts,
        };
        let model = MultiTaskModel::new(&vs.root(), arch, dims);
        RecsysTrainer { name, vs, model, data, cfg, global_batch: ctx.global_batch, device: ctx.device }
    }
}

impl Algorithm for RecsysTrainer {
    fn name(&self) -> &str {
        self.name
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = self.global_batch / (ctx.world_size * ctx.micro_steps);
        let start = ctx.step * self.global_batch as u64 + ((ctx.micro_step * ctx.world_size + ctx.rank) * per) as u64;
        let batch = self.data.train_batch(start, per, self.device);
        let logits = self.model.forward(&batch);
        // Sum over tasks of each task's mean log-loss.
        let loss = logits.f_binary_cross_entropy_with_logits::<Tensor>(&batch.labels, None, None, Reduction::Mean)?
            * TASKS as f64;
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars: BTreeMap::new() })
    }

    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let n = self.cfg.eval_samples;
        let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
        let batch = self.data.eval_batch(lo as u64, hi - lo, self.device);
        let probs = self.model.forward(&batch).sigmoid().to_device(Device::Cpu).to_kind(Kind::Float);
        // Each rank's [probs | labels | truth] rows, gathered in rank order.
        let rows = Tensor::cat(&[probs, batch.labels.to_device(Device::Cpu), batch.truth.to_device(Device::Cpu)], 1).contiguous();
        let mine: Vec<f32> = Vec::<f32>::try_from(rows.reshape([-1]))?;
        let bytes: Vec<u8> = mine.iter().flat_map(|f| f.to_le_bytes()).collect();
        let parts = ctx.comm.all_gather_bytes(&bytes)?;
        let all: Vec<f32> = parts
            .iter()
            .flat_map(|p| p.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let width = 3 * TASKS;
        let col = |c: usize| all.chunks_exact(width).map(|r| r[c]).collect::<Vec<f32>>();
        let mut out = BTreeMap::new();
        for t in 0..TASKS {
            let (p, y, truth) = (col(t), col(TASKS + t), col(2 * TASKS + t));
            out.insert(format!("auc_task{t}"), auc(&p, &y).unwrap_or(f64::NAN));
            out.insert(format!("oracle_auc_task{t}"), auc(&truth, &y).unwrap_or(f64::NAN));
            out.insert(format!("logloss_task{t}"), logloss(&p, &y));
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }
}
