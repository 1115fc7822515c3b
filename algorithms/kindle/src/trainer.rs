//! KINDLE's stages as kiln algorithms: `kindle.teacher` (temporal attention +
//! prior-masked gene attention, trained to predict the next W cells) and
//! `kindle.student` (no temporal layer, no prior; α · prediction + (1 − α) ·
//! distillation from the frozen teacher). Evaluation reports the validation
//! error and, from the model's gene attention averaged over non-overlapping
//! segments of T cells, the network's BEELINE metrics (and KINDLE's top-k
//! precision) against a reference when one is given; `kiln export` writes the
//! ranked edge list.
//!
//! Windows are split chronologically: the first 80 % of each trajectory's
//! windows train, the rest validate. Sample k of the run is window
//! perm_epoch[k mod n] of a seeded shuffle, so every rank and every resumed
//! run agree on the data.

use crate::beeline::{read_expression, read_network, read_pseudotime, read_tfs, write_edges, Network, ScoredEdge};
use crate::metrics::{evaluate as score, Universe};
use crate::model::{distill_loss, masked_mse, Distill, Model, ModelConfig, PriorMask};
use crate::prepare::{prepare, windows, GeneSelection, Normalise, Prepared};
use kiln_worker::rng::{shuffled, splitmix, unit};
use kiln_worker::{parse_config, Algorithm, AlgorithmEntry, BuildContext, ConfigError, StepContext, StepOutput, WorkerError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub static ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "kindle",
        summary: "KINDLE in one job: the teacher for teacher_steps, then the student distilled from it; the student's attention is the network",
        validate,
        build: build_pipeline,
    },
    AlgorithmEntry {
        name: "kindle.teacher",
        summary: "KINDLE stage 1: teacher with causal temporal attention and prior-masked gene attention, predicting the next W cells",
        validate,
        build: build_teacher,
    },
    AlgorithmEntry {
        name: "kindle.student",
        summary: "KINDLE stage 2: prior-free student distilled from the teacher (hard, soft, bilinear or Gaussian RBF); its attention is the network",
        validate,
        build: build_student,
    },
];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindleConfig {
    /// BEELINE files.
    pub expression: PathBuf,
    pub pseudotime: PathBuf,
    /// The teacher's prior network (Gene1 regulates Gene2).
    pub prior: Option<PathBuf>,
    /// A reference network to evaluate against (optional).
    pub truth: Option<PathBuf>,
    /// A TF list: for `select = "tfs-plus"` and `universe = "tf"`.
    pub tfs: Option<PathBuf>,
    /// "all", "variable" (the `select_n` most variable) or "tfs-plus" (TFs + `select_n`).
    #[serde(default = "default_select")]
    pub select: String,
    #[serde(default = "default_select_n")]
    pub select_n: usize,
    #[serde(default)]
    pub log1p: bool,
    #[serde(default = "yes")]
    pub zscore: bool,
    /// T, W and the stride between windows.
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_horizon")]
    pub horizon: usize,
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default = "default_d_model")]
    pub d_model: i64,
    #[serde(default = "default_d_ff")]
    pub d_ff: i64,
    #[serde(default = "default_heads")]
    pub heads: i64,
    #[serde(default = "default_layers")]
    pub layers: i64,
    /// The teacher's prior mask: "hard" or "soft".
    #[serde(default = "default_mask")]
    pub mask: String,
    /// Evaluation universe: "all" pairs or "tf"-sourced pairs.
    #[serde(default = "default_universe")]
    pub universe: String,
    /// Student: the teacher's weights (its checkpoint's model.safetensors;
    /// same data and model settings).
    pub teacher: Option<PathBuf>,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// "hard", "soft", "bilinear" or "rbf".
    #[serde(default = "default_distill")]
    pub distill: String,
    #[serde(default = "default_tau")]
    pub tau: f64,
    #[serde(default = "one_f")]
    pub lambda: f64,
    /// A learned embedding per gene (see [`ModelConfig::gene_identity`]).
    #[serde(default = "yes")]
    pub gene_identity: bool,
    /// Share of genes hidden from each training window's input (their future
    /// still predicted), so a gene's prediction has to come from the genes it
    /// attends to rather than from its own past. 0 turns it off.
    #[serde(default)]
    pub input_mask: f64,
    /// `kindle` (both stages in one job): the teacher's share of
    /// `train.steps`; the student trains for the rest.
    pub teacher_steps: Option<u64>,
    /// Both models read only the sign of each (normalised) input value.
    #[serde(default)]
    pub binarize: bool,
}

