//! AutoAssign+ (Xu et al., Knowledge and Information Systems 2024): CTR
//! training on a stream where new user and item ids keep arriving, with an
//! identity agent that decides how each id is represented.
//!
//! Per field (user, item) there are K shared embeddings and an exclusive
//! table of at most `budget_rows` rows. The agent's actor gives every id a
//! mixture over the shared embeddings (from its state: frequency, age,
//! recency, side feature), and a priority for a row of its own; ids whose
//! priority passes ½ get a row (warm-started from their mixture), the
//! lowest-priority owners are evicted when the table is full or when their
//! priority falls. A critic Q(state, action) learns the reward of that
//! choice — the id's negative log-loss on the next chunk — and the actor
//! follows its gradient (DDPG). The mixture is differentiable and trains
//! with the CTR loss. The paper's code is not public; these are our
//! readings, each a setting ([`AutoAssignJob`]).
//!
//! Baselines in the same code path (`policy`): a full exclusive table (a row
//! per id at first sight), the hashing trick (`budget_rows` buckets), and a
//! frequency threshold with one shared "unknown" row.
//!
//! Evaluation is test-then-train: each chunk is scored before the model
//! trains on it (AUC and log-loss, for interactions with new and with old
//! ids), and the embedding rows in use are counted after each chunk.

pub mod identity;
pub mod job;
pub mod stream;

use kiln_worker::{parse_config, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The identity agent.
    #[default]
    AutoAssign,
    /// A row per id, from its first interaction (memory grows with the stream).
    Full,
    /// `budget_rows` buckets; an id's row is its hash modulo the budget.
    Hashing,
    /// A row once an id has `threshold` interactions (least recently seen
    /// owner evicted when the budget is full); one shared row until then.
    Threshold,
}

/// The `[algorithm]` table of `recsys.autoassign` jobs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoAssignJob {
    pub stream: stream::StreamSpec,
    #[serde(default)]
    pub policy: Policy,
    /// Embedding width.
    #[serde(default = "dim")]
    pub dim: usize,
    /// The CTR model's MLP over [user, user side, item, item side].
    #[serde(default = "hidden")]
    pub hidden: Vec<usize>,
    /// K: shared embeddings per field (the agent's mixture components).
    #[serde(default = "shared")]
    pub shared: usize,
    /// Exclusive rows per field (buckets for `hashing`); ignored by `full`.
    #[serde(default = "budget")]
    pub budget_rows: usize,
    /// `threshold` policy: interactions before an id gets a row.
    #[serde(default = "threshold")]
    pub threshold: i64,
    /// An interaction is "new" when its user or item had fewer than this
    /// many interactions before its chunk (for `auc_new` / `auc_old`).
    #[serde(default = "cold")]
    pub cold_count: i64,
    /// Optimizer steps per chunk (0: one pass over the largest chunk).
    #[serde(default)]
    pub steps_per_chunk: u64,
    /// Probability that the agent's row decision for an id is flipped, so
    /// the critic sees both actions in similar states.
    #[serde(default = "explore")]
    pub explore: f64,
    /// Cost of a row in the actor's objective and its worth (log-loss per
    /// chunk).
    #[serde(default)]
    pub row_cost: f64,
    /// How much more (log-loss per chunk) an id must be worth than the
    /// least worthy owner to take its row from a full table; stops rows
    /// changing hands on the critic's noise.
    #[serde(default = "swap_margin")]
    pub swap_margin: f64,
}

fn swap_margin() -> f64 {
    0.1
}

fn dim() -> usize {
    16
}
fn hidden() -> Vec<usize> {
    vec![64, 32]
}
fn shared() -> usize {
    8
}
fn budget() -> usize {
    500
}
fn threshold() -> i64 {
    10
}
fn cold() -> i64 {
    5
}
fn explore() -> f64 {
    0.1
}

impl AutoAssignJob {
    pub fn from_value(v: &toml::Value) -> Result<AutoAssignJob, ConfigError> {
        let job: AutoAssignJob = parse_config(v)?;
        job.stream.check().map_err(|m| ConfigError::new("stream", m))?;
        if job.dim == 0 || job.hidden.contains(&0) {
            return Err(ConfigError::new("dim", "embedding and layer widths must be >= 1"));
        }
        if job.shared == 0 {
            return Err(ConfigError::new("shared", "must be >= 1"));
        }
        if job.budget_rows == 0 && job.policy != Policy::Full {
            return Err(ConfigError::new("budget_rows", "must be >= 1 (the exclusive rows, or hash buckets, per field)"));
        }
        if !(0.0..=0.5).contains(&job.explore) {
            return Err(ConfigError::new("explore", "must be in [0, 0.5]"));
        }
        if !(job.swap_margin >= 0.0 && job.swap_margin.is_finite()) {
            return Err(ConfigError::new("swap_margin", "must be a finite number >= 0"));
        }
        if !(job.row_cost >= 0.0 && job.row_cost.is_finite()) {
            return Err(ConfigError::new("row_cost", "must be a finite number >= 0"));
        }
        Ok(job)
    }
}
