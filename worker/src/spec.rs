//! The job spec: one TOML file, read the same way by `kiln run`, every rank and
//! (later) the coordinator.
//!
//! Unknown fields are errors, and every error names the file, the line and the
//! field path. TOML cannot give one key both a string and a table, so the
//! algorithm is chosen by `[algorithm] name = "…"`; the rest of that table belongs
//! to the algorithm crate, which validates it through the registry.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Run name: names the checkpoint prefix and `runs/<name>/`.
    pub name: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub launch: Launch,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    pub train: TrainSpec,
    /// `name` selects the trainer; the other keys are the algorithm's own.
    pub algorithm: toml::Table,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub nodes: usize,
    pub ranks_per_node: usize,
    pub gpus_per_rank: usize,
    pub cpus_per_rank: usize,
    /// Wall-clock limit, `HH:MM:SS` or `D-HH:MM:SS` as SLURM writes it.
    pub time_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { nodes: 1, ranks_per_node: 1, gpus_per_rank: 0, cpus_per_rank: 1, time_limit: None }
    }
}

impl Resources {
    pub fn world_size(&self) -> usize {
        self.nodes * self.ranks_per_node
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Slurm,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Launch {
    pub backend: Backend,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Memory per node for SLURM (`64G`, `4000M`).
    pub mem: Option<String>,
    /// Seconds before the time limit at which SLURM sends SIGUSR1, so the ranks
    /// checkpoint and exit before they are killed.
    pub signal_grace_s: u32,
    /// Let SLURM requeue the job after preemption or node failure; it resumes
    /// from its newest checkpoint.
    pub requeue: bool,
    /// Under a coordinator: failed attempts restarted from the newest checkpoint
    /// before the job is declared failed (preemptions do not count).
    pub max_restarts: u32,
    /// Under a coordinator: higher runs first among queued jobs.
    pub priority: i64,
    /// Under a coordinator: seconds in which no rank finishes a step or enters a
    /// new collective before the attempt is declared hung, killed and restarted
    /// (0: the coordinator's default).
    pub hang_timeout_s: u64,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            backend: Backend::Local,
            partition: None,
            account: None,
            qos: None,
            mem: None,
            signal_grace_s: 120,
            requeue: true,
            max_restarts: 3,
            priority: 0,
            hang_timeout_s: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSpec {
    /// `file://…`, a plain directory, `memory://` or `s3://bucket/prefix`.
    pub store: String,
    /// Commit a checkpoint every N optimizer steps (0: only at the end and on stop).
    pub every: u64,
    /// Committed checkpoints to keep.
    pub keep: usize,
    /// Upload in the background while training continues.
    #[serde(rename = "async")]
    pub async_upload: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec { store: "runs".into(), every: 0, keep: 3, async_upload: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub steps: u64,
    #[serde(default)]
    pub seed: u64,
    /// Samples per optimizer step over all ranks and micro-steps.
    pub global_batch: usize,
    /// Gradient-accumulation micro-steps per optimizer step.
    #[serde(default = "one")]
    pub micro_steps: usize,
    /// Evaluate every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Gradient bucket size for the all-reduce, in MiB.
    #[serde(default = "bucket_mb")]
    pub bucket_mb: f64,
    /// Clip gradients to this global L2 norm.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// "cpu", "cuda" or "auto" (a GPU when the rank has one).
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Stop when a validation metric stops improving.
    #[serde(default)]
    pub early_stop: Option<EarlyStopSpec>,
}

/// `[train.early_stop]`: training ends after `patience` evaluations in a row
/// without `metric` improving on its best by more than `min_delta`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopSpec {
    /// A key of the algorithm's evaluation, e.g. "mean_cell_auc".
    pub metric: String,
    /// "max" (higher is better) or "min".
    #[serde(default = "max_mode")]
    pub mode: String,
    pub patience: u64,
    #[serde(default)]
    pub min_delta: f64,
}

fn max_mode() -> String {
    "max".into()
}

fn one() -> usize {
    1
}
fn ten() -> u64 {
    10
}
fn bucket_mb() -> f64 {
    25.0
}
fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum OptimizerSpec {
    Adamw {
        lr: f64,
        #[serde(default = "betas")]
        betas: [f64; 2],
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "wd")]
        weight_decay: f64,
    },
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn eps() -> f64 {
    1e-8
}
fn wd() -> f64 {
    0.01
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec::Adamw { lr: 1e-3, betas: betas(), eps: eps(), weight_decay: wd() }
    }
}

impl OptimizerSpec {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Adamw { lr, .. } | OptimizerSpec::Sgd { lr, .. } => *lr,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum ScheduleSpec {
    #[default]
    Constant,
    /// Linear warmup from 0 to the base rate, then cosine decay to `min_lr_ratio` of it.
    WarmupCosine {
        warmup_steps: u64,
        #[serde(default)]
        min_lr_ratio: f64,
    },
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| before.len() - i).unwrap_or(before.len() + 1);
    (line, col)
}

/// Best-effort line of a dotted key path in the text (for errors found after
/// parsing, which carry no span): the line of the last key segment inside its table.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let mut segs: Vec<&str> = path.split('.').collect();
    let key = segs.pop()?;
    let table = segs.join(".");
    let mut in_table = table.is_empty();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table;
            continue;
        }
        let k = t.split('=').next().unwrap_or("").trim();
        if in_table && k == key {
            return Some(i + 1);
        }
    }
    None
}