fn default_select() -> String {
    "all".into()
}
fn default_select_n() -> usize {
    500
}
fn yes() -> bool {
    true
}
fn default_window() -> usize {
    8
}
fn default_horizon() -> usize {
    4
}
fn one() -> usize {
    1
}
fn default_d_model() -> i64 {
    32
}
fn default_d_ff() -> i64 {
    64
}
fn default_heads() -> i64 {
    4
}
fn default_layers() -> i64 {
    2
}
fn default_mask() -> String {
    "hard".into()
}
fn default_universe() -> String {
    "all".into()
}
fn default_alpha() -> f64 {
    0.5
}
fn default_distill() -> String {
    "rbf".into()
}
fn default_tau() -> f64 {
    2.0
}
fn one_f() -> f64 {
    1.0
}

impl KindleConfig {
    fn from_value(v: &toml::Value) -> Result<KindleConfig, ConfigError> {
        let c: KindleConfig = parse_config(v)?;
        c.selection_kind()?;
        c.mask()?;
        c.distill()?;
        if !["all", "tf"].contains(&c.universe.as_str()) {
            return Err(ConfigError::new("universe", format!("'{}' is not one of all, tf", c.universe)));
        }
        if !(c.input_mask == 0.0 || (0.01..1.0).contains(&c.input_mask)) {
            return Err(ConfigError::new("input_mask", "must be 0 (off) or at least 0.01 and below 1 (the share of genes hidden)"));
        }
        if !(0.0..=1.0).contains(&c.alpha) {
            return Err(ConfigError::new("alpha", "must be in [0, 1]"));
        }
        if c.window == 0 || c.horizon == 0 || c.stride == 0 {
            return Err(ConfigError::new("window", "window, horizon and stride must be at least 1"));
        }
        if c.d_model % c.heads != 0 {
            return Err(ConfigError::new("d_model", format!("must be a multiple of heads ({})", c.heads)));
        }
        Ok(c)
    }

    fn selection_kind(&self) -> Result<(), ConfigError> {
        match self.select.as_str() {
            "all" | "variable" => Ok(()),
            "tfs-plus" if self.tfs.is_some() => Ok(()),
            "tfs-plus" => Err(ConfigError::new("select", "\"tfs-plus\" needs a TF list (tfs = \"…\")")),
            other => Err(ConfigError::new("select", format!("'{other}' is not one of all, variable, tfs-plus"))),
        }
    }

    fn mask(&self) -> Result<PriorMask, ConfigError> {
        match self.mask.as_str() {
            "hard" => Ok(PriorMask::Hard),
            "soft" => Ok(PriorMask::Soft { inside: 0.9, outside: 0.1 }),
            other => Err(ConfigError::new("mask", format!("'{other}' is not one of hard, soft"))),
        }
    }

    fn distill(&self) -> Result<Distill, ConfigError> {
        Ok(match self.distill.as_str() {
            "hard" => Distill::Hard,
            "soft" => Distill::Soft { tau: self.tau },
            "bilinear" => Distill::Bilinear,
            "rbf" => Distill::Rbf { lambda: self.lambda },
            other => return Err(ConfigError::new("distill", format!("'{other}' is not one of hard, soft, bilinear, rbf"))),
        })
    }

    fn model(&self, genes: usize, teacher: bool) -> ModelConfig {
        ModelConfig {
            genes: genes as i64,
            window: self.window as i64,
            horizon: self.horizon as i64,
            d_model: self.d_model,
            d_ff: self.d_ff,
            heads: self.heads,
            layers: self.layers,
            temporal: teacher,
            mask: if teacher { self.mask().unwrap_or(PriorMask::Hard) } else { PriorMask::None },
            gene_identity: self.gene_identity,
            masking: !teacher && self.input_mask > 0.0,
            binarize: self.binarize,
        }
    }
}

