//! Types of the algorithm registry. The registry itself (which crates are linked
//! in) lives in the `kiln` binary; algorithm crates export [`AlgorithmEntry`]s.

use crate::algorithm::Algorithm;
use crate::error::WorkerError;
use tch::Device;

/// What an algorithm is built with.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub device: Device,
    pub seed: u64,
    pub global_batch: usize,
    pub rank: usize,
    pub world_size: usize,
    pub micro_steps: usize,
}

/// One registered trainer.
pub struct AlgorithmEntry {
    /// The `algorithm = "…"` value that selects it.
    pub name: &'static str,
    pub summary: &'static str,
    /// Checks the `[algorithm]` table at submit time; errors name the field path.
    pub validate: fn(&toml::Value) -> Result<(), String>,
    pub build: fn(&toml::Value, &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError>,
}
