//! The GHPO crate's trainers as kiln algorithms: `ghpo.sft`, supervised
//! warm-up of a small Qwen2 from scratch on the leveled arithmetic problems,
//! and `ghpo.grpo` / `ghpo.ghpo`, reinforcement learning with verifiable
//! rewards, without and with adaptive hints — the three reproduction jobs.
//!
//! - [`policy`]: the model with its tokenizer and prompt format (from scratch
//!   or a Hugging Face folder), evaluation and export;
//! - [`problems`]: generated or JSONL problems, mixed or as a curriculum;
//! - [`sft`] and [`rl`]: the trainers.

pub mod policy;
pub mod problems;
pub mod rl;
pub mod sft;

use crate::data::LEVELS;
use kiln_worker::{AlgorithmEntry, ConfigError};

pub static ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "ghpo.sft",
        summary: "Supervised warm-up of a small Qwen2 from scratch on leveled arithmetic word problems (GHPO's first job)",
        validate: sft::validate,
        build: sft::build,
    },
    AlgorithmEntry {
        name: "ghpo.grpo",
        summary: "GRPO with verifiable math rewards (accuracy + format), optionally as a curriculum, from a warm-up or a Hugging Face model",
        validate: rl::validate,
        build: rl::build_grpo,
    },
    AlgorithmEntry {
        name: "ghpo.ghpo",
        summary: "GHPO: GRPO with adaptive hints (25/50/75 % of the worked solution) for groups with no correct answer",
        validate: rl::validate,
        build: rl::build_ghpo,
    },
];

/// Both level lists must be non-empty and within the generator's levels.
fn check_levels(train: &[u8], eval: &[u8]) -> Result<(), ConfigError> {
    for (key, levels) in [("train_levels", train), ("eval_levels", eval)] {
        if levels.is_empty() || levels.iter().any(|l| !LEVELS.contains(l)) {
            return Err(ConfigError::new(key, format!("must list levels between {} and {}", LEVELS.start(), LEVELS.end())));
        }
    }
    Ok(())
}
