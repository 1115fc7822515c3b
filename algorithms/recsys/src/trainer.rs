//! The recsys trainer: implements `kiln_worker::Algorithm` for every model of
//! [`crate::models`] on the generator or a user's table ([`crate::source`]),
//! with M3oE's structure search.

use crate::config::RecsysConfig;
use crate::batch::Batch;
use crate::data::{Generator, Shape};
use crate::source::Source;
use crate::table;
use crate::metrics::{auc, logloss};
use crate::models::domain::Structure;
use crate::models::{Arch, Dims, MultiTaskModel};
use kiln_worker::{Algorithm, AlgorithmEntry, BuildContext, StepContext, StepOutput, WorkerError};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Reduction, Tensor};

macro_rules! entry {
    ($name:literal, $arch:expr, $summary:literal) => {
        AlgorithmEntry {
            name: $name,
            summary: $summary,
            validate,
            build: |v, ctx| build($name, $arch, v, ctx),
        }
    };
}

/// The registry entries this crate provides.
pub const ENTRIES: &[AlgorithmEntry] = &[
    entry!("recsys.shared-bottom", Arch::SharedBottom, "Shared-Bottom multi-task CTR model (shared MLP + per-task towers) on the multi-domain generator"),
    entry!("recsys.mmoe", Arch::Mmoe, "MMoE multi-task CTR model (shared experts, per-task softmax gates) on the multi-domain generator"),
    entry!("recsys.ple", Arch::Ple, "PLE multi-task CTR model (per-task and shared experts over stacked extraction levels)"),
    entry!("recsys.esmm", Arch::Esmm, "ESMM: CTR and CVR networks, pCTCVR = pCTR · pCVR over the entire impression space"),
    entry!("recsys.aitm", Arch::Aitm, "AITM: per-task bottoms with attention-based information transfer between sequential tasks and a calibrator"),
    entry!("recsys.star", Arch::Star, "STAR multi-domain CTR model (star-topology layers, partitioned normalisation, auxiliary domain network)"),
    entry!("recsys.m3oe", Arch::M3oe, "M3oE multi-domain multi-task model (shared / domain / task experts, two-level fusion, structure search)"),
    crate::autoassign::job::ENTRY,
    crate::llmsim::sasrec::ENTRY,
];

fn validate(v: &toml::Value) -> Result<(), kiln_worker::ConfigError> {
    RecsysConfig::from_value(v).map(|_| ())
}

fn build(name: &'static str, arch: Arch, v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    let cfg = RecsysConfig::from_value(v).map_err(|m| WorkerError::algo(name, m))?;
    Ok(Box::new(RecsysTrainer::new(name, arch, cfg, ctx)?))
}

/// Adam state of the structure search (the scalars are one tensor of 4).
struct Search {
    m: Tensor,
    v: Tensor,
    steps: i64,
}

/// How the per-sample, per-task log-losses make the loss.
enum LossKind {
    /// Σ_t w_t · (task t's mean log-loss).
    Tasks(Vec<f64>),
    /// Σ_{d,t} w_t · (the mean log-loss of task t over domain d's samples).
    Cells(Vec<f64>),
    /// Σ_t ½ · exp(−s_t) · L_t + ½ · s_t, s_t a learned log-variance per task.
    Uncertainty(Tensor),
}

pub struct RecsysTrainer {
    name: &'static str,
    loss: LossKind,
    vs: nn::VarStore,
    model: MultiTaskModel,
    data: Source,
    tasks: Vec<String>,
    domains: usize,
    cfg: RecsysConfig,
    global_batch: usize,
    device: Device,
    search: Option<Search>,
}