impl JobSpec {
    /// Parses and checks a spec; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<JobSpec, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            format!("{origin}:{line}:{col}: malformed TOML: {}", e.message())
        })?;
        let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner();
            let (line, col) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .or_else(|| locate(text, &path).map(|l| (l, 1)))
                .unwrap_or((1, 1));
            let at = if path == "." { String::new() } else { format!(" at `{path}`") };
            format!("{origin}:{line}:{col}: invalid job spec{at}: {}", inner.message())
        })?;
        spec.check().map_err(|(path, msg)| {
            let line = locate(text, &path).unwrap_or(1);
            format!("{origin}:{line}: invalid job spec at `{path}`: {msg}")
        })?;
        Ok(spec)
    }

    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<(JobSpec, String), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read job spec {}: {e}", path.display()))?;
        let spec = JobSpec::parse(&text, &path.display().to_string())?;
        Ok((spec, text))
    }

    /// The algorithm's registry name.
    pub fn algorithm_name(&self) -> Option<&str> {
        self.algorithm.get("name").and_then(|v| v.as_str())
    }

    /// The `[algorithm]` table without `name`, for the algorithm crate.
    pub fn algorithm_config(&self) -> toml::Value {
        let mut t = self.algorithm.clone();
        t.remove("name");
        toml::Value::Table(t)
    }

    /// A stable hash of the spec, recorded in checkpoint manifests.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_string(self).unwrap_or_default();
        hex::encode(&Sha256::digest(canonical.as_bytes())[..8])
    }

    /// Value checks serde cannot express. Returns (field path, message).
    fn check(&self) -> Result<(), (String, String)> {
        let err = |p: &str, m: String| Err((p.to_string(), m));
        if let Err(m) = kiln_cluster::checkpoint::validate_run_name(&self.name) {
            return err("name", m);
        }
        match self.algorithm.get("name") {
            Some(toml::Value::String(_)) => {}
            Some(_) => return err("algorithm.name", "must be a string such as \"recsys.mmoe\"".into()),
            None => return err("algorithm.name", "is missing: say which trainer to run, e.g. name = \"recsys.mmoe\" (see `kiln algorithms`)".into()),
        }
        if self.resources.nodes < 1 {
            return err("resources.nodes", "must be at least 1".into());
        }
        if self.resources.ranks_per_node < 1 {
            return err("resources.ranks_per_node", "must be at least 1".into());
        }
        if self.train.steps < 1 {
            return err("train.steps", "must be at least 1".into());
        }
        if self.train.global_batch < 1 {
            return err("train.global_batch", "must be at least 1".into());
        }
        if self.train.micro_steps < 1 {
            return err("train.micro_steps", "must be at least 1".into());
        }
        if self.train.log_every < 1 {
            return err("train.log_every", "must be at least 1".into());
        }
        if !(self.train.bucket_mb > 0.0) {
            return err("train.bucket_mb", "must be positive".into());
        }
        if let Some(c) = self.train.clip_grad_norm {
            if !(c > 0.0) {
                return err("train.clip_grad_norm", "must be positive".into());
            }
        }
        if !["cpu", "cuda", "auto"].contains(&self.train.device.as_str()) {
            return err("train.device", format!("'{}' is not one of cpu, cuda, auto", self.train.device));
        }
        let lr = self.train.optimizer.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return err("train.optimizer.lr", format!("must be a positive number, got {lr}"));
        }
        if let ScheduleSpec::WarmupCosine { warmup_steps, min_lr_ratio } = self.train.schedule {
            if warmup_steps > self.train.steps {
                return err("train.schedule.warmup_steps", format!("{warmup_steps} exceeds train.steps ({})", self.train.steps));
            }
            if !(0.0..=1.0).contains(&min_lr_ratio) {
                return err("train.schedule.min_lr_ratio", "must be within 0..=1".into());
            }
        }
        if let Some(es) = &self.train.early_stop {
            if !["max", "min"].contains(&es.mode.as_str()) {
                return err("train.early_stop.mode", format!("'{}' is not one of max, min", es.mode));
            }
            if es.patience < 1 {
                return err("train.early_stop.patience", "must be at least 1 (evaluations without improvement)".into());
            }
            if !(es.min_delta >= 0.0 && es.min_delta.is_finite()) {
                return err("train.early_stop.min_delta", "must be a non-negative number".into());
            }
            if self.train.eval_every == 0 {
                return err("train.early_stop", "needs evaluations during training: set train.eval_every".into());
            }
        }
        if self.checkpoint.keep < 1 {
            return err("checkpoint.keep", "must be at least 1".into());
        }
        if let Err(e) = kiln_cluster::checkpoint::open_store_url_check(&self.checkpoint.store) {
            return err("checkpoint.store", e);
        }
        Ok(())
    }

    /// Checks that the global batch splits evenly over `world` ranks and the micro-steps.
    pub fn check_world(&self, world: usize) -> Result<(), String> {
        if world < 1 {
            return Err("the number of ranks must be at least 1".into());
        }
        let Some(parts) = world.checked_mul(self.train.micro_steps).filter(|&p| p > 0) else {
            return Err(format!("{world} rank(s) x {} micro-step(s) is more than the global batch can ever divide into", self.train.micro_steps));
        };
        if self.train.global_batch % parts != 0 {
            return Err(format!(
                "train.global_batch ({}) must divide evenly over {world} rank(s) x {} micro-step(s); pick a multiple of {parts}",
                self.train.global_batch, self.train.micro_steps
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "quick"

[train]
steps = 10
global_batch = 64

[algorithm]
name = "recsys.mmoe"
experts = 4
"#;

    #[test]
    fn parses_a_minimal_spec_with_defaults() {
        let s = JobSpec::parse(GOOD, "job.toml").unwrap();
        assert_eq!(s.algorithm_name(), Some("recsys.mmoe"));
        assert_eq!(s.checkpoint.store, "runs");
        assert_eq!(s.train.micro_steps, 1);
        assert!(matches!(s.train.optimizer, OptimizerSpec::Adamw { .. }));
        assert_eq!(s.algorithm_config().get("experts").and_then(|v| v.as_integer()), Some(4));
        assert!(s.algorithm_config().get("name").is_none());
    }

    #[test]
    fn unknown_field_names_file_line_and_path() {
        let bad = GOOD.replace("global_batch = 64", "global_batch = 64\nstepz = 3");
        let e = JobSpec::parse(&bad, "job.toml").unwrap_err();
        assert!(e.starts_with("job.toml:7:"), "{e}");
        assert!(e.contains("stepz"), "{e}");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let e = JobSpec::parse("name = \"x\"\n[train\nsteps = 1\n", "j.toml").unwrap_err();
        assert!(e.starts_with("j.toml:2:"), "{e}");
        assert!(e.contains("malformed TOML"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_nested_path() {
        let bad = GOOD.replace("steps = 10", "steps = \"ten\"");
        let e = JobSpec::parse(&bad, "job.toml").unwrap_err();
        assert!(e.contains("train.steps"), "{e}");
        assert!(e.starts_with("job.toml:5:"), "{e}");
    }

    #[test]
    fn value_checks_name_the_field() {
        let e = JobSpec::parse(&GOOD.replace("steps = 10", "steps = 0"), "job.toml").unwrap_err();
        assert!(e.contains("`train.steps`") && e.starts_with("job.toml:5"), "{e}");
        let e = JobSpec::parse(&GOOD.replace("name = \"recsys.mmoe\"", ""), "job.toml").unwrap_err();
        assert!(e.contains("algorithm.name"), "{e}");
        let bad = format!("{GOOD}\n[checkpoint]\nstore = \"ftp://x\"\n").replace("[algorithm]", "[algorithm]");
        // [checkpoint] after [algorithm] is still a top-level table in TOML.
        let e = JobSpec::parse(&bad, "job.toml").unwrap_err();
        assert!(e.contains("checkpoint.store") && e.contains("ftp"), "{e}");
        let e = JobSpec::parse(&GOOD.replace("name = \"quick\"", "name = \"../up\""), "job.toml").unwrap_err();
        assert!(e.contains("`name`"), "{e}");
    }

    #[test]
    fn world_must_divide_the_batch() {
        let s = JobSpec::parse(GOOD, "job.toml").unwrap();
        assert!(s.check_world(2).is_ok());
        assert!(s.check_world(3).unwrap_err().contains("multiple of 3"));
        assert!(s.check_world(0).is_err());
    }

    #[test]
    fn hash_changes_with_content() {
        let a = JobSpec::parse(GOOD, "a").unwrap();
        let b = JobSpec::parse(&GOOD.replace("steps = 10", "steps = 11"), "b").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), JobSpec::parse(GOOD, "c").unwrap().hash());
    }
}