fn validate(v: &toml::Value) -> Result<(), ConfigError> {
    KindleConfig::from_value(v).map(|_| ())
}

fn build_teacher(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    Ok(Box::new(build_trainer("kindle.teacher", true, v, ctx)?))
}

fn build_student(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    Ok(Box::new(build_trainer("kindle.student", false, v, ctx)?))
}

fn build_pipeline(v: &toml::Value, ctx: &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError> {
    Ok(Box::new(build_trainer("kindle", false, v, ctx)?))
}

/// The data every stage reads.
struct Data {
    prepared: Prepared,
    train: Vec<(usize, usize)>,
    val: Vec<(usize, usize)>,
    truth: Option<Network>,
    universe: Universe,
}

fn load(name: &str, cfg: &KindleConfig) -> Result<(Data, Option<Network>), WorkerError> {
    let err = |e: String| WorkerError::algo(name, e);
    let expr = read_expression(&cfg.expression).map_err(|e| err(e.to_string()))?;
    let pt = read_pseudotime(&cfg.pseudotime).map_err(|e| err(e.to_string()))?;
    pt.check_cells(&expr, &cfg.pseudotime).map_err(|e| err(e.to_string()))?;
    let tfs = cfg.tfs.as_ref().map(|p| read_tfs(p)).transpose().map_err(|e| err(e.to_string()))?;
    let selection = match cfg.select.as_str() {
        "variable" => GeneSelection::TopVariable(cfg.select_n),
        "tfs-plus" => GeneSelection::TfsPlus { tfs: tfs.clone().unwrap_or_default(), n: cfg.select_n },
        _ => GeneSelection::All,
    };
    let prepared = prepare(&expr, &pt, &selection, Normalise { log1p: cfg.log1p, zscore: cfg.zscore }).map_err(|e| err(e.to_string()))?;
    let all = windows(&prepared, cfg.window, cfg.horizon, cfg.stride).map_err(err)?;
    // Chronological split per trajectory: the last 20 % of its windows validate.
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for s in 0..prepared.series.len() {
        let mine: Vec<(usize, usize)> = all.iter().copied().filter(|w| w.0 == s).collect();
        let cut = ((mine.len() as f64) * 0.8).ceil() as usize;
        train.extend_from_slice(&mine[..cut.min(mine.len())]);
        val.extend_from_slice(&mine[cut.min(mine.len())..]);
    }
    let genes: HashSet<&str> = prepared.genes.iter().map(String::as_str).collect();
    let restrict = |path: &Path, what: &str| -> Result<Network, WorkerError> {
        read_network(path).map_err(|e| err(e.to_string()))?.restricted_to(&genes, what).map_err(|e| err(e.to_string()))
    };
    let prior = cfg.prior.as_ref().map(|p| restrict(p, &format!("the prior {}", p.display()))).transpose()?;
    let truth = cfg.truth.as_ref().map(|p| restrict(p, &format!("the reference {}", p.display()))).transpose()?;
    let universe = if cfg.universe == "tf" { Universe::TfEdges { tfs: tfs.map(|t| t.into_iter().collect()) } } else { Universe::AllPairs };
    Ok((Data { prepared, train, val, truth, universe }, prior))
}

/// `prior[target][regulator]` over the selected genes.
fn prior_matrix(genes: &[String], prior: &Network) -> Vec<Vec<bool>> {
    let idx: HashMap<&str, usize> = genes.iter().enumerate().map(|(i, g)| (g.as_str(), i)).collect();
    let mut m = vec![vec![false; genes.len()]; genes.len()];
    for e in &prior.edges {
        if let (Some(&r), Some(&t)) = (idx.get(e.from.as_str()), idx.get(e.to.as_str())) {
            m[t][r] = true;
        }
    }
    m
}

impl KindleTrainer {
    /// The trainer of `name` ("kindle.teacher" or "kindle.student") for an
    /// `[algorithm]` table, for callers that need more than `Algorithm` (knockouts).
    pub fn new(name: &str, v: &toml::Value, ctx: &BuildContext) -> Result<KindleTrainer, WorkerError> {
        let (name, teacher): (&'static str, bool) = match name {
            "kindle.teacher" => ("kindle.teacher", true),
            "kindle.student" => ("kindle.student", false),
            "kindle" => ("kindle", false),
            other => return Err(WorkerError::algo(other, "not a KINDLE job (kindle, kindle.teacher or kindle.student)")),
        };
        build_trainer(name, teacher, v, ctx)
    }
}

fn build_trainer(name: &'static str, teacher: bool, v: &toml::Value, ctx: &BuildContext) -> Result<KindleTrainer, WorkerError> {
    let err = |e: String| WorkerError::algo(name, e);
    let cfg = KindleConfig::from_value(v).map_err(|e| err(e.to_string()))?;
    if ctx.global_batch % (ctx.world_size * ctx.micro_steps) != 0 {
        return Err(err(format!("train.global_batch ({}) must split evenly over {} rank(s) × {} micro-step(s)", ctx.global_batch, ctx.world_size, ctx.micro_steps)));
    }
    let (data, prior) = load(name, &cfg)?;
    let m = data.prepared.genes.len();
    let prior_m = prior.as_ref().map(|p| prior_matrix(&data.prepared.genes, p));
    tch::manual_seed(ctx.seed as i64);
    let stage = match (name, cfg.teacher_steps) {
        ("kindle", Some(n)) if n >= 1 && n < ctx.steps => Stage::Pipeline { teacher_steps: n },
        ("kindle", Some(n)) => return Err(err(format!("teacher_steps ({n}) must be at least 1 and below train.steps ({}), which the student's steps follow", ctx.steps))),
        ("kindle", None) => return Err(err("a kindle job needs teacher_steps: how many of train.steps train the teacher before the student".into())),
        (_, Some(_)) => return Err(err("teacher_steps is for `kindle` jobs (both stages); this is one stage".into())),
        _ if teacher => Stage::Teacher,
        _ => Stage::Student,
    };
    let (model, frozen) = if teacher {
        let prior_m = prior_m.ok_or_else(|| err("the teacher needs a prior network (prior = \"…\")".into()))?;
        (Model::new(cfg.model(m, true), Some(&prior_m), ctx.device).map_err(err)?, None)
    } else if let Stage::Pipeline { .. } = stage {
        if cfg.teacher.is_some() {
            return Err(err("a kindle job trains its own teacher: drop teacher = \"…\" (or run kindle.student)".into()));
        }
        let prior_m = prior_m.ok_or_else(|| err("the teacher needs a prior network (prior = \"…\")".into()))?;
        let t = Model::new(cfg.model(m, true), Some(&prior_m), ctx.device).map_err(err)?;
        (Model::new(cfg.model(m, false), None, ctx.device).map_err(err)?, Some(t))
    } else {
        let path = cfg.teacher.clone().ok_or_else(|| err("the student needs the teacher's weights (teacher = \"…/model.safetensors\")".into()))?;
        let prior_m = prior_m.ok_or_else(|| err("the student needs the teacher's prior (prior = \"…\") to rebuild the teacher".into()))?;
        let t = Model::new(cfg.model(m, true), Some(&prior_m), ctx.device).map_err(err)?;
        load_into(&t, &path).map_err(err)?;
        (Model::new(cfg.model(m, false), None, ctx.device).map_err(err)?, Some(t))
    };
    Ok(KindleTrainer { name, stage, cfg, data, model, teacher: frozen, global_batch: ctx.global_batch })
}

/// Copies a safetensors file's tensors into `model` by name and shape.
fn load_into(model: &Model, path: &Path) -> Result<(), String> {
    let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path).map_err(|e| format!("{}: {e}", path.display()))?.into_iter().collect();
    let _g = tch::no_grad_guard();
    let wanted = model.named_parameters();
    if let Some(extra) = saved.keys().find(|k| !wanted.iter().any(|(n, _)| n == *k)) {
        return Err(format!("{}: holds {extra}, which this teacher has not (same layers and settings as the teacher's job?)", path.display()));
    }
    for (name, p) in wanted {
        let t = saved.get(&name).ok_or_else(|| {
            format!("{}: no tensor {name} (is it a teacher checkpoint of this dataset and model size? teachers saved before gene_identity existed need gene_identity = false)", path.display())
        })?;
        if t.size() != p.size() {
            return Err(format!("{}: {name} has shape {:?}, this teacher needs {:?} (same genes, window, horizon and model size?)", path.display(), t.size(), p.size()));
        }
        p.shallow_clone().copy_(&t.to_device(p.device()));
    }
    Ok(())
}

