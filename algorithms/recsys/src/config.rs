//! The `[algorithm]` table of recsys jobs.

use kiln_worker::{parse_config, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecsysConfig {
    /// Embedding width of user and item ids.
    pub embedding_dim: i64,
    /// Hidden width of the shared bottom / of each expert.
    pub hidden: i64,
    /// Hidden width of each task tower.
    pub tower_hidden: i64,
    /// MMoE experts (ignored by Shared-Bottom).
    pub experts: i64,
    /// Generator: users, items, domains and dense features.
    pub users: usize,
    pub items: usize,
    pub domains: usize,
    pub dense_features: usize,
    /// Held-out samples evaluated (sharded over ranks).
    pub eval_samples: usize,
}

impl Default for RecsysConfig {
    fn default() -> Self {
        RecsysConfig {
            embedding_dim: 16,
            hidden: 64,
            tower_hidden: 32,
            experts: 4,
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
        Ok(cfg)
    }
}