impl RecsysTrainer {
    pub fn new(name: &'static str, arch: Arch, cfg: RecsysConfig, ctx: &BuildContext) -> Result<Self, WorkerError> {
        let data = match &cfg.data {
            None => {
                let shape = Shape { domain_shift: cfg.domain_shift, funnel: cfg.funnel };
                let data = Generator::with_shape(ctx.seed, cfg.users, cfg.items, cfg.domains, cfg.dense_features, shape);
                Source::Generated { data, eval_samples: cfg.eval_samples }
            }
            Some(spec) => {
                let spec = spec.resolve().map_err(|e| WorkerError::algo(name, format!("data: {e}")))?;
                let t = table::load(&spec).map_err(|e| WorkerError::algo(name, format!("data: {e}")))?;
                if t.val.is_empty() && cfg.search && arch == Arch::M3oe {
                    return Err(WorkerError::algo(name, "data: the validation split is empty, and M3oE's structure search reads it; give split.fractions a validation share or set search = false"));
                }
                Source::Table(crate::source::TableSource::new(t, ctx.seed))
            }
        };
        let schema = data.schema();
        if matches!(arch, Arch::Esmm | Arch::Aitm) && schema.tasks.len() < 2 {
            return Err(WorkerError::algo(name, format!("{name} models a funnel of tasks and needs at least two labels; the data has {}", schema.tasks.len())));
        }
        // Same initial weights on every rank (rank 0's are broadcast anyway).
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let tasks = schema.tasks.len();
        let dims = Dims {
            domains: schema.domains,
            tasks,
            embedding: cfg.embedding_dim,
            sparse_min_rows: cfg.sparse_min_rows,
            hidden: cfg.hidden,
            tower_hidden: cfg.tower_hidden,
            experts: cfg.experts,
            task_experts: cfg.task_experts,
            levels: cfg.levels,
        };
        let model = MultiTaskModel::new(&vs.root(), arch, &schema, dims, cfg.calibration);
        let weights = cfg.task_weights.clone().unwrap_or_else(|| vec![1.0; tasks]);
        let loss = match cfg.loss.as_str() {
            "cells" => LossKind::Cells(weights),
            "uncertainty" => LossKind::Uncertainty(vs.root().sub("loss").var("log_var", &[tasks as i64], nn::Init::Const(0.0))),
            _ => LossKind::Tasks(weights),
        };
        let search = (model.structure().is_some() && cfg.search).then(|| Search {
            m: Tensor::zeros([4], (Kind::Float, ctx.device)),
            v: Tensor::zeros([4], (Kind::Float, ctx.device)),
            steps: 0,
        });
        Ok(RecsysTrainer {
            name,
            loss,
            vs,
            model,
            data,
            tasks: schema.tasks,
            domains: schema.domains as usize,
            cfg,
            global_batch: ctx.global_batch,
            device: ctx.device,
            search,
        })
    }

    /// The tasks' loss: the sum over tasks of each task's mean log-loss.
    fn task_loss(logits: &Tensor, b: &Batch) -> Result<Tensor, tch::TchError> {
        Ok(logits.f_binary_cross_entropy_with_logits::<Tensor>(&b.labels, None, None, Reduction::Mean)? * logits.size()[1] as f64)
    }

    /// One first-order (DARTS-style) step of M3oE's structure scalars on a
    /// validation batch: the gradient of the validation loss with respect to the
    /// scalars only, then Adam. Every rank computes the same batch and the same
    /// update, so they need no communication; the main optimizer never sees them.
    fn search_step(&mut self, step: u64) -> Result<(), WorkerError> {
        let (Some(search), Some(s)) = (self.search.as_mut(), self.model.structure()) else { return Ok(()) };
        if step % self.cfg.search_every != 0 {
            return Ok(());
        }
        let k = step / self.cfg.search_every;
        let val = self.data.val_batch(k * self.cfg.search_batch as u64, self.cfg.search_batch, self.device);
        s.live.set(true);
        let out = self.model.forward(&val);
        let loss = Self::task_loss(&out.logits, &val);
        s.live.set(false);
        let g = Tensor::f_run_backward(&[&loss?], &[&s.raw], false, false)?.remove(0);
        let _guard = tch::no_grad_guard();
        search.steps += 1;
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        search.m = &search.m * b1 + &g * (1.0 - b1);
        search.v = &search.v * b2 + &g * &g * (1.0 - b2);
        let t = search.steps as f64;
        let update = (&search.m / (1.0 - b1.powf(t))) / ((&search.v / (1.0 - b2.powf(t))).sqrt() + eps) * self.cfg.search_lr;
        let mut raw = s.raw.shallow_clone();
        let _ = raw.f_sub_(&update)?;
        Ok(())
    }
}