/// What [`KindleTrainer::knockout`] predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct Knockout {
    pub genes: Vec<String>,
    pub knocked: Vec<String>,
    pub control: Vec<f64>,
    pub knockout: Vec<f64>,
}

impl Knockout {
    /// Genes by the size of their predicted change, largest first: (gene, change).
    pub fn changes(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self.genes.iter().zip(self.control.iter().zip(&self.knockout)).map(|(g, (c, k))| (g.clone(), k - c)).collect();
        v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        v
    }
}

/// Which KINDLE job this is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// `kindle.teacher`: `model` is the teacher.
    Teacher,
    /// `kindle.student`: `model` is the student, `teacher` frozen from a file.
    Student,
    /// `kindle`: `teacher` trains for the first `teacher_steps`, then `model`
    /// (the student) learns from it, frozen.
    Pipeline { teacher_steps: u64 },
}

pub struct KindleTrainer {
    name: &'static str,
    stage: Stage,
    cfg: KindleConfig,
    data: Data,
    model: Model,
    teacher: Option<Model>,
    global_batch: usize,
}

impl KindleTrainer {
    /// Inputs `[n, T, M]` and targets `[n, W, M]` of the given windows.
    fn batch(&self, windows: &[(usize, usize)], device: Device) -> (Tensor, Tensor) {
        let (t, w) = (self.cfg.window, self.cfg.horizon);
        let m = self.data.prepared.genes.len();
        let mut y = Vec::with_capacity(windows.len() * w * m);
        for &(s, start) in windows {
            y.extend_from_slice(&self.data.prepared.series[s].values[(start + t) * m..(start + t + w) * m]);
        }
        let (x, n) = self.batch_inputs(windows, device);
        (x, Tensor::from_slice(&y).view([n as i64, w as i64, m as i64]).to_device(device))
    }

