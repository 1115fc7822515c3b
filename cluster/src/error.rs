//! Typed errors of the runtime: one enum for collectives, one for storage.

use thiserror::Error;

/// A collective failed or was asked for something its backend cannot do.
#[derive(Debug, Error)]
pub enum CommError {
    #[error("{backend} backend does not support tensors of kind {kind:?} for {op}")]
    UnsupportedKind { backend: &'static str, kind: tch::Kind, op: &'static str },
    #[error("{backend} backend needs {needed} tensors, got a {got} tensor")]
    WrongDevice { backend: &'static str, needed: &'static str, got: String },
    #[error("root rank {root} is outside a world of {world} ranks")]
    BadRoot { root: usize, world: usize },
    #[error("all-gather of tensors needs the same shape on every rank: rank {rank} has {shape:?}, rank 0 has {expected:?}")]
    ShapeMismatch { rank: usize, shape: Vec<i64>, expected: Vec<i64> },
    #[error("MPI is not available: {0}")]
    MpiUnavailable(String),
    #[error("NCCL is not available: {0}")]
    NcclUnavailable(String),
    #[error("NCCL call {call} failed: {detail}")]
    Nccl { call: &'static str, detail: String },
    #[error("tensor operation failed: {0}")]
    Torch(#[from] tch::TchError),
}

/// The checkpoint store could not do what was asked.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store URL '{url}' is not valid: {reason}. Use file:///abs/path, a relative path, memory:// or s3://bucket/prefix")]
    BadUrl { url: String, reason: String },
    #[error("store URL scheme '{scheme}' is not supported (in '{url}'); supported: file://, memory://, s3://")]
    UnknownScheme { scheme: String, url: String },
    #[error("store '{url}' is not usable: {source}")]
    Unusable { url: String, #[source] source: object_store::Error },
    #[error("object store operation on '{path}' failed: {source}")]
    Object { path: String, #[source] source: object_store::Error },
    #[error("checkpoint step {step} already has a COMMIT at '{path}': another writer committed it first")]
    AlreadyCommitted { step: u64, path: String },
    #[error("checkpoint at '{path}' is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("no committed checkpoint under '{prefix}'")]
    NoCheckpoint { prefix: String },
    #[error("checkpoint manifest is not valid JSON at '{path}': {source}")]
    Manifest { path: String, #[source] source: serde_json::Error },
    #[error("safetensors encoding failed for '{name}': {reason}")]
    Encode { name: String, reason: String },
    #[error("tensor operation failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("background upload failed: {0}")]
    Background(String),
    #[error("I/O runtime error: {0}")]
    Runtime(#[from] std::io::Error),
}
