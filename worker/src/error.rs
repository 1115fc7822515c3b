//! The worker's typed errors.

use kiln_cluster::{CommError, StoreError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("{0}")]
    Spec(String),
    #[error("collective failed: {0}")]
    Comm(#[from] CommError),
    #[error("checkpoint store: {0}")]
    Store(#[from] StoreError),
    #[error("tensor operation failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("algorithm '{algorithm}': {message}")]
    Algorithm { algorithm: String, message: String },
    #[error("nothing to resume: run '{run}' has no committed checkpoint in {store}. Run without --resume to start fresh")]
    NothingToResume { run: String, store: String },
    #[error("run '{run}' already has checkpoints in {store} (newest: step {step}). Pass --resume to continue it, or change `name` in the job spec")]
    RunExists { run: String, store: String, step: u64 },
    #[error("the checkpoint at step {step} was written by {ckpt_world} ranks but this job has {world}. Resume with --ranks {ckpt_world}")]
    WorldMismatch { step: u64, ckpt_world: usize, world: usize },
    #[error("checkpoint at step {step} is unusable: {reason}")]
    BadCheckpoint { step: u64, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
}

impl WorkerError {
    pub fn algo(algorithm: &str, message: impl std::fmt::Display) -> Self {
        WorkerError::Algorithm { algorithm: algorithm.to_string(), message: message.to_string() }
    }
}