    /// Samples `first..first + count` of the run: sample k is window
    /// shuffled(epoch)[k mod n], one seeded shuffle per epoch (computed once
    /// per epoch the range touches).
    fn samples(&self, first: u64, count: usize, seed: u64) -> Vec<(usize, usize)> {
        let n = self.data.train.len() as u64;
        let mut order: Option<(u64, Vec<usize>)> = None;
        (first..first + count as u64)
            .map(|k| {
                let epoch = k / n;
                if order.as_ref().map(|o| o.0) != Some(epoch) {
                    order = Some((epoch, shuffled(self.data.train.len(), seed, epoch)));
                }
                let idx = order.as_ref().map(|o| o.1[(k % n) as usize]).unwrap_or(0);
                self.data.train[idx]
            })
            .collect()
    }

    /// The model's network: gene attention averaged over non-overlapping
    /// segments of T cells of every trajectory; edge regulator → target
    /// scores A[target, regulator].
    pub fn readout(&self) -> Vec<ScoredEdge> {
        self.readout_of(&self.model, self.stage != Stage::Teacher)
    }

    /// [`KindleTrainer::readout`] of `model` (`student`: trained with hidden inputs, if any).
    fn readout_of(&self, model: &Model, student: bool) -> Vec<ScoredEdge> {
        let _g = tch::no_grad_guard();
        let t = self.cfg.window;
        let segments: Vec<(usize, usize)> = self
            .data
            .prepared
            .series
            .iter()
            .enumerate()
            .flat_map(|(s, series)| (0..series.len() / t).map(move |j| (s, j * t)))
            .collect();
        let genes = &self.data.prepared.genes;
        let m = genes.len();
        let device = model.vs.device();
        let mut sum = Tensor::zeros([m as i64, m as i64], (Kind::Float, device));
        // A student trained with hidden inputs is read as it learned to
        // attend: gene i's row from a pass where i is hidden (genes split into
        // ⌈1 / input_mask⌉ interleaved groups, one pass per group).
        let groups = if self.cfg.input_mask > 0.0 && student { (1.0 / self.cfg.input_mask).ceil() as usize } else { 1 };
        for chunk in segments.chunks(64) {
            let (x, _) = self.batch_inputs(chunk, device);
            for g in 0..groups {
                if groups == 1 {
                    let (_, attn) = model.forward(&x);
                    sum += attn.sum_dim_intlist(0, false, Kind::Float);
                    continue;
                }
                let rows: Vec<bool> = (0..m).map(|i| i % groups == g).collect();
                let rows = Tensor::from_slice(&rows).to_device(device);
                let hidden = rows.view([1, m as i64]).expand([chunk.len() as i64, m as i64], false);
                let (_, attn) = model.forward_masked(&x, Some(&hidden));
                sum += attn.sum_dim_intlist(0, false, Kind::Float) * rows.view([m as i64, 1]).to_kind(Kind::Float);
            }
        }
        let a = Vec::<f32>::try_from((sum / segments.len().max(1) as f64).reshape([-1])).unwrap_or_default();
        let mut out = Vec::with_capacity(m * m);
        for target in 0..m {
            for reg in 0..m {
                if target != reg {
                    out.push(ScoredEdge { from: genes[reg].clone(), to: genes[target].clone(), weight: f64::from(a.get(target * m + reg).copied().unwrap_or(0.0)) });
                }
            }
        }
        out
    }