fn structure_values(s: &Structure) -> Result<[f64; 4], tch::TchError> {
    let v = Vec::<f32>::try_from(s.raw.detach().sigmoid().to_device(Device::Cpu))?;
    Ok([v[0] as f64, v[1] as f64, v[2] as f64, v[3] as f64])
}

impl Algorithm for RecsysTrainer {
    fn name(&self) -> &str {
        self.name
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    fn sparse_parameters(&self) -> Vec<String> {
        self.model.sparse_tables().to_vec()
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let mut scalars = BTreeMap::new();
        if ctx.micro_step == 0 {
            self.search_step(ctx.step)?;
        }
        if let Some(s) = self.model.structure() {
            for (name, v) in Structure::NAMES.iter().zip(structure_values(s)?) {
                scalars.insert((*name).to_string(), v);
            }
        }
        let per = ctx.per_rank(self.global_batch);
        let start = ctx.first_sample(self.global_batch);
        let batch = self.data.train_batch(start, per, self.device);
        let out = self.model.forward(&batch);
        let per_sample = out.logits.f_binary_cross_entropy_with_logits::<Tensor>(&batch.labels, None, None, Reduction::None)?; // [n, T]
        let mut loss = match &self.loss {
            LossKind::Tasks(w) => (per_sample.mean_dim(0, false, Kind::Float) * Tensor::from_slice(w).to_kind(Kind::Float).to_device(self.device)).sum(Kind::Float),
            LossKind::Cells(w) => {
                // Each cell's mean is over the whole step's samples of its domain
                // (counted from the generator), so N ranks compute what one would.
                let mut counts = vec![0usize; self.domains];
                for d in self.data.train_domains(ctx.step * self.global_batch as u64, self.global_batch) {
                    counts[d] += 1;
                }
                let parts = (ctx.world_size * ctx.micro_steps) as f64;
                let inv: Vec<f32> = counts.iter().map(|&c| if c > 0 { (parts / c as f64) as f32 } else { 0.0 }).collect();
                let per_row = Tensor::from_slice(&inv).to_device(self.device).index_select(0, &batch.domain).unsqueeze(1);
                (per_sample * per_row * Tensor::from_slice(w).to_kind(Kind::Float).to_device(self.device)).sum(Kind::Float)
            }
            LossKind::Uncertainty(log_var) => {
                let l = per_sample.mean_dim(0, false, Kind::Float);
                for (t, name) in self.tasks.iter().enumerate() {
                    scalars.insert(format!("task_weight_{name}"), (-log_var.get(t as i64)).exp().double_value(&[]));
                }
                ((l * (-log_var).exp() + log_var) * 0.5).sum(Kind::Float)
            }
        };
        if let Some(aux) = out.aux_loss {
            scalars.insert("calibration".into(), aux.double_value(&[]));
            loss = loss + aux;
        }
        loss.f_backward()?;
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// AUC (exact: every rank's scores are gathered) and log-loss per task and
    /// per (domain, task) cell, and the mean AUC over the cells, on each eval
    /// set of the source; the generator's oracle AUC per task.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let mut out = BTreeMap::new();
        for (k, set) in self.data.eval_sets().iter().enumerate() {
            let n = set.rows;
            let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
            let batch = self.data.eval_batch(k, lo, hi, self.device);
            let probs = self.model.forward(&batch).logits.sigmoid().to_device(Device::Cpu).to_kind(Kind::Float);
            // Each rank's [probs | labels | truth? | domain] rows, gathered in rank order.
            let domain = batch.domain.to_device(Device::Cpu).to_kind(Kind::Float).unsqueeze(1);
            let mut cols = vec![probs, batch.labels.to_device(Device::Cpu).to_kind(Kind::Float)];
            cols.extend(batch.truth.as_ref().map(|t| t.to_device(Device::Cpu)));
            cols.push(domain);
            let rows = Tensor::cat(&cols, 1).contiguous();
            let width = rows.size()[1] as usize;
            let mine: Vec<f32> = Vec::<f32>::try_from(rows.reshape([-1]))?;
            let all = ctx.comm.all_gather_f32(&mine)?;
            let rows: Vec<&[f32]> = all.chunks_exact(width).collect();
            let col = |rows: &[&[f32]], c: usize| rows.iter().map(|r| r[c]).collect::<Vec<f32>>();
            let tasks = self.tasks.len();
            let with_truth = batch.truth.is_some();
            let p = set.prefix;
            let (mut cell_sum, mut cells) = (0.0, 0usize);
            for (t, name) in self.tasks.iter().enumerate() {
                let (s, y) = (col(&rows, t), col(&rows, tasks + t));
                out.insert(format!("{p}auc_{name}"), auc(&s, &y).unwrap_or(f64::NAN));
                if with_truth {
                    out.insert(format!("{p}oracle_auc_{name}"), auc(&col(&rows, 2 * tasks + t), &y).unwrap_or(f64::NAN));
                }
                out.insert(format!("{p}logloss_{name}"), logloss(&s, &y));
                for d in 0..self.domains {
                    let mine: Vec<&[f32]> = rows.iter().copied().filter(|r| r[width - 1] as usize == d).collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let (s, y) = (col(&mine, t), col(&mine, tasks + t));
                    if let Some(a) = auc(&s, &y) {
                        out.insert(format!("{p}auc_d{d}_{name}"), a);
                        cell_sum += a;
                        cells += 1;
                    }
                    out.insert(format!("{p}logloss_d{d}_{name}"), logloss(&s, &y));
                }
            }
            out.insert(format!("{p}mean_cell_auc"), if cells > 0 { cell_sum / cells as f64 } else { f64::NAN });
        }
        if let Some(s) = self.model.structure() {
            for (name, v) in Structure::NAMES.iter().zip(structure_values(s)?) {
                out.insert((*name).to_string(), v);
            }
        }
        Ok(out)
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// M3oE's structure scalars and their optimizer's state: a resumed run
    /// continues the same search.
    fn state(&self) -> Vec<(String, Tensor)> {
        match (self.model.structure(), &self.search) {
            (Some(s), Some(search)) => vec![
                ("structure".into(), s.raw.detach().copy()),
                ("search_m".into(), search.m.copy()),
                ("search_v".into(), search.v.copy()),
                ("search_steps".into(), Tensor::from_slice(&[search.steps])),
            ],
            _ => Vec::new(),
        }
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        let (Some(s), Some(search)) = (self.model.structure(), self.search.as_mut()) else { return Ok(()) };
        if state.is_empty() {
            // A checkpoint of a run without the search: start searching from here.
            return Ok(());
        }
        let map: BTreeMap<String, Tensor> = state.into_iter().collect();
        let get = |k: &str| map.get(k).ok_or_else(|| WorkerError::algo(self.name, format!("the checkpoint's algorithm state has no {k} (written by another model?)")));
        let _guard = tch::no_grad_guard();
        let four = |k: &str| -> Result<Tensor, WorkerError> {
            let t = get(k)?;
            if t.size() != [4] {
                return Err(WorkerError::algo(self.name, format!("the checkpoint's {k} has shape {:?}, expected [4]", t.size())));
            }
            Ok(t.to_kind(Kind::Float).to_device(self.device))
        };
        s.raw.shallow_clone().f_copy_(&four("structure")?)?;
        search.m = four("search_m")?;
        search.v = four("search_v")?;
        search.steps = get("search_steps")?.f_int64_value(&[0])?;
        Ok(())
    }
}
