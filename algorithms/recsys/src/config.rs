//! The `[algorithm]` table of recsys jobs.

use kiln_worker::{parse_config, ConfigError};
use crate::table::DataSpec;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecsysConfig {
    /// Embedding width of user and item ids.
    pub embedding_dim: i64,
    /// Embedding tables of at least this many rows get row-sparse gradients:
    /// a step's gradient, sync and update touch only the rows it looked up
    /// (lazy optimizer state, see the docs). 0: every table; a huge value: none.
    pub sparse_min_rows: u64,
    /// Hidden width of the shared bottom / of each expert.
    pub hidden: i64,
    /// Hidden width of each task tower.
    pub tower_hidden: i64,
    /// Shared experts (MMoE, PLE, M3oE).
    pub experts: i64,
    /// PLE: experts per task per level, and levels.
    pub task_experts: i64,
    pub levels: i64,
    /// AITM: weight of the calibrator (a later task predicted above an earlier one).
    pub calibration: f64,
    /// M3oE: search the structure scalars (false: keep them fixed at their start).
    pub search: bool,
    /// M3oE: one structure step every this many training steps, on a validation
    /// batch of `search_batch` samples, with Adam at `search_lr`.
    pub search_every: u64,
    pub search_batch: usize,
    pub search_lr: f64,
    /// The loss: "tasks" (Σ over tasks of each task's mean log-loss), "cells"
    /// (Σ over (domain, task) cells of each cell's mean, as M3oE trains) or
    /// "uncertainty" (tasks weighted by learned uncertainties, Kendall et al.).
    pub loss: String,
    /// Fixed weights per task for "tasks" and "cells" (default: all 1).
    pub task_weights: Option<Vec<f64>>,
    /// A user's table (`[algorithm.data]`: a preset or a spec, see
    /// [`DataSpec`]); without it the job trains on the generator, and the
    /// generator keys below (domain_shift … dense_features) do not apply.
    pub data: Option<DataSpec>,
    /// Generator: each domain's own view of items (0: none), and a click →
    /// conversion funnel for task 1.
    pub domain_shift: f64,
    pub funnel: bool,
    /// Generator: users, items, domains and dense features.
    pub users: usize,
    pub items: usize,
    pub domains: usize,
    pub dense_features: usize,
    /// Generator: held-out samples evaluated (sharded over ranks). A table's
    /// validation and test splits are evaluated whole.
    pub eval_samples: usize,
}

impl Default for RecsysConfig {
    fn default() -> Self {
        RecsysConfig {
            embedding_dim: 16,
            sparse_min_rows: 100_000,
            hidden: 64,
            tower_hidden: 32,
            experts: 4,
            task_experts: 2,
            levels: 2,
            calibration: 0.6,
            search: true,
            search_every: 10,
            search_batch: 1024,
            search_lr: 0.001,
            data: None,
            domain_shift: 0.0,
            funnel: false,
            loss: "tasks".into(),
            task_weights: None,
            users: 2000,
            items: 1000,
            domains: 3,
            dense_features: 8,
            eval_samples: 8192,
        }
    }
}

impl RecsysConfig {
    /// Parses and checks the table; errors name the key.
    pub fn from_value(v: &toml::Value) -> Result<Self, ConfigError> {
        let cfg: RecsysConfig = parse_config(v)?;
        let positive = [
            ("embedding_dim", cfg.embedding_dim as usize),
            ("hidden", cfg.hidden as usize),
            ("tower_hidden", cfg.tower_hidden as usize),
            ("experts", cfg.experts as usize),
            ("task_experts", cfg.task_experts as usize),
            ("levels", cfg.levels as usize),
            ("search_every", cfg.search_every as usize),
            ("search_batch", cfg.search_batch),
            ("users", cfg.users),
            ("items", cfg.items),
            ("domains", cfg.domains),
            ("eval_samples", cfg.eval_samples),
        ];
        for (name, v) in positive {
            if v == 0 || v > 1 << 30 {
                return Err(ConfigError::new(name, "must be between 1 and 2^30"));
            }
        }
        if !["tasks", "cells", "uncertainty"].contains(&cfg.loss.as_str()) {
            return Err(ConfigError::new("loss", format!("'{}' is not one of tasks, cells, uncertainty", cfg.loss)));
        }
        let tasks = match &cfg.data {
            Some(d) => d.resolve().map_err(|e| ConfigError::new("data", e.to_string()))?.labels.len(),
            None => crate::data::TASKS,
        };
        if let Some(w) = &cfg.task_weights {
            if w.len() != tasks || w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(ConfigError::new("task_weights", format!("needs {tasks} non-negative numbers, one per task")));
            }
            if cfg.loss == "uncertainty" {
                return Err(ConfigError::new("task_weights", "uncertainty weighting learns the weights; leave task_weights out"));
            }
        }
        if !(cfg.calibration >= 0.0) || !(cfg.search_lr > 0.0) || !cfg.domain_shift.is_finite() {
            return Err(ConfigError::new("calibration", "calibration must be >= 0, search_lr > 0 and domain_shift finite"));
        }
        Ok(cfg)
    }
}