    /// In-silico knockout: every non-overlapping T-cell segment of every
    /// trajectory is rolled forward `rollout` times (each time the W predicted
    /// cells are appended and the input window slides on), once as is and
    /// once with the `knocked` genes held at the value a raw 0 normalises to,
    /// in the input and in every prediction. Returns, per gene, the mean last
    /// prediction without and with the knockout (normalised units).
    pub fn knockout(&self, knocked: &[String], rollout: usize) -> Result<Knockout, String> {
        let genes = &self.data.prepared.genes;
        let idx: Vec<usize> = knocked
            .iter()
            .map(|g| genes.iter().position(|x| x == g).ok_or_else(|| format!("gene {g} is not among the model's {} genes", genes.len())))
            .collect::<Result<_, _>>()?;
        if rollout == 0 {
            return Err("rollout must be at least 1".into());
        }
        let _g = tch::no_grad_guard();
        let (t, m) = (self.cfg.window as i64, genes.len() as i64);
        let device = self.model.vs.device();
        let segments: Vec<(usize, usize)> =
            self.data.prepared.series.iter().enumerate().flat_map(|(s, series)| (0..series.len() / t as usize).map(move |j| (s, j * t as usize))).collect();
        if segments.is_empty() {
            return Err(format!("no trajectory has {t} cells to start from"));
        }
        let zero = Tensor::from_slice(&self.data.prepared.zero).to_device(device);
        let ko_mask = {
            let mut v = vec![false; m as usize];
            idx.iter().for_each(|&i| v[i] = true);
            Tensor::from_slice(&v).to_device(device)
        };
        // Holds knocked genes at their zero value in x [n, L, M].
        let clamp = |x: &Tensor| x.where_self(&ko_mask.logical_not(), &zero.expand_as(x));
        let roll = |x0: &Tensor, knock: bool| -> Tensor {
            let mut x = if knock { clamp(x0) } else { x0.shallow_clone() };
            let mut last = Tensor::zeros([x0.size()[0], m], (Kind::Float, device));
            for _ in 0..rollout {
                let (pred, _) = self.model.forward(&x);
                let pred = if knock { clamp(&pred) } else { pred };
                last = pred.select(1, pred.size()[1] - 1);
                x = Tensor::cat(&[&x, &pred], 1).narrow(1, pred.size()[1], t);
            }
            last
        };
        let (mut control, mut knocked_sum) = (Tensor::zeros([m], (Kind::Float, device)), Tensor::zeros([m], (Kind::Float, device)));
        for chunk in segments.chunks(64) {
            let (x, _) = self.batch_inputs(chunk, device);
            control += roll(&x, false).sum_dim_intlist(0, false, Kind::Float);
            knocked_sum += roll(&x, true).sum_dim_intlist(0, false, Kind::Float);
        }
        let n = segments.len() as f64;
        let to_vec = |t: Tensor| Vec::<f32>::try_from(t / n).unwrap_or_default().into_iter().map(f64::from).collect::<Vec<_>>();
        Ok(Knockout { genes: genes.clone(), control: to_vec(control), knockout: to_vec(knocked_sum), knocked: knocked.to_vec() })
    }

    /// Which genes are hidden from the input of samples `first..first + n`
    /// (`[n, M]`, each with probability `input_mask`), keyed by (seed, sample,
    /// gene) so every rank count and every resumed run hide the same ones.
    fn hidden(&self, first: u64, n: usize, seed: u64, device: Device) -> Option<Tensor> {
        if self.cfg.input_mask <= 0.0 || self.stage == Stage::Teacher {
            return None;
        }
        let m = self.data.prepared.genes.len();
        let v: Vec<bool> = (first..first + n as u64)
            .flat_map(|k| (0..m as u64).map(move |g| unit(splitmix(splitmix(seed ^ 0x6b69_6e64_6c65 ^ splitmix(k)) ^ g)) < self.cfg.input_mask))
            .collect();
        Some(Tensor::from_slice(&v).view([n as i64, m as i64]).to_device(device))
    }

    /// Inputs of windows that may end at the series' end (no target needed).
    fn batch_inputs(&self, windows: &[(usize, usize)], device: Device) -> (Tensor, usize) {
        let t = self.cfg.window;
        let m = self.data.prepared.genes.len();
        let mut x = Vec::with_capacity(windows.len() * t * m);
        for &(s, start) in windows {
            x.extend_from_slice(&self.data.prepared.series[s].values[start * m..(start + t) * m]);
        }
        (Tensor::from_slice(&x).view([windows.len() as i64, t as i64, m as i64]).to_device(device), windows.len())
    }
}

impl KindleTrainer {
    /// `kindle`: whether step `step` belongs to the teacher.
    fn teaching(&self, step: u64) -> bool {
        match self.stage {
            Stage::Teacher => true,
            Stage::Student => false,
            Stage::Pipeline { teacher_steps } => step < teacher_steps,
        }
    }

    /// `kindle`: only the stage in training requires gradients, so the
    /// optimizer and the gradient sync leave the other one alone.
    fn set_trainable(&self, teaching: bool) {
        if let (Stage::Pipeline { .. }, Some(t)) = (self.stage, &self.teacher) {
            for (_, p) in t.named_parameters() {
                let _ = p.set_requires_grad(teaching);
            }
            for (_, p) in self.model.named_parameters() {
                let _ = p.set_requires_grad(!teaching);
            }
        }
    }

    /// Validation error and, with a reference, the network's metrics of `model`.
    fn evaluate_model(&self, model: &Model, student: bool, ctx: &StepContext, prefix: &str) -> Result<BTreeMap<String, f64>, WorkerError> {
        // Validation error, split over the ranks and summed.
        let n = self.data.val.len();
        let (lo, hi) = (n * ctx.rank / ctx.world_size, n * (ctx.rank + 1) / ctx.world_size);
        let mut sums = vec![0.0f64; 2];
        for chunk in self.data.val[lo..hi].chunks(64) {
            let (x, y) = self.batch(chunk, ctx.device);
            let (pred, _) = model.forward(&x);
            let mask = y.ne(0.0).to_kind(Kind::Float);
            sums[0] += ((pred - &y).square() * &mask).sum(Kind::Float).double_value(&[]);
            sums[1] += mask.sum(Kind::Float).double_value(&[]);
        }
        let mut t = Tensor::from_slice(&sums);
        ctx.comm.all_reduce(&mut t, kiln_cluster::ReduceOp::Sum)?;
        let s = Vec::<f64>::try_from(&t).map_err(|e| WorkerError::algo(self.name, e))?;
        let mut out = BTreeMap::new();
        out.insert(format!("{prefix}val_mse"), s[0] / s[1].max(1.0));
        if let Some(truth) = &self.data.truth {
            let edges = self.readout_of(model, student);
            let e = score(truth, &edges, &self.data.universe).map_err(|e| WorkerError::algo(self.name, e))?;
            out.insert(format!("{prefix}auroc"), e.auroc);
            out.insert(format!("{prefix}auprc_ratio"), e.auprc_ratio);
            out.insert(format!("{prefix}epr"), e.epr);
            out.insert(format!("{prefix}topk_precision"), e.topk.precision);
        }
        Ok(out)
    }
}

impl Algorithm for KindleTrainer {
    fn name(&self) -> &str {
        self.name
    }

    /// One model's parameters; `kindle`'s are both, the teacher's named
    /// `teacher.*` and the student's `student.*`.
    fn parameters(&self) -> Vec<(String, Tensor)> {
        match (self.stage, &self.teacher) {
            (Stage::Pipeline { .. }, Some(t)) => t
                .named_parameters()
                .into_iter()
                .map(|(n, p)| (format!("teacher.{n}"), p))
                .chain(self.model.named_parameters().into_iter().map(|(n, p)| (format!("student.{n}"), p)))
                .collect(),
            _ => self.model.named_parameters(),
        }
    }

    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError> {
        let per = ctx.per_rank(self.global_batch);
        let base = ctx.step * self.global_batch as u64;
        let all = self.samples(base, self.global_batch, ctx.seed);
        let first = ctx.rank_offset(self.global_batch) as usize;
        let mine = &all[first..first + per];
        let (x, y) = self.batch(mine, ctx.device);
        // The masked MSE is a mean over the non-zero targets of the whole step,
        // so N ranks compute what one rank would (the data is a pure function of
        // the sample index: every rank can count them all).
        let (_, y_all) = self.batch(&all, Device::Cpu);
        let global_nonzero = y_all.ne(0.0).sum(Kind::Int64).int64_value(&[]).max(1) as f64;
        let local_nonzero = y.ne(0.0).sum(Kind::Int64).int64_value(&[]).max(1) as f64;
        let scale = local_nonzero * (ctx.world_size * ctx.micro_steps) as f64 / global_nonzero;
        let teaching = self.teaching(ctx.step);
        self.set_trainable(teaching);
        let mut scalars = BTreeMap::new();
        let loss = match (&self.teacher, teaching) {
            // kindle's first stage: the teacher alone.
            (Some(t), true) => masked_mse(&t.forward(&x).0, &y) * scale,
            (None, _) => masked_mse(&self.model.forward(&x).0, &y) * scale,
            (Some(t), false) => {
                let hidden = self.hidden(base + first as u64, per, ctx.seed, ctx.device);
                let (pred, _) = self.model.forward_masked(&x, hidden.as_ref());
                let pred_loss = masked_mse(&pred, &y) * scale;
                let (tp, _) = tch::no_grad(|| t.forward(&x));
                let d = distill_loss(&pred, &tp, self.cfg.distill().map_err(|e| WorkerError::algo(self.name, e))?);
                scalars.insert("distill".into(), d.double_value(&[]));
                scalars.insert("prediction".into(), pred_loss.double_value(&[]));
                &pred_loss * self.cfg.alpha + d * (1.0 - self.cfg.alpha)
            }
        };
        loss.backward();
        Ok(StepOutput { loss: loss.double_value(&[]), samples: per, scalars })
    }

    /// The job's model; `kindle` reports the teacher as `teacher_*` while it
    /// trains and beside the student afterwards.
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError> {
        let _g = tch::no_grad_guard();
        match (self.stage, &self.teacher) {
            (Stage::Pipeline { .. }, Some(t)) => {
                let mut out = self.evaluate_model(t, false, ctx, "teacher_")?;
                if !self.teaching(ctx.step) {
                    out.extend(self.evaluate_model(&self.model, true, ctx, "")?);
                }
                Ok(out)
            }
            _ => self.evaluate_model(&self.model, self.stage != Stage::Teacher, ctx, ""),
        }
    }

    fn global_batch(&self) -> usize {
        self.global_batch
    }

    fn export(&self, dir: &Path) -> Result<(), WorkerError> {
        write_edges(&dir.join("edges.csv"), &self.readout()).map_err(|e| WorkerError::algo(self.name, e))
    }
}
